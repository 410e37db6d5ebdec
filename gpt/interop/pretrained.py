"""Pretrained weights for ``train.init_from``: a local Hugging Face folder of GPT-2 (gpt/gpt2.py),
Llama or Qwen3 (gpt/llama.py), told apart by its config.json's ``model_type``."""

from __future__ import annotations

from pathlib import Path

from gpt.base.config import ModelConfig
from gpt.interop.gpt2 import GPT2Folder, read_hf_config
from gpt.interop.llama import FAMILIES, LlamaFolder
from gpt.models.gpt import GPT

SUPPORTED = {"gpt2": "GPT-2", **FAMILIES}


def read_folder(path: str | Path) -> GPT2Folder:
    """The folder ``path`` as a :class:`GPT2Folder` or :class:`LlamaFolder`; another model_type is
    refused with one line."""
    model_type = read_hf_config(Path(path), SUPPORTED)["model_type"]
    return LlamaFolder.read(path) if model_type in FAMILIES else GPT2Folder.read(path)


def pretrained_model_config(
    configured: ModelConfig, path: str | Path, data_dir: str | Path
) -> ModelConfig:
    """The model config for training from the folder ``path`` on the data in ``data_dir``: the
    settings the weights fix, checked against ``configured`` and against the data."""
    folder = read_folder(path)
    config = folder.model_config(configured)
    folder.check_data(data_dir)
    return config


def load_pretrained(path: str | Path, config: ModelConfig | None = None) -> GPT:
    """A GPT with the weights of the folder ``path``; ``config`` may crop the context and set the
    dropout (keys it leaves out or sets as the weights do come from the folder)."""
    folder = read_folder(path)
    model = GPT(folder.model_config(config or ModelConfig()))
    folder.load_into(model)
    return model
