"""GPT-2 weights in and out: a Hugging Face GPT-2 folder <-> this project's GPT.

A Hugging Face GPT-2 folder, as ``hf download gpt2 --local-dir models/gpt2`` (``huggingface-cli
download`` before huggingface_hub 1.0) or ``save_pretrained`` leave it, holds ``config.json`` (``model_type: gpt2``), the weights in
``model.safetensors`` (or in shards listed by ``model.safetensors.index.json``) and the tokenizer,
``tokenizer.json``. This module reads and writes such folders with ``json`` and ``safetensors``
alone, so ``transformers`` is never needed to train from GPT-2 weights or to export a model.

Our GPT is GPT-2's architecture (pre-LayerNorm blocks, learned positions, a 4x MLP, an output head
tied to the token embedding, LayerNorm epsilon 1e-5), so the mapping is a renaming::

    ours                                   GPT-2 (an optional ``transformer.`` prefix)
    token_embedding (= lm_head)            wte
    position_embedding                     wpe, its first block_size rows
    blocks.N.attention_norm                h.N.ln_1
    blocks.N.attention.qkv                 h.N.attn.c_attn      Conv1D
    blocks.N.attention.residual_proj       h.N.attn.c_proj      Conv1D
    blocks.N.feed_forward_norm             h.N.ln_2
    blocks.N.feed_forward.fc               h.N.mlp.c_fc         Conv1D
    blocks.N.feed_forward.residual_proj    h.N.mlp.c_proj       Conv1D
    final_norm                             ln_f

with two details: GPT-2's ``Conv1D`` layers store their weight as (in, out), the transpose of
``nn.Linear``'s (out, in); and GPT-2 uses the tanh approximation of GELU (``gelu_new``), which is our
``model.activation: gelu_tanh``. GPT-2 has biases everywhere: a model trained here with
``model.bias: false`` is written with zero biases, which computes exactly the same function.

Training from a folder (``train.init_from``): the weights fix ``arch``, ``n_layer``, ``n_head``,
``n_embd``, ``vocab_size``, ``bias`` and ``activation``, which come from ``config.json``, and
``norm: layer`` and ``residual: true``, which GPT-2 always has;
``block_size`` is ``n_positions`` unless the config asks for less (the position table is then
cropped). A model key that the config sets (in its YAML file or as a ``key=value`` override, which
is what pydantic's ``model_fields_set`` records) to a value the weights contradict is an error, never
silently replaced; keys left out take the folder's values. Everything else (dropout, the training
settings) is the config's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from pydantic import ValidationError

from gpt.config import ModelConfig
from gpt.data import read_meta
from gpt.errors import UserError
from gpt.integrity import (
    TOKENIZER_KEY,
    check_tokenizer,
    check_weights,
    sealed,
    tokenizer_fingerprint,
)
from gpt.model import GPT
from gpt.tokenizer import END_OF_TEXT, Tokenizer, load_tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
LAYER_NORM_EPSILON = 1e-5  # GPT-2's, and torch.nn.LayerNorm's default, which our GPT uses

_ACTIVATION_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
_ACTIVATION_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new"}
_TOP_LEVEL_NAMES = {
    "token_embedding": "wte",
    "position_embedding": "wpe",
    "final_norm": "ln_f",
}
_BLOCK_NAMES = {
    "attention_norm": "ln_1",
    "attention.qkv": "attn.c_attn",
    "attention.residual_proj": "attn.c_proj",
    "feed_forward_norm": "ln_2",
    "feed_forward.fc": "mlp.c_fc",
    "feed_forward.residual_proj": "mlp.c_proj",
}
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers, not weights: the causal masks that older transformers versions saved with the model.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
_PREFIX = "transformer."
_DOWNLOAD = "hf download gpt2 config.json model.safetensors tokenizer.json --local-dir"
# config.json settings this GPT cannot express, with the value it needs (GPT2Config's defaults).
_REQUIRED_SETTINGS = {
    "n_inner": None,
    "layer_norm_epsilon": LAYER_NORM_EPSILON,
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
}


@dataclass(frozen=True)
class GPT2Folder:
    """A local Hugging Face GPT-2 folder: what its config.json fixes, and its weights on demand."""

    path: Path
    fixed: dict[str, Any]  # ModelConfig keys the weights decide
    n_positions: int

    @classmethod
    def read(cls, path: str | Path) -> GPT2Folder:
        path = Path(path)
        hf_config = _read_hf_config(path)
        required = ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size")
        missing = [key for key in required if not isinstance(hf_config.get(key), int)]
        if missing:
            raise UserError(
                f"{path / CONFIG_FILE} lacks {', '.join(missing)} (or they are not integers); "
                "download the folder again"
            )
        _check_supported(path, hf_config)
        fixed = {
            "arch": "gpt",
            "n_layer": hf_config["n_layer"],
            "n_head": hf_config["n_head"],
            "n_embd": hf_config["n_embd"],
            "vocab_size": hf_config["vocab_size"],
            "bias": True,
            "norm": "layer",
            "residual": True,
            "activation": _ACTIVATION_FROM_HF[hf_config.get("activation_function", "gelu_new")],
        }
        return cls(path, fixed, hf_config["n_positions"])

    def model_config(self, configured: ModelConfig) -> ModelConfig:
        """``configured`` with the settings the weights fix (see the module docstring)."""
        given = configured.model_fields_set
        contradictions = [
            f"model.{key}={_shown(getattr(configured, key))} (the weights have {_shown(value)})"
            for key, value in self.fixed.items()
            if key in given and getattr(configured, key) not in (value, None)  # None: automatic
        ]
        if contradictions:
            raise UserError(
                f"the config contradicts the GPT-2 weights in {self.path}: "
                f"{', '.join(contradictions)}; leave these keys out of the model section (the "
                "weights fix them) or set them to the weights' values"
            )
        block_size = configured.block_size if "block_size" in given else self.n_positions
        if block_size > self.n_positions:
            raise UserError(
                f"model.block_size={block_size} is longer than the context of the GPT-2 weights in "
                f"{self.path} (n_positions={self.n_positions}); use model.block_size="
                f"{self.n_positions} or less"
            )
        settings = {**configured.model_dump(), **self.fixed, "block_size": block_size}
        try:
            return ModelConfig.model_validate(settings)
        except ValidationError as error:
            problem = error.errors()[0]["msg"]
            raise UserError(
                f"{self.path / CONFIG_FILE} describes a model this GPT cannot be ({problem})"
            ) from None

    def check_data(self, data_dir: str | Path) -> None:
        """The data must be tokenised for these weights: with the folder's own tokenizer where it
        has one (the same token for every id), else with a vocabulary no larger than the weights'."""
        data_dir = Path(data_dir)
        data_vocab_size = read_meta(data_dir)["vocab_size"]
        weights_vocab_size = self.fixed["vocab_size"]
        fix = (
            f"prepare the data with `python -m data_prep ... --tokenizer {self.path}` (the GPT-2 "
            "folder's tokenizer)"
        )
        if data_vocab_size > weights_vocab_size:
            raise UserError(
                f"the data in {data_dir} has a vocabulary of {data_vocab_size} tokens, more than "
                f"the {weights_vocab_size} of the GPT-2 weights in {self.path}; {fix}"
            )
        own_tokenizer = self.path / TOKENIZER_FILE
        if not own_tokenizer.is_file():
            return
        data_vocab = load_tokenizer(data_dir / TOKENIZER_FILE).hf.get_vocab()
        if data_vocab != load_tokenizer(own_tokenizer).hf.get_vocab():
            raise UserError(
                f"the data in {data_dir} was tokenised with another tokenizer ({data_vocab_size} "
                f"tokens) than the GPT-2 weights in {self.path} expect; {fix}"
            )

    @torch.no_grad()
    def load_into(self, model: GPT) -> None:
        """Copy the folder's weights into ``model``, a GPT built from :meth:`model_config`, one
        tensor at a time (so memory holds the model plus one tensor), once verified."""
        self.verify()
        with _open_weights(self.path) as stored:
            parameters = dict(model.named_parameters())  # the tied head appears once
            expected = _gpt2_names(model.config.n_layer)
            missing = [theirs for theirs in expected.values() if theirs not in stored]
            unexpected = sorted(stored.keys() - set(expected.values()) - {"lm_head.weight"})
            if missing or unexpected:
                differences = [
                    f"{label}: {_abbreviated(names)}"
                    for label, names in (("missing", missing), ("unexpected", unexpected))
                    if names
                ]
                raise UserError(
                    f"the weights in {self.path} do not match its {CONFIG_FILE} "
                    f"({'; '.join(differences)}); download the folder again"
                )
            for ours, theirs in expected.items():
                target, tensor = parameters[ours], stored[theirs]()
                shape = _gpt2_shape(theirs, target, self.n_positions)
                if list(tensor.shape) != shape:
                    raise UserError(
                        f"the weights in {self.path} do not match its {CONFIG_FILE}: {theirs} has "
                        f"shape {list(tensor.shape)}, config.json implies {shape}; download the "
                        "folder again"
                    )
                target.copy_(_from_gpt2(theirs, tensor, model.config.block_size))
            if "lm_head.weight" in stored and not torch.equal(
                stored["lm_head.weight"]().to(model.lm_head.weight.dtype), model.lm_head.weight
            ):
                raise UserError(
                    f"the GPT-2 weights in {self.path} have an output head that is not the token "
                    "embedding; this project's GPT ties the two, so it cannot take them"
                )

    def verify(self) -> None:
        """A folder that gpt.export wrote records a digest of its weights and the fingerprint of
        its tokenizer (gpt/integrity.py): refuse one whose files differ. Other folders (a download,
        sharded weights) are read as they are, with a note where the single weights file has no
        digest."""
        weights = self.path / WEIGHTS_FILE
        if not weights.is_file():
            return
        with ExitStack() as stack:
            handle = _open_safetensors(weights, stack)
            metadata = handle.metadata() or {}
            check_weights(
                weights, ((name, handle.get_tensor(name)) for name in handle.keys()), metadata
            )
        tokenizer = self.path / TOKENIZER_FILE
        if tokenizer.is_file():
            check_tokenizer(tokenizer, metadata.get(TOKENIZER_KEY), weights)


