"""Whether a model fits in this machine's memory, checked before it is built: a model too large
(``model.n_layer=1000000000``) would otherwise be killed by the kernel after minutes of allocating,
or end in an allocator's traceback."""

from __future__ import annotations

import os

import torch

from gpt.base.config import ModelConfig
from gpt.base.errors import UserError
from gpt.models.gpt import build_model

BYTES_PER_WEIGHT = 4  # float32: every model is built in float32 on the CPU first


def parameter_count(config: ModelConfig) -> int | None:
    """The parameters of the model ``config`` describes, exactly, allocating nothing: models of
    one and two layers built on the meta device differ by one layer, and every layer is alike.
    None if one of its tensors has more elements than torch can count (over 2**63 bytes)."""
    try:
        with torch.device("meta"):
            one = build_model(config.model_copy(update={"n_layer": 1})).num_params()
            two = build_model(config.model_copy(update={"n_layer": 2})).num_params()
    except RuntimeError:  # "Storage size calculation overflowed"
        return None
    return one + (config.n_layer - 1) * (two - one)


def machine_memory() -> int:
    """This machine's physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits_in_memory(config: ModelConfig) -> None:
    """Refuse, with one line, a model whose weights alone exceed the machine's memory."""
    parameters = parameter_count(config)
    if parameters is None:
        raise UserError(
            "the model has a weight matrix larger than any machine can hold; make model.n_embd, "
            "mlp_width or vocab_size smaller"
        )
    needed, memory = parameters * BYTES_PER_WEIGHT, machine_memory()
    if needed > memory:
        raise UserError(
            f"the model has {parameters:,} parameters, whose weights alone need "
            f"{needed / 2**30:,.1f} GiB, more than this machine's {memory / 2**30:,.1f} GiB; "
            "make model.n_layer, n_embd, mlp_width or vocab_size smaller"
        )
