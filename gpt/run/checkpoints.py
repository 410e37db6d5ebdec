"""A checkpoint folder's format, as its readers need it: the trainer state with its manifest of
the other files (path, size, SHA-256), and the check that the files are still the ones written.
gpt.training.checkpoint writes checkpoints; the trainer, sampling and evaluation read them."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from gpt.base.config import ModelConfig
from gpt.base.errors import UserError
from gpt.base.files import sha256

TRAINER_STATE_FILE = "trainer_state.json"


def manifest(folder: Path) -> dict[str, dict]:
    """Size and SHA-256 of every file under ``folder``, by path relative to it."""
    return {
        path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": sha256(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def find_damage(checkpoint: Path) -> str | None:
    """What is wrong with a checkpoint's files, or None when all are as its manifest records.

    ``trainer_state.json`` holds the manifest, so it is checked by its content instead.
    """
    try:
        files = _readmanifest(checkpoint)
    except ValueError as problem:
        return str(problem)
    for name, entry in files.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != entry["size"]:
            return f"{name} has {size} bytes where {entry['size']} were written"
        if sha256(path) != entry["sha256"]:
            return f"{name} is not the file that was written (its SHA-256 differs)"
    return None


def _readmanifest(checkpoint: Path) -> dict[str, dict]:
    """The manifest in ``trainer_state.json``, once that file is known to be whole."""
    try:
        state = json.loads((checkpoint / TRAINER_STATE_FILE).read_bytes())
    except OSError:
        raise ValueError(f"{TRAINER_STATE_FILE} is missing or unreadable") from None
    except ValueError:
        raise ValueError(f"{TRAINER_STATE_FILE} is not valid JSON") from None
    files = state.get("files") if isinstance(state, dict) else None
    manifest = isinstance(files, dict) and all(
        isinstance(entry, dict)
        and isinstance(entry.get("size"), int)
        and isinstance(entry.get("sha256"), str)
        for entry in files.values()
    )
    if not manifest:
        raise ValueError(f"{TRAINER_STATE_FILE} holds no manifest of the checkpoint's files")
    try:
        ModelConfig.model_validate(state.get("model_config"))
    except ValidationError:
        raise ValueError(f"{TRAINER_STATE_FILE} holds no valid model config") from None
    return files


def read_trainer_state(path: Path) -> dict:
    state_file = path / TRAINER_STATE_FILE
    if not state_file.is_file():
        raise UserError(f"{path} is not a complete checkpoint (no {TRAINER_STATE_FILE})")
    try:
        return json.loads(state_file.read_text(encoding="utf-8"))
    except ValueError:
        raise UserError(f"{state_file} is damaged; resume from another checkpoint") from None


def saved_model_config(path: Path) -> ModelConfig:
    try:
        return ModelConfig.model_validate(read_trainer_state(path)["model_config"])
    except (KeyError, TypeError, ValidationError):
        raise UserError(
            f"{path / TRAINER_STATE_FILE} holds no valid model config; use another checkpoint"
        ) from None
