"""A trained GPT as a Hugging Face GPT-2 folder (``python -m gpt.export``), which ``transformers`` loads offline::

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

from pathlib import Path

from gpt.base.errors import UserError
from gpt.base.files import publish_folder, staging_folder
from gpt.interop.gpt2 import CONFIG_FILE, save_gpt2
from gpt.models.gpt import GPT
from gpt.run.weights import load_trained


def export_hf(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the GPT of ``checkpoint`` to the folder ``out`` in Hugging Face's GPT-2 format."""
    out = Path(out)
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
