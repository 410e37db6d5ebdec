"""The course's lessons as figures: the named analyses a sweep file can ask for (``analysis: NAME``).

An analysis takes the measured runs of a sweep (:class:`gpt.analysis.sweep_report.Measured`: each run's
config, metrics, parameters, test loss, the train tokens it could read) and returns figures, each
with a title and a caption for ``OUT/report/sweep.md``. Registering one is a decorated function::

    @analysis("capacity")
    def capacity(runs: list[Measured]) -> list[AnalysisFigure]: ...

An analysis that needs more than the metrics reads it from each run's folder (``run.run.dir``).
Importing this module draws nothing: matplotlib is imported when a figure is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from gpt.analysis.figures import new_figure
from gpt.analysis.sweep_report import Analysis, AnalysisFigure, Measured
from gpt.run.folder import read_config

ANALYSES: dict[str, Analysis] = {}


def analysis(name: str) -> Callable[[Analysis], Analysis]:
    """Register the decorated function as the analysis ``name``."""

    def register(function: Analysis) -> Analysis:
        ANALYSES[name] = function
        return function

    return register


# ----- drawing helpers ----------------------------------------------------------------------------


LOSSES = (  # what the loss figures show: label, value, line style
    ("final train loss", lambda m: m.final_train, dict(linestyle="--", marker="s")),
    ("final val loss", lambda m: m.final_val, dict(linestyle=":", marker="v")),
    # a ring around the final val marker: a run whose last evaluation is its best shows both
    ("best val loss", lambda m: m.best_val, dict(marker="o", markersize=10, fillstyle="none")),
    ("test loss (best weights)", lambda m: m.test_loss, dict(marker="^")),
)


LOSS_COLORS = ("C0", "C3", "C1", "C2")


def plot_losses_against(ax, runs: list[Measured], x: Callable[[Measured], float], label: str):
    """Train, best val and test loss of each run against ``x``, each run's point named."""
    shown = [m for m in runs if x(m) is not None]
    for index, (name, value, style) in enumerate(LOSSES):
        points = [(x(m), value(m)) for m in shown if value(m) is not None]
        if points:
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, color=LOSS_COLORS[index], label=name, **style)
    for m in shown:
        if m.best_val is not None:
            ax.annotate(
                m.name, (x(m), m.best_val), textcoords="offset points", xytext=(4, 4),
                fontsize="x-small",
            )  # fmt: skip
    ax.set_xlabel(label)
    ax.set_ylabel("loss (nats per token)")
    ax.legend(fontsize="x-small")


def plot_val_curves(ax, runs: list[Measured], x_axis: str = "tokens"):
    """Each run's validation loss against tokens seen (or step), overlaid."""
    for index, m in enumerate(runs):
        scale = (m.run.tokens_per_step or 1) if x_axis == "tokens" else 1
        evals = m.run.evals
        ax.plot(
            [r["step"] * scale for r in evals], [r["val_loss"] for r in evals],
            color=f"C{index % 10}", marker=".", linewidth=1.0, label=m.name,
        )  # fmt: skip
    ax.set_xlabel("tokens seen" if x_axis == "tokens" else "step")
    ax.set_ylabel("val loss (nats per token)")
    ax.legend(fontsize="x-small", ncol=2)


def parameters_label(m: Measured) -> str:
    return "-" if m.parameters is None else f"{m.parameters / 1000:,.0f}k"


# ----- 1. capacity ---------------------------------------------------------------------------------


@analysis("capacity")
def capacity(runs: list[Measured]) -> list[AnalysisFigure]:
    figure, (ax,) = new_figure()
    plot_losses_against(ax, runs, lambda m: m.parameters, "parameters (log scale)")
    ax.set_xscale("log")
    ax.set_title("Loss against model size, at a fixed token budget")
    return [
        AnalysisFigure(
            "capacity.png",
            "Loss against model size",
            "Final train loss, best validation loss and test loss of each model size. Where the "
            "validation and test losses fall with size, the smaller models underfit "
            "(approximation error); where they rise again while the train loss still falls, the "
            "larger ones overfit (estimation error). The gap between the train and val curves is "
            "the generalisation gap.",
            figure,
        )
    ]


