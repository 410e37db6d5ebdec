"""A sweep's comparison: what each run measured, in one table, and the sweep's analysis figures.

:mod:`gpt.analysis.sweep` calls :func:`write_sweep_report` after its runs, beside ``gpt.report``'s figures
of the same runs overlaid. It writes into ``OUT/report/``:

* ``sweep.md``: the sweep's description and command, a table with one row per run (the keys it
  changes, parameters, the train tokens it could read, tokens seen, epochs over them, best val loss
  and its step, final train and val loss and their gap, test loss, training wall and CPU time), then
  the figures of the sweep's ``analysis`` (:mod:`gpt.analysis.lessons`);
* ``sweep.json``: the same rows as numbers, for scripts;
* the analysis figures, as small PNGs.

Definitions (the losses are mean cross-entropies in nats per token):

* **best val loss**: the lowest of the training loop's evaluations; the kept weights are those;
* **final train / val loss**: the last evaluation's; **gap**: final val - final train;
* **test loss**: ``gpt.evaluate``'s, of the kept weights on every token of the test split;
* **train tokens**: the tokens of ``train.bin`` a run may read (``data.train_fraction`` of them);
  **epochs**: tokens seen / train tokens, how often the run saw its data, on average;
* **training time** and **CPU time**: of the run's training processes, start-up, evaluations and
  checkpoints included, summed over the sessions it took (CPU time counts every core, so on a
  shared machine it says what the run cost better than the wall time does).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt.analysis.figures import save_png
from gpt.analysis.report import duration_text
from gpt.analysis.runs import load_run
from gpt.base.config import Config
from gpt.base.files import replace_file, write_text
from gpt.data.tokens import read_meta
from gpt.run.folder import write_json

SUMMARY_FILE = "sweep.md"
NUMBERS_FILE = "sweep.json"


@dataclass(frozen=True)
class Measured:
    """One run of a sweep, as its analysis sees it."""

    name: str
    overrides: dict[str, Any]  # the keys the run changes
    config: Config
    run: Any  # gpt.report.Run: the metrics, parameters, test result
    train_tokens: int  # the tokens of train.bin it may read
    wall_seconds: float | None  # its training processes'
    cpu_seconds: float | None

    @property
    def parameters(self) -> int | None:
        return self.run.parameters

    @property
    def best_val(self) -> float | None:
        best = self.run.best_eval
        return best["val_loss"] if best else None

    @property
    def best_step(self) -> int | None:
        best = self.run.best_eval
        return best["step"] if best else None

    @property
    def final_train(self) -> float | None:
        return self.run.evals[-1]["train_loss"] if self.run.evals else None

    @property
    def final_val(self) -> float | None:
        return self.run.evals[-1]["val_loss"] if self.run.evals else None

    @property
    def gap(self) -> float | None:
        if self.final_val is None or self.final_train is None:
            return None
        return self.final_val - self.final_train

    @property
    def test_loss(self) -> float | None:
        return (self.run.test or {}).get("loss")

    @property
    def tokens_seen(self) -> int | None:
        return self.run.tokens_seen

    @property
    def epochs(self) -> float | None:
        return None if self.tokens_seen is None else self.tokens_seen / self.train_tokens

    def numbers(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "overrides": self.overrides,
            "parameters": self.parameters,
            "train_tokens": self.train_tokens,
            "tokens_seen": self.tokens_seen,
            "epochs": self.epochs,
            "steps": self.run.last_step,
            "stopped_early": self.run.stopped_early,
            "best_val_loss": self.best_val,
            "best_step": self.best_step,
            "final_train_loss": self.final_train,
            "final_val_loss": self.final_val,
            "gap": self.gap,
            "test_loss": self.test_loss,
            "test_bits_per_byte": (self.run.test or {}).get("bits_per_byte"),
            "wall_seconds": self.wall_seconds,
            "cpu_seconds": self.cpu_seconds,
        }


@dataclass(frozen=True)
class AnalysisFigure:
    """One figure of an analysis: a matplotlib Figure and how the report presents it."""

    file_name: str
    title: str
    caption: str
    figure: Any


Analysis = Callable[[list[Measured]], list[AnalysisFigure]]


def measure(runs, run_dir: Callable[[str], Path], timings: dict) -> list[Measured]:
    """The :class:`Measured` of each planned run (gpt.analysis.sweep_file.PlannedRun)."""
    measured = []
    for run in runs:
        config = run.config
        train_tokens = read_meta(Path(config.data.dir))["tokens"]["train"]
        timing = timings.get(run.name) or {}
        measured.append(
            Measured(
                name=run.name,
                overrides=run.overrides,
                config=config,
                run=load_run(run_dir(run.name), run.name),
                train_tokens=math.floor(train_tokens * config.data.train_fraction),
                wall_seconds=timing.get("wall_seconds"),
                cpu_seconds=timing.get("cpu_seconds"),
            )
        )
    return measured


def write_sweep_report(
    sweep, runs, timings: dict, command: str, out: Path, analysis: Analysis | None
) -> Path:
    """Write sweep.md, sweep.json and the analysis figures of ``runs`` into ``out``."""
    measured = measure(runs, sweep.run_dir, timings)
    figures = analysis(measured) if analysis else []
    out.mkdir(parents=True, exist_ok=True)
    for figure in figures:
        replace_file(out / figure.file_name, lambda path, f=figure.figure: save_png(f, path))
    numbers = {
        "sweep": str(sweep.path),
        "preset": sweep.preset,
        "command": command,
        "runs": [m.numbers() for m in measured],
    }
    write_json(out / NUMBERS_FILE, numbers)
    text = summary_markdown(sweep, measured, figures, command)
    write_text(out / SUMMARY_FILE, text)
    return out / SUMMARY_FILE


def summary_markdown(sweep, measured: list[Measured], figures, command: str) -> str:
    lines = [
        f"# Sweep {sweep.name}",
        "",
        sweep.description,
        "",
        f"    {command}",
        "",
        *summary_table(measured),
        "",
        "Losses are mean cross-entropies in nats per token. Best, final train and final val loss "
        "are the training loop's evaluations; gap = final val - final train; test loss scores the "
        "kept (best) weights on every token of the test split. Train tokens: what the run may "
        "read of train.bin; epochs: tokens seen / train tokens. Training and CPU time: the run's "
        "training processes, start-up and evaluations included (CPU time over all cores).",
        "",
        "Every run's curves, overlaid: [report.md](report.md).",
    ]
    for figure in figures:
        lines += ["", f"## {figure.title}", "", figure.caption, "", f"![{figure.title}]({figure.file_name})"]  # fmt: skip
    return "\n".join(lines) + "\n"


def summary_table(measured: list[Measured]) -> list[str]:
    header = [
        "run", "changes", "parameters", "train tokens", "tokens seen", "epochs",
        "best val loss (step)", "final train loss", "final val loss", "gap", "test loss",
        "training time", "CPU time",
    ]  # fmt: skip
    rows = [header, ["---"] * len(header)]
    for m in measured:
        changes = ", ".join(f"{k}={v}" for k, v in m.overrides.items()) or "-"
        best = f"{m.best_val:.4f} ({m.best_step:,})" if m.best_val is not None else "-"
        steps = " (early stop)" if m.run.stopped_early else ""
        rows.append(
            [
                m.name,
                changes,
                _integer(m.parameters),
                _integer(m.train_tokens),
                _integer(m.tokens_seen) + steps,
                "-" if m.epochs is None else f"{m.epochs:.3g}",
                best,
                _loss(m.final_train),
                _loss(m.final_val),
                _loss(m.gap),
                _loss(m.test_loss),
                duration_text(m.wall_seconds),
                duration_text(m.cpu_seconds),
            ]
        )
    return ["| " + " | ".join(row) + " |" for row in rows]


def _integer(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
