"""``python -m gpt.sweep SWEEP.yaml`` (or ``gpt-sweep``): train a sweep file's runs one after
another, score them and compare them; the command line of :mod:`gpt.analysis.sweep`."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from gpt.analysis.sweep import SweepRunner
from gpt.analysis.sweep_file import load_sweep
from gpt.base.cli import ArgumentParser, run_cli
from gpt.base.errors import UserError


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m gpt.sweep",
        description="Train the runs of a sweep file one after another (skipping finished ones, "
        "resuming unfinished ones), score them on the test split and write a comparison report "
        "into OUT/report/.",
        epilog="example: python -m gpt.sweep configs/experiments/capacity.yaml --preset gpu",
    )
    parser.add_argument("sweep", help="a sweep file, e.g. configs/experiments/capacity.yaml")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides for every run, after the sweep file's, e.g. train.cpu=true",
    )
    parser.add_argument("--preset", help="a preset of the sweep file, e.g. gpu")
    parser.add_argument(
        "--out", metavar="DIR", help="where the runs go (default: runs/NAME[-PRESET])"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="train only these runs (the report covers every run trained so far)",
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print each run's parameters and token budget, and train nothing",
    )
    args = parser.parse_intermixed_args(argv)  # options before or after the overrides
    _overrides_anywhere(args, argv)
    return args


def _overrides_anywhere(args: argparse.Namespace, argv: list[str]) -> None:
    """A run name never contains '=', so the key=value words that ``--only`` took in (``--only a
    b train.max_iters=150``) are overrides: they join the others, in the order they were given."""
    if args.only is None:
        return
    names = [word for word in args.only if "=" not in word]
    if not names:
        raise UserError(
            "--only needs the names of the runs to train; see python -m gpt.sweep --help"
        )
    overrides = set(args.overrides) | {word for word in args.only if "=" in word}
    args.overrides = [word for word in argv if word in overrides]
    args.only = names


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    from gpt.analysis.lessons import ANALYSES

    sweep = load_sweep(
        Path(args.sweep),
        args.preset,
        args.overrides,
        Path(args.out) if args.out else None,
        tuple(ANALYSES),
    )
    names = [run.name for run in sweep.runs]
    unknown = [name for name in args.only or () if name not in names]
    if unknown:
        raise UserError(f"--only {' '.join(unknown)}: no such run; the runs are {', '.join(names)}")
    selected = [run for run in sweep.runs if args.only is None or run.name in args.only]
    return SweepRunner(sweep, _command(args)).run(selected, plan=args.plan)


def _command(args: argparse.Namespace) -> str:
    """The command as it was given, for the report (--only last: it takes the words after it)."""
    words = ["python", "-m", "gpt.sweep", args.sweep, *args.overrides]
    if args.preset:
        words += ["--preset", args.preset]
    if args.out:
        words += ["--out", args.out]
    if args.only:
        words += ["--only", *args.only]
    return shlex.join(words)


def main() -> None:
    sys.exit(run_cli(_main))


if __name__ == "__main__":
    main()
