"""Micro-batches prepared ahead (:mod:`gpt.training.prefetch`): the same batches as reading them in
the loop, in any order of requests, and a run stopped and resumed mid-way still exact."""

import os
import signal

import pytest
import torch
from accelerate.state import AcceleratorState

from gpt.base.config import load_config
from gpt.data.tokens import BatchSlice, TokenData
from gpt.training.prefetch import Prefetcher
from gpt.training.trainer import Trainer

from .test_trainer import assert_same_weights, final_weights, read_metrics, train_args

ACCUMULATION = 3


def direct_batches(data: TokenData):
    """Micro-batch ``number`` of a run with batch 4 and 3 accumulation steps, read directly."""

    def fetch(number: int) -> tuple[torch.Tensor, torch.Tensor]:
        step, micro_step = divmod(number, ACCUMULATION)
        part = BatchSlice.for_micro_step(4, ACCUMULATION, 1, 0, micro_step)
        return data.train_batch(1337, step, part)

    return fetch


def assert_same_batch(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and torch.equal(x, y)


def test_prefetched_batches_are_the_direct_ones_in_order_and_after_a_jump(shakespeare_char):
    fetch = direct_batches(TokenData(shakespeare_char, 32))
    prefetcher = Prefetcher(fetch, torch.device("cpu"))
    try:
        # in order (each next one prepared ahead), then a jump forward and one back, as a
        # resumed run or a benchmark asks
        for number in [*range(12), 30, 31, 32, 5, 6]:
            assert_same_batch(prefetcher.get(number), fetch(number))
    finally:
        prefetcher.close()


def test_a_failed_read_fails_the_get_of_that_batch_and_no_other(shakespeare_char):
    fetch = direct_batches(TokenData(shakespeare_char, 32))

    def fails_at_4(number: int):
        if number == 4:
            raise OSError(5, "Input/output error")
        return fetch(number)

    prefetcher = Prefetcher(fails_at_4, torch.device("cpu"))
    try:
        assert_same_batch(prefetcher.get(3), fetch(3))  # batch 4 failed ahead, unasked
        with pytest.raises(OSError, match="Input/output error"):
            prefetcher.get(4)
        assert_same_batch(prefetcher.get(5), fetch(5))
    finally:
        prefetcher.close()


RUN = [
    "train.max_iters=12",
    "train.log_interval=5",
    "train.eval_interval=100",
    "train.checkpoint_interval=100",
    f"train.gradient_accumulation_steps={ACCUMULATION}",
    "train.batch_size=4",
    "model.dropout=0.1",
]


def train_in_process(args: list[str], sigterm_in_step: int | None = None) -> int:
    """Run ``args`` here; with ``sigterm_in_step``, this process gets a SIGTERM during that step
    (counted from 1). Returns the step the run ended at."""
    trainer = Trainer(load_config(args[1], args[2:]))
    if sigterm_in_step is not None:
        train_step = trainer._train_step

        def signalled_step(step: int):
            if step + 1 == sigterm_in_step:
                os.kill(os.getpid(), signal.SIGTERM)
            return train_step(step)

        trainer._train_step = signalled_step
    try:
        return trainer.run().step
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_a_run_stopped_between_log_points_resumes_to_bitwise_identical_weights(
    shakespeare_char, tmp_path, one_thread
):
    """Stopped in step 7 (between the reads at steps 5 and 10, with the batch of step 8 prepared
    ahead), the run resumes from its checkpoint at step 7 to the weights of an uninterrupted one."""
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    assert train_in_process(train_args(shakespeare_char, uninterrupted, *RUN)) == 12
    assert train_in_process(train_args(shakespeare_char, resumed, *RUN), sigterm_in_step=7) == 7
    assert train_in_process(train_args(shakespeare_char, resumed, *RUN)) == 12
    assert_same_weights(final_weights(uninterrupted), final_weights(resumed))
    losses = [(r["step"], r["loss"]) for r in read_metrics(resumed) if r["kind"] == "train"]
    assert losses == [
        (r["step"], r["loss"]) for r in read_metrics(uninterrupted) if r["kind"] == "train"
    ]


def test_the_trainer_trains_on_the_batches_of_seed_step_and_position(
    shakespeare_char, tmp_path, one_thread, fresh_accelerate_state
):
    args = train_args(shakespeare_char, tmp_path / "run", *RUN, "train.max_iters=4")
    trainer = Trainer(load_config(args[1], args[2:]))
    forward, seen = trainer.forward, []

    def recording(inputs, targets):
        seen.append((inputs.clone(), targets.clone()))
        return forward(inputs, targets)

    trainer.forward = recording
    trainer._evaluate = lambda scheduled=True: None  # its batches are not the training ones
    trainer.run()
    fetch = direct_batches(trainer.data)
    assert len(seen) == 4 * ACCUMULATION
    for number, batch in enumerate(seen):
        assert_same_batch(batch, fetch(number))
