"""How to download what this project reads but does not make: GPT-2 from the Hugging Face Hub.

One definition for every message that asks for the download (training from GPT-2 weights, preparing
data with GPT-2's tokenizer), so they all give the same command. No torch here: data_prep's
messages use it too.
"""

from __future__ import annotations

from pathlib import Path

GPT2_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def gpt2_download_command(folder: str | Path) -> str:
    """The command that downloads GPT-2 into ``folder``, on a machine with internet: the files
    gpt.interop.gpt2 reads, and the tokenizer data_prep prepares fine-tuning data with."""
    return f"hf download gpt2 {' '.join(GPT2_FILES)} --local-dir {folder}"
