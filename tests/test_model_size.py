"""gpt/models/size.py: a model's parameters counted without building it, and a model too large for
the machine refused before it is built."""

from __future__ import annotations

import pytest

from gpt.base.config import ModelConfig
from gpt.base.errors import UserError
from gpt.models.gpt import build_model
from gpt.models.size import check_fits_in_memory, parameter_count

SMALL = {"n_layer": 3, "n_head": 2, "n_embd": 16, "block_size": 8, "vocab_size": 11}


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"rope": True, "norm": "rms", "activation": "swiglu", "qk_norm": True, "n_kv_head": 1},
        {"tie_embeddings": False, "head_dim": 4, "mlp_width": 24},
        {"arch": "mlp"},
        {"arch": "cnn"},
    ],
    ids=["textbook", "modern", "untied", "mlp", "cnn"],
)
def test_the_count_is_that_of_the_built_model(options):
    config = ModelConfig(**SMALL, **options)
    assert parameter_count(config) == build_model(config).num_params()


def test_a_model_larger_than_the_memory_is_refused_before_it_is_built():
    with pytest.raises(UserError, match="more than this machine's .* make model.n_layer"):
        check_fits_in_memory(ModelConfig(**{**SMALL, "n_layer": 10**9}))
    with pytest.raises(UserError, match="larger than any machine can hold"):
        check_fits_in_memory(ModelConfig(**{**SMALL, "n_embd": 10**9, "n_head": 1}))
    check_fits_in_memory(ModelConfig(**SMALL))  # a small one passes
