"""The typed run configuration: sections ``data``, ``model`` and ``train`` (with ``train.wandb``).

A config is a YAML file plus dotted ``key=value`` overrides from the command line::

    python train.py configs/shakespeare_char.yaml model.n_layer=4 train.max_iters=200

pydantic does the type checking and range checks, once, before any work starts. Every problem becomes
a :class:`~gpt.base.errors.UserError` naming the key and what to do, with a did-you-mean suggestion for
unknown keys.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from gpt.base.errors import UserError
from gpt.base.paths import why_not


class Section(BaseModel):
    """A config section: unknown keys are errors, and assignments are validated too. No number
    may be NaN or infinite, and a boolean is not a number (pydantic would read true as 1)."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, coerce_numbers_to_str=True, allow_inf_nan=False
    )

    @field_validator("*", mode="before")
    @classmethod
    def _booleans_are_not_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and annotation is not bool and bool not in get_args(annotation):
            raise PydanticCustomError("boolean", "a boolean where a number or text belongs")
        return value


class DataConfig(Section):
    dir: str = Field("data/shakespeare_char", description="a folder written by data_prep")
    train_fraction: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="train on the first this fraction of train.bin's tokens; val and test stay whole",
    )


class ModelConfig(Section):
    arch: Literal["gpt", "mlp", "cnn"] = Field("gpt", description="gpt | mlp | cnn")
    n_layer: PositiveInt = Field(
        6, description="transformer blocks / MLP hidden layers / conv layers"
    )
    n_head: PositiveInt = Field(6, description="attention heads (gpt)")
    n_embd: PositiveInt = Field(384, description="embedding width (channels for cnn)")
    block_size: PositiveInt = Field(256, description="context length in tokens")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout probability, in [0, 1)")
    bias: bool = Field(True, description="biases in linear layers and LayerNorms")
    activation: Literal["gelu", "gelu_tanh", "swiglu"] = Field(
        "gelu",
        description="gelu (exact) | gelu_tanh (GPT-2's tanh approximation) | swiglu (gated SiLU, "
        "Llama's) (gpt)",
    )
    mlp_width: PositiveInt | None = Field(
        None,
        description="the MLP's hidden width (None: 4 * n_embd for GELU, 8/3 * n_embd rounded up "
        "to a multiple of 8 for swiglu, the same number of weights) (gpt)",
    )
    rope: bool = Field(
        False, description="rotary position embeddings instead of learned positions (gpt)"
    )
    rope_base: float = Field(10000.0, gt=1.0, description="the base of RoPE's wavelengths (gpt)")
    n_kv_head: PositiveInt | None = Field(
        None, description="key/value heads, dividing n_head: grouped-query attention (None: n_head)"
    )
    head_dim: PositiveInt | None = Field(
        None, description="width of an attention head (None: n_embd // n_head) (gpt)"
    )
    qk_norm: bool = Field(
        False, description="RMSNorm of queries and keys per head, as in Qwen3 (gpt)"
    )
    tie_embeddings: bool = Field(
        True, description="the output head shares its matrix with the token embedding (gpt)"
    )
    zero_init_proj: bool = Field(
        False, description="output projections of attention and MLP start at zero"
    )
    init: Literal["xavier", "lecun", "gpt2"] = Field(
        "xavier", description="xavier | lecun (Var 1/n_in) | gpt2 (normal 0.02)"
    )
    init_scale: float = Field(
        1.0, gt=0.0, description="multiplies every initial weight's standard deviation"
    )
    residual: bool = Field(True, description="residual connections around blocks (gpt, cnn)")
    norm: Literal["layer", "rms", "batch", "none"] = Field(
        "layer", description="layer | rms | batch (cnn only) | none: the normalisation layers"
    )
    norm_eps: float = Field(
        1e-5, gt=0.0, description="the epsilon of LayerNorm, RMSNorm and QK-norm"
    )
    vocab_size: PositiveInt | None = Field(
        None, description="None: from the data's meta.json; larger values pad the vocabulary"
    )
    context: PositiveInt = Field(8, description="tokens the MLP baseline sees (mlp)")
    kernel_size: int = Field(3, ge=2, description="convolution width (cnn)")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.arch == "gpt" and self.head_dim is None and self.n_embd % self.n_head != 0:
            raise ValueError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head}), "
                "or set model.head_dim"
            )
        if self.n_kv_head is not None and self.n_head % self.n_kv_head != 0:
            raise ValueError(
                f"model.n_kv_head ({self.n_kv_head}) must divide model.n_head ({self.n_head}): "
                "each key/value head serves a group of n_head / n_kv_head query heads"
            )
        if self.rope and self.attention_head_dim % 2 != 0:
            raise ValueError(
                f"model.rope=true rotates pairs of features, so the head width "
                f"({self.attention_head_dim}) must be even; change model.n_embd, n_head or head_dim"
            )
        return self

    @model_validator(mode="after")
    def _gpt_options_only_for_gpt(self) -> ModelConfig:
        if self.arch == "gpt":
            return self
        defaults = {key: ModelConfig.model_fields[key].default for key in _GPT_ONLY}
        set_here = [
            f"model.{key}" for key, value in defaults.items() if getattr(self, key) != value
        ]
        if self.activation == "swiglu":
            set_here.append("model.activation=swiglu")
        if set_here:
            raise ValueError(
                f"{', '.join(set_here)} are options of model.arch=gpt, not {self.arch}; remove them"
            )
        return self

    @property
    def attention_head_dim(self) -> int:
        """The width of one attention head."""
        return self.head_dim or self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """The number of key/value heads (``n_head`` unless grouped-query attention)."""
        return self.n_kv_head or self.n_head

    @property
    def feed_forward_width(self) -> int:
        """The MLP's hidden width: ``mlp_width``, else 4 · n_embd weights' worth (see its key)."""
        if self.mlp_width is not None:
            return self.mlp_width
        if self.activation == "swiglu":  # three matrices of 8/3 · n_embd: as many as two of 4x
            return 8 * math.ceil(8 * self.n_embd / 3 / 8)
        return 4 * self.n_embd

    @model_validator(mode="after")
    def _batch_norm_only_in_the_cnn(self) -> ModelConfig:
        if self.norm == "batch" and self.arch != "cnn":
            raise ValueError(
                f"model.norm=batch is for the CNN baseline only (model.arch={self.arch}): its "
                "statistics over a batch mix the positions of a sequence, letting a position see "
                "the ones after it; use model.norm=layer or none"
            )
        return self


