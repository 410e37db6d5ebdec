"""What a run tells its user: the start-up block, log lines that read well in a file and a bar on a
terminal, how it ended, which weights sample.py uses, W&B across a resume, and the smoke run of
every shipped CPU config. Real runs through the command line, as a user starts them."""

import fcntl
import json
import os
import pty
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from gpt.base.cli import run_cli
from gpt.base.config import WandbConfig
from gpt.run.checkpoints import read_trainer_state
from gpt.run.folder import list_checkpoints
from gpt.run.weights import load_model
from gpt.sample_cli import _main as sample_main
from gpt.training.console import RunFacts, duration, end_of_run, startup_block
from gpt.training.tracking import Tracking
from tests.warm_python import WARM, Process

from .conftest import CORPUS, ROOT, run_python, start_python
from .test_trainer import read_metrics, train_args, wandb_history, wandb_records

LOG_LINE = re.compile(r"^step (\d+)/(\d+): loss (\S+), lr (\S+), ([\d,]+) tokens/s, ETA \S+")


# ----- the pieces --------------------------------------------------------------------------------


def facts(**changes) -> RunFacts:
    values = dict(
        device="cpu", processes=1, machines=1, mixed_precision="no", tf32=None, arch="gpt",
        parameters=801_536, batch_size=32, accumulation=1, block_size=128,
        data_dir="data/shakespeare_char", data_tokens={"train": 1_003_856, "val": 111_538},
        out_dir="out/x", start="fresh", warmup_note=None, wandb=None,
    )  # fmt: skip
    return RunFacts(**{**values, **changes})


def rows(block: str) -> dict[str, str]:
    """The start-up block's rows by label (labels are one word, values follow two spaces on)."""
    return dict(re.match(r"^(\S+)\s{2,}(.*)$", line).groups() for line in block.splitlines())


def test_the_startup_block_says_how_many_processes_and_how_the_step_splits():
    single = rows(startup_block(facts()))
    assert single["device"] == "cpu, 1 process"  # one process launched by mistake shows
    assert single["precision"] == "fp32"
    assert single["model"] == "gpt, 801,536 parameters"
    assert (
        single["batch"] == "4,096 tokens a step = batch 32 x accumulation 1 x 1 process x block 128"
    )
    assert single["data"] == "data/shakespeare_char: 1,003,856 train, 111,538 val tokens"
    assert "warmup" not in single and "W&B" not in single

    gpus = rows(
        startup_block(
            facts(
                device="cuda (NVIDIA H200)", processes=16, machines=2, mixed_precision="bf16",
                tf32=True, batch_size=12, accumulation=5, block_size=1024,
                data_tokens={"train": 9, "val": 2, "test": 1}, warmup_note="shortened",
                wandb="offline run",
            )
        )
    )  # fmt: skip
    assert gpus["device"] == "cuda (NVIDIA H200), 16 processes on 2 machines"
    assert gpus["precision"] == "bf16 mixed precision, TF32 matrix products on"
    assert gpus["batch"] == (
        "983,040 tokens a step = batch 12 x accumulation 5 x 16 processes x block 1024"
    )
    assert gpus["data"].endswith(": 9 train, 2 val, 1 test tokens")

    full_batch = rows(startup_block(facts(full_batch_windows=149, batch_size=64, block_size=32)))
    assert full_batch["batch"] == (
        "4,768 tokens a step = every one of 149 training windows of block 32 (full batch), "
        "64 at a time"
    )
    assert (gpus["warmup"], gpus["W&B"]) == ("shortened", "offline run")


def test_the_three_endings_read_alike():
    common = (1.59012, 1100, "out/x/model.safetensors")
    assert end_of_run("finished", 1200, 1200, *common) == (
        "finished at step 1200 of 1200; best val loss 1.5901 at step 1100; "
        "weights in out/x/model.safetensors"
    )
    early = end_of_run("stopped early", 1300, 5000, *common, why="no progress")
    assert early.startswith("stopped early at step 1300 of 5000 (no progress); best val loss")
    interrupted = end_of_run("interrupted", 7, 1200, 4.2, None, "w", why="SIGINT", then="resume")
    assert (
        interrupted
        == "interrupted at step 7 of 1200 (SIGINT); best val loss 4.2000; weights in w; resume"
    )


