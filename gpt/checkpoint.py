"""Weights and resumable training state on disk: atomic to write, verified and safe to read.

A training output folder (``train.out_dir``) holds one run: ``config.yaml``, ``tokenizer.json``,
``metrics.jsonl`` (written by the trainer), and two kinds of file written here:

* ``model.safetensors``: the best weights, with the model config in the safetensors metadata, so
  :func:`load_model` can rebuild the model from the file alone, and the step and validation loss
  they were saved at, so :func:`describe_trained` can say which weights a sample comes from.
* ``checkpoints/step_XXXXXXX/``: the full state that :mod:`accelerate` saves (model, optimizer,
  gradient scaler, each process's RNG state; FSDP writes its sharded state as sub-folders) plus
  ``trainer_state.json`` (step, best val loss, the model config, ...). The learning-rate schedule
  is a pure function of the step, so the step is its whole state.

A checkpoint is written under a hidden temporary name. Once every process has written its files,
rank 0 writes ``trainer_state.json`` last, with a manifest of the other files (path, size,
SHA-256), flushes the folder to disk and renames it. So a kill at any instant leaves the previous
checkpoint intact and never a half-written one that looks complete, and :func:`find_damage` can
tell later whether a checkpoint's files are still the ones written. A write that fails (a full
disk) removes the temporary folder and stops the run with one line (:func:`write_failed`).

A new run in a folder that holds an earlier one moves the earlier one's files to
``earlier_runs/<UTC time>/`` first (:func:`move_earlier_run_aside`).

Nothing here unpickles: weights are safetensors, and accelerate reads its other files with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from accelerate import Accelerator
from pydantic import ValidationError

from gpt.agreement import first_problem
from gpt.config import ModelConfig
from gpt.errors import UserError
from gpt.files import replace_file
from gpt.integrity import TOKENIZER_KEY, check_tokenizer, check_weights, sealed
from gpt.lm import LanguageModel
from gpt.model import build_model
from gpt.tokenizer import Tokenizer, load_tokenizer

WEIGHTS_FILE = "model.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
CHECKPOINTS_DIR = "checkpoints"
EARLIER_RUNS_DIR = "earlier_runs"
# The files a run writes in its output folder (W&B's offline runs included).
RUN_FILES = (
    "config.yaml",
    "tokenizer.json",
    "metrics.jsonl",
    WEIGHTS_FILE,
    CHECKPOINTS_DIR,
    "wandb",
    "run.json",  # gpt.report's facts and figures, and gpt.evaluate's results (eval_*.json)
    "report",
)
_CHECKPOINT_PREFIX = "step_"
_DAMAGED_PREFIX = "damaged-"

# What a failed write raises: OSError from Python's own files, RuntimeError from torch.save (on a
# full disk: "unexpected pos ..."), SafetensorError from safetensors ("I/O error: No space left").
WRITE_ERRORS = (OSError, RuntimeError, safetensors.SafetensorError)


def save_model(
    path: str | Path, model: LanguageModel, metadata: dict[str, str] | None = None
) -> None:
    """Write ``model``'s weights and config to a safetensors file, atomically.

    ``metadata`` goes into the file's header beside the config: the trainer records the ``step``
    and ``val_loss`` of the best weights there, and the tokenizer's fingerprint
    (:mod:`gpt.integrity`). A digest of it all is added, which :func:`load_model` verifies.
    """
    metadata = {**(metadata or {}), "model_config": model.config.model_dump_json()}
    metadata = sealed(model.state_dict(), metadata)

    def write(temporary: Path) -> None:
        safetensors.torch.save_model(model, str(temporary), metadata=metadata)
        _use_default_permissions(temporary)

    replace_file(Path(path), write)


def _use_default_permissions(path: Path) -> None:
    """safetensors creates files readable by their owner only; give this one the permissions any
    new file gets (rw-r--r-- under the usual umask), so the weights can be shared like the rest."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


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
        raise UserError(f"weights file {path} does not exist; train a model first")
    try:
        metadata = _metadata(path)
        if config is None:
            config = ModelConfig.model_validate_json(metadata["model_config"])
        model = build_model(config)
        safetensors.torch.load_model(model, str(path), strict=True)
    except (safetensors.SafetensorError, OSError, KeyError, ValueError, RuntimeError) as error:
        raise UserError(
            f"{path} is not a complete weights file ({first_line(error)}); "
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
        model, _ = _read_model(weights, _saved_model_config(checkpoint))
        tokenizer_path = checkpoint.parent.parent / "tokenizer.json"
        fingerprint = read_trainer_state(checkpoint).get(TOKENIZER_KEY)
    else:
        model = load_model(weights)
        tokenizer_path = weights.parent / "tokenizer.json"
        fingerprint = _metadata(weights).get(TOKENIZER_KEY)
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
        return path / WEIGHTS_FILE, path
    if (path / WEIGHTS_FILE).is_file():
        return path / WEIGHTS_FILE, None
    if path.is_dir():
        raise UserError(
            f"{path} holds no {WEIGHTS_FILE}; pass a training output folder after its first "
            "evaluation, or one of its checkpoints/step_* folders"
        )
    raise UserError(f"checkpoint {path} does not exist; pass a training output folder")


# ----- writing checkpoints -----------------------------------------------------------------------


def save_checkpoint(accelerator: Accelerator, out_dir: Path, state: dict, keep: int) -> Path:
    """Save the full training state as ``checkpoints/step_XXXXXXX`` and keep the newest ``keep``.

    Every process must call this: each writes its own part (accelerate gathers sharded state
    collectively, and every process saves its RNG state), and all wait for all after each phase,
    so rank 0 publishes the folder only once every file is in it. A failed write on any process
    stops every process with the same :class:`UserError`.
    """
    root = out_dir / CHECKPOINTS_DIR
    final = root / f"{_CHECKPOINT_PREFIX}{state['step']:07d}"
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
        return first_line(error)
    return None


def _empty_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)