_GPT_ONLY = ("rope", "n_kv_head", "head_dim", "qk_norm", "tie_embeddings", "mlp_width")


class WandbConfig(Section):
    mode: Literal["disabled", "offline", "online"] | None = Field(
        None, description="None: the WANDB_MODE environment variable, else offline"
    )
    project: str = Field("gpt-trainer", description="W&B project")
    run_name: str | None = Field(None, description="W&B run name (default: the out_dir's name)")

    def resolved_mode(self) -> str:
        mode = self.mode or os.environ.get("WANDB_MODE", "offline")
        if mode not in ("disabled", "offline", "online"):
            raise UserError(f"WANDB_MODE={mode!r} is not one of disabled, offline, online")
        return mode


MINUTES_A_WEEK = 7 * 24 * 60  # a longer wait than this is a mistake, and overflows a timedelta


class TrainConfig(Section):
    out_dir: str = Field("out/run", description="where config, metrics, weights and checkpoints go")
    batch_size: PositiveInt = Field(32, description="sequences per process per micro-step")
    gradient_accumulation_steps: PositiveInt = Field(
        1, description="micro-steps per optimizer step"
    )
    max_iters: PositiveInt = Field(5000, description="optimizer steps")
    learning_rate: float = Field(1e-3, gt=0.0, description="peak learning rate")
    min_lr: float = Field(1e-4, ge=0.0, description="learning rate at the end of the decay")
    warmup_iters: int = Field(100, ge=0, description="steps of linear warmup from 0")
    lr_decay_iters: PositiveInt | None = Field(
        None, description="end of the decay (None: max_iters)"
    )
    lr_schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="decay shape"
    )
    optimizer: Literal["adamw", "adam", "sgd", "lbfgs", "muon"] = Field(
        "adamw", description="adamw | adam | sgd | lbfgs | muon (see gpt/optim.py)"
    )
    muon_learning_rate: float = Field(
        0.02, gt=0.0, description="Muon's peak learning rate, for the hidden layers' matrices"
    )
    muon_weight_decay: float = Field(
        0.0, ge=0.0, description="Muon's decoupled weight decay of the hidden layers' matrices"
    )
    muon_momentum: float = Field(0.95, ge=0.0, lt=1.0, description="Muon's Nesterov momentum")
    weight_decay: float = Field(
        0.1, ge=0.0, description="decoupled (adamw), or an L2 penalty in the gradient (adam, sgd)"
    )
    beta1: float = Field(0.9, ge=0.0, lt=1.0, description="Adam(W) beta1")
    beta2: float = Field(0.99, ge=0.0, lt=1.0, description="Adam(W) beta2")
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="SGD momentum (0: plain SGD)")
    full_batch: bool = Field(
        False, description="every step on every window of the training split (lbfgs needs it)"
    )
    grad_clip: float = Field(1.0, ge=0.0, description="max global gradient norm (0: off)")
    eval_interval: PositiveInt = Field(250, description="steps between evaluations")
    eval_iters: PositiveInt = Field(
        20,
        description="batches of batch_size windows of each split that every process evaluates "
        "(eval_iters x batch_size x processes windows in all; accumulation plays no part)",
    )
    log_interval: PositiveInt = Field(
        10, description="steps between train records in metrics.jsonl"
    )
    checkpoint_interval: PositiveInt = Field(500, description="steps between resumable checkpoints")
    keep_checkpoints: PositiveInt = Field(3, description="how many recent checkpoints to keep")
    report: bool = Field(
        True,
        description="write OUT_DIR/report/ (figures, report.md) when the run ends or stops cleanly; "
        "python -m gpt.report OUT_DIR writes it at any time",
    )
    early_stopping_patience: int = Field(
        0, ge=0, description="evaluations without progress (0: off)"
    )
    seed: int = Field(
        1337, ge=0, le=2**32 - 1, description="seeds weights, dropout and the sample order"
    )
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description="no | bf16 | fp16")
    tf32: bool = Field(True, description="fp32 matrix products on GPU use TF32 tensor cores")
    compile: bool = Field(False, description="torch.compile the model")
    fsdp: bool = Field(
        False,
        description="shard parameters, gradients and optimizer state over the processes "
        "(FSDP2, gpt/training/sharding.py), on GPUs or CPUs",
    )
    resume: str = Field("auto", description="auto | never | a checkpoint folder")
    cpu: bool = Field(False, description="train on the CPU even if a GPU is present")
    init_from: str | None = Field(
        None,
        description="a local Hugging Face GPT-2 folder to start from instead of random weights",
    )
    distributed_timeout_minutes: float = Field(
        5.0,
        gt=0.0,
        le=MINUTES_A_WEEK,
        description="how long a process waits for the others before giving up",
    )
    wandb: WandbConfig = Field(default_factory=WandbConfig)

    @field_validator("out_dir")
    @classmethod
    def _out_dir_is_named(cls, value: str) -> str:
        """An empty out_dir would put the run's files into the current folder."""
        if not value.strip():
            raise ValueError(
                f"train.out_dir={value!r} names no folder; set a folder such as out/run"
            )
        return value

    @field_validator("resume")
    @classmethod
    def _resume_is_named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(
                f"train.resume={value!r} names nothing; use auto, never or a checkpoints/step_* "
                "folder"
            )
        return value

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _no_is_not_false(cls, value: Any) -> Any:
        """YAML reads an unquoted ``no`` (``train.mixed_precision=no``) as the boolean false."""
        return "no" if value is False else value

    @model_validator(mode="after")
    def _consistent_schedule(self) -> TrainConfig:
        if self.min_lr > self.learning_rate:
            raise ValueError(
                f"train.min_lr ({self.min_lr}) must not exceed train.learning_rate "
                f"({self.learning_rate})"
            )
        if self.lr_decay_iters is not None and self.warmup_iters > self.lr_decay_iters:
            raise ValueError(
                f"train.warmup_iters ({self.warmup_iters}) must not exceed "
                f"train.lr_decay_iters ({self.lr_decay_iters}); lower one or raise the other"
            )
        return self

    @model_validator(mode="after")
    def _optimizer_settings_fit(self) -> TrainConfig:
        if self.momentum and self.optimizer != "sgd":
            raise ValueError(
                f"train.momentum is for train.optimizer=sgd (not {self.optimizer}, whose momentum "
                "is train.beta1); remove it"
            )
        muon_keys = ("muon_learning_rate", "muon_weight_decay", "muon_momentum")
        changed = [
            f"train.{key}"
            for key in muon_keys
            if getattr(self, key) != TrainConfig.model_fields[key].default
        ]
        if changed and self.optimizer != "muon":
            raise ValueError(
                f"{', '.join(changed)} are for train.optimizer=muon (not {self.optimizer}); "
                "remove them"
            )
        if self.full_batch and self.gradient_accumulation_steps > 1:
            raise ValueError(
                "train.full_batch=true takes every training window in each step, in chunks of "
                "train.batch_size; set train.gradient_accumulation_steps=1"
            )
        if self.optimizer == "lbfgs":
            needed = {
                "train.full_batch=true": self.full_batch,
                "train.weight_decay=0": self.weight_decay == 0,
                "train.grad_clip=0": self.grad_clip == 0,
                "train.mixed_precision=no or bf16": self.mixed_precision != "fp16",
            }
            missing = [setting for setting, present in needed.items() if not present]
            if missing:
                raise ValueError(
                    "train.optimizer=lbfgs minimises one fixed function by line search, with "
                    f"exact gradients; set {', '.join(missing)}"
                )
        return self

    @model_validator(mode="after")
    def _sharding_fits(self) -> TrainConfig:
        if not self.fsdp:
            return self
        if self.optimizer in ("muon", "lbfgs"):
            raise ValueError(
                f"train.optimizer={self.optimizer} needs whole weight matrices (muon) or one "
                "process (lbfgs), and train.fsdp=true shards them over the processes; use "
                "train.optimizer=adamw, or train.fsdp=false"
            )
        if self.mixed_precision == "fp16":
            raise ValueError(
                "train.fsdp=true trains in fp32 or bf16 (fp16 would need a gradient scaler that "
                "agrees across the shards); set train.mixed_precision=bf16 or no"
            )
        return self

    @property
    def decay_iters(self) -> int:
        return self.lr_decay_iters or self.max_iters


