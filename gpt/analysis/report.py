"""A report of one or more runs: PNG figures and a ``report.md`` that shows them under a summary
table (``python -m gpt.report``; the train command writes each run's own with
:func:`write_run_report`). What it reads of a run, and the definitions of tokens seen, training
and wall time and the generalisation gap, are in :mod:`gpt.analysis.runs`; the figures in
:mod:`gpt.analysis.figures`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from gpt.analysis.figures import (
    gap_figure,
    learning_rate_figure,
    loss_figure,
    save_png,
    series_figure,
    throughput_figure,
)
from gpt.analysis.runs import GAP_MIN_RISES, GAP_TOLERANCE, Run, load_runs
from gpt.base.errors import one_line
from gpt.base.files import staging_folder, write_text
from gpt.run.folder import REPORT_DIR

REPORT_FILE = "report.md"


# ----- reading a run folder -----------------------------------------------------------------------


# ----- figures ------------------------------------------------------------------------------------


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


# ----- the report ---------------------------------------------------------------------------------


def write_report(run_dirs: Iterable[Path], out: Path) -> Path:
    """Write the figures and ``report.md`` of ``run_dirs`` into ``out``; returns report.md's path."""
    runs = load_runs([Path(d) for d in run_dirs])
    # Drawn into a staging folder, then moved in file by file (renames, which need no space): a
    # failure (a full disk) leaves ``out`` as it was, and other files in ``out`` stay.
    with staging_folder(out) as staging:
        for file_name, (_, draw) in FIGURES.items():
            save_png(draw(runs), staging / file_name)
        write_text(staging / REPORT_FILE, report_markdown(runs))
        out.mkdir(parents=True, exist_ok=True)
        for file in staging.iterdir():
            os.replace(file, out / file.name)
    return out / REPORT_FILE


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
        "its last train record, evaluations and checkpoints included; tokens/s and MFU are over "
        "the steps' own time.",
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


def write_run_report(out_dir: Path) -> None:
    """Write a run's report into ``OUT_DIR/report/``, as the train command does when a run ends
    or stops cleanly; a failure prints one warning line and nothing else, for a report is never
    worth a failed run."""
    try:
        report = write_report([out_dir], out_dir / REPORT_DIR)
        print(f"report: {report}")
    except Exception as error:  # anything at all: the run itself has succeeded
        print(
            f"warning: no report was written ({one_line(error)}); the run is complete",
            file=sys.stderr,
        )