def plot_loss_bars(ax, runs: list[Measured], label: Callable[[Measured], str] = lambda m: m.name):
    """The losses of each run as a group of bars, one group per run."""
    width = 0.8 / len(LOSSES)
    for index, (name, value, _) in enumerate(LOSSES):
        positions = [i + (index - (len(LOSSES) - 1) / 2) * width for i in range(len(runs))]
        heights = [value(m) if value(m) is not None else float("nan") for m in runs]
        ax.bar(positions, heights, width, color=LOSS_COLORS[index], label=name)
    ax.set_xticks(range(len(runs)), [label(m) for m in runs], fontsize="small")
    finite = [value(m) for _, value, _ in LOSSES for m in runs if value(m) is not None]
    if finite:  # bars from a floor near the lowest loss, so that differences show
        low, high = min(finite), max(finite)
        ax.set_ylim(max(0.0, low - 0.25 * (high - low) - 0.05), high + 0.1 * (high - low) + 0.02)
    ax.set_ylabel("loss (nats per token)")
    ax.legend(fontsize="x-small")


# ----- 2. architecture -----------------------------------------------------------------------------


@analysis("architecture")
def architecture(runs: list[Measured]) -> list[AnalysisFigure]:
    figure, (bars, curves) = new_figure(panels=2, width=1.4)
    plot_loss_bars(bars, runs, lambda m: f"{m.name}\n{parameters_label(m)} params")
    bars.set_title("Losses at matched size and token budget")
    plot_val_curves(curves, runs)
    curves.set_title("Validation loss against tokens seen")
    return [
        AnalysisFigure(
            "architecture.png",
            "Architectures at matched parameters",
            "Left: final train, final val, best val and test loss of each architecture, with its "
            "parameter count. Right: the validation loss of each against tokens seen. At the same "
            "size and budget, the differences are the architectures' inductive biases: what "
            "each can represent (the MLP sees a fixed window of characters, the CNN a receptive "
            "field set by its depth, GPT its whole context) and how easily it is trained.",
            figure,
        )
    ]


# ----- 3. data -------------------------------------------------------------------------------------


@analysis("data")
def data(runs: list[Measured]) -> list[AnalysisFigure]:
    figure, (losses, gaps) = new_figure(panels=2, width=1.4)
    plot_losses_against(losses, runs, lambda m: m.train_tokens, "training tokens (log scale)")
    losses.set_xscale("log")
    losses.set_title("Loss against the size of the training set")
    shown = sorted((m.train_tokens, m.gap, m.name) for m in runs if m.gap is not None)
    gaps.plot([t for t, _, _ in shown], [g for _, g, _ in shown], marker="o", color="C3")
    for tokens, gap, name in shown:
        gaps.annotate(name, (tokens, gap), textcoords="offset points", xytext=(4, 4), fontsize="x-small")  # fmt: skip
    gaps.axhline(0.0, color="black", linewidth=0.8)
    gaps.set_xscale("log")
    gaps.set(xlabel="training tokens (log scale)", ylabel="final val - final train loss (nats)")
    gaps.set_title("Generalisation gap against data")
    return [
        AnalysisFigure(
            "data.png",
            "Loss and generalisation gap against data",
            "The same model and token budget on the first 2% to 100% of the training text. Left: "
            "the losses against the number of training tokens; right: the generalisation gap at "
            "the end of each run. With less data the model sees each token more often and fits "
            "it better than text it has not seen: the estimation error that more data removes.",
            figure,
        )
    ]


# ----- 4. regularisation ---------------------------------------------------------------------------


