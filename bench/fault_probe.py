"""Run train.py with what it is doing shown on a board, and some of its writes slowed down.

    python bench/fault_probe.py BOARD [--slow-saves SECONDS] [--slow-metrics SECONDS] \\
        train.py CONFIG [key=value ...]

The fault campaign (bench/faults.py) starts runs through this script, alone or under
``accelerate launch``, to know where its SIGKILLs land and to land some of them in short phases:

* BOARD is a file of BOARD_SIZE bytes. Each process maps it into memory and keeps the code of its
  current phase (an index into PHASES) in byte RANK (the ``RANK`` that ``accelerate launch`` sets;
  0 without it). A killed process's byte stays as it was at the instant it died.
* While byte ARMED of the board is not 0 (the campaign sets it when it wants a slow write):
  ``--slow-saves S`` sleeps S/2 before and after every ``torch.save`` (the optimizer state and each
  process's RNG state in a checkpoint), so a checkpoint's temporary folder exists for a while;
  ``--slow-metrics S`` writes each line appended to ``metrics.jsonl`` in two halves, flushed, S
  seconds apart, so a kill can cut a line in two as it can on a slow disk.

The phases are found by wrapping the trainer's methods from outside; nothing in gpt/ knows about
this script, and the computation it runs is the trainer's own, bit for bit.
"""

from __future__ import annotations

import argparse
import functools
import mmap
import os
import pathlib
import runpy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOARD_SIZE = 64
ARMED = BOARD_SIZE - 1  # the byte that turns the slow writes on; the ranks' bytes come first
PHASES = (
    "start-up",  # imports, the resume, building the model: before the first step or evaluation
    "step",
    "evaluation",
    "best weights",  # writing model.safetensors after an improved evaluation
    "checkpoint",
    "metrics",  # appending a line to metrics.jsonl
    "between steps",  # logging, printing, the finite-weights check
    "ending",  # after the last step: the final barrier, the report, the end-of-run line
)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench/fault_probe.py", description=__doc__)
    parser.add_argument("board", type=Path)
    parser.add_argument("--slow-saves", type=float, default=0.0)
    parser.add_argument("--slow-metrics", type=float, default=0.0)
    parser.add_argument("script")
    parser.add_argument("arguments", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))  # this checkout's gpt/, as for train.py

    with args.board.open("r+b") as handle:
        board = mmap.mmap(handle.fileno(), BOARD_SIZE)
    show_phases(board, int(os.environ.get("RANK", "0")))
    if args.slow_saves:
        slow_down_saves(board, args.slow_saves)
    if args.slow_metrics:
        split_metrics_lines(board, args.slow_metrics)
    sys.argv = [args.script, *args.arguments]
    runpy.run_path(args.script, run_name="__main__")


def show_phases(board: mmap.mmap, rank: int) -> None:
    """Wrap the trainer's methods so that each keeps this process's byte of the board current."""
    from gpt.training import trainer

    def during(phase: str, function, after: str | None = None):
        code = PHASES.index(phase)

        @functools.wraps(function)
        def wrapped(*args, **kwargs):
            previous = board[rank]
            board[rank] = code
            try:
                return function(*args, **kwargs)
            finally:
                board[rank] = PHASES.index(after) if after else previous

        return wrapped

    board[rank] = PHASES.index("start-up")
    cls = trainer.Trainer
    cls._train_step = during("step", cls._train_step)
    cls._evaluate = during("evaluation", cls._evaluate)
    cls._save_best_weights = during("best weights", cls._save_best_weights)
    cls._loop = during("between steps", cls._loop, after="ending")
    trainer.save_checkpoint = during("checkpoint", trainer.save_checkpoint)
    trainer.MetricsLog.write = during("metrics", trainer.MetricsLog.write)


def slow_down_saves(board: mmap.mmap, seconds: float) -> None:
    import torch

    real_save = torch.save

    def slow_save(*args, **kwargs):
        pause = seconds / 2 if board[ARMED] else 0.0
        time.sleep(pause)
        real_save(*args, **kwargs)
        time.sleep(pause)

    torch.save = slow_save


class SplitWrites:
    """A text file whose every write goes to disk in two halves, ``pause`` seconds apart."""

    def __init__(self, handle, pause: float):
        self.handle, self.pause = handle, pause

    def write(self, text: str) -> int:
        half = len(text) // 2
        self.handle.write(text[:half])
        self.handle.flush()
        time.sleep(self.pause)
        return half + self.handle.write(text[half:])

    def __enter__(self) -> SplitWrites:
        return self

    def __exit__(self, *exception) -> None:
        self.handle.close()


def split_metrics_lines(board: mmap.mmap, pause: float) -> None:
    real_open = pathlib.Path.open

    def open_metrics_slowly(self, mode="r", *args, **kwargs):
        handle = real_open(self, mode, *args, **kwargs)
        if self.name == "metrics.jsonl" and mode.startswith("a") and board[ARMED]:
            return SplitWrites(handle, pause)
        return handle

    pathlib.Path.open = open_metrics_slowly


if __name__ == "__main__":
    main(sys.argv[1:])
