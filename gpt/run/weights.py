"""A run's weights: ``model.safetensors`` (the best weights, the model config in its metadata, so
the file alone rebuilds the model) and the weights inside a checkpoint, loaded with the run's
tokenizer for sampling, evaluation and export. Nothing here unpickles."""

from __future__ import annotations

from pathlib import Path

import safetensors
import safetensors.torch
import torch

from gpt.base.config import ModelConfig
from gpt.base.errors import UserError, one_line
from gpt.base.files import replace_file, save_safetensors, use_default_permissions
from gpt.base.paths import why_not
from gpt.data.tokenizer import Tokenizer, load_tokenizer
from gpt.models.gpt import build_model
from gpt.models.lm import LanguageModel
from gpt.run.checkpoints import (
    TRAINER_STATE_FILE,
    find_damage,
    read_trainer_state,
    saved_model_config,
)
from gpt.run.folder import SHARDED_STATE_DIR, TOKENIZER_FILE, WEIGHTS_FILE
from gpt.run.integrity import TOKENIZER_KEY, check_tokenizer, check_weights, sealed


def save_model(
    path: str | Path, model: LanguageModel, metadata: dict[str, str] | None = None
) -> None:
    """Write ``model``'s weights and config to a safetensors file, atomically (:func:`save_weights`)."""
    save_weights(path, model.state_dict(), model.config, metadata)