def test_durations_are_short():
    assert [duration(s) for s in (0.4, 42, 307, 7380)] == ["0s", "42s", "5m 07s", "2h 03m"]


# ----- real runs ---------------------------------------------------------------------------------


def test_a_run_logged_to_a_file_says_what_it_is_and_has_a_plain_line_per_log_interval(
    shakespeare_char, tmp_path
):
    out = tmp_path / "run"
    result = run_python(*train_args(shakespeare_char, out, "train.max_iters=20"))  # pipes
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout + result.stderr  # no progress-bar frames
    lines = result.stdout.splitlines()
    block = rows("\n".join(lines[: lines.index("start      fresh") + 1]))
    meta = json.loads((shakespeare_char / "meta.json").read_text())
    parameters = load_model(out / "model.safetensors").num_params()
    assert block == {
        "device": "cpu, 1 process",
        "precision": "fp32",
        "model": f"gpt, {parameters:,} parameters",
        "batch": "256 tokens a step = batch 8 x accumulation 1 x 1 process x block 32",
        "data": f"{shakespeare_char}: {meta['tokens']['train']:,} train, "
        f"{meta['tokens']['val']:,} val, {meta['tokens']['test']:,} test tokens",
        "output": str(out),
        "start": "fresh",
    }
    trains = [r for r in read_metrics(out) if r["kind"] == "train"]
    logged = [LOG_LINE.match(line).groups() for line in lines if LOG_LINE.match(line)]
    assert [(int(step), int(total)) for step, total, *_ in logged] == [
        (5, 20),
        (10, 20),
        (15, 20),
        (20, 20),
    ]
    assert [(loss, lr) for _, _, loss, lr, _ in logged] == [
        (f"{r['loss']:.4f}", f"{r['lr']:.2e}") for r in trains
    ]
    evals = [r for r in read_metrics(out) if r["kind"] == "eval"]
    best = min(evals, key=lambda r: r["val_loss"])
    assert lines[-1] == (
        f"finished at step 20 of 20; best val loss {best['val_loss']:.4f} at step {best['step']}; "
        f"weights in {out / 'model.safetensors'}"
    )


def test_a_run_on_a_terminal_shows_a_progress_bar_and_whole_lines(shakespeare_char, tmp_path):
    out = tmp_path / "run"
    controller, terminal = pty.openpty()
    rows_and_columns = struct.pack("HHHH", 24, 120, 0, 0)  # a new pseudo-terminal has 0 x 0
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, rows_and_columns)
    process = subprocess.Popen(
        [sys.executable, *train_args(shakespeare_char, out, "train.max_iters=10")],
        cwd=ROOT,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    text = b""
    while True:  # read as it comes, or the process would block on a full terminal
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal closed: the process has exited
            break
        if not chunk:
            break
        text += chunk
    os.close(controller)
    assert process.wait(timeout=120) == 0, text.decode()[-3000:]
    text = text.decode()
    assert "\r" in text.replace("\r\n", "\n") and "train: 100%" in text  # the bar's frames
    assert not re.search(r"^step 5/10: loss", text, re.MULTILINE)  # the bar has the figures
    lines = text.replace("\r\n", "\n").split("\n")
    assert "start      fresh" in lines
    assert any(line.startswith("step 0: train loss") for line in lines)  # not glued to a frame
    assert any(line.startswith("finished at step 10 of 10;") for line in lines)


def test_sampling_right_after_the_first_evaluation_says_it_uses_the_step_0_weights(
    shakespeare_char, tmp_path, capsys
):
    out = tmp_path / "run"
    endless = ["train.max_iters=100000", "train.eval_interval=100000"]
    process = start_python(*train_args(shakespeare_char, out, *endless))
    try:
        wait_for(lambda: (out / "metrics.jsonl").exists(), process)
        code = run_cli(sample_main, ["--checkpoint", str(out), "--max-new-tokens", "5"])
        _, err = capsys.readouterr()
    finally:  # killed: a stop would save, evaluate and report for nothing
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=120)
    assert code == 0, err
    (first,) = read_metrics(out)[:1]
    assert err == (
        f"sampling from {out / 'model.safetensors'}: step 0, val loss {first['val_loss']:.4f} "
        "(the best so far)\n"
    )


