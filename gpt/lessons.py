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


LOSSES = (  # what the loss-against-x figures plot: label, value, line style
    ("final train loss", lambda m: m.final_train, dict(linestyle="--", marker="s")),
    ("best val loss", lambda m: m.best_val, dict(marker="o")),
    ("test loss", lambda m: m.test_loss, dict(marker="^")),
)


def plot_losses_against(ax, runs: list[Measured], x: Callable[[Measured], float], label: str):
    """Train, best val and test loss of each run against ``x``, each run's point named."""
    shown = [m for m in runs if x(m) is not None]
    for index, (name, value, style) in enumerate(LOSSES):
        points = [(x(m), value(m)) for m in shown if value(m) is not None]
        if points:
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, color=f"C{index}", label=name, **style)
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
