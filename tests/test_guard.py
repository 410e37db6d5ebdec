"""The divergence guard in real runs: a step whose loss or gradient norm is not finite changes
neither the weights nor the optimizer's state, and the run stops at its next read of the device
naming that step (:mod:`gpt.training.guard`)."""

import copy
import math

import pytest
import torch

from gpt.base.config import load_config
from gpt.base.errors import UserError
from gpt.training.optim import muon_matrices
from gpt.training.trainer import Trainer

from .test_trainer import train_args


def poison_loss(trainer: Trainer, step: int) -> None:
    """Make the loss of ``step`` (counted from 1) nan, and with it every gradient."""
    forward = trainer.forward

    def poisoned(inputs, targets):
        logits, loss = forward(inputs, targets)
        if trainer.state.step + 1 == step:
            loss = loss * math.nan
        return logits, loss

    trainer.forward = poisoned


def poison_gradient(trainer: Trainer, step: int) -> None:
    """Make one weight's gradient in ``step`` (counted from 1) nan; the loss stays finite."""
    weight = next(trainer.model.parameters())
    weight.register_hook(
        lambda grad: torch.full_like(grad, math.nan) if trainer.state.step + 1 == step else grad
    )


def snapshot_before(trainer: Trainer, step: int) -> dict:
    """The weights and optimizer state the run has when it is about to take ``step``, and (under
    ``steps_taken``, kept current) how many steps it took."""
    saved = {}
    train_step = trainer._train_step

    def step_and_snapshot(number: int):
        result = train_step(number)
        saved["steps_taken"] = number + 1
        if number + 1 == step - 1:
            saved.update(weights(trainer), optimizer=optimizer_state(trainer))
        return result

    trainer._train_step = step_and_snapshot
    return saved


def optimizer_state(trainer: Trainer) -> dict:
    """The optimizer's state (moments, step counts), not its groups, whose learning rate the
    schedule sets before each step."""
    saved = trainer.optimizer.state_dict()
    if "adamw" in saved:  # Muon with AdamW
        return {part: copy.deepcopy(saved[part]["state"]) for part in ("muon", "adamw")}
    return copy.deepcopy(saved["state"])


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}


def assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


@pytest.mark.parametrize(
    "poison, step, what, read_at",
    [
        (poison_loss, 4, "the loss became nan", 5),
        (poison_gradient, 8, "the gradient norm became nan", 10),  # after a read at step 5
    ],
    ids=["loss", "gradient"],
)
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_non_finite_step_changes_nothing_and_stops_the_run_at_the_next_read(
    poison,
    step,
    what,
    read_at,
    optimizer,
    shakespeare_char,
    tmp_path,
    one_thread,
    fresh_accelerate_state,
):
    args = train_args(
        shakespeare_char,
        tmp_path / "run",
        "train.max_iters=20",
        "train.log_interval=5",
        "train.eval_interval=100",
        "train.checkpoint_interval=100",
        f"train.optimizer={optimizer}",
    )
    trainer = Trainer(load_config(args[1], args[2:]))
    poison(trainer, step)
    before = snapshot_before(trainer, step)
    with pytest.raises(UserError, match=f"training diverged at step {step}: {what}; stopped"):
        trainer.run()
    assert before.pop("steps_taken") == read_at  # and the steps up to it applied no update
    after = {**weights(trainer), "optimizer": optimizer_state(trainer)}
    if optimizer == "muon":  # Muon's matrices cannot skip an update on the device; AdamW's can
        matrices = {id(p) for p in muon_matrices(trainer.model)}
        for name, p in trainer.model.named_parameters():
            if id(p) in matrices:
                del before[name], after[name]
        before["optimizer"], after["optimizer"] = (
            before["optimizer"]["adamw"],
            after["optimizer"]["adamw"],
        )
    assert_same(before, after)
