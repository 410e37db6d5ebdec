"""The runs of the fault campaign (bench/faults.py): starting, killing, watching and comparing them.

A :class:`Campaign` holds the prepared data, a work folder and the uninterrupted reference run of
each process count. Commands start in the background (:func:`start`: one launcher per "machine")
or run to their end (:func:`finish`); :class:`Board` reads what bench/fault_probe.py shows of a
run; :func:`outcome` is what a run leaves that must be bitwise the same after any fault.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import mmap
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from safetensors.torch import load_file

import bench
from bench import CONFIGS, OFFLINE, ROOT
from bench.fault_probe import ARMED, BOARD_SIZE, PHASES
from gpt.run.folder import list_checkpoints

PROBE = str(ROOT / "bench" / "fault_probe.py")
CONFIG = str(CONFIGS / "shakespeare_char_cpu.yaml")
# A tiny GPT with dropout: 200 steps of 8 sequences, an evaluation every 25, a checkpoint every 10.
RUN = (
    "model.n_layer=2 model.n_head=2 model.n_embd=32 model.block_size=32 model.dropout=0.1 "
    "train.max_iters=200 train.warmup_iters=5 train.learning_rate=3e-3 train.min_lr=3e-4 "
    "train.eval_interval=25 train.eval_iters=4 train.log_interval=5 train.checkpoint_interval=10 "
    "train.keep_checkpoints=3 train.wandb.mode=disabled train.cpu=true"
).split()
GLOBAL_BATCH = 8
TIMINGS = (
    "tokens_per_sec",
    "mfu",
    "wall_seconds",
)  # the metrics that differ between identical runs
POLL = 0.0005  # seconds between looks at a board


@dataclass(frozen=True)
class Setup:
    """How many processes train, on how many "machines" (launchers on this one, over loopback)."""

    processes: int
    machines: int = 1

    @property
    def name(self) -> str:
        if self.processes == 1:
            return "1 process"
        return f"{self.processes} processes" + (
            f" on {self.machines} machines" if self.machines > 1 else ""
        )

    def commands(self, script: list[str]) -> list[list[str]]:
        """The python command line of each machine that runs ``script`` (train.py, the probe)."""
        if self.processes == 1:
            return [script]
        port = free_port()
        launch = [
            "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", str(self.processes), "--num_machines", str(self.machines),
            "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
            "--mixed_precision", "no", "--dynamo_backend", "no",
        ]  # fmt: skip
        return [[*launch, "--machine_rank", str(rank), *script] for rank in range(self.machines)]


ONE, TWO, TWO_MACHINES = Setup(1), Setup(2), Setup(2, machines=2)


_WORKER_PORTS = 1000
_next_port = itertools.count()


def free_port() -> int:
    """A port on loopback that nothing listens on now, for a launch's rendezvous.

    Under pytest-xdist each worker hands out ports from a range of its own, below Linux's ephemeral
    range (32768 on), where the kernel puts port-0 binds, so two workers never give out the same
    port in the moment between choosing it and a launched process binding it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ... under pytest-xdist
    if not worker.startswith("gw"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    first = 20000 + _WORKER_PORTS * int(worker.removeprefix("gw"))
    for _ in range(_WORKER_PORTS):
        port = first + next(_next_port) % _WORKER_PORTS
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use, or still closing: the next one
            return port
    raise RuntimeError(f"no free port in {first}..{first + _WORKER_PORTS - 1}")


def environment(**changes: str | None) -> dict[str, str]:
    """Offline, one thread a process (several share 2 cores), with ``changes`` (None removes)."""
    env = {**os.environ, **OFFLINE, "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true"}
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


class Campaign:
    """What every part shares: the prepared data, a work folder, how to build commands, and the
    uninterrupted runs that every trial is compared with."""

    def __init__(self, work: Path, data: Path):
        self.work, self.data = work, data
        self.references: dict[int, Reference] = {}

    def reference(self, setup: Setup) -> Reference:
        """The uninterrupted run of ``setup``'s process count (run once)."""
        if setup.processes not in self.references:
            self.references[setup.processes] = reference_run(self, setup)
        return self.references[setup.processes]

    def train(self, setup: Setup, out: Path, *extra: str) -> list[str]:
        batch = GLOBAL_BATCH // setup.processes  # the same global batch whatever the split
        return [
            "train.py", CONFIG, f"data.dir={self.data}", f"train.out_dir={out}",
            *RUN, f"train.batch_size={batch}", *extra,
        ]  # fmt: skip

    def folder(self, name: str) -> Path:
        folder = self.work / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder


@dataclass
class Started:
    """Commands started in the background (one per machine), their output in files."""

    processes: list[subprocess.Popen]
    logs: list[Path]

    def alive(self) -> bool:
        return any(process.poll() is None for process in self.processes)

    def kill(self) -> None:
        """SIGKILL every launcher and everything under it at once, like a machine losing power.
        (torchrun starts each worker in a session of its own: a process group would miss them.)"""
        members = []
        for process in self.processes:
            with contextlib.suppress(psutil.Error):
                launcher = psutil.Process(process.pid)
                members += [launcher, *launcher.children(recursive=True)]
        for member in members:
            with contextlib.suppress(psutil.Error):
                member.kill()
        for process in self.processes:
            process.wait()

    def wait(self, timeout: float) -> list[int | None]:
        """Exit codes, or None for a process still running after ``timeout`` (then killed)."""
        deadline = time.monotonic() + timeout
        codes = []
        for process in self.processes:
            try:
                codes.append(process.wait(timeout=max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                codes.append(None)
        if None in codes:
            self.kill()
        return codes

    def output(self) -> tuple[str, str]:
        """stdout and stderr, each the machines' in turn."""
        read = [(log.with_suffix(".out"), log.with_suffix(".err")) for log in self.logs]
        return (
            "".join(out.read_text(errors="replace") for out, _ in read),
            "".join(err.read_text(errors="replace") for _, err in read),
        )

    def workers(self) -> dict[int, psutil.Process]:
        """The training processes by rank, once all have started (an empty dict if they end)."""
        found: dict[int, psutil.Process] = {}
        while self.alive():
            for process in self.processes:
                with contextlib.suppress(psutil.Error):
                    for child in psutil.Process(process.pid).children(recursive=True):
                        with contextlib.suppress(psutil.Error):
                            if "RANK" in child.environ() and "train.py" in child.cmdline():
                                found[int(child.environ()["RANK"])] = child
            if len(found) == TWO.processes:
                return found
            time.sleep(0.05)
        return {}


def start(commands: list[list[str]], log: Path, env: dict[str, str] | None = None) -> Started:
    processes, logs = [], []
    for machine, command in enumerate(commands):
        name = log.with_name(f"{log.name}-{machine}")
        output = (name.with_suffix(".out"), name.with_suffix(".err"))
        processes.append(bench.start_python(command, env or environment(), output))
        logs.append(name)
    return Started(processes, logs)


@dataclass
class Finished:
    codes: list[int | None]
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return all(code == 0 for code in self.codes)

    def problems(self) -> list[str]:
        """What was wrong with a run that had to finish cleanly."""
        problems = []
        if None in self.codes:
            problems.append("did not end within its time limit")
        elif not self.ok:
            problems.append(f"exit codes {self.codes}: {last_lines(self.stderr)}")
        if "Traceback" in self.stderr:
            problems.append("a traceback")
        return problems


def finish(
    commands: list[list[str]], log: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> Finished:
    began = time.monotonic()
    started = start(commands, log, env)
    codes = started.wait(timeout)
    return Finished(codes, *started.output(), time.monotonic() - began)


def last_lines(text: str, count: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-count:])


class Board:
    """bench/fault_probe.py's board: what each process of a run is doing, and the slow-down switch."""

    def __init__(self, path: Path):
        path.write_bytes(bytes(BOARD_SIZE))
        self.path = path
        with path.open("r+b") as handle:
            self.memory = mmap.mmap(handle.fileno(), BOARD_SIZE)

    def phase(self, rank: int = 0) -> str:
        return PHASES[self.memory[rank]]

    def arm(self) -> None:
        self.memory[ARMED] = 1

    def probe(self, *slow: str) -> list[str]:
        """The probe's arguments before the training script's."""
        return [PROBE, str(self.path), *slow]

    def wait_for(self, condition: Callable[[str], bool], started: Started) -> bool:
        """Wait until rank 0's phase satisfies ``condition``; False if the run ended first."""
        while not condition(self.phase()):
            if not started.alive():
                return False
            time.sleep(POLL)
        return True


# ----- what a run leaves, compared with an uninterrupted run --------------------------------------


def outcome(out: Path) -> dict:
    """What must be the same after any fault as after an uninterrupted run."""
    checkpoints = list_checkpoints(out)
    metrics = out / "metrics.jsonl"
    return {
        "newest checkpoint": checkpoints[-1].name if checkpoints else None,
        "final weights": load_file(checkpoints[-1] / "model.safetensors") if checkpoints else {},
        "best weights": load_file(out / "model.safetensors")
        if (out / "model.safetensors").exists()
        else {},
        "metrics": [
            {key: value for key, value in json.loads(line).items() if key not in TIMINGS}
            for line in (metrics.read_text().splitlines() if metrics.exists() else [])
        ],
    }


def differences(expected: dict, found: dict) -> list[str]:
    different = []
    for key in ("final weights", "best weights"):
        same = expected[key].keys() == found[key].keys() and all(
            torch.equal(expected[key][name], found[key][name]) for name in expected[key]
        )
        if not same:
            different.append(f"{key} differ")
    if expected["newest checkpoint"] != found["newest checkpoint"]:
        different.append(f"newest checkpoint {found['newest checkpoint']}")
    if expected["metrics"] != found["metrics"]:
        different.append("metrics.jsonl differs")
    return different


def without_stop_evaluations(found: dict, expected: dict) -> dict:
    """``found`` without the evaluations that an uninterrupted run does not have: a run stopped
    by a signal evaluates once more on its way out (gpt/training/trainer.py), off the schedule."""
    scheduled = {r["step"] for r in expected["metrics"] if r["kind"] == "eval"}
    metrics = [r for r in found["metrics"] if r["kind"] != "eval" or r["step"] in scheduled]
    return {**found, "metrics": metrics}


def resumed_from(stdout: str) -> str:
    match = re.search(r"resumed from \S*/(step_\d+) at step", stdout)
    return match.group(1) if match else "fresh"


def unfinished_checkpoints(out: Path) -> list[Path]:
    return sorted((out / "checkpoints").glob(".step_*.tmp"))


@dataclass
class Reference:
    """An uninterrupted run of a setup, run under the probe to time its phases."""

    out: Path
    outcome: dict
    training: float  # seconds from the first evaluation to the end of the last step
    ending: float  # seconds from there to the exit


def reference_run(campaign: Campaign, setup: Setup) -> Reference:
    folder = campaign.folder(f"reference-{setup.processes}")
    board = Board(folder / "board")
    out = folder / "run"
    started = start(setup.commands(board.probe(*campaign.train(setup, out))), folder / "log")
    board.wait_for(lambda phase: phase != "start-up", started)
    began = time.monotonic()
    board.wait_for(lambda phase: phase == "ending", started)
    ended = time.monotonic()
    codes = started.wait(600)
    if codes != [0] * len(codes):
        raise RuntimeError(f"the reference run failed: {last_lines(started.output()[1], 20)}")
    return Reference(out, outcome(out), ended - began, time.monotonic() - ended)


# ----- verdicts ----------------------------------------------------------------------------------


def conclude(folder: Path, problems: list[str], **facts) -> dict:
    """A trial's verdict; its folder is deleted if it survived, kept (with --work) if not."""
    if not problems:
        shutil.rmtree(folder)
    return {**facts, "survived": not problems, "problems": problems}


def say(label: str, trial: dict, what: str) -> None:
    verdict = "survived" if trial["survived"] else f"FAILED: {trial['problems']}"
    print(f"  {label}: {what}: {verdict}", flush=True)


def tally(trials: list[dict], summary: str, **more) -> dict:
    survived = sum(trial["survived"] for trial in trials)
    return {
        "survived": survived,
        "total": len(trials),
        "summary": summary,
        **more,
        "trials": trials,
    }