@analysis("regularisation")
def regularisation(runs: list[Measured]) -> list[AnalysisFigure]:
    figure, (bars, curves) = new_figure(panels=2, width=1.6)
    plot_loss_bars(bars, runs)
    bars.tick_params(axis="x", labelrotation=45)
    bars.set_title("Losses of each regulariser")
    plot_val_curves(curves, runs, x_axis="step")
    curves.set_title("Validation loss against step")
    return [
        AnalysisFigure(
            "regularisation.png",
            "Regularisation on a model that overfits",
            "Left: final train, final val, best val and test loss of each run (test scores the "
            "best weights, so every run is early-stopped at its best evaluation there). Right: "
            "the validation curves overlaid; an early stop ends its curve.",
            figure,
        )
    ]


# ----- helpers of lessons 5-7: inside the network, through depth ----------------------------------


def step_zero_diagnostics(m: Measured):
    """:func:`gpt.analysis.diagnostics.diagnose` of a run's model as it was at step 0, on its first batch."""
    from gpt.analysis.diagnostics import diagnose, first_batch_of_run, initial_weights_of_run

    config = resolved_config(m)
    return diagnose(initial_weights_of_run(config), *first_batch_of_run(config))


def final_diagnostics(m: Measured):
    """The same for the run's last checkpoint (None without one), on the same first batch."""
    from gpt.analysis.diagnostics import diagnose, first_batch_of_run
    from gpt.run.folder import latest_checkpoint
    from gpt.run.weights import load_trained

    checkpoint = latest_checkpoint(m.run.dir)
    if checkpoint is None:
        return None
    model, _ = load_trained(checkpoint)
    return diagnose(model, *first_batch_of_run(resolved_config(m)))


def resolved_config(m: Measured):
    """The config the run trained with, as the trainer wrote it (the vocabulary size filled in)."""
    return read_config(m.run.dir)


def plot_through_depth(ax, runs: list[Measured], values: dict[str, list[float]], label: str):
    """A per-layer value of each run against the layer's depth (0: the embedding), log scale."""
    for index, m in enumerate(runs):
        if m.name in values:
            ax.plot(values[m.name], color=f"C{index % 10}", marker=".", label=m.name)
    ax.set_yscale("log")
    ax.set_xlabel("layer (0: the embedding)")
    ax.set_ylabel(label)


def plot_train_curves(ax, runs: list[Measured], x_axis: str = "step"):
    """Each run's logged training loss against step (or training seconds)."""
    for index, m in enumerate(runs):
        records = m.run.train
        xs = [r["step"] for r in records] if x_axis == "step" else training_seconds(m)
        ax.plot(
            xs, [r["loss"] for r in records],
            color=f"C{index % 10}", linewidth=1.0, label=m.name,
        )  # fmt: skip
    ax.set_xlabel("step" if x_axis == "step" else "training seconds")
    ax.set_ylabel("train loss (nats per token)")


def training_seconds(m: Measured) -> list[float]:
    """The training time at each train record: the steps' own, evaluations and checkpoints
    excluded (defined in :mod:`gpt.analysis.runs`)."""
    return m.run.training_seconds_at_records()


# ----- 5. initialisation --------------------------------------------------------------------------


@analysis("initialisation")
def initialisation(runs: list[Measured]) -> list[AnalysisFigure]:
    found = {m.name: step_zero_diagnostics(m) for m in runs}
    figure, axes = new_figure(3, width=1.7)
    activations = {name: [layer.activation_std for layer in d.layers] for name, d in found.items()}
    gradients = {name: [layer.gradient_std for layer in d.layers] for name, d in found.items()}
    plot_through_depth(axes[0], runs, activations, "activation std at step 0")
    plot_through_depth(axes[1], runs, gradients, "gradient std at step 0")
    plot_train_curves(axes[2], runs)
    axes[0].set_title("Forward: each layer's output")
    axes[1].set_title("Backward: d loss / d output")
    axes[2].set_title("Training loss")
    axes[2].legend(fontsize="x-small")
    return [
        AnalysisFigure(
            "initialisation.png",
            "Activations and gradients through depth at step 0, and the loss curves",
            "Left: the standard deviation of each layer's output on the first batch, before any "
            "training (layer 0: the embedding); middle: that of the gradient of the loss with "
            "respect to it, on the way back. An initialisation that keeps the signal's variance "
            "draws flat lines; one too small makes both shrink geometrically with depth, one too "
            "large makes them grow. Right: each run's training loss (the logged batches').",
            figure,
        ),
        AnalysisFigure(
            "initialisation_histograms.png",
            "The distribution of every layer's activations at step 0",
            "One panel per run: the histogram of each layer's outputs on the first batch, the "
            "lecture's plot. Each panel has its own horizontal scale: read its axis.",
            histogram_figure(runs, found),
        ),
    ]


