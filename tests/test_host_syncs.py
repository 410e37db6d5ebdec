"""How often a training step waits for the device: every read of a tensor's value on the host (a
Python number, list or bool from a tensor) is a synchronisation on a GPU, which idles the GPU until
the host queues more work. This counts them on the CPU path, where they are the same calls.

A step reads the device once per log interval and never in between: the loss, gradient norm, stop
flag and divergence record, in one ``tolist()`` (:meth:`gpt.training.guard.DivergenceGuard.read`).
Everything in between stays on the device, the skipping of a diverged step's update included.
"""

import sys
from collections import Counter
from contextlib import contextmanager

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gpt.base.config import load_config
from gpt.training import trainer as trainer_module
from gpt.training.pace import Pace
from gpt.training.trainer import Trainer

from .test_trainer import train_args

# the Tensor methods that hand a tensor's value to the host
READS = ["item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"]
# the operators that wait for the device where torch calls them itself (an ``item()`` in C++, an
# output whose size depends on the values)
WAITING_OPS = {"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.unique"}
ONE_READ = Counter({("tolist", "read"): 1})
NONE = Counter()


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


class WaitingOps(TorchDispatchMode):
    """Counts into ``reads`` the :data:`WAITING_OPS` that torch runs, from Python or C++."""

    def __init__(self, reads: HostReads):
        super().__init__()
        self.reads = reads

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if name in WAITING_OPS:
            self.reads.counts[(name, "torch")] += 1
        return func(*args, **(kwargs or {}))


def reads_per_step(trainer: Trainer, monkeypatch: pytest.MonkeyPatch) -> list[Counter]:
    """Run ``trainer``, counting the host reads of each step: everything the loop times as the
    step (:class:`Pace`), which is the step itself and its read, not evaluations or checkpoints."""
    reads = HostReads(monkeypatch)
    per_step = []

    class CountingPace(Pace):
        @contextmanager
        def step(self):
            reads.on, reads.counts = True, Counter()
            try:
                with super().step(), WaitingOps(reads):
                    yield
            finally:
                reads.on = False
                per_step.append(reads.counts)

    monkeypatch.setattr(trainer_module, "Pace", CountingPace)
    trainer.run()
    return per_step


@pytest.mark.parametrize(
    "options",
    [
        [],
        ["train.gradient_accumulation_steps=2"],
        ["train.optimizer=sgd", "train.momentum=0.9"],
        ["train.optimizer=muon"],
        ["train.full_batch=true", "train.optimizer=adam", "data.train_fraction=0.002"],
    ],
    ids=["adamw", "accumulation", "sgd", "muon", "full-batch"],
)
def test_a_training_step_reads_the_device_once_per_log_interval(
    options, shakespeare_char, tmp_path, monkeypatch, one_thread, fresh_accelerate_state
):
    args = train_args(
        shakespeare_char,
        tmp_path / "run",
        "train.max_iters=7",
        "train.log_interval=3",
        "train.eval_interval=100",
        "train.checkpoint_interval=100",
        *options,
    )
    trainer = Trainer(load_config(args[1], args[2:]))
    per_step = reads_per_step(trainer, monkeypatch)
    # steps 3 and 6 log, and so does step 7, the last
    assert per_step == [NONE, NONE, ONE_READ, NONE, NONE, ONE_READ, ONE_READ]
