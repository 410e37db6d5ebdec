"""``python -m gpt.report RUN_DIR [RUN_DIR ...]`` (or ``gpt-report``): see what training runs learned.

The command line of :mod:`gpt.analysis.report`: figures and a ``report.md`` for one run, or several
overlaid. The train command writes each run's own report when it ends; this compares runs, or adds
the test results of ``python -m gpt.evaluate --json`` to a run's report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gpt.analysis.report import write_report
from gpt.base.cli import ArgumentParser, run_cli
from gpt.base.errors import UserError
from gpt.run.folder import REPORT_DIR


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m gpt.report",
        description="Write PNG figures (losses against step and tokens, the generalisation gap, "
        "learning rate, gradient norm, throughput and MFU) and a report.md with a summary table "
        "for one or more training output folders; several runs are overlaid.",
        epilog="example: python -m gpt.report out/shakespeare_char_cpu out/mlp --out report",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="training output folders")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="where to write (default: RUN_DIR/report for one run, ./report for several)",
    )
    return parser.parse_args(argv)


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    run_dirs = [Path(d) for d in args.run_dirs]
    for run_dir in run_dirs:
        if not run_dir.is_dir():
            raise UserError(f"{run_dir} is not a folder; pass training output folders")
    default = run_dirs[0] / REPORT_DIR if len(run_dirs) == 1 else Path(REPORT_DIR)
    print(f"wrote {write_report(run_dirs, Path(args.out) if args.out else default)}")
    return 0


def main() -> None:
    sys.exit(run_cli(_main))


if __name__ == "__main__":
    main()
