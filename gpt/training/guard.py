"""The divergence guard: an update whose loss or gradient norm is not finite is never applied, and
the run stops naming the step where that happened, without the step ever waiting for the device.

Reading a tensor's value on the host (``.item()``, ``.tolist()``, ``if tensor:``) makes the host
wait until the device has computed it, and on a GPU the GPU then idles until the host queues more
work. So the guard keeps its record on the device, and the host reads it only where it has to:

* every step, :meth:`DivergenceGuard.update` checks the step's loss and gradient norm on the device
  and records the first step where one of them is not finite (which step, its loss and its norm;
  later ones leave the record as it is). It then applies the optimizer's update unless the record
  holds a step, this one or an earlier one: once a run has diverged, no update is applied;
* the trainer reads the record at its sync points, together with the values it logs
  (:meth:`DivergenceGuard.read`: one read of the device), and stops the run there with the step
  the record names.

How an update is skipped on the device: fused AdamW and Adam (the trainer's default on CUDA and the
CPU, and Muon's AdamW half) take a ``found_inf`` tensor, the way :class:`torch.amp.GradScaler`
hands it to them: when it is 1 their kernel leaves the weights, the moments and the step count as
they were. The other optimizers (SGD, Muon's matrices, Adam where it is not fused) have no such
input, so their update is applied and the weights are not finite from then on; but nothing reads
those weights: the run stops at the next sync point, and every evaluation, checkpoint and save of
weights comes after one (:meth:`gpt.training.trainer.Trainer._sync_due`). L-BFGS moves the weights
inside its own line search, before any check can see the loss, and is in the same case.

With fp16, the gradient scaler skips a step whose gradients overflowed and lowers its scale: that
is its design, not divergence, so the guard then checks the loss alone and leaves the update to the
scaler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gpt.training.optim import MuonWithAdamW


@dataclass(frozen=True)
class Divergence:
    step: int  # the step whose loss or gradient norm was not finite (counted from 1)
    what: str  # "the loss became nan", "the gradient norm became inf"


class DivergenceGuard:
    """The record of the first step whose loss or gradient norm was not finite, on the device.

    The record is ``[steps since the last read, loss, gradient norm]`` in float32, all zero while
    no step has diverged; counting the step from the last read keeps it exact in float32 (up to
    2**24 steps between two reads, where the step itself would be exact only up to step 2**24).
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, device: torch.device, checks_grad_norm: bool
    ):
        """``optimizer``: the one the trainer steps (unwrapped); ``checks_grad_norm``: False
        where fp16's gradient scaler handles gradients that are not finite."""
        self.device = device
        self.checks_grad_norm = checks_grad_norm
        self._skippable = _fused_parts(optimizer) if checks_grad_norm else []
        self._record = torch.zeros(3, device=device)
        self._steps_since_read = 0
        self._read_at = 0  # the step of the last read (the loop's first step before any)

    def start(self, step: int) -> None:
        """Count steps from ``step``, the step a run (or a resumed one) starts at."""
        self._read_at, self._steps_since_read = step, 0

    def check(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        """Record this step if its ``loss`` or ``grad_norm`` is the first not finite; returns 1.0
        where this step or an earlier one diverged (so no update may be applied), else 0.0."""
        self._steps_since_read += 1
        loss = loss.detach().float()
        grad_norm = torch.as_tensor(grad_norm, dtype=torch.float32, device=self.device)
        finite = torch.isfinite(loss)
        if self.checks_grad_norm:
            finite = finite & torch.isfinite(grad_norm)
        first = ~finite & (self._record[0] == 0)
        now = torch.stack([torch.full_like(loss, self._steps_since_read), loss, grad_norm])
        self._record = torch.where(first, now, self._record)
        return (self._record[0] > 0).float()

    def update(
        self, optimizer: torch.optim.Optimizer, loss: torch.Tensor, grad_norm: torch.Tensor
    ) -> None:
        """:meth:`check` this step, then apply ``optimizer``'s update unless this step or an
        earlier one diverged; all on the device."""
        skip = self.check(loss, grad_norm)
        for part in self._skippable:
            part.found_inf = skip
        try:
            optimizer.step()
        finally:
            for part in self._skippable:
                del part.found_inf

    def read(self, others: torch.Tensor) -> tuple[Divergence | None, list[float]]:
        """The divergence recorded since the last read, if any, and the values of ``others`` (a
        float32 vector on the device), in one read of the device."""
        steps, loss, grad_norm, *values = torch.cat([self._record, others]).tolist()
        if steps == 0:
            self.start(self._read_at + self._steps_since_read)
            return None, values
        what = f"the gradient norm became {grad_norm}"
        if not math.isfinite(loss):
            what = f"the loss became {loss}"
        return Divergence(self._read_at + int(steps), what), values


def _fused_parts(optimizer: torch.optim.Optimizer) -> list[torch.optim.Optimizer]:
    """The parts of ``optimizer`` that can skip an update on the device: fused Adam and AdamW."""
    parts = (
        [optimizer.muon, optimizer.adamw] if isinstance(optimizer, MuonWithAdamW) else [optimizer]
    )
    return [
        part
        for part in parts
        if isinstance(part, torch.optim.Adam | torch.optim.AdamW) and part.defaults.get("fused")
    ]
