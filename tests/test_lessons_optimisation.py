"""The analyses of lessons 5-7 (initialisation, depth, optimiser, and the learning-rate search),
drawn from real tiny runs trained in this process."""

import pytest
from accelerate.state import AcceleratorState

from gpt.analysis.lessons import ANALYSES
from gpt.analysis.runs import load_run
from gpt.analysis.sweep_report import Measured
from gpt.base.config import load_config
from gpt.base.errors import UserError
from gpt.training.trainer import Trainer

from .conftest import ROOT

TINY = [
    "model.n_layer=3", "model.n_head=2", "model.n_embd=16", "model.block_size=16",
    "model.context=4", "train.batch_size=4", "train.max_iters=4", "train.warmup_iters=0",
    "train.eval_interval=2", "train.eval_iters=1", "train.log_interval=1",
    "train.checkpoint_interval=100", "train.wandb.mode=disabled", "train.cpu=true",
    "train.report=false",
]  # fmt: skip
RUNS = {
    "mlp_small": ["model.arch=mlp", "model.init=lecun", "model.init_scale=0.1"],
    "mlp_large": ["model.arch=mlp", "model.init=lecun", "model.init_scale=10"],
    "gpt_neither": ["model.residual=false", "model.norm=none"],
    "cnn_batch_norm": ["model.arch=cnn", "model.norm=batch"],
    "sgd": ["model.arch=mlp", "train.optimizer=sgd", "train.learning_rate=0.1"],
    "lbfgs": [
        "model.arch=mlp",
        "data.train_fraction=0.002",
        "train.batch_size=128",
        "train.optimizer=lbfgs",
        "train.full_batch=true",
        "train.weight_decay=0",
        "train.grad_clip=0",
        "train.learning_rate=1",
        "train.lr_schedule=constant",
    ],  # fmt: skip
    "sgd_diverges": ["model.arch=mlp", "train.optimizer=sgd", "train.learning_rate=1e30"],
    "muon": [
        "model.arch=mlp",
        "train.optimizer=muon",
        "train.learning_rate=0.01",
        "train.muon_learning_rate=0.05",
    ],
}


@pytest.fixture(scope="module")
def runs(shakespeare_char, tmp_path_factory) -> dict[str, Measured]:
    """Every run of RUNS, trained in this process, as a sweep's analysis sees it."""
    out = tmp_path_factory.mktemp("runs")
    measured = {}
    try:
        for name, overrides in RUNS.items():
            args = [f"data.dir={shakespeare_char}", f"train.out_dir={out / name}", *TINY]
            config = load_config(ROOT / "configs" / "shakespeare_char_cpu.yaml", args + overrides)
            try:
                Trainer(config).run()
            except UserError as error:
                assert name == "sgd_diverges" and "diverged" in str(error)
            measured[name] = Measured(name, {}, config, load_run(out / name, name), 1, None, None)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)  # see fresh_accelerate_state
    return measured


def analyse(name: str, runs: dict[str, Measured], *names: str) -> dict:
    figures = ANALYSES[name]([runs[run] for run in names])
    return {figure.file_name: figure.figure for figure in figures}


def lines(axes) -> dict[str, list[float]]:
    return {line.get_label(): list(line.get_ydata()) for line in axes.get_lines()}


def test_initialisation_draws_the_step_zero_spread_through_depth(runs):
    figures = analyse("initialisation", runs, "mlp_small", "mlp_large")
    assert set(figures) == {"initialisation.png", "initialisation_histograms.png"}
    activations, gradients, losses = figures["initialisation.png"].axes[:3]
    small, large = lines(activations)["mlp_small"], lines(activations)["mlp_large"]
    assert len(small) == len(large) == 4  # the embedding and 3 hidden layers
    # at step 0, x0.1 shrinks the signal from layer to layer and x10 grows it
    assert all(later < earlier for earlier, later in zip(small[1:], small[2:], strict=False))
    assert all(later > earlier for earlier, later in zip(large[1:], large[2:], strict=False))
    assert len(lines(losses)["mlp_small"]) == 4  # a train record at every step


def test_depth_draws_each_layers_gradient_at_the_start_and_the_end(runs):
    figures = analyse("depth", runs, "gpt_neither", "cnn_batch_norm")
    curves, at_start, at_end = figures["depth.png"].axes[:3]
    assert set(lines(curves)) == {"gpt_neither", "cnn_batch_norm"}
    for axes in (at_start, at_end):
        drawn = lines(axes)
        assert len(drawn["gpt_neither"]) == len(drawn["cnn_batch_norm"]) == 4
    assert lines(at_start)["gpt_neither"] != lines(at_end)["gpt_neither"]  # trained weights


def test_optimiser_draws_loss_by_step_and_by_time(runs):
    figures = analyse("optimiser", runs, "sgd", "lbfgs")
    by_step, by_time, _ = figures["optimiser.png"].axes[:3]
    for line in by_time.get_lines():
        seconds = list(line.get_xdata())
        assert seconds[0] == 0 and seconds == sorted(seconds) and seconds[-1] > 0
    assert [list(line.get_xdata()) for line in by_step.get_lines()] == [[0, 2, 4]] * 2


def test_the_optimiser_lesson_draws_muon_beside_the_others(runs):
    figures = analyse("optimiser", runs, "sgd", "muon")
    by_step = figures["optimiser.png"].axes[0]
    assert set(lines(by_step)) == {"sgd", "muon"}
    colours = {line.get_label(): line.get_color() for line in by_step.get_lines()}
    assert colours["muon"] != colours["sgd"]


def test_the_learning_rate_search_places_muon_at_its_matrices_rate(runs):
    figures = analyse("lr_search", runs, "sgd", "muon")
    train_losses = figures["lr_search.png"].axes[0]
    points = {line.get_label(): list(line.get_xdata()) for line in train_losses.get_lines()}
    assert points == {"sgd": [0.1], "muon": [0.05]}  # train.muon_learning_rate, not AdamW's 0.01


def test_the_learning_rate_search_marks_a_diverged_run_instead_of_plotting_it(runs):
    figures = analyse("lr_search", runs, "sgd", "sgd_diverges")
    train_losses = figures["lr_search.png"].axes[0]
    points = [line for line in train_losses.get_lines() if line.get_label() == "sgd"]
    assert [list(line.get_xdata()) for line in points] == [[0.1]]
    marked = [line for line in train_losses.get_lines() if line.get_linestyle() == ":"]
    assert [list(line.get_xdata()) for line in marked] == [[1e30, 1e30]]
