"""What a training run prints, on its main process only.

* Before training, one block that says what the run is (:func:`startup_block`): where it runs and
  on how many processes, in which precision, how large the model and the step are, on which data,
  into which folder, and whether it starts fresh or resumes.
* During training, on a terminal, a tqdm progress bar. Anywhere else (a log file, a cluster job's
  output) a bar would leave carriage-return frames, so there is one plain line per
  ``log_interval`` instead: step, loss, learning rate, tokens/s and the time left.
* Messages (evaluations, notes) as whole lines that never break the bar.
* At the end, one line that says how the run ended (:func:`end_of_run`).

Every line is flushed as it is printed, so a log file being followed (``tail -f``) is current.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TextIO

from tqdm.auto import tqdm

from gpt.base.progress import duration


@dataclass(frozen=True)
class RunFacts:
    """What the start-up block says, as plain values."""

    device: str  # "cpu", "cuda (NVIDIA H200)"
    processes: int
    machines: int
    mixed_precision: str  # no | bf16 | fp16
    tf32: bool | None  # None where it does not apply (off the GPU)
    arch: str
    parameters: int
    batch_size: int
    accumulation: int
    block_size: int
    data_dir: str
    data_tokens: dict[str, int]  # tokens per split, as meta.json counts them
    out_dir: str
    start: str  # "fresh", "resumed from CHECKPOINT at step N", ...
    warmup_note: str | None
    wandb: str | None  # where the W&B run goes; None when W&B did not start
    train_fraction: float = 1.0  # data.train_fraction
    train_tokens: int | None = None  # the train tokens read, when only a fraction is
    full_batch_windows: int | None = None  # train.full_batch: the training windows of every step


def startup_block(facts: RunFacts) -> str:
    """The start-up block: one aligned ``label  value`` line per fact."""
    splits = ", ".join(
        _split_tokens(facts, split, count) for split, count in facts.data_tokens.items()
    )
    rows = [
        ("device", f"{facts.device}, {_processes(facts.processes, facts.machines)}"),
        ("precision", _precision(facts.mixed_precision, facts.tf32)),
        ("model", f"{facts.arch}, {facts.parameters:,} parameters"),
        ("batch", _batch(facts)),
        ("data", f"{facts.data_dir}: {splits} tokens"),
        ("output", facts.out_dir),
        ("start", facts.start),
    ]
    if facts.warmup_note:
        rows.append(("warmup", facts.warmup_note))
    if facts.wandb:
        rows.append(("W&B", facts.wandb))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def _batch(facts: RunFacts) -> str:
    if facts.full_batch_windows is not None:
        tokens_per_step = facts.full_batch_windows * facts.block_size
        return (
            f"{tokens_per_step:,} tokens a step = every one of {facts.full_batch_windows:,} "
            f"training windows of block {facts.block_size} (full batch), {facts.batch_size} at a time"
        )
    tokens_per_step = facts.batch_size * facts.accumulation * facts.processes * facts.block_size
    return (
        f"{tokens_per_step:,} tokens a step = batch {facts.batch_size} x accumulation "
        f"{facts.accumulation} x {_plural(facts.processes, 'process')} x block {facts.block_size}"
    )


def _split_tokens(facts: RunFacts, split: str, count: int) -> str:
    """``892,324 train``, or ``17,846 of 892,324 train (data.train_fraction=0.02)``."""
    if split != "train" or facts.train_fraction == 1.0 or facts.train_tokens is None:
        return f"{count:,} {split}"
    return f"{facts.train_tokens:,} of {count:,} train (data.train_fraction={facts.train_fraction})"


def _processes(processes: int, machines: int) -> str:
    text = _plural(processes, "process")
    return f"{text} on {machines} machines" if machines > 1 else text


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}es"


def _precision(mixed_precision: str, tf32: bool | None) -> str:
    text = "fp32" if mixed_precision == "no" else f"{mixed_precision} mixed precision"
    if tf32 is None:
        return text
    return f"{text}, TF32 matrix products {'on' if tf32 else 'off'}"


def end_of_run(
    ending: str,
    step: int,
    max_iters: int,
    best_val_loss: float,
    best_step: int | None,
    weights: str,
    *,
    why: str | None = None,
    then: str | None = None,
) -> str:
    """The run's last line, the same for every ending (``finished``, ``stopped early``,
    ``interrupted``): at which step and ``why``, the best validation loss, where the weights are,
    and ``then`` what to do next, if anything."""
    ended = f"{ending} at step {step} of {max_iters}" + (f" ({why})" if why else "")
    best = f"best val loss {best_val_loss:.4f}"
    if best_step is not None:
        best += f" at step {best_step}"
    parts = [ended, best, f"weights in {weights}"]
    return "; ".join([*parts, then] if then else parts)


class Console:
    """The main process's output during a run; the other processes print nothing.

    Whether ``stream`` is a terminal is decided once, when the console is made: later, W&B may
    wrap ``sys.stdout`` to record it.
    """

    def __init__(self, enabled: bool, stream: TextIO | None = None):
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.terminal = self.stream.isatty()
        self._bar: tqdm | None = None
        self._total = 0
        self._first_step = 0
        self._started = 0.0

    def print(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)  # above the bar, which is then redrawn
        else:
            print(text, file=self.stream, flush=True)

    def start_progress(self, total: int, initial: int) -> None:
        """Training goes from step ``initial`` to ``total``: a bar on a terminal."""
        self._total, self._first_step, self._started = total, initial, time.perf_counter()
        if self.enabled and self.terminal:
            self._bar = tqdm(
                total=total, initial=initial, desc="train", dynamic_ncols=True, file=self.stream
            )

    def advance(self) -> None:
        """One step done."""
        if self._bar is not None:
            self._bar.update(1)

    def log_step(self, step: int, loss: float, lr: float, tokens_per_sec: float) -> None:
        """The figures of a ``log_interval``: on the bar, or as a line of their own."""
        if self._bar is not None:
            self._bar.set_postfix(
                loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_sec:,.0f}"
            )
            return
        self.print(
            f"step {step}/{self._total}: loss {loss:.4f}, lr {lr:.2e}, "
            f"{tokens_per_sec:,.0f} tokens/s, ETA {self._time_left(step)}"
        )

    def close_progress(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _time_left(self, step: int) -> str:
        """At the pace of this run so far (evaluations and checkpoints included)."""
        done = step - self._first_step
        seconds_per_step = (time.perf_counter() - self._started) / max(done, 1)
        return duration(seconds_per_step * (self._total - step))
