"""``python -m bench.run_all`` (``make bench``): every benchmark in turn, each printing its table.

    python -m bench.run_all            # the full runs (about an hour on 2 CPU cores)
    python -m bench.run_all --quick    # tiny settings, to check that everything runs

Training throughput, generation and data preparation first; time to quality, the longest, last.
Each writes its JSON to bench/results/.
"""

from __future__ import annotations

import argparse

from bench import generation, preparation, time_to_quality, training
from gpt.base.cli import run_cli

BENCHMARKS = {
    "training throughput": training.main,
    "generation": generation.main,
    "data preparation": preparation.main,
    "time to quality": time_to_quality.main,
}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run_all", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings for every benchmark")
    args = parser.parse_args(argv)
    for title, benchmark in BENCHMARKS.items():
        print(f"\n# {title}\n", flush=True)
        benchmark(["--quick"] if args.quick else [])


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
