"""The course's lessons as figures: the named analyses a sweep file can ask for (``analysis: NAME``).

An analysis takes the measured runs of a sweep (:class:`gpt.sweep_report.Measured`: each run's
config, metrics, parameters, test loss, the train tokens it could read) and returns figures, each
with a title and a caption for ``OUT/report/sweep.md``. Registering one is a decorated function::

    @analysis("capacity")
    def capacity(runs: list[Measured]) -> list[AnalysisFigure]: ...

An analysis that needs more than the metrics reads it from each run's folder (``run.run.dir``).
Importing this module draws nothing: matplotlib is imported when a figure is drawn.
"""

from __future__ import annotations

from collections.abc import Callable

from gpt.report import DPI, FIGURE_SIZE
from gpt.sweep_report import Analysis, AnalysisFigure, Measured

ANALYSES: dict[str, Analysis] = {}


def analysis(name: str) -> Callable[[Analysis], Analysis]:
    """Register the decorated function as the analysis ``name``."""

    def register(function: Analysis) -> Analysis:
        ANALYSES[name] = function
        return function

    return register


# ----- drawing helpers ----------------------------------------------------------------------------


def new_figure(panels: int = 1, width: float = 1.0):
    """A headless figure (the Agg canvas, no pyplot state) with ``panels`` axes side by side."""
    from matplotlib.figure import Figure

    size = (FIGURE_SIZE[0] * width, FIGURE_SIZE[1])
    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0]
    for ax in axes:
        ax.grid(alpha=0.3)
    return figure, axes


LOSSES = (  # what the loss figures show: label, value, line style
    ("final train loss", lambda m: m.final_train, dict(linestyle="--", marker="s")),
    ("final val loss", lambda m: m.final_val, dict(linestyle=":", marker="v")),
    ("best val loss", lambda m: m.best_val, dict(marker="o")),
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
