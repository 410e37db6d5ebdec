"""``python -m gpt.export OUT_DIR --to hf DIR`` (or ``gpt-export``): a trained GPT as a Hugging Face
folder that ``transformers`` loads offline; the command line of :mod:`gpt.interop.export`."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from gpt.base.cli import ArgumentParser, run_cli
from gpt.interop.export import export_hf


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m gpt.export",
        description="Export a GPT trained by train.py as a Hugging Face GPT-2, Llama or Qwen3 "
        "folder that transformers' AutoModelForCausalLM and AutoTokenizer load offline.",
        epilog="example: python -m gpt.export out/shakespeare_char_cpu --to hf exports/shakespeare",
    )
    parser.add_argument(
        "checkpoint",
        metavar="OUT_DIR",
        help="a training output folder (its best weights) or one of its checkpoints/step_* folders",
    )
    parser.add_argument(
        "--to", required=True, choices=["hf"], help="the format: hf (Hugging Face transformers)"
    )
    parser.add_argument("dir", metavar="DIR", help="the folder to write")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace DIR if it is an earlier export"
    )
    return parser.parse_args(argv)


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    out = export_hf(args.checkpoint, args.dir, args.overwrite)
    print(
        f"wrote {out}: load it with transformers.AutoModelForCausalLM.from_pretrained({str(out)!r}) "
        f"and AutoTokenizer.from_pretrained({str(out)!r})"
    )
    return 0


def main() -> NoReturn:
    sys.exit(run_cli(_main))


if __name__ == "__main__":
    main()
