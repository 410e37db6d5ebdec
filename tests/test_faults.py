"""Real faults in real runs: signals, a full disk, and a process of two that dies or freezes.

Multi-process runs are 2 CPU processes over gloo under ``accelerate launch``, on one "machine" or
on two over loopback. Processes are found through psutil and hit with real signals.
"""

import contextlib
import re
import signal
import time
from pathlib import Path

import psutil
import pytest

from bench.injection import can_mount_a_small_disk, run_on_a_small_disk
from gpt.run.checkpoints import find_damage
from gpt.run.folder import list_checkpoints
from gpt.run.weights import describe_trained
from tests.warm_python import Process

from .conftest import start_python
from .test_trainer import (
    ROOT,
    SLOW_EVALUATIONS,
    accelerate_launch,
    assert_same_weights,
    final_weights,
    free_port,
    read_metrics,
    run_python,
    train_args,
)

SLOW_SAVES = str(ROOT / "tests" / "slow_saves.py")
SLOW_ERROR_LINES = str(ROOT / "tests" / "slow_error_lines.py")
ENDLESS = ["train.max_iters=100000", "train.eval_interval=100000", "train.log_interval=1000"]


@contextlib.contextmanager
def started(command: list[str], out: Path):
    """``python COMMAND``, its output in files next to ``out``; it and its children killed after."""
    process = start_python(
        *command, output=(out.with_suffix(".stdout"), out.with_suffix(".stderr"))
    )
    try:
        yield process
    finally:
        kill_with_children(process)