def test_a_resumed_run_continues_the_same_wandb_run_and_wandb_gives_no_advice_of_its_own(
    shakespeare_char, tmp_path
):
    out = tmp_path / "run"
    wandb = ["train.wandb.mode=offline", "train.checkpoint_interval=10", "train.eval_interval=10"]
    loud = {**os.environ, "WANDB_SILENT": "false"}  # W&B's own output, unless the trainer stops it
    first = start_python(
        *train_args(shakespeare_char, out, "train.max_iters=100000", *wandb), env=loud
    )
    wait_for(lambda: list_checkpoints(out), first)
    first.send_signal(signal.SIGTERM)
    first_stdout, first_stderr = first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM, first_stderr
    stopped_at = read_trainer_state(list_checkpoints(out)[-1])["step"]
    time.sleep(1)  # W&B names a run's folder by the second it starts
    resumed = run_python(
        *train_args(shakespeare_char, out, f"train.max_iters={stopped_at + 10}", *wandb),
        env={"WANDB_SILENT": "false"},
    )
    assert resumed.returncode == 0, resumed.stderr

    parts = sorted((out / "wandb").glob("offline-run-*"))
    assert len(parts) == 2
    run_ids = [wandb_run_id(part) for part in parts]
    assert run_ids[0] == run_ids[1]  # one W&B run, in two parts
    assert read_trainer_state(list_checkpoints(out)[-1])["wandb_run_id"] == run_ids[0]
    before, after = (logged_steps(part) for part in parts)
    assert before[0] == 0 and max(before) <= stopped_at
    assert min(after) > stopped_at and max(after) == stopped_at + 10
    for stdout, stderr, part in [
        (first_stdout, first_stderr, parts[0]),
        (resumed.stdout, resumed.stderr, parts[1]),
    ]:
        sync = f"wandb sync {out / 'wandb' / 'offline-run-*'}"
        assert (
            f"W&B        offline run {run_ids[0]} in {part}; set train.wandb.mode=online to "
            f"stream, or upload later with `wandb login`, then `{sync}`" in stdout.splitlines()
        )
        assert "wandb online" not in stdout + stderr and "wandb:" not in stdout + stderr


