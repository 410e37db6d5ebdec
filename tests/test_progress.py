"""gpt.base.progress: a bar on a terminal, whole lines at each tenth elsewhere, nothing for quick work."""

from __future__ import annotations

import io

import pytest

from gpt.base import progress
from gpt.base.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def no_delay(monkeypatch):
    monkeypatch.setattr(progress, "DELAY_SECONDS", 0.0)


def lines_for(steps: list[int], total: int, unit: str) -> list[str]:
    stream = io.StringIO()  # not a terminal, as a log file or a pipe
    with Progress("work", total, unit, stream=stream) as shown:
        for amount in steps:
            shown.update(amount)
    return stream.getvalue().splitlines()


def test_off_a_terminal_a_line_each_time_another_tenth_is_done(no_delay):
    lines = lines_for([50, 250, 100, 600], 1000, "tokens")
    assert [line.split(" (")[0] for line in lines] == [
        "work: 300/1,000 tokens",
        "work: 400/1,000 tokens",
        "work: 1,000/1,000 tokens",
    ]
    assert lines[0].startswith("work: 300/1,000 tokens (30%), ") and lines[0].endswith(" left")
    assert "\r" not in "".join(lines)


def test_bytes_are_shown_in_kb_mb_gb(no_delay):
    (line,) = lines_for([12_500_000], 12_500_000, "B")
    assert line.startswith("work: 12.5MB/12.5MB (100%), ")


def test_an_unknown_total_gives_no_lines(no_delay):
    assert lines_for([10, 20], None, "B") == []


def test_work_done_within_the_delay_shows_nothing(monkeypatch):
    monkeypatch.setattr(progress, "DELAY_SECONDS", 1e9)
    assert lines_for([500, 500], 1000, "tokens") == []


def test_on_a_terminal_a_bar_that_is_gone_when_done(no_delay):
    terminal = Terminal()
    with Progress("work", 4, "tokens", stream=terminal) as shown:
        for _ in range(4):
            shown.update(1)
    text = terminal.getvalue()
    assert text.startswith("\rwork:   0%|") and "| 0/4 [" in text  # tqdm's frames
    assert text.endswith("\r") and "work: 4/4 tokens" not in text  # cleared, and no lines


def test_a_disabled_progress_shows_nothing(no_delay):
    for stream in (io.StringIO(), Terminal()):
        with Progress("work", 4, "tokens", enabled=False, stream=stream) as shown:
            shown.update(4)
        assert stream.getvalue() == ""
