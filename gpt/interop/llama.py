"""Llama and Qwen3 weights in and out: a Hugging Face Llama / Qwen3 folder <-> this project's GPT.

With the modern options (gpt/model.py) our GPT is Llama's architecture: pre-RMSNorm blocks, rotary
positions in the halves layout of transformers (``rotate_half``), grouped-query attention, a SwiGLU
MLP, no biases; with ``qk_norm`` it is Qwen3's. The mapping is a renaming, except that our fused
query-key-value matrix is three matrices there (its rows, in order)::

    ours                                   Llama / Qwen3
    token_embedding                        model.embed_tokens
    blocks.N.attention_norm                model.layers.N.input_layernorm
    blocks.N.attention.qkv                 model.layers.N.self_attn.q_proj, k_proj, v_proj
    blocks.N.attention.q_norm, k_norm      model.layers.N.self_attn.q_norm, k_norm    (Qwen3)
    blocks.N.attention.residual_proj       model.layers.N.self_attn.o_proj
    blocks.N.feed_forward_norm             model.layers.N.post_attention_layernorm
    blocks.N.feed_forward.gate             model.layers.N.mlp.gate_proj
    blocks.N.feed_forward.fc               model.layers.N.mlp.up_proj
    blocks.N.feed_forward.residual_proj    model.layers.N.mlp.down_proj
    final_norm                             model.norm
    lm_head                                lm_head        (absent when tie_word_embeddings)

Training from a folder (``train.init_from``) works as for GPT-2 (gpt/gpt2.py, whose
:class:`GPT2Folder` this extends): config.json fixes the shape and the options, a config key that
contradicts it is refused, ``block_size`` defaults to ``max_position_embeddings``. Variants this GPT
cannot compute exactly (RoPE scaling, sliding windows, biases, another activation) are refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from gpt.base.config import ModelConfig
from gpt.base.errors import UserError
from gpt.data.tokenizer import Tokenizer
from gpt.interop.gpt2 import (
    CONFIG_FILE,
    GPT2Folder,
    _open_weights,
    check_weight_names,
    read_hf_config,
    write_hf_folder,
)
from gpt.models.gpt import GPT

FAMILIES = {"llama": "Llama", "qwen3": "Qwen3"}  # model_type -> name
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
# What both families need of our config.
_NEEDED = {"rope": True, "norm": "rms", "activation": "swiglu", "bias": False, "residual": True}
# config.json settings this GPT cannot express, with the value it needs (None: absent is fine too).
_REQUIRED_SETTINGS = {
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "use_sliding_window": False,
    "pretraining_tp": 1,
    "rope_scaling": None,
}


def llama_problems(config: ModelConfig) -> list[str]:
    """The settings of ``config`` that keep its GPT from being a Llama or Qwen3 model, each as
    ``model.key=value (what they have)``; empty when it maps onto one."""
    return [
        f"model.{key}={_shown(getattr(config, key))} (Llama and Qwen3 have {_shown(value)})"
        for key, value in _NEEDED.items()
        if getattr(config, key) != value
    ]


def family_of(config: ModelConfig) -> str:
    """The model_type a GPT with the modern options exports as: qwen3 with QK-norm, else llama."""
    return "qwen3" if config.qk_norm else "llama"


@dataclass(frozen=True)
class LlamaFolder(GPT2Folder):
    """A local Hugging Face Llama or Qwen3 folder (``model_type`` llama or qwen3)."""

    family: ClassVar[str] = "Llama/Qwen3"
    positions_key: ClassVar[str] = "max_position_embeddings"

    @classmethod
    def read(cls, path: str | Path) -> LlamaFolder:
        path = Path(path)
        hf_config = read_hf_config(path, FAMILIES)
        required = (
            "num_hidden_layers",
            "num_attention_heads",
            "hidden_size",
            "intermediate_size",
            "max_position_embeddings",
            "vocab_size",
        )
        missing = [key for key in required if not isinstance(hf_config.get(key), int)]
        if missing:
            raise UserError(
                f"{path / CONFIG_FILE} lacks {', '.join(missing)} (or they are not integers); "
                "download the folder again"
            )
        _check_supported(path, hf_config)
        n_head = hf_config["num_attention_heads"]
        model_type = hf_config["model_type"]
        fixed = {
            "arch": "gpt",
            "n_layer": hf_config["num_hidden_layers"],
            "n_head": n_head,
            "n_kv_head": hf_config.get("num_key_value_heads") or n_head,
            "head_dim": hf_config.get("head_dim") or hf_config["hidden_size"] // n_head,
            "n_embd": hf_config["hidden_size"],
            "mlp_width": hf_config["intermediate_size"],
            "vocab_size": hf_config["vocab_size"],
            "rope": True,
            "rope_base": float(_rope_parameters(hf_config).get("rope_theta", 10000.0)),
            "norm": "rms",
            "norm_eps": float(hf_config.get("rms_norm_eps", 1e-6)),
            "activation": "swiglu",
            "qk_norm": model_type == "qwen3",
            "tie_embeddings": bool(hf_config.get("tie_word_embeddings", False)),
            "bias": False,
            "residual": True,
        }
        return cls(path, fixed, hf_config["max_position_embeddings"])

    @torch.no_grad()
    def load_into(self, model: GPT) -> None:
        """Copy the folder's weights into ``model``, a GPT built from :meth:`model_config`."""
        config = model.config
        with _open_weights(self.path) as stored:
            parameters = dict(model.named_parameters())
            expected = llama_names(config)
            theirs_all = [name for names in expected.values() for name in names]
            missing = [name for name in theirs_all if name not in stored]
            extra = {"lm_head.weight"} if config.tie_embeddings else set()
            unexpected = sorted(stored.keys() - set(theirs_all) - extra)
            check_weight_names(self.path, missing, unexpected)
            for ours, names in expected.items():
                target = parameters[ours]
                for name, part in zip(names, _parts(ours, target, config), strict=True):
                    tensor = stored[name]()
                    if tensor.shape != part.shape:
                        raise UserError(
                            f"the weights in {self.path} do not match its {CONFIG_FILE}: {name} "
                            f"has shape {list(tensor.shape)}, config.json implies "
                            f"{list(part.shape)}; download the folder again"
                        )
                    part.copy_(tensor)
            if "lm_head.weight" in extra and "lm_head.weight" in stored:
                head = stored["lm_head.weight"]().to(model.lm_head.weight.dtype)
                if not torch.equal(head, model.lm_head.weight):
                    raise UserError(
                        f"{self.path / CONFIG_FILE} sets tie_word_embeddings=true but its "
                        "lm_head.weight differs from the token embedding; download it again"
                    )


