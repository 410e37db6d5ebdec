"""Run a script with every evaluation batch slowed down and logged, to signal a run while it evaluates.

    python tests/slow_evaluations.py SECONDS LOG SCRIPT [ARGS ...]

Before each evaluation batch (``gpt.data.tokens.TokenData.eval_batch``) a line is appended to the file LOG,
then the process sleeps SECONDS: a test that counts LOG's lines knows which evaluation is under way,
and has SECONDS to act while that batch is read. A test helper: nothing in gpt/ knows about it.
"""

import runpy
import sys
import time
from pathlib import Path

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # this checkout's gpt/, as for train.py

from gpt.data.tokens import TokenData  # noqa: E402

seconds, log, script, *arguments = sys.argv[1:]
real_eval_batch = TokenData.eval_batch


def slow_eval_batch(*args, **kwargs):
    with open(log, "a", encoding="utf-8") as handle:
        handle.write("evaluation batch\n")
    time.sleep(float(seconds))
    return real_eval_batch(*args, **kwargs)


TokenData.eval_batch = slow_eval_batch
sys.argv = [script, *arguments]
runpy.run_path(script, run_name="__main__")