def fit_warmup_to_run(train: TrainConfig) -> tuple[TrainConfig, str | None]:
    """A warmup as long as the run or longer becomes a tenth of the run, with a note saying so.

    That is what a short smoke run of a shipped config (``train.max_iters=20``) needs: without it
    the whole run would be warmup. Returns the config to train with, and the note or None.
    """
    if train.warmup_iters < train.max_iters:
        return train, None
    shorter = train.max_iters // 10
    steps = "step" if shorter == 1 else "steps"
    note = (
        f"train.warmup_iters={train.warmup_iters} is not shorter than the run "
        f"(train.max_iters={train.max_iters}); warming up for {shorter} {steps}, a tenth of the run"
    )
    return train.model_copy(update={"warmup_iters": shorter}), note


class Config(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config, apply ``key=value`` overrides and validate everything once."""
    raw: dict[str, Any] = {} if path is None else read_config_file(Path(path))
    for override in overrides:
        apply_override(raw, override)
    return config_from_dict(raw)


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Validate a plain nested dict (as read from YAML) into a :class:`Config`."""
    try:
        return Config.model_validate(raw)
    except ValidationError as error:
        raise UserError(_describe(error)) from None


def read_yaml_file(path: Path, kind: str, example: str) -> Any:
    """The YAML document in ``path`` (a ``kind`` such as "config file"), as plain data; a missing
    file, a file that is not UTF-8, bad YAML or a key given twice in one mapping is one line naming
    it (and ``example``, what to pass instead)."""
    if not path.is_file():
        raise UserError(f"{kind} {path} {why_not(path, 'file')}; pass {example}")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as error:
        raise UserError(
            f"{kind} {path} is not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset "
            f"{error.start}); save it as UTF-8"
        ) from None
    except DuplicateKeyError as error:
        raise UserError(
            f"{kind} {path} gives the key {error.key!r} twice (the second at line "
            f"{error.line}); YAML would silently keep the last one: remove one of them"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{kind} {path} is not valid YAML{where}; fix its syntax") from None


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that gives one key twice (``line``: where the second one is, from 1)."""

    def __init__(self, key: Any, line: int):
        super().__init__(f"duplicate key {key!r} at line {line}")
        self.key, self.line = key, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a mapping that repeats a key is an error: plain YAML loaders keep
    the last value silently (two runs of one name in a sweep file would be one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # <<: *anchor may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):  # refused by the base class, in its own words
                continue
            if key in seen:
                raise DuplicateKeyError(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_config_file(path: Path) -> dict[str, Any]:
    """A config file as a plain nested dict, not yet validated."""
    raw = read_yaml_file(path, "config file", "a YAML file such as configs/*.yaml")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(
            f"config file {path} must hold a mapping with data, model and train sections"
        )
    return raw


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set ``section.key=value`` in a raw config; the value is read as YAML (``true``, ``3e-4``)."""
    key, sep, text = override.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"override {override!r} is not of the form section.key=value")
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    set_key(raw, key, value, f"override {override!r}")


def set_key(raw: dict[str, Any], key: str, value: Any, source: str | None = None) -> None:
    """Set the dotted ``key`` (``model.n_layer``) of a raw config to ``value``, making sections as
    needed. ``source`` names where the setting comes from, in errors."""
    source = source or f"key {key!r}"
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"{source} is not a dotted key such as section.key")
    *parents, leaf = key.split(".")
    node = raw
    for depth, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            prefix = ".".join(parents[: depth + 1])
            raise UserError(f"{source}: {prefix} is a value, not a section")
        node = child
    node[leaf] = value


def _describe(error: ValidationError) -> str:
    """One line for all validation problems, each naming its key."""
    return "; ".join(_describe_one(detail) for detail in error.errors())


def _describe_one(detail: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in detail["loc"])
    if detail["type"] == "extra_forbidden":
        return f"unknown config key '{key}'{_suggestion(detail['loc'])}"
    if detail["type"] == "value_error":
        return str(detail["ctx"]["error"]) if "ctx" in detail else detail["msg"]
    value = detail.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"config key '{key}': {detail['msg'].lower()}{shown}"


def _suggestion(loc: tuple) -> str:
    """' (did you mean 'model.n_layer'?)' for a misspelt key, else ''."""
    section: type[BaseModel] = Config
    for part in loc[:-1]:
        field = section.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        section = annotation
    close = difflib.get_close_matches(str(loc[-1]), section.model_fields, n=1, cutoff=0.6)
    if not close:
        return f"; valid keys here: {', '.join(section.model_fields)}"
    return f" (did you mean '{'.'.join(map(str, loc[:-1] + (close[0],)))}'?)"
