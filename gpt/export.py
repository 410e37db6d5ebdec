"""``python -m gpt.export OUT_DIR --to hf DIR`` (or ``gpt-export``): a trained GPT as a Hugging Face
GPT-2 folder, which ``transformers`` loads offline::

    model = AutoModelForCausalLM.from_pretrained(DIR)
    tokenizer = AutoTokenizer.from_pretrained(DIR)

The folder (gpt/gpt2.py writes it, without needing ``transformers``) holds ``config.json``
(GPT2LMHeadModel), ``model.safetensors``, the run's ``tokenizer.json`` with a fast tokenizer's
``tokenizer_config.json``, and ``generation_config.json``. Every GPT trained here maps onto GPT-2,
whatever its settings; the MLP and CNN baselines have no counterpart and are refused.

The folder is written under a temporary name beside DIR and renamed when complete, so an
interrupted export never leaves a folder that looks whole.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from gpt.checkpoint import load_trained
from gpt.cli import ArgumentParser, run_cli
from gpt.errors import UserError
from gpt.files import publish_folder, staging_folder
from gpt.folder_lock import hold_folder
from gpt.gpt2 import CONFIG_FILE, save_gpt2
from gpt.model import GPT


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m gpt.export",
        description="Export a GPT trained by train.py as a Hugging Face GPT-2 folder that "
        "transformers' AutoModelForCausalLM and AutoTokenizer load offline.",
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


def export_hf(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the GPT of ``checkpoint`` to the folder ``out`` in Hugging Face's GPT-2 format."""
    out = Path(out)
    with hold_folder(out, "python -m gpt.export", "DIR"):  # one writer at a time
        return _export_hf(Path(checkpoint), out, overwrite)


def _export_hf(checkpoint: Path, out: Path, overwrite: bool) -> Path:
    check_destination(out, overwrite)
    model, tokenizer = load_trained(checkpoint)
    if not isinstance(model, GPT):
        raise UserError(
            f"{checkpoint} holds a model.arch={model.config.arch} baseline; only GPT models map "
            "onto GPT-2 (the MLP and CNN baselines have no counterpart in transformers)"
        )
    config = model.config
    if config.norm != "layer" or not config.residual:
        raise UserError(
            f"{checkpoint} holds a GPT with model.norm={config.norm} and model.residual="
            f"{str(config.residual).lower()}; GPT-2 always has LayerNorms and residual "
            "connections, so only a GPT with model.norm=layer and model.residual=true maps onto it"
        )
    with staging_folder(out) as staging:
        save_gpt2(model, tokenizer, staging)
        check_destination(out, overwrite)  # again: something may have appeared meanwhile
        publish_folder(staging, out)
    return out


def check_destination(out: Path, overwrite: bool) -> None:
    """DIR may be new or empty; an earlier export (a folder holding config.json) only if asked."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not overwrite:
        raise UserError(f"{out} already exists and is not empty; pass --overwrite to replace it")
    if not (out / CONFIG_FILE).is_file():
        raise UserError(
            f"{out} exists and is not a model folder (no {CONFIG_FILE}); --overwrite only "
            "replaces an earlier export: choose another DIR"
        )


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