def save_weights(
    path: str | Path,
    weights: dict[str, torch.Tensor],
    config: ModelConfig,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a model's ``weights`` (its state dict) and ``config`` to a safetensors file, atomically:
    the one definition of the weights file, which :func:`load_model` reads.

    ``metadata`` goes into the file's header beside the config: the trainer records the ``step``
    and ``val_loss`` of the best weights there, and the tokenizer's fingerprint
    (:mod:`gpt.run.integrity`). A digest of it all is added, which :func:`load_model` verifies.
    A tensor under several names (tied embeddings) is stored once, as ``safetensors.torch.save_model``
    stores it: under the first of its names in sorted order, each other name recorded in the
    metadata as naming that one, so loading ties them again.
    """
    metadata = {**(metadata or {}), "model_config": config.model_dump_json()}
    metadata = sealed(weights, metadata)
    stored, aliases = _each_tensor_once(weights)

    def write(temporary: Path) -> None:
        save_safetensors(stored, temporary, {**metadata, **aliases})
        use_default_permissions(temporary)

    replace_file(Path(path), write)


def _each_tensor_once(
    weights: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors to store, one name each, and each other name of a stored tensor with the name
    it is stored under."""
    stored: dict[tuple, str] = {}
    aliases = {}
    for name in sorted(weights):
        tensor = weights[name]
        identity = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        identity += (tuple(tensor.shape), tuple(tensor.stride()))
        if identity in stored:
            aliases[name] = stored[identity]
        else:
            stored[identity] = name
    return {name: weights[name] for name in stored.values()}, aliases


def load_model(path: str | Path, config: ModelConfig | None = None) -> LanguageModel:
    """Rebuild a model from a weights file that :func:`save_model` wrote, verified against the
    digest it records; ``config`` is needed only if the file lacks one."""
    model, metadata = _read_model(Path(path), config)
    check_weights(Path(path), model.state_dict().items(), metadata)
    return model


def _read_model(
    path: Path, config: ModelConfig | None = None
) -> tuple[LanguageModel, dict[str, str]]:
    """A model rebuilt from a weights file, unverified, and the file's metadata."""
    if not path.is_file():
        raise UserError(f"weights file {path} {why_not(path, 'file')}; train a model first")
    try:
        metadata = _metadata(path)
        if config is None:
            config = ModelConfig.model_validate_json(metadata["model_config"])
        model = build_model(config)
        safetensors.torch.load_model(model, str(path), strict=True)
    except (safetensors.SafetensorError, OSError, KeyError, ValueError, RuntimeError) as error:
        raise UserError(
            f"{path} is not a complete weights file ({one_line(error)}); "
            "it may be truncated or corrupt: use another checkpoint or retrain"
        ) from None
    return model, metadata


def _metadata(weights: Path) -> dict[str, str]:
    with safetensors.safe_open(str(weights), framework="pt") as opened:
        return opened.metadata() or {}


def load_trained(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[LanguageModel, Tokenizer]:
    """The model and tokenizer of a training output folder (best weights) or of one checkpoint,
    each verified: a checkpoint against its manifest, best weights against their digest, and the
    tokenizer against the fingerprint the weights were saved with."""
    weights, checkpoint = _locate_weights(Path(path))
    if checkpoint is not None:  # a checkpoint inside OUT_DIR/checkpoints/
        damage = find_damage(checkpoint)
        if damage:
            raise UserError(
                f"checkpoint {checkpoint} is damaged ({damage}); use another checkpoint or the "
                "run's best weights"
            )
        model, _ = _read_model(weights, saved_model_config(checkpoint))
        fingerprint = read_trainer_state(checkpoint).get(TOKENIZER_KEY)
    else:
        model = load_model(weights)
        fingerprint = _metadata(weights).get(TOKENIZER_KEY)
    tokenizer_path = tokenizer_file(path)
    if not tokenizer_path.is_file():
        raise UserError(
            f"{tokenizer_path} is missing: the training output folder is incomplete; copy the "
            "tokenizer.json of the data the model was trained on there"
        )
    check_tokenizer(tokenizer_path, fingerprint, weights)
    tokenizer = load_tokenizer(tokenizer_path)
    if tokenizer.vocab_size > model.config.vocab_size:  # a padded, larger model vocabulary is fine
        raise UserError(
            f"{tokenizer_path} has {tokenizer.vocab_size} tokens but the model has a vocabulary of "
            f"{model.config.vocab_size}: it is not the tokenizer the weights were trained with; "
            "copy the tokenizer.json of the data the model was trained on there"
        )
    return model.to(device).eval(), tokenizer


def tokenizer_file(path: str | Path) -> Path:
    """The tokenizer.json that goes with the weights ``path`` names (a run folder's best weights or
    one of its checkpoints): the run folder's."""
    weights, checkpoint = _locate_weights(Path(path))
    return (checkpoint.parent.parent if checkpoint is not None else weights.parent) / TOKENIZER_FILE


def describe_trained(path: str | Path) -> str:
    """Which weights :func:`load_trained` reads from ``path``, and when they were saved, in words.

    ``OUT/model.safetensors: step 1200, val loss 1.5901 (the best so far)``, or for a checkpoint
    ``OUT/checkpoints/step_0000400: step 400 (best val loss by then 1.7012)``; a weights file saved
    before the step was recorded says ``step unknown``.
    """
    weights, checkpoint = _locate_weights(Path(path))
    if checkpoint is not None:
        state = read_trainer_state(checkpoint)
        best = state.get("best_val_loss")
        by_then = f" (best val loss by then {best:.4f})" if isinstance(best, float) else ""
        return f"{checkpoint}: step {state.get('step', 'unknown')}{by_then}"
    metadata = _metadata(weights)
    if "step" not in metadata:
        return f"{weights}: step unknown (the file does not record it)"
    val_loss = float(metadata["val_loss"])
    return f"{weights}: step {metadata['step']}, val loss {val_loss:.4f} (the best so far)"


def _locate_weights(path: Path) -> tuple[Path, Path | None]:
    """The weights file that ``path`` names, and the checkpoint folder it is in (None for a
    training output folder's best weights)."""
    if (path / TRAINER_STATE_FILE).is_file():
        if (path / SHARDED_STATE_DIR).is_dir():
            raise UserError(
                f"checkpoint {path} holds the shards of a train.fsdp run, not one weights file; "
                f"use the run's best weights ({path.parent.parent}), or resume the run"
            )
        return path / WEIGHTS_FILE, path
    if (path / WEIGHTS_FILE).is_file():
        return path / WEIGHTS_FILE, None
    if path.is_dir():
        raise UserError(
            f"{path} holds no {WEIGHTS_FILE}; pass a training output folder after its first "
            "evaluation, or one of its checkpoints/step_* folders"
        )
    raise UserError(f"checkpoint {path} {why_not(path, 'folder')}; pass a training output folder")
