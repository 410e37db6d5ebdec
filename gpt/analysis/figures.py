"""The report's figures, drawn with matplotlib's object-oriented API on the Agg canvas (headless,
no global state; matplotlib is imported when a figure is drawn), and the figure setup every
analysis shares."""

from __future__ import annotations

from pathlib import Path

from gpt.analysis.runs import Run
from gpt.base.config import TrainConfig
from gpt.training.schedule import learning_rate

SCHEDULE_POINTS = 2000  # a long run's learning-rate schedule is drawn at about this many steps

FIGURE_SIZE = (7.0, 3.6)  # inches, at DPI dots per inch: 700 x 360 pixels
DPI = 100


def new_figure(panels: int = 1, width: float = 1.0, rows: int = 1, row_height: float | None = None):
    """A headless figure (the Agg canvas, without pyplot's global state) of ``rows`` x ``panels``
    gridded axes, returned as one flat array; ``width`` scales the standard width."""
    from matplotlib.figure import Figure

    height = FIGURE_SIZE[1] if row_height is None else row_height * rows
    figure = Figure(figsize=(FIGURE_SIZE[0] * width, height), dpi=DPI, layout="constrained")
    axes = figure.subplots(rows, panels, squeeze=False).flatten()
    for ax in axes:
        ax.grid(alpha=0.3)
    return figure, axes


def _colors(runs: list[Run]) -> dict[str, str]:
    return {run.name: f"C{index % 10}" for index, run in enumerate(runs)}


# With more runs than this, a loss figure's legend names each run once (by its val line) and shows
# the line styles apart; with every line named, its entries would crowd out the axes.
DETAILED_LEGEND_RUNS = 3


def loss_figure(runs: list[Run], x_axis: str = "step"):
    """Train and val loss against ``step`` or ``tokens``; the best val loss and early stops marked."""
    figure, (ax,) = new_figure()
    colors = _colors(runs)
    detailed = len(runs) <= DETAILED_LEGEND_RUNS
    for run in runs:
        scale = 1 if x_axis == "step" else run.tokens_per_step
        if scale is None:
            continue
        color = colors[run.name]
        ax.plot(
            [r["step"] * scale for r in run.train], [r["loss"] for r in run.train],
            color=color, alpha=0.35, linewidth=0.8,
            label=_legend_label(f"{run.name}: train batches", detailed),
        )  # fmt: skip
        steps = [r["step"] * scale for r in run.evals]
        ax.plot(
            steps, [r["train_loss"] for r in run.evals],
            color=color, linestyle="--", marker=".",
            label=_legend_label(f"{run.name}: train (evaluation)", detailed),
        )  # fmt: skip
        ax.plot(
            steps, [r["val_loss"] for r in run.evals],
            color=color, marker="o", markersize=3,
            label=f"{run.name}: val" if detailed else run.name,
        )  # fmt: skip
        _mark_best_and_stop(ax, run, scale, color, detailed)
    if not detailed:  # the line styles, once, in black
        ax.plot([], [], color="black", alpha=0.35, linewidth=0.8, label="train batches")
        ax.plot([], [], color="black", linestyle="--", marker=".", label="train (evaluation)")
        ax.plot([], [], color="black", marker="o", markersize=3, label="val")
        ax.plot([], [], color="black", marker="*", markersize=9, linestyle="none", label="best val")
    ax.set_xlabel("step" if x_axis == "step" else "tokens seen")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(f"Loss against {'step' if x_axis == 'step' else 'tokens seen'}")
    _legend(ax)
    return figure


def _legend_label(text: str, shown: bool) -> str:
    return text if shown else f"_{text}"  # matplotlib leaves labels starting with _ out of legends


