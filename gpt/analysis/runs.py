"""Training runs as the analyses read them: a run folder's metrics, facts and weights, with the
definitions every report and lesson shares.

* **steps**: the steps the run took, as the trainer counts them (its console, its checkpoints and
  ``run.json`` say the same), not the last logged step: a run stopped between two logs took more.
  A folder without ``run.json`` counts to its last record.
* **tokens seen** after a step: step x tokens per step, where a step takes ``batch_size x
  gradient_accumulation_steps x processes x block_size`` tokens. Runs without ``run.json`` (made
  before the trainer wrote one) are counted as one process, and the report says so.
* **training time**: the steps' own time, evaluations, checkpoints and start-up excluded; the
  trainer measures tokens/s and MFU over it (:mod:`gpt.training.pace`). Each train record covers
  the steps since the one before it at its tokens/s, so the training time at a record is the sum
  up to it of tokens per step x steps / tokens per second.
* **wall time**: the training loop's time, evaluations and checkpoints included, start-up and the
  first evaluation excluded, up to the last train record: the sum of the records' ``wall_seconds``
  (the wall clock since the record before). It counts a resumed run's sessions once each. Records
  written before ``wall_seconds`` existed measured tokens/s over the wall clock, so for them the
  training time's reckoning is the wall time.
* **generalisation gap**: val loss - train loss at each evaluation (both the evaluation's estimates
  on held-out windows of each split, so they are comparable). It **starts to grow** at the first
  evaluation of the final stretch over which it rises at every evaluation by more than
  ``GAP_TOLERANCE`` nats, provided that stretch holds at least ``GAP_MIN_RISES`` rises: the point
  from which the model keeps fitting its training data better than data it has not seen, to the
  end of the run. No step is given if the gap is not growing at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pydantic
import safetensors

from gpt.base.config import TrainConfig
from gpt.base.errors import UserError
from gpt.run.folder import (
    METRICS_FILE,
    WEIGHTS_FILE,
    config_tokens_per_step,
    read_config_dict,
    read_metrics,
    read_run_facts,
    read_test_result,
)

GAP_TOLERANCE = 1e-3  # nats: a rise of the gap smaller than this is noise, not growth
GAP_MIN_RISES = 2  # rises in a row before the gap counts as growing


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

    def training_seconds_at_records(self) -> list[float]:
        """The training time at each train record (see the module docstring)."""
        seconds, previous, at_records = 0.0, 0, []
        for record in self.train:
            seconds += (
                (self.tokens_per_step or 0) * (record["step"] - previous) / record["tokens_per_sec"]
            )
            previous = record["step"]
            at_records.append(seconds)
        return at_records

    @property
    def wall_seconds(self) -> float | None:
        """The wall time, from the train records (see the module docstring)."""
        if self.tokens_per_step is None or not self.train:
            return None
        seconds, previous = 0.0, 0
        for record in self.train:
            steps = record["step"] - previous
            seconds += record.get(
                "wall_seconds", self.tokens_per_step * steps / record["tokens_per_sec"]
            )
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


def load_run(directory: Path, name: str) -> Run:
    if not (directory / METRICS_FILE).is_file():
        raise UserError(f"{directory} has no {METRICS_FILE}; pass a training output folder")
    records = read_metrics(directory)
    config = read_config_dict(directory)
    facts = read_run_facts(directory)
    tokens_per_step = facts.get("tokens_per_step") or config_tokens_per_step(config)
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
        parameters=count_parameters(directory / WEIGHTS_FILE),
        stopped_early=facts.get("stopped_early", _looks_stopped_early(evals, config)),
        interrupted=facts.get("interrupted", False),
        test=read_test_result(directory),
    )


def final_step(facts: dict, records: list[dict]) -> int:
    """The steps a run has taken: the trainer's own count, which its console, checkpoints and
    ``run.json`` give. A run stopped between two logs took steps that no record holds, so the
    records alone fall short; they count only where a run has no ``run.json`` (killed, or from
    before the trainer wrote one) or has gone past it (resumed since, and not ended yet)."""
    logged = max((r["step"] for r in records), default=0)
    return max(facts.get("step", 0), logged)


def _schedule_of(config: dict) -> TrainConfig | None:
    """The train section of a run's config.yaml, which fixes its learning rate at every step; None
    where there is none, or it is not one this version reads (a run of an older version)."""
    if not isinstance(config.get("train"), dict):
        return None
    try:
        return TrainConfig.model_validate(config["train"])
    except pydantic.ValidationError:
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


def load_runs(run_dirs: list[Path]) -> list[Run]:
    """The runs, named by their folders (by their paths where two folders share a name)."""
    names = [d.absolute().name for d in run_dirs]
    return [
        load_run(d, name if names.count(name) == 1 else str(d))
        for d, name in zip(run_dirs, names, strict=True)
    ]
