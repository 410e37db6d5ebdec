"""One writer per folder: a second run, data_prep or export on a folder in use is refused, and a
folder whose holder was killed is taken over (gpt/folder_lock.py)."""

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from gpt.base.folder_lock import hold_folder, holder_path
from tests.warm_python import Process

from .conftest import CORPUS, run_python, start_python
from .test_trainer import train_args

ENDLESS = ["train.max_iters=100000", "train.eval_interval=100000", "train.checkpoint_interval=5"]


def wait_for_a_checkpoint(process: Process, out: Path) -> None:
    deadline = time.monotonic() + 120
    while not list((out / "checkpoints").glob("step_*")):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)


def wait_for_a_new_record(process: Process, out: Path, records: int) -> None:
    """Wait until ``out/metrics.jsonl`` holds more than ``records`` lines, the process alive."""
    deadline = time.monotonic() + 120
    while len((out / "metrics.jsonl").read_text().splitlines()) <= records:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)


def the_error_line(result: subprocess.CompletedProcess) -> str:
    """The one line a refused command prints (exit code 2, nothing on stdout)."""
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ")
    return line


def test_a_second_run_on_a_folder_in_use_is_refused_and_a_killed_holder_is_taken_over(
    shakespeare_char, tmp_path
):
    out = tmp_path / "run"
    first = start_python(*train_args(shakespeare_char, out, *ENDLESS))
    try:
        wait_for_a_checkpoint(first, out)
        # Paused, the holder still holds its lock (the kernel's flock, by a live process) but no
        # longer trains on a core that the refused commands need.
        first.send_signal(signal.SIGSTOP)
        holder = f"train.py (pid {first.pid} on {socket.gethostname()}, since "
        for setting in ("auto", "never"):  # never would move the running run's files aside
            second = run_python(*train_args(shakespeare_char, out, f"train.resume={setting}"))
            line = the_error_line(second)
            assert f"error: {out} is in use by {holder}" in line
            assert line.endswith("wait for it to end (or stop it), or choose another train.out_dir")
        assert not (out / "earlier_runs").exists()
        first.send_signal(signal.SIGCONT)
        before = len((out / "metrics.jsonl").read_text().splitlines())
        wait_for_a_new_record(first, out, before)  # the first run goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()

    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # one run's records only
    taken_over = run_python(*train_args(shakespeare_char, out, "train.max_iters=2"))
    assert taken_over.returncode == 0, taken_over.stderr
    assert (
        f"note: {out} was held by {holder}" in taken_over.stderr
        and "which ended without releasing it; taking it over" in taken_over.stderr
    )
    assert not holder_path(out).exists()  # a clean end releases the folder


def test_data_prep_refuses_a_folder_that_another_process_writes(tmp_path):
    out = tmp_path / "data"
    prep = ("-m", "data_prep", "--input", str(CORPUS), "--out", str(out))
    with hold_folder(out, "python -m data_prep", "--out"):
        line = the_error_line(run_python(*prep))
    assert f"error: {out} is in use by python -m data_prep (pid {os.getpid()} on " in line
    assert line.endswith("or choose another --out")
    assert not out.exists()
    assert run_python(*prep).returncode == 0  # released


def test_export_refuses_a_folder_that_another_process_writes(tmp_path):
    out = tmp_path / "export"
    with hold_folder(out, "python -m gpt.export", "DIR"):
        line = the_error_line(run_python("-m", "gpt.export", str(tmp_path), "--to", "hf", str(out)))
    assert f"error: {out} is in use by python -m gpt.export (pid {os.getpid()} on " in line
    assert not out.exists()


def test_an_output_folder_that_is_a_file_is_refused(tmp_path):
    out = tmp_path / "run"
    out.write_text("not a folder")
    line = the_error_line(run_python("-m", "data_prep", "--input", str(CORPUS), "--out", str(out)))
    assert line == f"error: --out {out} is a file, not a folder; choose another --out"
    assert out.read_text() == "not a folder"
