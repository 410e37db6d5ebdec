"""Run a command and write its wall time, CPU time and peak memory as JSON.

    python -m bench.rusage RESULT_JSON COMMAND [ARGS ...]

Why a separate, small process: Linux counts in a child's peak RSS (``ru_maxrss``) the memory of
the process that forked it, as it was at the fork. A benchmark process holding torch and
transformers is bigger than data_prep ever gets, so it would report its own size for every child.
This launcher holds a few megabytes, so its child's ``ru_maxrss`` is the child's own peak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    result_path, *command = argv
    start = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)  # the rusage of this child alone
    result = {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux reports KiB
    }
    with open(result_path, "w", encoding="utf-8") as file:
        json.dump(result, file)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