def pretrained_model_config(
    configured: ModelConfig, path: str | Path, data_dir: str | Path
) -> ModelConfig:
    """The model config for training from the GPT-2 folder ``path`` on the data in ``data_dir``:
    the settings the weights fix, checked against ``configured`` and against the data."""
    folder = GPT2Folder.read(path)
    config = folder.model_config(configured)
    folder.check_data(data_dir)
    return config


def load_gpt2(path: str | Path, config: ModelConfig | None = None) -> GPT:
    """A GPT with the weights of the GPT-2 folder ``path``; ``config`` may crop the context and set
    the dropout (keys it leaves out or sets as the weights do come from the folder)."""
    folder = GPT2Folder.read(path)
    model = GPT(folder.model_config(config or ModelConfig()))
    folder.load_into(model)
    return model


def save_gpt2(model: GPT, tokenizer: Tokenizer, folder: Path) -> None:
    """Write ``model`` and ``tokenizer`` into the empty ``folder`` as a Hugging Face GPT-2 folder,
    which ``transformers``' ``AutoModelForCausalLM`` and ``AutoTokenizer`` load as they are."""
    config = model.config
    end_of_text = tokenizer.eot_id
    _write_json(folder / CONFIG_FILE, _hf_config(config, end_of_text))
    tokenizer.save(folder / TOKENIZER_FILE)
    tensors = gpt2_tensors(model)
    metadata = {"format": "pt", TOKENIZER_KEY: tokenizer_fingerprint(folder / TOKENIZER_FILE)}
    safetensors.torch.save_file(
        tensors, str(folder / WEIGHTS_FILE), metadata=sealed(tensors, metadata)
    )
    _write_json(folder / TOKENIZER_CONFIG_FILE, _tokenizer_config(tokenizer, config.block_size))
    generation = {"bos_token_id": end_of_text, "eos_token_id": end_of_text}
    _write_json(folder / GENERATION_CONFIG_FILE, generation)


