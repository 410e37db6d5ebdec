"""A trained GPT as a Hugging Face folder (``python -m gpt.export``): GPT-2 (the textbook GPT) or
Llama / Qwen3 (the modern one, with ``model.rope``), which ``transformers`` loads offline::

    model = AutoModelForCausalLM.from_pretrained(DIR)
    tokenizer = AutoTokenizer.from_pretrained(DIR)

The folder (gpt/interop/gpt2.py or gpt/interop/llama.py writes it, without needing
``transformers``) holds ``config.json`` (GPT2LMHeadModel, LlamaForCausalLM, or Qwen3ForCausalLM
when ``model.qk_norm`` is on), ``model.safetensors``, the run's ``tokenizer.json`` with a fast
tokenizer's ``tokenizer_config.json``, and ``generation_config.json``. A GPT whose options map onto
neither family (say RoPE with LayerNorm) is refused with one line naming them, as are the MLP and
CNN baselines.

The folder is written under a temporary name beside DIR and renamed when complete, so an
interrupted export never leaves a folder that looks whole.
"""

from __future__ import annotations

from pathlib import Path

from gpt.base.errors import UserError
from gpt.base.files import publish_folder, staging_folder
from gpt.base.folder_lock import hold_folder
from gpt.interop.gpt2 import CONFIG_FILE, gpt2_problems, save_gpt2
from gpt.interop.llama import llama_problems, save_llama
from gpt.models.gpt import GPT
from gpt.run.weights import load_trained


def export_hf(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the GPT of ``checkpoint`` to the folder ``out`` in Hugging Face's GPT-2 format, or
    Llama's / Qwen3's for a GPT with rotary positions."""
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
