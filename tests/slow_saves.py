"""Run a script with every ``torch.save`` slowed down, to hit a window while a checkpoint is written.

    python tests/slow_saves.py SECONDS RANK SCRIPT [ARGS ...]

RANK is a process rank (the ``RANK`` variable of ``accelerate launch``; 0 without it) or ``all``.
The trainer writes the optimizer state and each process's RNG state with ``torch.save`` (through
accelerate), so this delays every checkpoint on those processes, and nothing else. A test helper:
nothing in gpt/ knows about it.
"""

import os
import runpy
import sys
import time
from pathlib import Path

import torch

seconds, rank, script, *arguments = sys.argv[1:]
real_save = torch.save


def slow_save(*args, **kwargs):
    if rank in ("all", os.environ.get("RANK", "0")):
        time.sleep(float(seconds))
    return real_save(*args, **kwargs)


torch.save = slow_save
sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # this checkout's gpt/, as for train.py
sys.argv = [script, *arguments]
runpy.run_path(script, run_name="__main__")
