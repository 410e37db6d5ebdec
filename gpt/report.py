"""``python -m gpt.report RUN_DIR [RUN_DIR ...]`` (or ``gpt-report``): see what training runs learned.

Reads training output folders and writes PNG figures and a ``report.md`` that shows them under a
summary table. The trainer calls :func:`report_finished_run` at the end of every run (and on a clean
stop), so every output folder holds ``report/report.md``; running this command compares runs, or
adds the test results of ``python -m gpt.evaluate --json`` to a run's report.

What it reads from a run folder: ``metrics.jsonl`` (train records and evaluations), ``config.yaml``,
``run.json`` (written by the trainer at the end of a run: processes, tokens per step, how it
stopped), the header of ``model.safetensors`` (the parameter count) and ``eval_test.json``. Figures
are drawn with matplotlib's object-oriented API on the Agg canvas: headless, no global state.

Definitions:

* **steps**: the steps the run took, as the trainer counts them (its console, its checkpoints and
  ``run.json`` say the same), not the last logged step: a run stopped between two logs took more.
  A folder without ``run.json`` counts to its last record.
* **tokens seen** after a step: step x tokens per step, where a step takes ``batch_size x
  gradient_accumulation_steps x processes x block_size`` tokens. Runs without ``run.json`` (made
  before the trainer wrote one) are counted as one process, and the report says so.
* **wall time**: the training loop's time after the first evaluation, evaluations and checkpoints
  included, start-up excluded. Each train record covers the steps since the one before it at its
  tokens/s, so the time is the sum over the records of tokens per step x steps / tokens per second.
  It needs no clock in the files, and counts a resumed run's sessions once each.
* **generalisation gap**: val loss - train loss at each evaluation (both the evaluation's estimates
  on held-out windows of each split, so they are comparable). It **starts to grow** at the first
  evaluation of the final stretch over which it rises at every evaluation by more than
  ``GAP_TOLERANCE`` nats, provided that stretch holds at least ``GAP_MIN_RISES`` rises: the point
  from which the model keeps fitting its training data better than data it has not seen, to the
  end of the run. No step is given if the gap is not growing at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import safetensors
import yaml

from gpt.cli import ArgumentParser, run_cli
from gpt.config import TrainConfig
from gpt.errors import UserError
from gpt.files import replace_file, write_text
from gpt.schedule import learning_rate

RUN_FACTS_FILE = "run.json"
REPORT_DIR = "report"
REPORT_FILE = "report.md"
GAP_TOLERANCE = 1e-3  # nats: a rise of the gap smaller than this is noise, not growth
GAP_MIN_RISES = 2  # rises in a row before the gap counts as growing
FIGURE_SIZE = (7.0, 3.6)  # inches, at DPI dots per inch: 700 x 360 pixels
DPI = 100
SCHEDULE_POINTS = 2000  # a long run's learning-rate schedule is drawn at about this many steps


@dataclass
class Run:
    """One training output folder, as the report needs it."""

    name: str
    dir: Path
    train: list[dict]  # the "train" records of metrics.jsonl
    evals: list[dict]  # the "eval" records
    last_step: int  # the steps the run has taken (see final_step)
    schedule: TrainConfig | None  # config.yaml's train section, for its learning-rate schedule
    tokens_per_step: int | None
    processes_assumed: bool  # True: no run.json, so tokens per step assume one process
    parameters: int | None
    stopped_early: bool
    interrupted: bool
    test: dict | None  # eval_test.json, if gpt.evaluate has written one

    @property
    def best_eval(self) -> dict | None:
        """The evaluation with the lowest val loss (the first of equals): the kept weights."""
        return min(self.evals, key=lambda r: r["val_loss"], default=None)

    @property
    def gaps(self) -> list[float]:
        return [r["val_loss"] - r["train_loss"] for r in self.evals]

    @property
    def gap_growth_step(self) -> int | None:
        return gap_growth_start([r["step"] for r in self.evals], self.gaps)

    @property
    def tokens_seen(self) -> int | None:
        return None if self.tokens_per_step is None else self.last_step * self.tokens_per_step

    @property
    def wall_seconds(self) -> float | None:
        """The training loop's time, from the train records (see the module docstring)."""
        if self.tokens_per_step is None or not self.train:
            return None
        seconds, previous = 0.0, 0
        for record in self.train:
            seconds += self.tokens_per_step * (record["step"] - previous) / record["tokens_per_sec"]
            previous = record["step"]
        return seconds


