"""The optimizers of ``train.optimizer`` (gpt/training/optim.py) and full-batch steps (``train.full_batch``):
what each update does, and real training runs that learn and resume with each of them."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from gpt.base.config import ModelConfig, TrainConfig, load_config
from gpt.base.errors import UserError
from gpt.models.gpt import build_model
from gpt.training.optim import build_optimizer
from gpt.training.trainer import Trainer

from .conftest import CORPUS, ROOT, run_python
from .test_trainer import assert_same_weights, final_weights, read_metrics

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")  # runs train in this process

CPU = torch.device("cpu")


def tiny_mlp():
    torch.manual_seed(0)
    return build_model(ModelConfig(arch="mlp", n_layer=1, n_embd=8, context=2, vocab_size=11))


def decayed(model) -> list[torch.Tensor]:
    return model.optimizer_groups(0.0)[0]["params"]


def test_build_optimizer_makes_the_configured_optimizer():
    model = tiny_mlp()
    made = {
        name: build_optimizer(model, TrainConfig(optimizer=name, **settings), CPU)
        for name, settings in {
            "adamw": {},
            "adam": {},
            "sgd": {"momentum": 0.9},
            "lbfgs": {"full_batch": True, "weight_decay": 0, "grad_clip": 0},
        }.items()
    }
    assert type(made["adamw"]) is torch.optim.AdamW
    assert type(made["adam"]) is torch.optim.Adam
    assert type(made["sgd"]) is torch.optim.SGD
    assert made["sgd"].param_groups[0]["momentum"] == 0.9
    assert type(made["lbfgs"]) is torch.optim.LBFGS
    for name in ("adamw", "adam", "sgd"):  # decay on matrices only, as configured
        decays = [group["weight_decay"] for group in made[name].param_groups]
        assert decays == [0.1, 0.0], name


def test_adam_weight_decay_is_an_l2_penalty_in_the_gradient():
    """Adam with weight decay λ takes the step that plain Adam takes on loss + λ/2 · ||w||²."""
    tokens = torch.randint(11, (2, 6), generator=torch.Generator().manual_seed(0))
    with_decay, with_penalty = tiny_mlp(), tiny_mlp()
    settings = dict(optimizer="adam", learning_rate=0.01)
    steps = [
        (with_decay, TrainConfig(weight_decay=0.5, **settings), lambda model: 0.0),
        (
            with_penalty,
            TrainConfig(weight_decay=0.0, **settings),
            lambda model: 0.25 * sum(w.square().sum() for w in decayed(model)),
        ),
    ]
    for model, train, penalty in steps:
        optimizer = build_optimizer(model, train, CPU)
        for _ in range(3):
            loss = model(tokens[:, :-1], tokens[:, 1:])[1] + penalty(model)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for a, b in zip(with_decay.parameters(), with_penalty.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_adamw_decay_shrinks_every_decayed_weight_by_the_same_fraction():
    model = tiny_mlp()
    before = [w.detach().clone() for w in decayed(model)]
    optimizer = build_optimizer(model, TrainConfig(learning_rate=0.1, weight_decay=0.5), CPU)
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)  # no gradient: only the decay moves weights
    optimizer.step()
    for old, new in zip(before, decayed(model), strict=True):
        torch.testing.assert_close(new, old * (1 - 0.1 * 0.5))


def test_sgd_momentum_follows_the_running_sum_of_gradients():
    model = tiny_mlp()
    start = [p.detach().clone() for p in model.parameters()]
    train = TrainConfig(optimizer="sgd", momentum=0.5, learning_rate=0.1, weight_decay=0.0)
    optimizer = build_optimizer(model, train, CPU)
    for _ in range(2):  # the same gradient, 1, twice: steps of 0.1, then 0.1 · (1 + 0.5)
        for parameter in model.parameters():
            parameter.grad = torch.ones_like(parameter)
        optimizer.step()
    for old, new in zip(start, model.parameters(), strict=True):
        torch.testing.assert_close(new, old - 0.25)


# ----- real runs through the trainer, on a small training set ------------------------------------


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """The corpus's first 6,000 characters: about 4,800 training tokens, 150 windows of 32."""
    text = tmp_path_factory.mktemp("text") / "small.txt"
    text.write_text(CORPUS.read_text(encoding="utf-8")[:6000], encoding="utf-8")
    out = tmp_path_factory.mktemp("data") / "small"
    result = run_python(
        "-m", "data_prep", "--input", str(text), "--tokenizer", "char", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    return out


RUN = [
    "model.n_layer=1",
    "model.n_embd=16",
    "model.context=4",
    "model.block_size=32",
    "train.batch_size=64",
    "train.max_iters=8",
    "train.warmup_iters=0",
    "train.lr_schedule=constant",
    "train.eval_interval=8",
    "train.eval_iters=1",
    "train.log_interval=1",
    "train.checkpoint_interval=4",
    "train.wandb.mode=disabled",
    "train.cpu=true",
]
FULL_BATCH = ["train.full_batch=true", "train.weight_decay=0", "train.grad_clip=0"]
OPTIMIZERS = {
    "sgd with momentum": ["train.optimizer=sgd", "train.momentum=0.9", "train.learning_rate=0.3"],
    "adam": ["train.optimizer=adam", "train.learning_rate=1e-2", "train.min_lr=0"],
    "lbfgs": ["train.optimizer=lbfgs", *FULL_BATCH, "train.learning_rate=1"],
}


def train_here(data: Path, out: Path, *overrides: str) -> None:
    """A run of the MLP baseline in this process, as ``python train.py`` would do it."""
    args = [f"data.dir={data}", f"train.out_dir={out}", *RUN, *overrides]
    Trainer(load_config(ROOT / "configs" / "mlp_baseline.yaml", args)).run()


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_each_optimizer_learns_and_resumes_from_a_checkpoint(small_data, tmp_path, optimizer):
    """Stopped after the checkpoint at step 4 (its folder as a kill then would leave it), a run
    resumes to the weights of an uninterrupted one: the optimizer's state (momentum, moments,
    L-BFGS's curvature pairs) is saved and restored."""
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    train_here(small_data, uninterrupted, *OPTIMIZERS[optimizer])
    losses = [r["loss"] for r in read_metrics(uninterrupted) if r["kind"] == "train"]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.3, losses

    shutil.copytree(uninterrupted, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_0000008")
    train_here(small_data, resumed, *OPTIMIZERS[optimizer])
    assert_same_weights(final_weights(uninterrupted), final_weights(resumed))


def test_full_batch_steps_train_on_every_window_of_the_training_split(small_data, tmp_path):
    """Gradient descent proper: the same batch every step, so the logged loss is the whole
    training split's, and plain SGD lowers it at every step."""
    out = tmp_path / "run"
    train_here(small_data, out, "train.optimizer=sgd", *FULL_BATCH, "train.learning_rate=0.3")
    records = read_metrics(out)
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert losses == sorted(losses, reverse=True) and len(set(losses)) == len(losses), losses
    train_tokens = (small_data / "train.bin").stat().st_size // 2  # uint16 ids
    windows = (train_tokens - 1) // 32
    assert json.loads((out / "run.json").read_text())["tokens_per_step"] == windows * 32


def test_full_batch_refuses_more_than_one_process(small_data, tmp_path, monkeypatch):
    monkeypatch.setattr(Accelerator, "num_processes", property(lambda self: 2))
    args = [f"data.dir={small_data}", f"train.out_dir={tmp_path / 'run'}", *RUN]
    config = load_config(ROOT / "configs" / "mlp_baseline.yaml", [*args, *OPTIMIZERS["lbfgs"]])
    with pytest.raises(UserError, match="trains in one process, not 2"):
        Trainer(config)
