"""``python -m gpt.evaluate OUT_DIR`` (or ``gpt-evaluate``): score a trained model on a whole split.

The command line of :mod:`gpt.analysis.evaluation`, which says what is scored and how.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from gpt.analysis.evaluation import EVAL_SPLITS, EvaluationRequest, describe, evaluate
from gpt.base.cli import ArgumentParser, run_cli
from gpt.base.device import resolve_device
from gpt.base.errors import UserError
from gpt.run.folder import evaluation_file, write_json


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m gpt.evaluate",
        description="Score a trained model on every token of a split of a data_prep folder: mean "
        "loss (nats per token), perplexity, bits per byte of the original text, tokens scored, "
        "time. Sliding windows of block_size tokens, --stride apart, score each token once.",
        epilog="example: python -m gpt.evaluate out/shakespeare_char_cpu --split test --json",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="a training output folder")
    parser.add_argument(
        "--split",
        choices=EVAL_SPLITS,
        default="test",
        help="the split to score (default: test, which training never sees)",
    )
    parser.add_argument(
        "--data",
        metavar="DIR",
        help="a data_prep folder made with the model's tokenizer (default: the run's data.dir)",
    )
    parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="score the weights of a checkpoints/step_* folder (default: OUT_DIR's best weights)",
    )
    parser.add_argument(
        "--stride",
        type=int,
        metavar="N",
        help="tokens between windows; each scored token sees at least block_size - N + 1 tokens "
        "(default: block_size // 2)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, metavar="N", help="windows per forward pass (8)"
    )
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda", "mps"],
        default="auto",
        help="auto: cuda if available, else mps, else cpu (under accelerate launch: its devices)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the result as JSON and write it to OUT_DIR/eval_<split>.json",
    )
    return parser.parse_args(argv)


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} must be at least 1")
    if not out_dir.is_dir():
        raise UserError(f"{out_dir} is not a folder; pass a training output folder")
    device = resolve_device(args.device)
    from accelerate import Accelerator  # slow to import: after the arguments are checked

    request = EvaluationRequest(
        out_dir=out_dir,
        split=args.split,
        data=Path(args.data) if args.data else None,
        checkpoint=Path(args.checkpoint) if args.checkpoint else None,
        stride=args.stride,
        batch_size=args.batch_size,
    )
    accelerator = Accelerator(cpu=device.type == "cpu")
    try:
        evaluation = evaluate(request, accelerator)
    finally:
        accelerator.end_training()  # ends the process group: no process exits in the middle of it
    if not accelerator.is_main_process:
        return 0
    if args.json:
        write_json(evaluation_file(out_dir, args.split, Path(evaluation.data)), asdict(evaluation))
        print(json.dumps(asdict(evaluation), indent=2))
    else:
        print(describe(evaluation))
    return 0


def main() -> None:
    sys.exit(run_cli(_main))


if __name__ == "__main__":
    main()
