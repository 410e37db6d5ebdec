"""The progress of a long command other than training: scoring, sampling, preparing data.

As training's console (:mod:`gpt.training.console`) does: on a terminal a tqdm bar; anywhere else (a log
file, a cluster job's output, a pipe) a bar would leave carriage-return frames, so whole lines
instead, one at each tenth of the work, with the time left. Progress goes to stderr, so stdout
holds only the command's results (``gpt.evaluate --json`` stays pure JSON).

Work that is done within ``DELAY_SECONDS`` shows nothing: a quick command stays quiet, and one
refused half-way still says only its one ``error:`` line.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm.auto import tqdm

DELAY_SECONDS = 5.0


class Progress:
    """``total`` units of work, advanced with :meth:`update`. With no total known in advance
    (a Hugging Face dataset's bytes), the bar counts up and the lines are left out.

    ``unit="B"`` counts bytes, shown as kB, MB, GB. ``leave``: the bar stays on the terminal when
    done. ``enabled=False`` shows nothing (the other processes of a launch).
    """

    def __init__(
        self,
        description: str,
        total: int | None,
        unit: str,
        *,
        leave: bool = False,
        enabled: bool = True,
        stream: TextIO | None = None,
    ):
        self.description, self.total, self.unit = description, total, unit
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.done = 0
        self._started = time.perf_counter()
        self._tenths_said = 0
        self._bar: tqdm | None = None
        if enabled and self.stream.isatty():
            self._bar = tqdm(
                total=total,
                desc=description,
                unit=unit,
                unit_scale=unit == "B",
                delay=DELAY_SECONDS,
                leave=leave,
                dynamic_ncols=True,
                file=self.stream,
            )

    def update(self, amount: int) -> None:
        """``amount`` more units done."""
        self.done += amount
        if self._bar is not None:
            self._bar.update(amount)
        elif self.enabled:
            self._say_if_due()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _say_if_due(self) -> None:
        """A line when the work passes another tenth of the total, after the first few seconds."""
        if not self.total:
            return
        elapsed = time.perf_counter() - self._started
        tenths = min(10, self.done * 10 // self.total)
        if tenths <= self._tenths_said or elapsed < DELAY_SECONDS:
            return
        self._tenths_said = tenths
        left = elapsed * (self.total - self.done) / max(self.done, 1)
        print(
            f"{self.description}: {self._fraction()} ({100 * self.done // self.total}%), "
            f"{duration(elapsed)} so far, {duration(left)} left",
            file=self.stream,
            flush=True,
        )

    def _fraction(self) -> str:
        """``3.20MB/10.0MB`` or ``1,024/4,096 tokens``."""
        if self.unit == "B":
            return f"{tqdm.format_sizeof(self.done, 'B')}/{tqdm.format_sizeof(self.total, 'B')}"
        return f"{self.done:,}/{self.total:,} {self.unit}"


def duration(seconds: float) -> str:
    """``42s``, ``5m 07s``, ``2h 03m``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"