def gpt2_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """The model's weights under GPT-2's names and layouts (missing biases as zeros)."""
    parameters = dict(model.named_parameters())
    tensors = {}
    for ours, theirs in _gpt2_names(model.config.n_layer).items():
        if ours in parameters:
            tensor = parameters[ours].detach()
        else:  # a bias the model was built without: zero is the same function
            weight = parameters[ours.removesuffix("bias") + "weight"]
            tensor = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
        if theirs.endswith(_CONV1D):
            tensor = tensor.t()
        tensors[_PREFIX + theirs] = tensor.contiguous().cpu()
    return tensors


def _gpt2_names(n_layer: int) -> dict[str, str]:
    """Our parameter name -> GPT-2's (without the prefix), biases included, the head left out."""
    modules = dict(_TOP_LEVEL_NAMES)
    for layer in range(n_layer):
        for ours, theirs in _BLOCK_NAMES.items():
            modules[f"blocks.{layer}.{ours}"] = f"h.{layer}.{theirs}"
    names = {}
    for ours, theirs in modules.items():
        kinds = ("weight",) if ours.endswith("embedding") else ("weight", "bias")
        for kind in kinds:
            names[f"{ours}.{kind}"] = f"{theirs}.{kind}"
    return names


def _from_gpt2(name: str, tensor: torch.Tensor, block_size: int) -> torch.Tensor:
    """A GPT-2 tensor in our layout: Conv1D weights transposed, positions cropped to the context."""
    if name.endswith(_CONV1D):
        return tensor.t()
    if name == "wpe.weight":
        return tensor[:block_size]
    return tensor


