"""``python -m gpt.export OUT_DIR --to hf DIR`` (or ``gpt-export``): a trained GPT as a Hugging Face
GPT-2 folder (the textbook GPT) or Llama / Qwen3 folder (the modern one, with ``model.rope``), which
``transformers`` loads offline::

    model = AutoModelForCausalLM.from_pretrained(DIR)
    tokenizer = AutoTokenizer.from_pretrained(DIR)

The folder (gpt/gpt2.py or gpt/llama.py writes it, without needing ``transformers``) holds
``config.json`` (GPT2LMHeadModel, LlamaForCausalLM, or Qwen3ForCausalLM when ``model.qk_norm`` is
on), ``model.safetensors``, the run's ``tokenizer.json`` with a fast tokenizer's
``tokenizer_config.json``, and ``generation_config.json``. A GPT whose options map onto neither
family (say RoPE with LayerNorm) is refused with one line naming them, as are the MLP and CNN
baselines.

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
from gpt.gpt2 import CONFIG_FILE, gpt2_problems, save_gpt2
from gpt.llama import llama_problems, save_llama
from gpt.model import GPT


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m gpt.export",
        description="Export a GPT trained by train.py as a Hugging Face GPT-2, Llama or Qwen3 "
        "folder that "
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
    """Write the GPT of ``checkpoint`` to the folder ``out`` in Hugging Face's GPT-2 format, or
    Llama's / Qwen3's for a GPT with rotary positions."""
    out = Path(out)
    check_destination(out, overwrite)
    model, tokenizer = load_trained(checkpoint)
    if not isinstance(model, GPT):
        raise UserError(
            f"{checkpoint} holds a model.arch={model.config.arch} baseline; only GPT models map "
            "onto GPT-2 (the MLP and CNN baselines have no counterpart in transformers)"
        )
    config = model.config
    if config.rope:
        family, problems, save = "Llama or Qwen3", llama_problems(config), save_llama
    else:
        family, problems, save = "GPT-2", gpt2_problems(config), save_gpt2
    if problems:
        raise UserError(
            f"{checkpoint} holds a GPT that {family} cannot compute: {'; '.join(problems)} (a GPT "
            "with model.rope=true exports as Llama, or Qwen3 with model.qk_norm=true; one without "
            "as GPT-2)"
        )
    with staging_folder(out) as staging:
        save(model, tokenizer, staging)
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