def _legend(ax) -> None:
    """The axes' legend: inside for a few entries, beside the axes (in columns) for many."""
    entries = len(ax.get_legend_handles_labels()[1])
    if entries <= 8:
        ax.legend(fontsize="x-small")
    else:
        columns = -(-entries // 16)
        ax.legend(fontsize="xx-small", loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=columns)


def _mark_best_and_stop(ax, run: Run, scale: int, color: str, detailed: bool) -> None:
    best = run.best_eval
    if best is not None:
        ax.plot(
            [best["step"] * scale], [best["val_loss"]], marker="*", markersize=12, color=color,
            markeredgecolor="black", linestyle="none",
            label=_legend_label(
                f"{run.name}: best val {best['val_loss']:.4f} (step {best['step']})", detailed
            ),
        )  # fmt: skip
    if run.stopped_early:
        ax.axvline(
            run.last_step * scale, color=color, linestyle=":",
            label=_legend_label(f"{run.name}: early stop (step {run.last_step})", detailed),
        )  # fmt: skip


def gap_figure(runs: list[Run]):
    """val - train loss at each evaluation, with the step where it starts to grow."""
    figure, (ax,) = new_figure()
    colors = _colors(runs)
    detailed = len(runs) <= DETAILED_LEGEND_RUNS
    ax.axhline(0.0, color="black", linewidth=0.8)
    for run in runs:
        color = colors[run.name]
        steps = [r["step"] for r in run.evals]
        size = 3 if len(steps) > 1 else 8  # a lone point must be seen
        ax.plot(steps, run.gaps, color=color, marker="o", markersize=size, label=run.name)
        start = run.gap_growth_step
        if start is not None:
            ax.axvline(
                start, color=color, linestyle="--",
                label=_legend_label(f"{run.name}: grows from step {start}", detailed),
            )  # fmt: skip
    span = max((run.last_step for run in runs), default=0)
    if span:  # the steps of the runs, where one evaluation alone would get an axis of its own
        ax.set_xlim(-0.02 * span, 1.02 * span)
    lone = [run.name for run in runs if len(run.evals) == 1]
    if lone:
        ax.text(
            0.5, 0.96, f"{', '.join(lone)}: one evaluation, a point without a trend yet",
            transform=ax.transAxes, ha="center", va="top", fontsize="small",
        )  # fmt: skip
    ax.set_xlabel("step")
    ax.set_ylabel("val loss - train loss (nats)")
    ax.set_title("Generalisation gap")
    _legend(ax)
    return figure


def series_figure(runs: list[Run], key: str, label: str, log_scale: bool = False):
    """One field of the train records against step; ``log_scale`` where it spans over 10x."""
    figure, (ax,) = new_figure()
    colors = _colors(runs)
    values = [r[key] for run in runs for r in run.train]
    for run in runs:
        ax.plot(
            [r["step"] for r in run.train], [r[key] for r in run.train],
            color=colors[run.name], linewidth=1.0, label=run.name,
        )  # fmt: skip
    if log_scale and values and min(values) > 0 and max(values) > 10 * min(values):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(label)
    ax.set_title(label[0].upper() + label[1:])
    _legend(ax)
    return figure


def learning_rate_figure(runs: list[Run]):
    """The learning rate of every step from the first, warmup included: each run's schedule, computed
    from its config.yaml, with the logged rates as points on it (the logged rates alone where the
    config cannot be read). Step k trains at ``learning_rate(k - 1)``, the rate its record logs."""
    figure, (ax,) = new_figure()
    colors = _colors(runs)
    for run in runs:
        color = colors[run.name]
        logged = [r["step"] for r in run.train], [r["lr"] for r in run.train]
        if run.schedule is None:
            ax.plot(*logged, color=color, linewidth=1.0, label=run.name)
            continue
        steps = schedule_steps(run.last_step, run.schedule)
        rates = [learning_rate(step - 1, run.schedule) for step in steps]
        ax.plot(steps, rates, color=color, linewidth=1.0, label=run.name)
        ax.plot(*logged, color=color, marker=".", linestyle="none")  # no label: not in the legend
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.set(xlabel="step", ylabel="learning rate", title="Learning rate")
    _legend(ax)
    return figure


def schedule_steps(last_step: int, train: TrainConfig) -> list[int]:
    """The steps from 1 to ``last_step`` to draw a schedule at: every one in a short run; in a long
    one, about SCHEDULE_POINTS evenly spaced ones and those where the schedule bends (the first at
    the peak rate, the first at ``min_lr``)."""
    stride = max(1, last_step // SCHEDULE_POINTS)
    bends = [b for b in (train.warmup_iters + 1, train.decay_iters + 1) if b <= last_step]
    return sorted({*range(1, last_step + 1, stride), *bends, *([last_step] if last_step else [])})


def throughput_figure(runs: list[Run]):
    """Tokens per second and model FLOPs utilisation against step, side by side."""
    figure, (tokens_ax, mfu_ax) = new_figure(panels=2)
    colors = _colors(runs)
    for run in runs:
        steps = [r["step"] for r in run.train]
        color = colors[run.name]
        tokens_ax.plot(steps, [r["tokens_per_sec"] for r in run.train], color=color, label=run.name)
        mfu_ax.plot(steps, [100 * r["mfu"] for r in run.train], color=color, label=run.name)
    tokens_ax.set(xlabel="step", ylabel="tokens per second", title="Throughput")
    mfu_ax.set(xlabel="step", ylabel="MFU (%)", title="Model FLOPs utilisation")
    tokens_ax.set_ylim(bottom=0)
    mfu_ax.set_ylim(bottom=0)
    _legend(tokens_ax)
    return figure


def save_png(figure, path: Path) -> None:
    """Write ``figure`` as a PNG of at most 256 colours: a third of the size of matplotlib's
    full-colour file and the same to the eye, for plots of a few flat colours."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image  # matplotlib's own image library

    # the Agg canvas's pixels as they are: what savefig would encode as a PNG, for PIL to decode
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    image = Image.frombuffer("RGBA", canvas.get_width_height(physical=True), canvas.buffer_rgba())
    image.convert("RGB").quantize(colors=256).save(path, format="PNG", optimize=True)
