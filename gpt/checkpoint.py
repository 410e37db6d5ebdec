"""Weights and resumable training state on disk: atomic to write, safe to read.

Two kinds of file live in a training output folder (``train.out_dir``):

* ``model.safetensors``: the best weights, with the model config in the safetensors metadata, so
  :func:`load_model` can rebuild the model from the file alone.
* ``checkpoints/step_XXXXXXX/``: the full state that :mod:`accelerate` saves (model, optimizer,
  gradient scaler, RNG states) plus ``trainer_state.json`` (step, best val loss, the model config,
  ...). The learning-rate schedule is a pure function of the step, so the step is its whole state. A checkpoint is written under a hidden temporary name and renamed when complete, so a
  kill at any instant leaves the previous checkpoint intact and never a half-written one that looks
  complete.

Nothing here unpickles: weights are safetensors, and accelerate reads its other files with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from accelerate import Accelerator
from pydantic import ValidationError

from gpt.config import ModelConfig
from gpt.errors import UserError
from gpt.lm import LanguageModel
from gpt.model import build_model
from gpt.tokenizer import Tokenizer, load_tokenizer

WEIGHTS_FILE = "model.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
CHECKPOINTS_DIR = "checkpoints"
_CHECKPOINT_PREFIX = "step_"


def save_model(path: str | Path, model: LanguageModel) -> None:
    """Write ``model``'s weights and config to a safetensors file, atomically."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    metadata = {"model_config": model.config.model_dump_json()}
    safetensors.torch.save_model(model, str(temporary), metadata=metadata)
    _use_default_permissions(temporary)
    os.replace(temporary, path)


def _use_default_permissions(path: Path) -> None:
    """safetensors creates files readable by their owner only; give this one the permissions any
    new file gets (rw-r--r-- under the usual umask), so the weights can be shared like the rest."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def load_model(path: str | Path, config: ModelConfig | None = None) -> LanguageModel:
    """Rebuild a model from a weights file; ``config`` is needed only if the file lacks one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist; train a model first")
    try:
        with safetensors.safe_open(str(path), framework="pt") as weights:
            metadata = weights.metadata() or {}
        if config is None:
            config = ModelConfig.model_validate_json(metadata["model_config"])
        model = build_model(config)
        safetensors.torch.load_model(model, str(path), strict=True)
    except (safetensors.SafetensorError, OSError, KeyError, ValueError, RuntimeError) as error:
        raise UserError(
            f"{path} is not a complete weights file ({_first_line(error)}); "
            "it may be truncated or corrupt: use another checkpoint or retrain"
        ) from None
    return model


def load_trained(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[LanguageModel, Tokenizer]:
    """The model and tokenizer of a training output folder (best weights) or of one checkpoint."""
    path = Path(path)
    if (path / TRAINER_STATE_FILE).is_file():  # a checkpoint inside OUT_DIR/checkpoints/
        model = load_model(path / WEIGHTS_FILE, _saved_model_config(path))
        tokenizer_path = path.parent.parent / "tokenizer.json"
    elif (path / WEIGHTS_FILE).is_file():
        model = load_model(path / WEIGHTS_FILE)
        tokenizer_path = path / "tokenizer.json"
    elif path.is_dir():
        raise UserError(
            f"{path} holds no {WEIGHTS_FILE}; pass a training output folder after its first "
            "evaluation, or one of its checkpoints/step_* folders"
        )
    else:
        raise UserError(f"checkpoint {path} does not exist; pass a training output folder")
    if not tokenizer_path.is_file():
        raise UserError(
            f"{tokenizer_path} is missing: the training output folder is incomplete; copy the "
            "tokenizer.json of the data the model was trained on there"
        )
    tokenizer = load_tokenizer(tokenizer_path)
    if tokenizer.vocab_size > model.config.vocab_size:  # a padded, larger model vocabulary is fine
        raise UserError(
            f"{tokenizer_path} has {tokenizer.vocab_size} tokens but the model has a vocabulary of "
            f"{model.config.vocab_size}: it is not the tokenizer the weights were trained with; "
            "copy the tokenizer.json of the data the model was trained on there"
        )
    return model.to(device).eval(), tokenizer


def save_checkpoint(accelerator: Accelerator, out_dir: Path, state: dict, keep: int) -> Path:
    """Save the full training state as ``checkpoints/step_XXXXXXX`` and keep the newest ``keep``.

    Every process must call this (accelerate gathers sharded state collectively).
    """
    root = out_dir / CHECKPOINTS_DIR
    final = root / f"{_CHECKPOINT_PREFIX}{state['step']:07d}"
    temporary = root / f".{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary), safe_serialization=True)
    if accelerator.is_main_process:
        (temporary / TRAINER_STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")
        for weights in temporary.glob("*.safetensors"):
            _use_default_permissions(weights)
        _fsync_tree(temporary)
        if final.exists():  # the same step saved again after a resume: replace it
            shutil.rmtree(final)
        os.replace(temporary, final)
        for old in list_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: Path, model_config: ModelConfig) -> dict:
    """Restore the training state from ``path`` and return its trainer state."""
    state = read_trainer_state(path)
    saved = _saved_model_config(path)
    if _shape(saved) != _shape(model_config):
        differences = ", ".join(
            f"model.{key}: checkpoint {value} vs config {_shape(model_config)[key]}"
            for key, value in _shape(saved).items()
            if value != _shape(model_config)[key]
        )
        raise UserError(
            f"checkpoint {path} was trained with another model shape ({differences}); use the "
            "checkpoint's model settings, another train.out_dir, or train.resume=never"
        )
    accelerator.load_state(str(path))
    return state


def latest_checkpoint(out_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(out_dir)
    return checkpoints[-1] if checkpoints else None


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders start with a dot and are skipped)."""
    root = out_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob(f"{_CHECKPOINT_PREFIX}*") if p.is_dir())


def read_trainer_state(path: Path) -> dict:
    state_file = path / TRAINER_STATE_FILE
    if not state_file.is_file():
        raise UserError(f"{path} is not a complete checkpoint (no {TRAINER_STATE_FILE})")
    try:
        return json.loads(state_file.read_text(encoding="utf-8"))
    except ValueError:
        raise UserError(f"{state_file} is damaged; resume from another checkpoint") from None


def _saved_model_config(path: Path) -> ModelConfig:
    try:
        return ModelConfig.model_validate(read_trainer_state(path)["model_config"])
    except (KeyError, TypeError, ValidationError):
        raise UserError(
            f"{path / TRAINER_STATE_FILE} holds no valid model config; use another checkpoint"
        ) from None


def _shape(config: ModelConfig) -> dict:
    """The settings that decide the parameter shapes (dropout, say, may change on resume)."""
    fields = ("arch", "n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")
    fields += {"mlp": ("context",), "cnn": ("kernel_size",)}.get(config.arch, ())
    return {name: getattr(config, name) for name in fields}


def _fsync_tree(folder: Path) -> None:
    """Flush a folder's files to disk before the rename that publishes them."""
    for file in folder.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
