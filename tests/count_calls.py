"""Run a script with every call of one function recorded: which process made it.

    python tests/count_calls.py LOG MODULE FUNCTION SCRIPT [ARGS ...]

Each call of ``MODULE.FUNCTION`` appends the calling process's rank (the ``RANK`` variable of
``accelerate launch``; 0 without it) as a line to LOG, then calls the function. The function is
replaced before SCRIPT runs, so modules that import it by name get the recording one. A test
helper: nothing in gpt/ knows about it.
"""

import functools
import importlib
import os
import runpy
import sys
from pathlib import Path

log, module_name, function_name, script, *arguments = sys.argv[1:]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's gpt/
module = importlib.import_module(module_name)
real = getattr(module, function_name)


@functools.wraps(real)
def recorded(*args, **kwargs):
    with open(log, "a", encoding="utf-8") as calls:
        calls.write(os.environ.get("RANK", "0") + "\n")
    return real(*args, **kwargs)


setattr(module, function_name, recorded)
sys.argv = [script, *arguments]
runpy.run_path(script, run_name="__main__")
