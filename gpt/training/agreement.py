"""Processes that agree: the first problem any process had, known to every process.

A multi-process run must take the same decision everywhere (stop, fall back to an older
checkpoint), so a problem one process meets is shared with all. It travels as a fixed-size byte
tensor through one ``all_gather``, rather than through accelerate's ``gather_object`` or
``broadcast_object_list``, which pickle: with gloo, processes that had used those object
collectives aborted at exit now and then ("terminate called without an active exception"),
turning finished runs into failed ones. Measured on 2-process runs: with them, 1 run in 36 still
aborted even though the trainer ends on a barrier; with this, none in 132.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from accelerate import Accelerator

from gpt.base.errors import UserError, describe_os_error

T = TypeVar("T")
MESSAGE_BYTES = 1024  # a problem is one line; longer ones are cut


def first_problem(accelerator: Accelerator, problem: str | None) -> str | None:
    """The problem of the lowest-ranked process that had one (the same on every process), or
    None if none had."""
    if accelerator.num_processes == 1:
        return problem
    encoded = list((problem or "").encode("utf-8")[:MESSAGE_BYTES])
    row = [problem is not None, *encoded, *[0] * (MESSAGE_BYTES - len(encoded))]
    mine = torch.tensor([row], dtype=torch.uint8, device=accelerator.device)
    for row in accelerator.gather(mine).cpu():
        if row[0]:
            return bytes(row[1:].tolist()).rstrip(b"\0").decode("utf-8", errors="replace")
    return None


def on_main_process(accelerator: Accelerator, write: Callable[[], T]) -> T | None:
    """Run ``write`` on the main process alone and return what it returns there (None on the
    others); its failure (a :class:`UserError`, or an :class:`OSError` in words) stops every
    process with the same line. Every process must call this, at the same point: without it, the
    others would wait for the main process in their next collective operation until the
    distributed timeout, then report that they lost contact."""
    problem, result = None, None
    if accelerator.is_main_process:
        try:
            result = write()
        except UserError as error:
            problem = str(error)
        except OSError as error:
            problem = describe_os_error(error)
    problem = first_problem(accelerator, problem)
    if problem:
        raise UserError(problem)
    return result