def _publish(temporary: Path, final: Path, state: dict) -> None:
    """Seal a fully written temporary folder with its manifest and rename it to ``final``."""
    for weights in temporary.glob("*.safetensors"):
        _use_default_permissions(weights)
    sealed = {**state, "files": _manifest(temporary)}
    (temporary / TRAINER_STATE_FILE).write_text(json.dumps(sealed, indent=2), encoding="utf-8")
    _fsync_tree(temporary)
    if final.exists():  # the same step saved again after a resume: replace it
        shutil.rmtree(final)
    os.replace(temporary, final)
    _fsync(final.parent)  # the rename itself


def _manifest(folder: Path) -> dict[str, dict]:
    """Size and SHA-256 of every file under ``folder``, by path relative to it."""
    return {
        path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


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


def write_failed(target: str, reason: str, out_dir: Path) -> UserError:
    """A write that failed (a full disk, most often), as one line: what, why, the space left and
    the newest checkpoint, which is intact (a checkpoint is published only once complete)."""
    newest = latest_checkpoint(out_dir)
    free = shutil.disk_usage(out_dir).free / 2**20
    intact = f"{newest} is intact" if newest else "no checkpoint was saved yet"
    return UserError(
        f"could not write {target} ({reason}); {free:.1f} MiB free on its disk; {intact}: free "
        "some space (or set another train.out_dir) and run the same command again"
    )


# ----- reading checkpoints -----------------------------------------------------------------------


def find_damage(checkpoint: Path) -> str | None:
    """What is wrong with a checkpoint's files, or None when all are as its manifest records.

    ``trainer_state.json`` holds the manifest, so it is checked by its content instead.
    """
    try:
        files = _read_manifest(checkpoint)
    except ValueError as problem:
        return str(problem)
    for name, entry in files.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != entry["size"]:
            return f"{name} has {size} bytes where {entry['size']} were written"
        if _sha256(path) != entry["sha256"]:
            return f"{name} is not the file that was written (its SHA-256 differs)"
    return None


def _read_manifest(checkpoint: Path) -> dict[str, dict]:
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


def set_aside(checkpoint: Path) -> Path:
    """Rename a damaged checkpoint to ``damaged-step_XXXXXXX`` (kept, and no longer resumed)."""
    aside = checkpoint.with_name(f"{_DAMAGED_PREFIX}{checkpoint.name}")
    suffix = 2
    while aside.exists():
        aside = checkpoint.with_name(f"{_DAMAGED_PREFIX}{checkpoint.name}-{suffix}")
        suffix += 1
    os.replace(checkpoint, aside)
    return aside


def move_earlier_run_aside(out_dir: Path) -> Path | None:
    """Move an earlier run's files out of the way of a new run in ``out_dir``.

    They go to ``earlier_runs/<UTC time>/`` whole, so the two runs never mix (the earlier run's
    checkpoints with the new run's, say). Returns that folder, or None if there was nothing to move.
    """
    present = [out_dir / name for name in RUN_FILES if (out_dir / name).exists()]
    present += sorted(out_dir.glob("eval_*.json"))
    if not present:
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H-%M-%SZ")
    destination = out_dir / EARLIER_RUNS_DIR / stamp
    suffix = 2
    while destination.exists():
        destination = out_dir / EARLIER_RUNS_DIR / f"{stamp}-{suffix}"
        suffix += 1
    destination.mkdir(parents=True)
    for path in present:
        os.replace(path, destination / path.name)
    return destination


def remove_unfinished(out_dir: Path) -> None:
    """Delete the temporary folders of checkpoints whose writing was cut short (by a kill)."""
    for unfinished in (out_dir / CHECKPOINTS_DIR).glob(f".{_CHECKPOINT_PREFIX}*.tmp"):
        shutil.rmtree(unfinished, ignore_errors=True)


def check_model_shape(checkpoint: Path, model_config: ModelConfig) -> None:
    """Refuse to resume a checkpoint whose parameters have other shapes than the config's."""
    saved, wanted = _shape(_saved_model_config(checkpoint)), _shape(model_config)
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


def load_checkpoint(accelerator: Accelerator, checkpoint: Path) -> dict:
    """Restore the training state from ``checkpoint`` and return its trainer state."""
    accelerator.load_state(str(checkpoint))
    return read_trainer_state(checkpoint)


def latest_checkpoint(out_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(out_dir)
    return checkpoints[-1] if checkpoints else None


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary and damaged ones are not named step_*)."""
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
    """The settings that decide the parameters' shapes and what they compute (dropout, say, may
    change on resume; a model without residual connections would not be the same function)."""
    fields = ("arch", "n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")
    fields += ("norm", "residual")
    fields += {"mlp": ("context",), "cnn": ("kernel_size",)}.get(config.arch, ())
    return {name: getattr(config, name) for name in fields}


def first_line(error: BaseException) -> str:
    """An exception's message in one line (its type if it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
