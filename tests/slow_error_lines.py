"""Run a script with the error that ends a training run held back, to hit the moments between the
trainer's end and the command's line saying why.

    python tests/slow_error_lines.py SECONDS SCRIPT [ARGS ...]

When ``Trainer.run`` raises a :class:`UserError`, the process sleeps SECONDS before the command
reports it: the trainer has given the stop signals back by then, and a launcher's SIGTERM (sent to
every process once one has exited) lands in that window. A test helper: nothing in gpt/ knows
about it.
"""

import runpy
import sys
import time
from pathlib import Path

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # this checkout's gpt/, as for train.py

from gpt.base.errors import UserError  # noqa: E402
from gpt.training.trainer import Trainer  # noqa: E402

seconds, script, *arguments = sys.argv[1:]
real_run = Trainer.run


def slow_run(self):
    try:
        return real_run(self)
    except UserError:
        time.sleep(float(seconds))
        raise


Trainer.run = slow_run
sys.argv = [script, *arguments]
runpy.run_path(script, run_name="__main__")
