"""How fast training goes between two train records: the steps timed alone, the wall clock apart.

Evaluations and checkpoints happen between steps. Counted against the steps, their time would make
the tokens/s and MFU of every train record after one read low. So each record carries both:

* ``tokens_per_sec`` and ``mfu`` over the **training seconds**, the steps' own time (forward,
  backward, update and the processes' agreement on the loss);
* ``wall_seconds``, the wall clock since the previous record (or the start of the loop),
  evaluations and checkpoints included.

:mod:`gpt.analysis.runs` defines what the reports make of them (training time and wall time).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Interval:
    """The steps between two train records and the time they took."""

    steps: int
    training_seconds: float  # the steps alone
    wall_seconds: float  # everything since the previous record


class Pace:
    """Times the steps of the interval under way, and the wall clock since it began."""

    def __init__(self) -> None:
        self._begin()

    def _begin(self) -> None:
        self._wall_start = time.perf_counter()
        self._training_seconds, self._steps = 0.0, 0

    @contextmanager
    def step(self) -> Iterator[None]:
        """Time one step, and count it."""
        start = time.perf_counter()
        yield
        self._training_seconds += time.perf_counter() - start
        self._steps += 1

    def lap(self) -> Interval:
        """The interval since the previous lap (or the start); the next one begins now."""
        interval = Interval(
            self._steps, self._training_seconds, time.perf_counter() - self._wall_start
        )
        self._begin()
        return interval
