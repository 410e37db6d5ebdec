"""Which checkpoint a run resumes from (``train.resume``), and what becomes of damaged ones.

* ``auto``: checkpoints are tried newest first. One whose files do not match its manifest, or
  whose files cannot be read as a checkpoint of this model (unreadable, cut short, other shapes),
  is set aside as ``checkpoints/damaged-step_XXXXXXX`` (kept for a post-mortem, never resumed
  again) with one line saying what was wrong, and the next older one is tried. If every checkpoint
  is damaged, the run stops with a :class:`UserError`. A load that fails for another reason (out of
  memory, a lost process, a library that reads its files differently) says nothing about the
  checkpoint: the run stops with one line and leaves the checkpoint where it is.
* a path: that checkpoint, or a :class:`UserError` if it is damaged (no fallback: it was chosen).
* ``never``, or ``auto`` without checkpoints: nothing is resumed.

A checkpoint of another model shape or tokenizer is not damaged but foreign: ``check`` refuses it
with a :class:`UserError` before anything is loaded or written. Every process takes part, and all
come to the same decision.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import safetensors
import torch
from accelerate import Accelerator

from gpt.base.errors import UserError, one_line
from gpt.run.checkpoints import find_damage
from gpt.run.folder import CHECKPOINTS_DIR, list_checkpoints
from gpt.training.agreement import first_problem
from gpt.training.checkpoint import remove_unfinished, set_aside

# What torch raises for a file it cannot read as the state it expects: cut short, not a
# checkpoint, or tensors of other shapes.
_DAMAGE_SIGNS = ("size mismatch", "Error(s) in loading state_dict", "PytorchStreamReader")


def resume(
    accelerator: Accelerator,
    setting: str,
    out_dir: Path,
    check: Callable[[Path], None],
    restore: Callable[[Path], None],
) -> Path | None:
    """Restore the checkpoint that ``setting`` (``train.resume``) names; None if there is none.

    ``check(checkpoint)`` raises a :class:`UserError` for a checkpoint that belongs to another
    run; ``restore(checkpoint)`` loads it, raising anything if it cannot.
    """
    if accelerator.is_main_process:
        remove_unfinished(out_dir)
    accelerator.wait_for_everyone()  # so that every process sees the same checkpoints
    if setting == "never":
        return None
    if setting == "auto":
        return _resume_newest_intact(accelerator, out_dir, check, restore)
    checkpoint = Path(setting)
    if not checkpoint.is_dir():
        raise UserError(
            f"train.resume={setting}: no such checkpoint folder; use auto, never or an existing "
            "checkpoints/step_* folder"
        )
    problem = _try(accelerator, checkpoint, check, restore)
    if problem:
        raise UserError(
            f"train.resume={setting}: the checkpoint {problem}; choose another checkpoint, or "
            "train.resume=auto to take the newest intact one"
        )
    return checkpoint


def _resume_newest_intact(
    accelerator: Accelerator,
    out_dir: Path,
    check: Callable[[Path], None],
    restore: Callable[[Path], None],
) -> Path | None:
    newest_first = list_checkpoints(out_dir)[::-1]
    for index, checkpoint in enumerate(newest_first):
        problem = _try(accelerator, checkpoint, check, restore)
        if problem is None:
            return checkpoint
        aside = set_aside(checkpoint) if accelerator.is_main_process else None
        older = newest_first[index + 1] if index + 1 < len(newest_first) else None
        accelerator.print(
            f"checkpoint {checkpoint} {problem}; set aside as {aside}; "
            + (f"trying {older.name}" if older else "no older checkpoint is left")
        )
        accelerator.wait_for_everyone()
    if newest_first:
        raise UserError(
            f"no intact checkpoint in {out_dir / CHECKPOINTS_DIR} (the damaged ones are set aside "
            "as damaged-step_*); start over with train.resume=never"
        )
    return None


def _try(
    accelerator: Accelerator,
    checkpoint: Path,
    check: Callable[[Path], None],
    restore: Callable[[Path], None],
) -> str | None:
    """Restore ``checkpoint``: None if done, else what is wrong with it (the same on every process)."""
    damage = find_damage(checkpoint) if accelerator.is_main_process else None
    damage = first_problem(accelerator, damage)  # rank 0 alone reads the files through
    if damage:
        return f"is damaged ({damage})"
    check(checkpoint)
    try:
        restore(checkpoint)
        failure = None
    except Exception as error:  # whatever it is, every process must hear of it
        kind = "damaged" if is_damage(error) else "failed"
        failure = f"{kind} {type(error).__name__}: {one_line(error)}"
    failure = first_problem(accelerator, failure)  # the same on every process
    if failure is None:
        return None
    kind, _, reason = failure.partition(" ")
    if kind == "failed":
        raise UserError(
            f"checkpoint {checkpoint} could not be loaded ({reason}); its files are as written, "
            "so it is left as it is: remove the cause and run the same command again"
        )
    return f"could not be loaded ({reason})"


def is_damage(error: Exception) -> bool:
    """Whether loading failed because of the checkpoint's files (unreadable, cut short, foreign,
    of other shapes) rather than for a reason of its own (out of memory, a lost process)."""
    if isinstance(error, (torch.OutOfMemoryError, torch.distributed.DistError)):
        return False
    if isinstance(error, (safetensors.SafetensorError, pickle.UnpicklingError, EOFError)):
        return True
    return isinstance(error, RuntimeError) and any(sign in str(error) for sign in _DAMAGE_SIGNS)
