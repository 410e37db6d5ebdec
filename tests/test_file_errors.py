"""Every file error is one line: read-only and full filesystems (real mounts, in a private mount
namespace), Ctrl-C and SIGKILL of data_prep, and the staging folders a killed command leaves."""

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.injection import (
    can_mount_a_small_disk,
    read_only_bind,
    read_only_tmpfs,
    run_with_mount,
)
from gpt.base.folder_lock import holder_path, lock_path
from tests.warm_python import Process

from .conftest import CORPUS, run_python, start_python
from .test_trainer import accelerate_launch, free_port, train_args


@pytest.fixture
def disk(tmp_path) -> Path:
    """An empty folder to mount a filesystem on."""
    where = tmp_path / "disk"
    where.mkdir()
    if not can_mount_a_small_disk(where):
        pytest.skip("cannot mount a tmpfs here (needs unshare and user namespaces)")
    return where


def one_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ")
    for fragment in fragments:
        assert fragment in line, line
    return line


READ_ONLY = "(Read-only file system): the filesystem is mounted read-only; write somewhere else"


def test_a_run_onto_a_read_only_filesystem_is_one_line(shakespeare_char, disk, tmp_path):
    args = train_args(shakespeare_char, disk / "run", "train.max_iters=2")
    result = run_with_mount(read_only_tmpfs(disk), args, disk, tmp_path / "listing")
    one_line(result, f"could not write {lock_path(disk / 'run')} {READ_ONLY}")
    assert result.stdout == ""


def test_data_prep_onto_a_read_only_filesystem_is_one_line(disk, tmp_path):
    args = ["-m", "data_prep", "--input", str(CORPUS), "--out", str(disk / "data")]
    result = run_with_mount(read_only_tmpfs(disk), args, disk, tmp_path / "listing")
    one_line(result, f"{lock_path(disk / 'data')} {READ_ONLY}")


def test_export_onto_a_read_only_filesystem_is_one_line(disk, tmp_path):
    args = ["-m", "gpt.export", str(tmp_path), "--to", "hf", str(disk / "hf")]
    result = run_with_mount(read_only_tmpfs(disk), args, disk, tmp_path / "listing")
    one_line(result, f"{lock_path(disk / 'hf')} {READ_ONLY}")


def test_data_prep_on_a_full_disk_is_one_line_and_leaves_nothing_behind(disk, tmp_path):
    """A 512 KiB tmpfs for the 1.1 MB corpus: the token files cannot fit."""
    args = ["-m", "data_prep", "--input", str(CORPUS), "--out", str(disk / "data")]
    mount = f"mount -t tmpfs -o size=512k tmpfs {shlex.quote(str(disk))}"
    listing = tmp_path / "listing"
    result = run_with_mount(mount, args, disk, listing)
    line = one_line(result, "(No space left on device); ", " MiB free on its disk: free some space")
    assert line.startswith(f"error: could not write {disk / 'data'}.tmp-")
    assert listing.read_text() == ""  # no staging folder, no lock


def test_evaluate_json_into_a_read_only_run_folder_is_one_line(shakespeare_char, disk, tmp_path):
    run = disk / "run"  # on the real disk: the mount point is only a folder to bind over
    assert run_python(*train_args(shakespeare_char, run, "train.max_iters=2")).returncode == 0
    args = ["-m", "gpt.evaluate", str(run), "--split", "val", "--json"]
    result = run_with_mount(read_only_bind(run), args, disk, tmp_path / "listing")
    one_line(result, f"could not write {run / 'eval_val.json'} {READ_ONLY}")
    assert result.stdout == ""
    assert not list(run.glob("*eval_val*"))


# ----- interrupted and killed data_prep ----------------------------------------------------------


@pytest.fixture(scope="module")
def large_corpus(tmp_path_factory) -> Path:
    """The bundled corpus 30 times over (33 MB): data_prep takes seconds on it."""
    path = tmp_path_factory.mktemp("large") / "large.txt"
    path.write_text(CORPUS.read_text(encoding="utf-8") * 30, encoding="utf-8")
    return path