def save_llama(model: GPT, tokenizer: Tokenizer, folder: Path) -> None:
    """Write ``model`` (whose :func:`llama_problems` are none) and ``tokenizer`` into the empty
    ``folder`` as a Hugging Face Llama folder, or a Qwen3 one with QK-norm."""
    hf_config = _hf_config(model.config, tokenizer.eot_id)
    write_hf_folder(folder, hf_config, llama_tensors(model), tokenizer, model.config.block_size)


def llama_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """The model's weights under Llama's (Qwen3's) names, the fused qkv split in three."""
    parameters = dict(model.named_parameters())
    tensors = {}
    for ours, names in llama_names(model.config).items():
        parts = _parts(ours, parameters[ours].detach(), model.config)
        for name, part in zip(names, parts, strict=True):
            tensors[name] = part.contiguous().cpu()
    return tensors


def llama_names(config: ModelConfig) -> dict[str, tuple[str, ...]]:
    """Our parameter name -> the Llama names of its parts (three for qkv, else one)."""
    names = {
        "token_embedding.weight": ("model.embed_tokens.weight",),
        "final_norm.weight": ("model.norm.weight",),
    }
    if not config.tie_embeddings:
        names["lm_head.weight"] = ("lm_head.weight",)
    block = {
        "attention_norm": ("input_layernorm",),
        "attention.qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        "attention.residual_proj": ("self_attn.o_proj",),
        "feed_forward_norm": ("post_attention_layernorm",),
        "feed_forward.gate": ("mlp.gate_proj",),
        "feed_forward.fc": ("mlp.up_proj",),
        "feed_forward.residual_proj": ("mlp.down_proj",),
    }
    if config.qk_norm:
        block |= {
            "attention.q_norm": ("self_attn.q_norm",),
            "attention.k_norm": ("self_attn.k_norm",),
        }
    for layer in range(config.n_layer):
        for ours, theirs in block.items():
            names[f"blocks.{layer}.{ours}.weight"] = tuple(
                f"model.layers.{layer}.{name}.weight" for name in theirs
            )
    return names


def _parts(ours: str, tensor: torch.Tensor, config: ModelConfig) -> tuple[torch.Tensor, ...]:
    """``tensor`` as the views Llama stores it in: qkv's rows as q, k and v, else itself."""
    if not ours.endswith("attention.qkv.weight"):
        return (tensor,)
    q_width = config.n_head * config.attention_head_dim
    kv_width = config.kv_heads * config.attention_head_dim
    return tensor.split([q_width, kv_width, kv_width], dim=0)


def _rope_parameters(hf_config: dict[str, Any]) -> dict[str, Any]:
    """RoPE's settings: ``rope_parameters`` (transformers 5) or ``rope_theta`` (4.x)."""
    parameters = hf_config.get("rope_parameters") or {}
    if "rope_theta" in hf_config:
        parameters = {"rope_theta": hf_config["rope_theta"], **parameters}
    return parameters


def _check_supported(path: Path, hf_config: dict[str, Any]) -> None:
    """Refuse the variants this GPT cannot compute exactly."""
    for key, needed in _REQUIRED_SETTINGS.items():
        value = hf_config.get(key, needed)
        if value != needed:
            raise UserError(
                f"{path / CONFIG_FILE} sets {key}={_shown(value)}; this project's GPT needs "
                f"{_shown(needed)}, so it cannot take these weights"
            )
    rope_type = _rope_parameters(hf_config).get("rope_type", "default")
    if rope_type != "default":
        raise UserError(
            f"{path / CONFIG_FILE} scales RoPE (rope_type {rope_type}); this project's GPT has "
            "plain RoPE only, so it cannot take these weights"
        )
    n_head, n_kv_head = hf_config["num_attention_heads"], hf_config.get("num_key_value_heads")
    if n_kv_head and n_head % n_kv_head:
        raise UserError(
            f"{path / CONFIG_FILE}: num_key_value_heads={n_kv_head} does not divide "
            f"num_attention_heads={n_head}; download the folder again"
        )


def _hf_config(config: ModelConfig, end_of_text: int | None) -> dict[str, Any]:
    """config.json of a LlamaForCausalLM (Qwen3ForCausalLM) computing what ``config``'s GPT does."""
    model_type = family_of(config)
    hf_config = {
        "architectures": [_ARCHITECTURES[model_type]],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.feed_forward_width,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.attention_head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},
        "attention_bias": False,
        "attention_dropout": config.dropout,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": end_of_text,
        "eos_token_id": end_of_text,
        "dtype": "float32",
    }
    if model_type == "llama":
        hf_config |= {"mlp_bias": False, "pretraining_tp": 1}
    else:
        hf_config |= {"use_sliding_window": False, "sliding_window": None}
    return hf_config


def _shown(value: Any) -> str:
    """A value as YAML writes it (true, null, rms)."""
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)
