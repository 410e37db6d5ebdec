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
from typing import Any, ClassVar

import safetensors
import safetensors.torch
import torch
from pydantic import ValidationError

from gpt.base.config import ModelConfig
from gpt.base.downloads import gpt2_download_command
from gpt.base.errors import UserError
from gpt.base.files import save_safetensors
from gpt.base.paths import why_not
from gpt.data.tokenizer import END_OF_TEXT, Tokenizer, load_tokenizer, tokenizer_fingerprint
from gpt.data.tokens import read_meta
from gpt.models.gpt import GPT
from gpt.run.integrity import TOKENIZER_KEY, check_tokenizer, check_weights, sealed

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
LAYER_NORM_EPSILON = 1e-5  # GPT-2's, and torch.nn.LayerNorm's default, which our GPT uses

# The modern options (gpt/model.py) at the values GPT-2 has: learned positions, full attention
# heads, no QK-norm, a tied head, a 4x MLP, LayerNorm's epsilon.
TEXTBOOK_OPTIONS = {
    "rope": False,
    "n_kv_head": None,
    "head_dim": None,
    "qk_norm": False,
    "tie_embeddings": True,
    "mlp_width": None,
    "norm_eps": LAYER_NORM_EPSILON,
}
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
    family: ClassVar[str] = "GPT-2"  # the name in messages
    positions_key: ClassVar[str] = "n_positions"  # config.json's longest context

    @classmethod
    def read(cls, path: str | Path) -> GPT2Folder:
        path = Path(path)
        hf_config = read_hf_config(path)
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
            **TEXTBOOK_OPTIONS,
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
                f"the config contradicts the {self.family} weights in {self.path}: "
                f"{', '.join(contradictions)}; leave these keys out of the model section (the "
                "weights fix them) or set them to the weights' values"
            )
        block_size = configured.block_size if "block_size" in given else self.n_positions
        if block_size > self.n_positions:
            raise UserError(
                f"model.block_size={block_size} is longer than the context of the {self.family} "
                f"weights in {self.path} ({self.positions_key}={self.n_positions}); use "
                "model.block_size="
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
            f"prepare the data with `python -m data_prep ... --tokenizer {self.path}` (the "
            f"{self.family} folder's tokenizer)"
        )
        if data_vocab_size > weights_vocab_size:
            raise UserError(
                f"the data in {data_dir} has a vocabulary of {data_vocab_size} tokens, more than "
                f"the {weights_vocab_size} of the {self.family} weights in {self.path}; {fix}"
            )
        own_tokenizer = self.path / TOKENIZER_FILE
        if not own_tokenizer.is_file():
            return
        data_vocab = load_tokenizer(data_dir / TOKENIZER_FILE).hf.get_vocab()
        if data_vocab != load_tokenizer(own_tokenizer).hf.get_vocab():
            raise UserError(
                f"the data in {data_dir} was tokenised with another tokenizer ({data_vocab_size} "
                f"tokens) than the {self.family} weights in {self.path} expect; {fix}"
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
            check_weight_names(self.path, missing, unexpected)
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


def gpt2_problems(config: ModelConfig) -> list[str]:
    """The settings of ``config`` that keep its GPT from being a GPT-2 model, each as
    ``model.key=value (what GPT-2 has)``; empty when it maps onto GPT-2."""
    checks = [
        (config.norm == "layer", f"model.norm={config.norm} (GPT-2 has layer)"),
        (config.residual, "model.residual=false (GPT-2 has residual connections)"),
        (
            config.activation in _ACTIVATION_TO_HF,
            f"model.activation={config.activation} (GPT-2 has gelu or gelu_tanh)",
        ),
        (not config.rope, "model.rope=true (GPT-2 learns its positions)"),
        (
            config.kv_heads == config.n_head,
            f"model.n_kv_head={config.n_kv_head} (GPT-2 has n_head key/value heads)",
        ),
        (
            config.attention_head_dim * config.n_head == config.n_embd,
            f"model.head_dim={config.head_dim} (GPT-2's is n_embd / n_head)",
        ),
        (not config.qk_norm, "model.qk_norm=true (GPT-2 has none)"),
        (config.tie_embeddings, "model.tie_embeddings=false (GPT-2 ties its head)"),
        (
            config.feed_forward_width == 4 * config.n_embd,
            f"model.mlp_width={config.mlp_width} (GPT-2's is 4 x n_embd)",
        ),
        (
            math.isclose(config.norm_eps, LAYER_NORM_EPSILON),
            f"model.norm_eps={config.norm_eps} (GPT-2's is {LAYER_NORM_EPSILON})",
        ),
    ]
    return [problem for fine, problem in checks if not fine]


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
    hf_config = _hf_config(model.config, tokenizer.eot_id)
    write_hf_folder(folder, hf_config, gpt2_tensors(model), tokenizer, model.config.block_size)


def write_hf_folder(
    folder: Path,
    hf_config: dict,
    tensors: dict[str, torch.Tensor],
    tokenizer: Tokenizer,
    block_size: int,
) -> None:
    """A Hugging Face model folder of any family: its config.json, the tokenizer with a fast
    tokenizer's config, the weights sealed with their digest and the tokenizer's fingerprint
    (:mod:`gpt.run.integrity`), and the generation config (end of text as BOS and EOS)."""
    _write_json(folder / CONFIG_FILE, hf_config)
    tokenizer.save(folder / TOKENIZER_FILE)
    metadata = {"format": "pt", TOKENIZER_KEY: tokenizer_fingerprint(folder / TOKENIZER_FILE)}
    save_safetensors(tensors, folder / WEIGHTS_FILE, sealed(tensors, metadata))
    _write_json(folder / TOKENIZER_CONFIG_FILE, _tokenizer_config(tokenizer, block_size))
    generation = {"bos_token_id": tokenizer.eot_id, "eos_token_id": tokenizer.eot_id}
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


def read_hf_config(path: Path, model_types: dict[str, str] | None = None) -> dict[str, Any]:
    """config.json of the model folder ``path``, whose ``model_type`` must be one of
    ``model_types`` (model_type -> the family's name; GPT-2's alone by default)."""
    model_types = model_types or {"gpt2": "GPT-2"}
    download = (
        gpt2_download_command(path)
        if "gpt2" in model_types
        else f"hf download REPO {CONFIG_FILE} model.safetensors tokenizer.json --local-dir {path}"
    )
    if not path.is_dir():
        raise UserError(
            f"model folder {path} {why_not(path, 'folder')}; download one on a machine with "
            f"internet: {download}"
        )
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise UserError(
            f"{path} is not a Hugging Face model folder (no {CONFIG_FILE}); download one with "
            f"{download}"
        )
    hf_config = _read_json(config_file)
    model_type = hf_config.get("model_type")
    if model_type not in model_types:
        families, types = _either(list(model_types.values())), _either(list(model_types))
        raise UserError(
            f"{path} holds a {model_type} model, not {families} (model_type {types}); only "
            f"{families} weights map onto this project's GPT"
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


def _either(names: list[str]) -> str:
    """'a', 'a or b', 'a, b or c'."""
    return " or ".join(filter(None, [", ".join(names[:-1]), names[-1]]))


def check_weight_names(path: Path, missing: list[str], unexpected: list[str]) -> None:
    """Refuse a model folder whose weights file lacks tensors its config.json needs, or holds
    others (one line naming a few of each)."""
    if not missing and not unexpected:
        return
    differences = [
        f"{label}: {_abbreviated(names)}"
        for label, names in (("missing", missing), ("unexpected", unexpected))
        if names
    ]
    raise UserError(
        f"the weights in {path} do not match its {CONFIG_FILE} "
        f"({'; '.join(differences)}); download the folder again"
    )


def _abbreviated(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
