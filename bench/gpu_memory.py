"""Run a script and write, as it exits, its GPU allocator's peak as JSON.

    python -m bench.gpu_memory RESULT_JSON SCRIPT [ARGS ...]

``bench.gpu`` runs ``train.py`` in processes of their own (its FSDP phase kills one); this is how
their peak memory is known without anything in gpt/ reporting it. The result is
``{"peak_memory_bytes": N}``, null without CUDA; a process killed by SIGKILL writes none.
"""

from __future__ import annotations

import atexit
import json
import runpy
import sys

import torch

from bench import ROOT


def write_peak_memory(result_path: str) -> None:
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_initialized() else None
    with open(result_path, "w", encoding="utf-8") as file:
        json.dump({"peak_memory_bytes": peak}, file)


def main(argv: list[str]) -> None:
    result_path, script, *arguments = argv
    atexit.register(write_peak_memory, result_path)  # train.py ends with sys.exit
    sys.path.insert(0, str(ROOT))  # this checkout's gpt/, as for train.py
    sys.argv = [script, *arguments]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