def gap_growth_start(
    steps: list[int],
    gaps: list[float],
    tolerance: float = GAP_TOLERANCE,
    min_rises: int = GAP_MIN_RISES,
) -> int | None:
    """The step from which the gap rises at every evaluation to the end (see the module docstring)."""
    start = len(gaps) - 1
    while start > 0 and gaps[start] - gaps[start - 1] > tolerance:
        start -= 1
    return steps[start] if len(gaps) - 1 - start >= min_rises else None


# ----- reading a run folder -----------------------------------------------------------------------


def load_run(directory: Path, name: str) -> Run:
    metrics = directory / "metrics.jsonl"
    if not metrics.is_file():
        raise UserError(f"{directory} has no metrics.jsonl; pass a training output folder")
    records = _read_records(metrics)
    config = _read_yaml(directory / "config.yaml")
    facts = _read_json(directory / RUN_FACTS_FILE) or {}
    tokens_per_step = facts.get("tokens_per_step") or _tokens_per_step_of(config)
    evals = [r for r in records if r.get("kind") == "eval"]
    return Run(
        name=name,
        dir=directory,
        train=[r for r in records if r.get("kind") == "train"],
        evals=evals,
        last_step=final_step(facts, records),
        schedule=_schedule_of(config),
        tokens_per_step=tokens_per_step,
        processes_assumed="tokens_per_step" not in facts and tokens_per_step is not None,
        parameters=count_parameters(directory / "model.safetensors"),
        stopped_early=facts.get("stopped_early", _looks_stopped_early(evals, config)),
        interrupted=facts.get("interrupted", False),
        test=_read_json(directory / "eval_test.json"),
    )


def final_step(facts: dict, records: list[dict]) -> int:
    """The steps a run has taken: the trainer's own count, which its console, checkpoints and
    ``run.json`` give. A run stopped between two logs took steps that no record holds, so the
    records alone fall short; they count only where a run has no ``run.json`` (killed, or from
    before the trainer wrote one) or has gone past it (resumed since, and not ended yet)."""
    logged = max((r["step"] for r in records), default=0)
    return max(facts.get("step", 0), logged)