def test_a_wandb_that_cannot_start_is_said_once_and_training_goes_on(shakespeare_char, tmp_path):
    out = tmp_path / "run"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    no_login = {**environment, "HOME": str(tmp_path)}  # no API key anywhere: W&B refuses online
    args = train_args(shakespeare_char, out, "train.max_iters=10", "train.wandb.mode=online")
    result = WARM.run(args, ROOT, no_login, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("W&B could not start (") == 1
    assert "W&B        not started (see above); metrics.jsonl has every figure" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("finished at step 10 of 10;")


def test_wandb_online_without_a_network_is_one_line_and_does_not_hold_up_the_run(
    shakespeare_char, tmp_path
):
    """An API key and W&B's server at a closed local port: W&B really tries the network, for as
    long as WANDB_INIT_TIMEOUT says (3 s here; the trainer's own default, 15 s instead of W&B's
    90 s, is tested below), and the run goes on without it."""
    out = tmp_path / "run"
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        closed_port = free.getsockname()[1]  # nothing listens there once it is released
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    no_network = {
        **environment,
        "HOME": str(tmp_path),
        "WANDB_BASE_URL": f"http://127.0.0.1:{closed_port}",
        "WANDB_API_KEY": "0" * 40,
        "WANDB_INIT_TIMEOUT": "3",
    }
    args = train_args(shakespeare_char, out, "train.max_iters=10", "train.wandb.mode=online")
    result = WARM.run(args, ROOT, no_network, timeout=75)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    (warning,) = [line for line in output.splitlines() if "W&B could not start" in line]
    assert "connection refused" in warning and warning.endswith("; training goes on without it")
    assert "wandb:" not in output  # W&B's own lines (its login notice) stay silent
    assert result.stdout.splitlines()[-1].startswith("finished at step 10 of 10;")
    assert [(r["kind"], r["step"]) for r in read_metrics(out)][-2:] == [("train", 10), ("eval", 10)]


class RecordingAccelerator:
    """What Tracking.start hands accelerate's tracker, kept instead of starting W&B."""

    def init_trackers(self, project: str, config: dict, init_kwargs: dict) -> None:
        self.init = init_kwargs["wandb"]


@pytest.mark.parametrize("variable", [None, "3"])
def test_wandb_gets_15_seconds_to_start_unless_its_own_variable_says_otherwise(
    variable, monkeypatch, tmp_path
):
    """W&B's own default is 90 s of retries without a network; WANDB_INIT_TIMEOUT, where set,
    is W&B's to read."""
    if variable is None:
        monkeypatch.delenv("WANDB_INIT_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("WANDB_INIT_TIMEOUT", variable)
    accelerator = RecordingAccelerator()
    Tracking(accelerator, WandbConfig(), "offline", tmp_path, say=print).start("abcd1234", {})
    expected = {"silent": True} | ({"init_timeout": 15.0} if variable is None else {})
    assert accelerator.init["settings"] == expected


@pytest.fixture(scope="module")
def shakespeare_bpe(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bpe") / "shakespeare_bpe"
    result = run_python(
        "-m", "data_prep", "--input", str(CORPUS), "--tokenizer", "bpe", "--vocab-size", "512",
        "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize(
    "config", ["shakespeare_char_cpu", "shakespeare_bpe", "mlp_baseline", "cnn_baseline"]
)
def test_a_smoke_run_of_a_shipped_cpu_config_just_works(config, request, tmp_path):
    """``train.max_iters=20`` with the config's own warmup (100 steps): shortened, with a note.
    The other overrides only make the run small; ``mixed_precision=no`` is YAML's false."""
    data = request.getfixturevalue("shakespeare_bpe" if "bpe" in config else "shakespeare_char")
    out = tmp_path / "run"
    small = [
        "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
        "train.batch_size=8", "train.eval_iters=2", "train.cpu=true", "train.wandb.mode=disabled",
    ]  # fmt: skip
    result = run_python(
        "train.py", f"configs/{config}.yaml", f"data.dir={data}", f"train.out_dir={out}",
        "train.max_iters=20", "train.mixed_precision=no", *small,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    warmup = (
        "warmup     train.warmup_iters=100 is not shorter than the run (train.max_iters=20); "
        "warming up for 2 steps, a tenth of the run"
    )
    assert warmup in result.stdout.splitlines()
    assert "warmup_iters: 2\n" in (out / "config.yaml").read_text()
    assert result.stdout.splitlines()[-1].startswith("finished at step 20 of 20;")


def wait_for(condition, process: Process, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"exited early with {process.returncode}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def wandb_run_id(offline_run: Path) -> str:
    """The run id in the run record of an offline W&B run folder."""
    (run_file,) = offline_run.glob("run-*.wandb")
    return next(
        record.run.run_id
        for record in wandb_records(run_file)
        if record.WhichOneof("record_type") == "run"
    )


def logged_steps(offline_run: Path) -> list[int]:
    (run_file,) = offline_run.glob("run-*.wandb")
    return [row["_step"] for row in wandb_history(run_file)]