def _gpt2_shape(name: str, ours: torch.Tensor, n_positions: int) -> list[int]:
    """The shape GPT-2 stores ``name`` in, given the shape it has here."""
    if name.endswith(_CONV1D):
        return list(reversed(ours.shape))
    if name == "wpe.weight":
        return [n_positions, ours.shape[1]]
    return list(ours.shape)


@contextmanager
def _open_weights(path: Path) -> Iterator[dict[str, Any]]:
    """GPT-2 tensor name (prefix and mask buffers dropped) -> a function that reads it."""
    single, index = path / WEIGHTS_FILE, path / WEIGHTS_INDEX_FILE
    if single.is_file():
        files = [single]
    elif index.is_file():
        files = sorted({path / name for name in _read_json(index).get("weight_map", {}).values()})
    else:
        pickled = " (pytorch_model.bin is a pickle, which this project never loads)"
        has_pickle = (path / "pytorch_model.bin").is_file()
        raise UserError(
            f"{path} holds no {WEIGHTS_FILE}{pickled if has_pickle else ''}; download the "
            f"safetensors weights: hf download MODEL model.safetensors --local-dir {path}"
        )
    with ExitStack() as stack:
        readers = {}
        for file in files:
            handle = _open_safetensors(file, stack)
            for stored in handle.keys():
                name = stored.removeprefix(_PREFIX)
                if not name.endswith(_IGNORED_SUFFIXES):
                    readers[name] = lambda handle=handle, stored=stored: handle.get_tensor(stored)
        yield readers


def _open_safetensors(file: Path, stack: ExitStack):
    if not file.is_file():
        raise UserError(f"{file} is missing; download the folder again")
    try:
        return stack.enter_context(safetensors.safe_open(str(file), framework="pt"))
    except (safetensors.SafetensorError, OSError) as error:
        raise UserError(
            f"{file} is not a complete safetensors file ({str(error).strip()}); download it again"
        ) from None


def _read_hf_config(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise UserError(
            f"GPT-2 folder {path} does not exist; download one on a machine with internet: "
            f"{_DOWNLOAD} {path}"
        )
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise UserError(
            f"{path} is not a Hugging Face model folder (no {CONFIG_FILE}); download one with "
            f"{_DOWNLOAD} {path}"
        )
    hf_config = _read_json(config_file)
    model_type = hf_config.get("model_type")
    if model_type != "gpt2":
        raise UserError(
            f"{path} holds a {model_type} model, not GPT-2 (model_type gpt2); only GPT-2 weights "
            "map onto this project's GPT"
        )
    return hf_config


def _check_supported(path: Path, hf_config: dict[str, Any]) -> None:
    """Refuse the GPT-2 variants this GPT cannot compute exactly."""
    activation = hf_config.get("activation_function", "gelu_new")
    if activation not in _ACTIVATION_FROM_HF:
        raise UserError(
            f"{path / CONFIG_FILE}: activation_function {activation!r} has no counterpart here "
            f"(supported: {', '.join(_ACTIVATION_FROM_HF)})"
        )
    for key, needed in _REQUIRED_SETTINGS.items():
        value = hf_config.get(key, needed)
        if key == "n_inner" and value == 4 * hf_config["n_embd"]:
            continue  # the default width, written out
        if isinstance(needed, float) and isinstance(value, (int, float)):
            same = math.isclose(value, needed)
        else:
            same = value == needed
        if not same:
            raise UserError(
                f"{path / CONFIG_FILE} sets {key}={json.dumps(value)}; this project's GPT needs "
                f"{json.dumps(needed)}, so it cannot take these weights"
            )


def _hf_config(config: ModelConfig, end_of_text: int | None) -> dict[str, Any]:
    """config.json of a GPT2LMHeadModel computing what ``config``'s GPT computes."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": _ACTIVATION_TO_HF[config.activation],
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": LAYER_NORM_EPSILON,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": end_of_text,
        "eos_token_id": end_of_text,
        "dtype": "float32",
    }


def _tokenizer_config(tokenizer: Tokenizer, block_size: int) -> dict[str, Any]:
    """A fast tokenizer that is exactly ``tokenizer.json``, with GPT-2's special tokens if any."""
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": block_size,
        "clean_up_tokenization_spaces": False,
    }
    if tokenizer.eot_id is not None:
        config |= {"bos_token": END_OF_TEXT, "eos_token": END_OF_TEXT, "unk_token": END_OF_TEXT}
    return config


def _read_json(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        raise UserError(f"{path} is not valid JSON; download the folder again") from None
    if not isinstance(content, dict):
        raise UserError(f"{path} holds no JSON object; download the folder again")
    return content


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def _shown(value: Any) -> str:
    """A config value as the YAML that sets it."""
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _abbreviated(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