def started_data_prep(corpus: Path, out: Path) -> Process:
    """data_prep on ``corpus`` into ``out``, returned once it writes its staging folder."""
    command = ["-m", "data_prep", "--input", str(corpus), "--out", str(out), "--num-proc", "1"]
    process = start_python(*command)
    staging = out.with_name(f"{out.name}.tmp-{process.pid}")
    deadline = time.monotonic() + 120
    while not (staging / "tokenizer.json").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.02)
    return process


def test_ctrl_c_in_data_prep_is_one_line_exit_130_and_leaves_nothing(large_corpus, tmp_path):
    out = tmp_path / "data"
    process = started_data_prep(large_corpus, out)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    # on a slow machine the passes may have shown their progress first (gpt.base.progress)
    lines = [line for line in stderr.splitlines() if line.strip()]
    progress = ("char vocabulary: ", "encoding: ")
    (line,) = [line for line in lines if not line.startswith(progress)]
    assert line == lines[-1] and line.endswith("interrupted (Ctrl-C); nothing unfinished was kept")
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_a_killed_data_prep_leaves_a_staging_folder_that_the_next_run_removes(
    large_corpus, tmp_path
):
    out = tmp_path / "data"
    process = started_data_prep(large_corpus, out)
    process.send_signal(signal.SIGKILL)
    process.wait()
    staging = out.with_name(f"{out.name}.tmp-{process.pid}")
    assert staging.is_dir() and holder_path(out).exists()  # what a kill leaves

    result = run_python("-m", "data_prep", "--input", str(CORPUS), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert f"note: removed {staging}, left by a process that was stopped" in result.stderr
    assert f"note: {out} was held by python -m data_prep (pid {process.pid} on " in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data"]


def test_export_removes_the_staging_folder_of_a_killed_export(shakespeare_char, tmp_path):
    run, out = tmp_path / "run", tmp_path / "hf"
    assert run_python(*train_args(shakespeare_char, run, "train.max_iters=2")).returncode == 0
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True)  # fmt: skip
    staging = tmp_path / f"hf.tmp-{finished.stdout.strip()}"  # as a killed export leaves it
    (staging / "half").mkdir(parents=True)
    result = run_python("-m", "gpt.export", str(run), "--to", "hf", str(out))
    assert result.returncode == 0, result.stderr
    assert f"note: removed {staging}, left by a process that was stopped" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hf", "run"]


def test_a_file_where_the_run_folder_should_be_is_one_line(shakespeare_char, tmp_path):
    out = tmp_path / "run"
    out.write_text("a file")
    result = run_python(*train_args(shakespeare_char, out))
    one_line(result, f"train.out_dir {out} is a file, not a folder; choose another train.out_dir")
    assert out.read_text() == "a file"
    assert os.listdir(tmp_path) == ["run"]


def test_a_write_that_fails_on_the_main_process_stops_both_processes_with_its_line(
    shakespeare_char, disk, tmp_path
):
    """Two processes; the run folder read-only, so the main process cannot write config.yaml.
    The other process hears of it at once, instead of waiting out the distributed timeout."""
    run = disk / "run"  # on the real disk, bound read-only over itself; its lock is beside it
    run.mkdir()
    launch = accelerate_launch(1, 0, free_port())
    args = [*launch, *train_args(shakespeare_char, run, "train.distributed_timeout_minutes=2")]
    started = time.monotonic()
    result = run_with_mount(read_only_bind(run), args, disk, tmp_path / "listing")
    assert time.monotonic() - started < 100  # not the 2 minutes of the distributed timeout
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 2 and lines[0] == lines[1], result.stderr
    assert lines[0].startswith(f"error: could not write {run / 'config.yaml'} (")
    assert "Read-only file system" in lines[0]
    assert "lost contact" not in result.stderr