def _read_records(path: Path) -> list[dict]:
    """metrics.jsonl's records; a line cut short by a killed run is skipped."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return [r for r in records if isinstance(r, dict) and "step" in r]


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_yaml(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _schedule_of(config: dict) -> TrainConfig | None:
    """The train section of a run's config.yaml, which fixes its learning rate at every step; None
    where there is none, or it is not one this version reads (a run of an older version)."""
    if not isinstance(config.get("train"), dict):
        return None
    try:
        return TrainConfig.model_validate(config["train"])
    except pydantic.ValidationError:
        return None


def _tokens_per_step_of(config: dict) -> int | None:
    """Tokens per step from config.yaml, for one process."""
    try:
        train, model = config["train"], config["model"]
        return train["batch_size"] * train["gradient_accumulation_steps"] * model["block_size"]
    except (KeyError, TypeError):
        return None


def _looks_stopped_early(evals: list[dict], config: dict) -> bool:
    """For runs without run.json: did the last evaluations meet the early-stopping rule?"""
    train = config.get("train") or {}
    patience = train.get("early_stopping_patience") or 0
    if not patience or not evals or evals[-1]["step"] >= train.get("max_iters", math.inf):
        return False
    best = evals.index(min(evals, key=lambda r: r["val_loss"]))
    return len(evals) - 1 - best >= patience


def count_parameters(weights: Path) -> int | None:
    """The parameters in a safetensors file, from its header (a tied matrix is stored once)."""
    try:
        with safetensors.safe_open(str(weights), framework="pt") as file:
            return sum(math.prod(file.get_slice(key).get_shape()) for key in file.keys())
    except (OSError, safetensors.SafetensorError):
        return None


# ----- figures ------------------------------------------------------------------------------------


def _new_figure(panels: int = 1):
    from matplotlib.figure import Figure  # the Agg canvas, without pyplot's global state

    figure = Figure(figsize=FIGURE_SIZE, dpi=DPI, layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0]
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
    figure, (ax,) = _new_figure()
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
    figure, (ax,) = _new_figure()
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
    figure, (ax,) = _new_figure()
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
    figure, (ax,) = _new_figure()
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
    figure, (tokens_ax, mfu_ax) = _new_figure(panels=2)
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


FIGURES: dict[str, tuple[str, Callable[[list[Run]], Any]]] = {
    "loss_vs_step.png": ("Loss against step", lambda runs: loss_figure(runs, "step")),
    "loss_vs_tokens.png": ("Loss against tokens seen", lambda runs: loss_figure(runs, "tokens")),
    "generalisation_gap.png": ("Generalisation gap", gap_figure),
    "learning_rate.png": ("Learning rate", learning_rate_figure),
    "grad_norm.png": (
        "Gradient norm",
        lambda runs: series_figure(runs, "grad_norm", "gradient norm (before clipping)", True),
    ),
    "throughput.png": ("Throughput and MFU", throughput_figure),
}


def save_png(figure, path: Path) -> None:
    """Write ``figure`` as a PNG of at most 256 colours: a third of the size of matplotlib's
    full-colour file and the same to the eye, for plots of a few flat colours."""
    from PIL import Image  # matplotlib's own image library

    rendered = io.BytesIO()
    figure.savefig(rendered, format="png")
    with Image.open(rendered) as image:
        image.convert("RGB").quantize(colors=256).save(path, format="PNG", optimize=True)


# ----- the report ---------------------------------------------------------------------------------


def write_report(run_dirs: Iterable[Path], out: Path) -> Path:
    """Write the figures and ``report.md`` of ``run_dirs`` into ``out``; returns report.md's path."""
    runs = load_runs([Path(d) for d in run_dirs])
    out.mkdir(parents=True, exist_ok=True)
    for file_name, (_, draw) in FIGURES.items():
        figure = draw(runs)
        replace_file(out / file_name, lambda path, f=figure: save_png(f, path))
    report = out / REPORT_FILE
    text = report_markdown(runs)
    write_text(report, text)
    return report


def load_runs(run_dirs: list[Path]) -> list[Run]:
    """The runs, named by their folders (by their paths where two folders share a name)."""
    names = [d.absolute().name for d in run_dirs]
    return [
        load_run(d, name if names.count(name) == 1 else str(d))
        for d, name in zip(run_dirs, names, strict=True)
    ]


def report_markdown(runs: list[Run]) -> str:
    lines = [f"# Training report: {', '.join(run.name for run in runs)}", ""]
    lines += summary_table(runs)
    lines += [
        "",
        "Losses are mean cross-entropies in nats per token. Best, final train and final val loss "
        "come from the evaluations during training (`train.eval_iters` batches of each split); "
        "the best val loss is that of the kept weights, `model.safetensors`. Test loss and bits "
        "per byte score every token of the test split with those weights: "
        "`python -m gpt.evaluate RUN_DIR --json` (then `python -m gpt.report RUN_DIR` again); "
        "- where that has not been run. Wall time is the training loop's, from its first step to "
        "its end, evaluations and checkpoints included.",
    ]
    notes = [
        f"`{run.name}` has no run.json: its tokens per step assume one process."
        for run in runs
        if run.processes_assumed
    ]
    if notes:
        lines += ["", *notes]
    for file_name, (title, _) in FIGURES.items():
        lines += ["", f"## {title}", "", *_explain(file_name, runs), f"![{title}]({file_name})"]
    return "\n".join(lines) + "\n"


def _explain(file_name: str, runs: list[Run]) -> list[str]:
    if file_name == "loss_vs_step.png":
        return [
            "Thin lines: the loss of each training batch; dashed: train loss at the evaluations; "
            "solid: validation loss. A star marks the best validation loss, a dotted line an "
            "early stop.",
            "",
        ]
    if file_name == "learning_rate.png":
        return [
            "The learning rate of every step, from the first: the warmup from 0, then the decay, "
            "computed from each run's schedule in its config.yaml; dots: the rates its train "
            "records logged.",
            "",
        ]
    if file_name != "generalisation_gap.png":
        return []
    return [
        "Validation loss minus train loss at each evaluation. It starts to grow at the first "
        "evaluation of the final stretch over which it rises at every evaluation (by more than "
        f"{GAP_TOLERANCE} nats, at least {GAP_MIN_RISES} times in a row): from there on the model "
        "fits its training data better than data it has not seen.",
        "",
        *[_gap_course(run) for run in runs],
        "",
    ]