def histogram_figure(runs: list[Measured], found: dict):
    """A grid of panels, one per run, each with a histogram line per layer (densities)."""
    columns = min(3, len(runs))
    rows = -(-len(runs) // columns)
    figure, axes = new_figure(columns, width=1.5, rows=rows, row_height=2.1)
    for ax, m in zip(axes, runs, strict=False):
        layers = found[m.name].layers[1:]
        for depth, layer in enumerate(layers, 1):
            counts, edges = layer.activation_histogram.counts, layer.activation_histogram.edges
            centres = [(left + right) / 2 for left, right in zip(edges, edges[1:], strict=False)]
            share = [count / sum(counts) for count in counts]
            ax.plot(centres, share, color=f"C{depth % 10}", linewidth=0.8, label=f"layer {depth}")
        ax.set_title(m.name, fontsize="small")
        ax.tick_params(labelsize="x-small")
    axes[0].legend(fontsize="xx-small")
    for ax in axes[len(runs) :]:
        ax.set_visible(False)
    return figure


# ----- 6. depth -----------------------------------------------------------------------------------


@analysis("depth")
def depth(runs: list[Measured]) -> list[AnalysisFigure]:
    at_start = {m.name: step_zero_diagnostics(m) for m in runs}
    at_end = {m.name: final_diagnostics(m) for m in runs}
    figure, axes = new_figure(3, width=1.7)
    plot_val_curves(axes[0], runs, x_axis="step")
    axes[0].set_title("Validation loss")
    for ax, found, when in ((axes[1], at_start, "at step 0"), (axes[2], at_end, "at the end")):
        norms = {
            name: [layer.parameter_grad_norm for layer in d.layers]
            for name, d in found.items()
            if d is not None
        }
        plot_through_depth(ax, runs, norms, "gradient norm of the layer's parameters")
        ax.set_title(f"Gradient per layer, {when}")
    return [
        AnalysisFigure(
            "depth.png",
            "Trainability: the loss curves, and the gradient each layer gets",
            "Left: validation loss. Middle and right: the norm of the gradient of each layer's "
            "own parameters on the first batch (layer 0: the embedding tables, which in GPT are "
            "also the output head), with the initial weights and with the last checkpoint's. "
            "Where it falls by orders of magnitude towards the first layers, those layers no "
            "longer learn: the vanishing gradient that residual connections and normalisation "
            "are there to prevent.",
            figure,
        )
    ]


# ----- 7. optimiser -------------------------------------------------------------------------------


def optimiser_name(m: Measured) -> str:
    """``sgd``, ``sgd + momentum 0.9``, ``adam``, ``adamw``, ``lbfgs`` or ``muon``."""
    train = m.config.train
    return f"sgd + momentum {train.momentum:g}" if train.momentum else train.optimizer


def diverged(m: Measured) -> bool:
    """A run that ended before its last step without stopping early or being interrupted: the
    trainer stops a run whose loss or gradient is no longer finite."""
    run = m.run
    return (
        run.last_step < m.config.train.max_iters and not run.stopped_early and not run.interrupted
    )


def seconds_at_evaluations(m: Measured) -> list[float]:
    """The training seconds (:func:`training_seconds`) at each evaluation's step."""
    at_step = dict(zip([r["step"] for r in m.run.train], training_seconds(m), strict=True))
    at_step[0] = 0.0
    return [at_step.get(r["step"], math.nan) for r in m.run.evals]


@analysis("optimiser")
def optimiser(runs: list[Measured]) -> list[AnalysisFigure]:
    figure, axes = new_figure(3, width=1.7)
    colours = {name: f"C{i}" for i, name in enumerate(dict.fromkeys(map(optimiser_name, runs)))}
    for m in runs:
        style = dict(
            color=colours[optimiser_name(m)], marker=".", linewidth=1.0, label=m.name,
            linestyle="--" if m.config.train.lr_schedule == "constant" else "-",
        )  # fmt: skip
        steps = [r["step"] for r in m.run.evals]
        seconds = seconds_at_evaluations(m)
        train_losses = [r["train_loss"] for r in m.run.evals]
        axes[0].plot(steps, train_losses, **style)
        axes[1].plot(seconds, train_losses, **style)
        axes[2].plot(seconds, [r["val_loss"] for r in m.run.evals], **style)
    for ax, x_label, y_label, title in (
        (axes[0], "step", "train loss", "Training loss by step"),
        (axes[1], "training seconds", "train loss", "Training loss by time"),
        (axes[2], "training seconds", "val loss", "Validation loss by time"),
    ):
        ax.set(xlabel=x_label, ylabel=f"{y_label} (nats per token)", title=title)
    axes[0].legend(fontsize="xx-small", ncol=2)
    return [
        AnalysisFigure(
            "optimiser.png",
            "Each optimiser's training loss, by step and by time",
            "The training loss (the evaluations' estimate over fixed windows of the training "
            "set) of each optimiser at its tuned learning rate, with cosine decay (solid) and at "
            "a constant rate (dashed), against step and against the training loop's seconds; "
            "right, the validation loss. An L-BFGS step is a pass over the whole training set "
            "plus its line search's passes, so compare it by time.",
            figure,
        )
    ]


def searched_rate(m: Measured) -> float:
    """The learning rate a search varies: Muon's for its matrices (``train.muon_learning_rate``;
    AdamW's for the rest stays fixed), every other optimiser's ``train.learning_rate``."""
    train = m.config.train
    return train.muon_learning_rate if train.optimizer == "muon" else train.learning_rate


@analysis("lr_search")
def lr_search(runs: list[Measured]) -> list[AnalysisFigure]:
    figure, axes = new_figure(2, width=1.3)
    by_optimiser: dict[str, list[Measured]] = {}
    for m in runs:
        by_optimiser.setdefault(optimiser_name(m), []).append(m)
    for index, (name, tried) in enumerate(by_optimiser.items()):
        tried.sort(key=searched_rate)
        finished = [m for m in tried if not diverged(m)]
        for ax, loss in ((axes[0], "final_train"), (axes[1], "final_val")):
            ax.plot(
                [searched_rate(m) for m in finished],
                [getattr(m, loss) for m in finished],
                color=f"C{index}", marker="o", label=name,
            )  # fmt: skip
            for m in tried:
                if diverged(m):
                    ax.axvline(searched_rate(m), color=f"C{index}", linestyle=":")
    for ax, label in ((axes[0], "final train loss"), (axes[1], "final val loss")):
        ax.set(xscale="log", xlabel="learning rate", ylabel=f"{label} (nats per token)")
    axes[0].set_title("The learning rate search")
    axes[0].legend(fontsize="x-small")
    return [
        AnalysisFigure(
            "lr_search.png",
            "Final loss against the learning rate, per optimiser",
            "Each optimiser at a few constant learning rates, a factor of about 3 apart (Muon: the "
            "rate of its matrices, train.muon_learning_rate). A dotted "
            "line marks a rate at which training diverged (the trainer stopped it at a "
            "non-finite loss or gradient). The tuned rate is the one of the lowest final train "
            "loss, the quantity an optimiser minimises.",
            figure,
        )
    ]
