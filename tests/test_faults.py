"""Real faults in real runs: a full disk, two processes.

Multi-process runs are 2 CPU processes over gloo under ``accelerate launch``.
"""

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpt.checkpoint import find_damage, list_checkpoints

from .test_trainer import (
    ROOT,
    accelerate_launch,
    free_port,
    run_python,
    train_args,
)

SLOW_SAVES = str(ROOT / "tests" / "slow_saves.py")
ENDLESS = ["train.max_iters=100000", "train.eval_interval=100000", "train.log_interval=1000"]


def can_mount_a_small_disk(where: Path) -> bool:
    probe = subprocess.run(
        [
            "unshare",
            "-rm",
            "sh",
            "-c",
            f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(where))}",
        ],
        capture_output=True,
    )
    return probe.returncode == 0


def test_a_full_disk_stops_the_run_with_one_line_and_the_previous_checkpoint_resumes(
    shakespeare_char, tmp_path
):
    """The output folder on a real 1.3 MB tmpfs (in a private mount namespace)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("unshare") is None or not can_mount_a_small_disk(disk):
        pytest.skip("cannot mount a small tmpfs here (needs unshare and user namespaces)")
    on_disk, kept = disk / "run", tmp_path / "run"
    args = train_args(
        shakespeare_char,
        on_disk,
        *ENDLESS,
        "train.checkpoint_interval=5",
        "train.keep_checkpoints=99",
    )
    script = (
        f"mount -t tmpfs -o size=1300k tmpfs {shlex.quote(str(disk))} && "
        f"{shlex.join([sys.executable, *args])}; status=$?; "
        f"cp -a {shlex.quote(str(on_disk))} {shlex.quote(str(kept))}; exit $status"
    )
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    previous = list_checkpoints(kept)[-1]
    failed = f"step_{int(previous.name.removeprefix('step_')) + 5:07d}"
    assert f"could not write checkpoint {on_disk / 'checkpoints' / failed}" in line
    assert "No space left on device" in line or "free on its disk" in line
    assert f"{on_disk / 'checkpoints' / previous.name} is intact" in line
    assert not list((kept / "checkpoints").glob(".step_*"))  # the partial one was removed
    assert find_damage(previous) is None

    step = int(previous.name.removeprefix("step_"))
    resumed = run_python(*train_args(shakespeare_char, kept, f"train.max_iters={step + 2}"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {previous} at step {step}" in resumed.stdout


# ----- two processes -----------------------------------------------------------------------------


def launch_two() -> list[str]:
    """``accelerate launch`` of 2 processes on this machine, on a free port."""
    return accelerate_launch(machines=1, machine_rank=0, port=free_port())


TWO_PROCESSES = ["train.batch_size=4", "train.checkpoint_interval=5", "train.keep_checkpoints=99"]


@pytest.mark.slow
def test_both_processes_write_their_random_state_into_every_checkpoint(shakespeare_char, tmp_path):
    """Rank 1 writes its RNG state late; rank 0 must wait for it before publishing the folder."""
    out = tmp_path / "run"
    result = run_python(
        *launch_two(),
        SLOW_SAVES,
        "1.0",
        "1",
        *train_args(
            shakespeare_char,
            out,
            *TWO_PROCESSES,
            "train.max_iters=6",
            "train.checkpoint_interval=2",
        ),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoints = list_checkpoints(out)
    assert [p.name for p in checkpoints] == ["step_0000002", "step_0000004", "step_0000006"]
    for checkpoint in checkpoints:
        assert (checkpoint / "random_states_0.pkl").is_file(), checkpoint
        assert (checkpoint / "random_states_1.pkl").is_file(), checkpoint
