"""Resumable training state on disk: atomic to write, verified before it is trusted.

``checkpoints/step_XXXXXXX/`` holds the full state that :mod:`accelerate` saves (model, optimizer,
gradient scaler, each process's RNG state; with ``train.fsdp`` the model's and optimizer's shards
in ``sharded/`` instead, :mod:`gpt.training.sharding`) plus
``trainer_state.json`` (step, best val loss, the model config, ...). The learning-rate schedule is
a pure function of the step, so the step is its whole state. The best weights are
``model.safetensors`` beside them (:mod:`gpt.run.weights`).

A checkpoint is written under a hidden temporary name. Once every process has written its files,
rank 0 writes ``trainer_state.json`` last, with a manifest of the other files (path, size,
SHA-256), flushes the folder to disk and renames it. So a kill at any instant leaves the previous
checkpoint intact and never a half-written one that looks complete, and
:func:`gpt.run.checkpoints.find_damage` can tell later whether a checkpoint's files are still the
ones written. A write that fails (a full disk) removes the temporary folder and stops the run with
one line (:func:`gpt.run.folder.write_failed`).

Nothing here unpickles: accelerate reads its files with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import shutil
from functools import partial
from pathlib import Path

import safetensors
import safetensors.torch
from accelerate import Accelerator

from gpt.base.config import ModelConfig
from gpt.base.errors import UserError, one_line
from gpt.base.files import use_default_permissions
from gpt.run.checkpoints import TRAINER_STATE_FILE, manifest, read_trainer_state, saved_model_config
from gpt.run.folder import (
    CHECKPOINT_PREFIX,
    CHECKPOINTS_DIR,
    SHARDED_STATE_DIR,
    list_checkpoints,
    write_failed,
)
from gpt.training.agreement import first_problem

_DAMAGED_PREFIX = "damaged-"

# What a failed write raises: OSError from Python's own files, RuntimeError from torch.save (on a
# full disk: "unexpected pos ..."), SafetensorError from safetensors ("I/O error: No space left").
WRITE_ERRORS = (OSError, RuntimeError, safetensors.SafetensorError)


# ----- writing checkpoints -----------------------------------------------------------------------


def save_checkpoint(accelerator: Accelerator, out_dir: Path, state: dict, keep: int) -> Path:
    """Save the full training state as ``checkpoints/step_XXXXXXX`` and keep the newest ``keep``.

    Every process must call this: each writes its own part (accelerate gathers sharded state
    collectively, and every process saves its RNG state), and all wait for all after each phase,
    so rank 0 publishes the folder only once every file is in it. A failed write on any process
    stops every process with the same :class:`UserError`.
    """
    root = out_dir / CHECKPOINTS_DIR
    final = root / f"{CHECKPOINT_PREFIX}{state['step']:07d}"
    temporary = root / f".{final.name}.tmp"
    main = accelerator.is_main_process
    phases = [
        partial(_empty_folder, temporary) if main else None,
        partial(accelerator.save_state, str(temporary), safe_serialization=True),
        partial(_publish, temporary, final, state) if main else None,
    ]
    for phase in phases:
        error = first_problem(accelerator, _attempt(phase))  # waits for every process
        if error:
            if main:
                shutil.rmtree(temporary, ignore_errors=True)
            raise write_failed(f"checkpoint {final}", error, out_dir)
    if main:
        for old in list_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old)
    return final


def _attempt(write) -> str | None:
    """Run ``write`` (if any); the reason it failed, or None."""
    try:
        if write is not None:
            write()
    except WRITE_ERRORS as error:
        return one_line(error)
    return None


def _empty_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)


def _publish(temporary: Path, final: Path, state: dict) -> None:
    """Seal a fully written temporary folder with its manifest and rename it to ``final``."""
    for weights in temporary.glob("*.safetensors"):
        use_default_permissions(weights)
    sealed = {**state, "files": manifest(temporary)}
    (temporary / TRAINER_STATE_FILE).write_text(json.dumps(sealed, indent=2), encoding="utf-8")
    _fsync_tree(temporary)
    if final.exists():  # the same step saved again after a resume: replace it
        shutil.rmtree(final)
    os.replace(temporary, final)
    _fsync(final.parent)  # the rename itself


def _fsync_tree(folder: Path) -> None:
    """Flush a folder's files and sub-folders (their entries too) to disk before it is renamed."""
    for directory, _, files in os.walk(folder):
        for name in files:
            _fsync(Path(directory, name))
        _fsync(Path(directory))


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# ----- reading checkpoints -----------------------------------------------------------------------


def set_aside(checkpoint: Path) -> Path:
    """Rename a damaged checkpoint to ``damaged-step_XXXXXXX`` (kept, and no longer resumed)."""
    aside = checkpoint.with_name(f"{_DAMAGED_PREFIX}{checkpoint.name}")
    suffix = 2
    while aside.exists():
        aside = checkpoint.with_name(f"{_DAMAGED_PREFIX}{checkpoint.name}-{suffix}")
        suffix += 1
    os.replace(checkpoint, aside)
    return aside


def remove_unfinished(out_dir: Path) -> None:
    """Delete the temporary folders of checkpoints whose writing was cut short (by a kill)."""
    for unfinished in (out_dir / CHECKPOINTS_DIR).glob(f".{CHECKPOINT_PREFIX}*.tmp"):
        shutil.rmtree(unfinished, ignore_errors=True)


def check_model_shape(checkpoint: Path, model_config: ModelConfig) -> None:
    """Refuse to resume a checkpoint whose parameters have other shapes than the config's."""
    saved, wanted = _shape(saved_model_config(checkpoint)), _shape(model_config)
    if saved != wanted:
        differences = ", ".join(
            f"model.{key}: checkpoint {value} vs config {wanted[key]}"
            for key, value in saved.items()
            if value != wanted[key]
        )
        raise UserError(
            f"checkpoint {checkpoint} was trained with another model shape ({differences}); use "
            "the checkpoint's model settings, another train.out_dir, or train.resume=never"
        )


def check_sharding(checkpoint: Path, sharded: bool) -> None:
    """Refuse to resume a sharded checkpoint (``train.fsdp``) unsharded, or the other way round:
    each holds the model and optimizer state in the other's absence."""
    saved_sharded = (checkpoint / SHARDED_STATE_DIR).is_dir()
    if saved_sharded != sharded:
        saved = "true" if saved_sharded else "false"
        raise UserError(
            f"checkpoint {checkpoint} was saved with train.fsdp={saved}; resume it with "
            f"train.fsdp={saved}, or start a new run with train.resume=never or another "
            "train.out_dir"
        )


def load_checkpoint(accelerator: Accelerator, checkpoint: Path) -> dict:
    """Restore the training state from ``checkpoint`` and return its trainer state."""
    accelerator.load_state(str(checkpoint))
    return read_trainer_state(checkpoint)


def _shape(config: ModelConfig) -> dict:
    """The settings that decide the parameters' shapes and what they compute (dropout, say, may
    change on resume; a model without residual connections would not be the same function)."""
    fields = ("arch", "n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")
    fields += ("norm", "residual", "activation", "mlp_width", "rope", "n_kv_head", "head_dim")
    fields += ("qk_norm", "tie_embeddings", "rope_base", "norm_eps")
    fields += {"mlp": ("context",), "cnn": ("kernel_size",)}.get(config.arch, ())
    return {name: getattr(config, name) for name in fields}
