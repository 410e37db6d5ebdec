"""How often a training step waits for the device: every read of a tensor's value on the host (a
Python number, list or bool from a tensor) is a synchronisation on a GPU, which idles the GPU
until the host queues more work. This counts them on the CPU path, where they are the same calls.

Today a step has two, each read of a value the step needs on the host at once:

* ``_global_batch_step``: ``if torch.isfinite(grad_norm)`` (``Tensor.__bool__``), which skips the
  update of a step whose gradient norm is not finite;
* ``_train_step``: ``summary.tolist()``, the loss, gradient norm and stop flag that the loop checks
  (divergence, stopping) and logs.

The goal (issue 25) is one per log interval; until then this test catches any new one.
"""

import sys
from collections import Counter

import pytest
import torch

from gpt.base.config import load_config
from gpt.training.trainer import Trainer

from .test_trainer import train_args

# the Tensor methods that hand a tensor's value to the host
READS = ["item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"]
TODAY = Counter({("__bool__", "_global_batch_step"): 1, ("tolist", "_train_step"): 1})


class HostReads:
    """Counts the host reads made while :attr:`on` is true, by (method, calling function)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.on = False
        self.counts = Counter()
        for name in READS:
            monkeypatch.setattr(
                torch.Tensor, name, self._counted(name, getattr(torch.Tensor, name))
            )

    def _counted(self, name: str, read):
        def counted(tensor, *args, **kwargs):
            if self.on:
                self.counts[(name, sys._getframe(1).f_code.co_name)] += 1
            return read(tensor, *args, **kwargs)

        return counted


@pytest.mark.parametrize("accumulation", [1, 2])
def test_a_training_step_reads_the_device_twice(
    accumulation, shakespeare_char, tmp_path, monkeypatch, one_thread, fresh_accelerate_state
):
    args = train_args(
        shakespeare_char,
        tmp_path / "run",
        "train.max_iters=6",
        f"train.gradient_accumulation_steps={accumulation}",
        "train.eval_interval=100",
        "train.checkpoint_interval=100",
    )
    trainer = Trainer(load_config(args[1], args[2:]))
    reads = HostReads(monkeypatch)
    per_step = []
    step = trainer._train_step

    def counted_step(number: int):
        reads.on, reads.counts = True, Counter()
        try:
            return step(number)
        finally:
            reads.on = False
            per_step.append(reads.counts)

    trainer._train_step = counted_step
    assert trainer.run().step == 6
    assert per_step == [TODAY] * 6