def kill_with_children(process: Process) -> None:
    """SIGKILL a process and everything under it at once, like a machine that loses power.

    (torchrun starts each worker in a session of its own, so killing the launcher's process group
    would leave the workers running.)"""
    with contextlib.suppress(psutil.Error):
        launcher = psutil.Process(process.pid)
        for member in [launcher, *launcher.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                member.kill()
    process.wait()


def alive(process: Process) -> bool:
    return process.poll() is None


def output(out: Path) -> tuple[str, str]:
    return out.with_suffix(".stdout").read_text(), out.with_suffix(".stderr").read_text()


def wait_for(condition, processes=(), timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for process in processes:
            assert alive(process), f"exited early with {process.returncode}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def workers(launchers: list[Process], count: int) -> dict[int, psutil.Process]:
    """The training processes under the launchers, by rank, once all have started."""
    found: dict[int, psutil.Process] = {}

    def all_started() -> bool:
        for launcher in launchers:
            for child in psutil.Process(launcher.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if "train.py" in child.cmdline() and "RANK" in child.environ():
                        found[int(child.environ()["RANK"])] = child
        return len(found) == count

    wait_for(all_started, launchers)
    return found


def worker_tracebacks(stderr: str) -> list[str]:
    """Tracebacks other than the launcher's own (torchrun's ChildFailedError summary)."""
    blocks = re.split(r"(?=Traceback \(most recent call last\))", stderr)[1:]
    return [block for block in blocks if "accelerate/commands/launch.py" not in block]


def newest_checkpoint(out: Path) -> Path:
    return list_checkpoints(out)[-1]


# ----- signals -----------------------------------------------------------------------------------


def test_a_second_ctrl_c_stops_at_once_and_the_newest_complete_checkpoint_resumes(
    shakespeare_char, tmp_path
):
    out = tmp_path / "run"
    command = [SLOW_SAVES, "1.0", "all", *train_args(shakespeare_char, out, *ENDLESS)]
    with started([*command, "train.checkpoint_interval=10"], out) as process:
        wait_for(lambda: (out / "checkpoints" / "step_0000010").exists(), [process])
        process.send_signal(signal.SIGINT)  # finish the step, save a checkpoint (slowly) ...
        wait_for(lambda: list((out / "checkpoints").glob(".step_*.tmp")), [process])
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)  # ... but a second Ctrl-C stops during that save
        assert process.wait(timeout=60) == 130
    stdout, stderr = output(out)
    assert "Traceback" not in stderr
    assert "stopped at once by a second interrupt" in stdout
    assert list((out / "checkpoints").glob(".step_*.tmp"))  # the save it cut short
    assert [p.name for p in list_checkpoints(out)] == ["step_0000010"]

    resumed = run_python(*train_args(shakespeare_char, out, "train.max_iters=12"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {out / 'checkpoints' / 'step_0000010'} at step 10" in resumed.stdout
    assert not list((out / "checkpoints").glob(".step_*"))  # cleaned up at the start


def test_a_second_ctrl_c_while_the_report_is_written_stops_at_once_and_says_so(
    shakespeare_char, tmp_path
):
    """After the first Ctrl-C's checkpoint, the run writes its report (seconds of plotting): a
    user who presses Ctrl-C again then is told what stopped, as during the checkpoint."""
    out = tmp_path / "run"
    command = train_args(
        shakespeare_char, out, *ENDLESS, "train.checkpoint_interval=10", "train.report=true"
    )
    with started(command, out) as process:
        wait_for(lambda: (out / "checkpoints" / "step_0000010").exists(), [process])
        process.send_signal(signal.SIGINT)
        wait_for(lambda: (out / "run.json").exists(), [process])  # the report's first file
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130
    stdout, stderr = output(out)
    assert "Traceback" not in stderr
    newest = newest_checkpoint(out)
    step = int(newest.name.removeprefix("step_"))  # the first Ctrl-C's checkpoint
    assert (
        f"stopped at once by a second interrupt at step {step}; "
        f"the newest complete checkpoint is {newest}" in stdout
    )
    assert find_damage(newest) is None


def test_a_second_ctrl_c_during_the_stops_evaluation_stops_at_once_and_says_so(
    shakespeare_char, tmp_path
):
    """The first Ctrl-C evaluates before its checkpoint (so the best weights hold the training
    done); a second one while that evaluation runs stops at once, as during the checkpoint."""
    out, log = tmp_path / "run", tmp_path / "evaluation_batches"
    batches = 2 * 2  # an evaluation: eval_iters=2 batches of each split
    command = [
        SLOW_EVALUATIONS, "0.5", str(log),
        *train_args(shakespeare_char, out, *ENDLESS, "train.eval_iters=2",
                    "train.checkpoint_interval=5"),
    ]  # fmt: skip
    with started(command, out) as process:
        wait_for(lambda: (out / "checkpoints" / "step_0000005").exists(), [process])
        process.send_signal(signal.SIGINT)  # evaluate, then save a checkpoint ...
        wait_for(lambda: len(log.read_text().splitlines()) > batches, [process])
        process.send_signal(signal.SIGINT)  # ... but a second Ctrl-C stops during the evaluation
        assert process.wait(timeout=60) == 130
    stdout, stderr = output(out)
    assert "Traceback" not in stderr
    assert [r["step"] for r in read_metrics(out) if r["kind"] == "eval"] == [0]  # it was cut short
    assert [p.name for p in list_checkpoints(out)] == ["step_0000005"]
    (line,) = [line for line in stdout.splitlines() if "second interrupt" in line]
    assert re.fullmatch(
        r"stopped at once by a second interrupt at step \d+; the newest complete checkpoint is "
        + re.escape(f"{out / 'checkpoints' / 'step_0000005'}: run the same command again to ")
        + "resume from it",
        line,
    )


def test_a_full_disk_stops_the_run_with_one_line_and_the_previous_checkpoint_resumes(
    shakespeare_char, tmp_path
):
    """The output folder on a real 1.3 MB tmpfs (in a private mount namespace)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not can_mount_a_small_disk(disk):
        pytest.skip("cannot mount a small tmpfs here (needs unshare and user namespaces)")
    on_disk, kept = disk / "run", tmp_path / "run"
    args = train_args(
        shakespeare_char,
        on_disk,
        *ENDLESS,
        "train.checkpoint_interval=5",
        "train.keep_checkpoints=99",
    )
    result = run_on_a_small_disk(args, disk, 1300, on_disk, kept, timeout=300)
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


DROPOUT_RUN = [*TWO_PROCESSES, "model.dropout=0.2", "train.max_iters=30", "train.eval_interval=10"]


@pytest.mark.slow
def test_two_processes_killed_together_resume_to_bitwise_identical_weights(
    shakespeare_char, tmp_path
):
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    whole = run_python(*launch_two(), *train_args(shakespeare_char, uninterrupted, *DROPOUT_RUN))
    assert whole.returncode == 0, whole.stderr[-3000:]

    command = [*launch_two(), *train_args(shakespeare_char, resumed, *DROPOUT_RUN)]
    with started(command, resumed) as run:
        wait_for(lambda: (resumed / "checkpoints" / "step_0000010").exists(), [run])
        kill_with_children(run)  # the launcher and both workers at once
    assert not (resumed / "checkpoints" / "step_0000030").exists()

    again = run_python(*launch_two(), *train_args(shakespeare_char, resumed, *DROPOUT_RUN))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout
    assert_same_weights(final_weights(uninterrupted), final_weights(resumed))
    steps = [(r["kind"], r["step"]) for r in read_metrics(resumed)]
    assert steps == [(r["kind"], r["step"]) for r in read_metrics(uninterrupted)]


def assert_reports_lost_contact(stderr: str, out: Path) -> None:
    assert worker_tracebacks(stderr) == [], worker_tracebacks(stderr)[0]
    (line,) = [line for line in stderr.splitlines() if "lost contact" in line]
    assert re.match(
        r"error: rank [01] of 2 lost contact with the other processes at step \d+", line
    )
    assert f"newest complete checkpoint is {newest_checkpoint(out)}" in line


@pytest.mark.slow
def test_when_one_of_two_processes_dies_the_other_stops_with_a_message(shakespeare_char, tmp_path):
    """The launcher SIGTERMs the survivor as soon as it sees the other die: here while the
    survivor is between the trainer's end and its line (held there a second), which it must live
    through to say why it stopped."""
    out = tmp_path / "run"
    run = train_args(shakespeare_char, out, *TWO_PROCESSES, *ENDLESS)
    command = [*launch_two(), SLOW_ERROR_LINES, "1.0", *run]
    with started(command, out) as run:
        wait_for(lambda: (out / "checkpoints" / "step_0000005").exists(), [run])
        workers([run], 2)[1].kill()
        assert run.wait(timeout=120) != 0
    assert_reports_lost_contact(output(out)[1], out)

    newest = newest_checkpoint(out)  # complete: resumed here in one process, as a user may
    step = int(newest.name.removeprefix("step_"))
    resumed = run_python(*train_args(shakespeare_char, out, f"train.max_iters={step + 2}"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {newest} at step {step}" in resumed.stdout


@pytest.mark.slow
def test_when_one_of_two_processes_is_stopped_both_evaluate_before_their_checkpoint(
    shakespeare_char, tmp_path
):
    """SIGTERM to rank 1 alone: rank 0 (which writes the files) learns of it at the next step
    where the processes read the device (here a checkpoint's, every 5 steps), and both take part
    in the stop's evaluation, whose loss is a mean over both processes."""
    out = tmp_path / "run"
    command = [*launch_two(), *train_args(shakespeare_char, out, *TWO_PROCESSES, *ENDLESS)]
    with started(command, out) as run:
        wait_for(lambda: (out / "checkpoints" / "step_0000005").exists(), [run])
        workers([run], 2)[1].send_signal(signal.SIGTERM)
        run.wait(timeout=120)
    stdout, stderr = output(out)
    assert worker_tracebacks(stderr) == [] and "lost contact" not in stderr, stderr[-3000:]
    newest = newest_checkpoint(out)
    assert find_damage(newest) is None and (newest / "random_states_1.pkl").is_file()
    stopped_at = int(newest.name.removeprefix("step_"))
    assert stopped_at > 5 and f"interrupted at step {stopped_at} of 100000 (SIGTERM)" in stdout
    evals = [r for r in read_metrics(out) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, stopped_at]
    assert f"step {stopped_at}, val loss {evals[1]['val_loss']:.4f}" in describe_trained(out)


@pytest.mark.slow
def test_when_the_process_of_one_of_two_machines_dies_the_other_stops_with_a_message(
    shakespeare_char, tmp_path
):
    out = tmp_path / "run"
    port = free_port()
    args = train_args(shakespeare_char, out, *TWO_PROCESSES, *ENDLESS)
    machine = [tmp_path / "machine_0", tmp_path / "machine_1"]
    with (
        started([*accelerate_launch(2, 0, port), *args], machine[0]) as first,
        started([*accelerate_launch(2, 1, port), *args], machine[1]) as second,
    ):
        wait_for(lambda: (out / "checkpoints" / "step_0000005").exists(), [first, second])
        workers([first, second], 2)[0].kill()  # rank 0: the one that writes the files
        assert first.wait(timeout=120) != 0
        assert second.wait(timeout=120) != 0
    assert worker_tracebacks(output(machine[0])[1]) == []
    assert_reports_lost_contact(output(machine[1])[1], out)

    newest = newest_checkpoint(out)
    step = int(newest.name.removeprefix("step_"))
    resumed = run_python(*train_args(shakespeare_char, out, f"train.max_iters={step + 2}"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {newest} at step {step}" in resumed.stdout


@pytest.mark.slow
def test_a_frozen_process_is_given_up_on_after_the_distributed_timeout(shakespeare_char, tmp_path):
    out = tmp_path / "run"
    args = train_args(
        shakespeare_char, out, *TWO_PROCESSES, *ENDLESS, "train.distributed_timeout_minutes=0.15"
    )
    with started([*launch_two(), *args], out) as run:
        wait_for(lambda: (out / "checkpoints" / "step_0000005").exists(), [run])
        ranks = workers([run], 2)
        ranks[1].suspend()  # SIGSTOP: alive, holding its sockets open, never answering
        ranks[0].wait(timeout=120)
        ranks[1].kill()
        assert run.wait(timeout=60) != 0
    stderr = output(out)[1]
    assert_reports_lost_contact(stderr, out)
    assert "9000ms" in stderr  # the configured 0.15 minutes reached the process group