def _gap_course(run: Run) -> str:
    if len(run.evals) == 1:
        return (
            f"`{run.name}`: one evaluation (step {run.evals[0]['step']}), so one point: how the "
            "gap changes shows from the second on."
        )
    step = run.gap_growth_step
    if step is not None:
        return f"`{run.name}`: the gap grows from step {step} on."
    return f"`{run.name}`: the gap is not growing at the end of the run."


def summary_table(runs: list[Run]) -> list[str]:
    header = [
        "run", "steps", "parameters", "tokens seen", "wall time", "best val loss (step)",
        "final train loss", "final val loss", "test loss", "test bits per byte",
    ]  # fmt: skip
    rows = [header, ["---"] * len(header)]
    for run in runs:
        best, last = run.best_eval, (run.evals[-1] if run.evals else None)
        test = run.test or {}
        rows.append(
            [
                run.name,
                _steps(run),
                _integer(run.parameters),
                _integer(run.tokens_seen),
                duration_text(run.wall_seconds),
                f"{best['val_loss']:.4f} ({best['step']})" if best else "-",
                f"{last['train_loss']:.4f}" if last else "-",
                f"{last['val_loss']:.4f}" if last else "-",
                _number(test.get("loss")),
                _number(test.get("bits_per_byte")),
            ]
        )
    return ["| " + " | ".join(row) + " |" for row in rows]


def _steps(run: Run) -> str:
    if run.stopped_early:
        return f"{run.last_step:,} (early stop)"
    if run.interrupted:
        return f"{run.last_step:,} (stopped by signal)"
    return f"{run.last_step:,}"


def _integer(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {rest} s" if minutes else f"{seconds:.1f} s"


# ----- at the end of a training run ---------------------------------------------------------------


def report_finished_run(
    out_dir: Path,
    *,
    step: int,
    processes: int,
    tokens_per_step: int,
    stopped_early: bool,
    interrupted: bool,
) -> None:
    """Write ``run.json`` and ``report/`` into a run's folder. Called by the trainer's main process
    when a run ends or stops cleanly; a failure here prints one warning line and nothing else, for
    a report is never worth a failed run."""
    try:
        facts = {
            "step": step,
            "processes": processes,
            "tokens_per_step": tokens_per_step,
            "stopped_early": stopped_early,
            "interrupted": interrupted,
        }
        text = json.dumps(facts, indent=2) + "\n"
        write_text(out_dir / RUN_FACTS_FILE, text)
        report = write_report([out_dir], out_dir / REPORT_DIR)
        print(f"report: {report}")
    except Exception as error:  # anything at all: the run itself has succeeded
        reason = " ".join(str(error).split()) or type(error).__name__
        print(f"warning: no report was written ({reason}); the run is complete", file=sys.stderr)


# ----- the command line ---------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m gpt.report",
        description="Write PNG figures (losses against step and tokens, the generalisation gap, "
        "learning rate, gradient norm, throughput and MFU) and a report.md with a summary table "
        "for one or more training output folders; several runs are overlaid.",
        epilog="example: python -m gpt.report out/shakespeare_char_cpu out/mlp --out report",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="training output folders")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="where to write (default: RUN_DIR/report for one run, ./report for several)",
    )
    return parser.parse_args(argv)


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    run_dirs = [Path(d) for d in args.run_dirs]
    for run_dir in run_dirs:
        if not run_dir.is_dir():
            raise UserError(f"{run_dir} is not a folder; pass training output folders")
    default = run_dirs[0] / REPORT_DIR if len(run_dirs) == 1 else Path(REPORT_DIR)
    print(f"wrote {write_report(run_dirs, Path(args.out) if args.out else default)}")
    return 0


def main() -> None:
    sys.exit(run_cli(_main))


if __name__ == "__main__":
    main()
