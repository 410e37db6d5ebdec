"""The fault-injection campaign: real faults in real training runs, and how many were survived.

    python -m bench.faults --trials 100        # the whole campaign (about 1.5 hours on 2 CPU cores)
    python -m bench.faults --quick             # a few trials of the single-process and folder faults
    python -m bench.faults --only kills-1 --replay checkpoint:1234   # one kill trial again
    python -m bench.faults --only peer-death   # measure one part again; the file keeps the others

Every run is ``python train.py`` (or ``accelerate launch --multi_gpu --num_processes 2`` of it: two
CPU processes over gloo) of a tiny GPT with dropout 0.1 for 200 steps, a checkpoint every 10,
pinned to the CPU (``train.cpu=true``), where results are promised bitwise (bench/fault_runs.py).
Each fault is injected from outside, and what follows is the same command again, as a user would
type it. A run survived when it ended as promised and then its final weights (the newest
checkpoint's and the best ones) and metrics.jsonl (timings aside) were bitwise those of an
uninterrupted run of the same configuration. The parts (``--only`` runs some of them):

* kills-1, kills-2: SIGKILL of the run (the launcher and all its workers at once), then the same
  command. The killed run goes through bench/fault_probe.py, which shows what it is doing on a
  board that is read once it is dead (where the kill landed), and slows a checkpoint's writes or
  splits a metrics line only when asked. The trials cycle through targets: a random instant of the
  training (uniform from its first evaluation to its last step), a checkpoint being written, an
  evaluation, a metrics line being appended, and the end of the run (the report being written).
  Each trial's seed is recorded; ``--only kills-N --replay TARGET:SEED`` runs it again.
* damage-1, damage-2: each file of the newest checkpoint truncated, emptied, overwritten with
  garbage, or replaced by a pickle that creates a marker file if unpickled, and that pickle with
  the checkpoint's manifest rewritten to vouch for it (a foreign checkpoint); then the same command.
* full-disk: the output folder on a small tmpfs (``unshare -rm``; skipped where that is not
  allowed), its size spread over the trials so that the disk fills at different writes; then the
  same command in a copy of the folder on a disk with room.
* wandb: ``train.wandb.mode=online`` with a fake API key and W&B's server a closed local port.
* peer-death: one of two processes SIGKILLed, on one machine and on two "machines" (two launchers
  over loopback): how long until the other has stopped, what it said; then the same command.
* ctrl-c: Ctrl-C (SIGINT), and a second one while the checkpoint that the first asked for is being
  written (slowed down); then the same command. (The evaluation that a stopped run does on its way
  out, off the schedule, is left out of the comparison.)
* bad-inputs: the bad-input table of bench/bad_inputs.py, each case checked as tests/test_bad_inputs.py does.
* two-runs, untrusted, read-only, kill-rerun, full-disk-commands: faults on folders and files
  (bench/folder_faults.py): a second run on a folder in use, damaged weights and swapped
  tokenizers given to every reader, a read-only and a full filesystem under every command that
  writes, data_prep and export SIGKILLed and run again.

``--trials`` is the number of kill trials of each configuration; the rarer faults get a tenth of it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import random
import re
import shlex
import shutil
import signal
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psutil
import torch

import bench
from bench import format_table, prepare_corpus, write_results
from bench.fault_probe import PHASES
from bench.fault_runs import (
    ONE,
    POLL,
    RUN,
    TWO,
    TWO_MACHINES,
    Board,
    Campaign,
    Reference,
    Setup,
    conclude,
    differences,
    environment,
    finish,
    free_port,
    last_lines,
    outcome,
    resumed_from,
    say,
    start,
    tally,
    unfinished_checkpoints,
    without_stop_evaluations,
)
from bench.folder_faults import (
    full_disk_commands_table,
    full_disk_commands_trials,
    kill_rerun_table,
    kill_rerun_trials,
    read_only_table,
    read_only_trials,
    two_runs_table,
    two_runs_trials,
    untrusted_table,
    untrusted_trials,
)
from bench.injection import (
    can_mount_a_small_disk,
    empty,
    garbage,
    plant_pickle,
    run_on_a_small_disk,
    truncate,
)
from gpt.base.cli import run_cli
from gpt.run.checkpoints import find_damage
from gpt.run.folder import list_checkpoints

SLOW_SAVE = 0.3  # seconds added to each torch.save of an armed run (optimizer, RNG states)
SPLIT_PAUSE = 0.2  # seconds between the halves of a metrics line in an armed run
EVALUATION = 0.01  # seconds: about how long an evaluation of this model lasts
KILL_TARGETS = (
    "random", "checkpoint", "random", "evaluation", "metrics",
    "random", "checkpoint", "random", "evaluation", "ending",
)  # fmt: skip


@dataclass(frozen=True)
class Plan:
    """How many trials of each kind, and the seed that every trial's seed is drawn from."""

    trials: int  # kill trials of one process
    two_process_trials: int
    few: int  # trials of each of the other faults that have any
    seed: int
    quick: bool
    replay: str | None  # TARGET:SEED of one kill trial


# ----- SIGKILL, then the same command ------------------------------------------------------------


def kill_trial(
    campaign: Campaign, setup: Setup, reference: Reference, target: str, seed: int
) -> dict:
    """Kill a run at an instant of the ``target`` kind drawn from ``seed``; run it again; compare."""
    rng = random.Random(seed)
    folder = campaign.folder(f"kill-{setup.processes}-{target}-{seed}")
    out, board = folder / "run", Board(folder / "board")
    slow = ["--slow-saves", str(SLOW_SAVE), "--slow-metrics", str(SPLIT_PAUSE)]
    started = start(
        setup.commands(board.probe(*slow, *campaign.train(setup, out))), folder / "kill"
    )
    board.wait_for(lambda phase: phase != "start-up", started)
    began = time.monotonic()
    if target == "random":
        time.sleep(rng.uniform(0, reference.training))
    elif target == "ending":
        board.wait_for(lambda phase: phase == "ending", started)
        time.sleep(rng.uniform(0, 0.9 * reference.ending))
    else:
        time.sleep(rng.uniform(0, 0.8 * reference.training))
        board.arm()  # slow checkpoints and split metrics lines from now on
        board.wait_for(lambda phase: phase == target, started)
        window = {"checkpoint": 2 * SLOW_SAVE, "metrics": SPLIT_PAUSE}.get(target, EVALUATION)
        time.sleep(rng.uniform(0, window))
    killed_at = time.monotonic() - began
    ended_before = not started.alive()
    started.kill()
    phases = [board.phase(rank) for rank in range(setup.processes)]
    unfinished = unfinished_checkpoints(out)
    metrics = out / "metrics.jsonl"
    trial = {
        "target": target,
        "seed": seed,
        "landed": "ended before the kill" if ended_before else phases[0],
        "phases": phases,
        "seconds_into_training": round(killed_at, 4),
        # the files that a half-written checkpoint held, if the kill left one
        "unfinished_checkpoint": sorted(p.name for p in unfinished[0].iterdir())
        if unfinished
        else None,
        "cut_metrics_line": metrics.exists() and not metrics.read_bytes().endswith(b"\n"),
        "checkpoints_left": [p.name for p in list_checkpoints(out)],
    }
    again = finish(setup.commands(campaign.train(setup, out)), folder / "again")
    problems = again.problems() or differences(reference.outcome, outcome(out))
    return trial | conclude(folder, problems, resumed_from=resumed_from(again.stdout))


def kill_trials(campaign: Campaign, setup: Setup, count: int, plan: Plan) -> dict:
    reference = campaign.reference(setup)
    if plan.replay:
        target, seed = plan.replay.split(":")
        schedule = [(target, int(seed))]
    else:
        seeds = random.Random(plan.seed)
        schedule = [
            (KILL_TARGETS[i % len(KILL_TARGETS)], seeds.getrandbits(32)) for i in range(count)
        ]
    trials = []
    for number, (target, seed) in enumerate(schedule, 1):
        trials.append(kill_trial(campaign, setup, reference, target, seed))
        trial = trials[-1]
        say(
            f"{setup.name} {number}/{len(schedule)}",
            trial,
            f"{target} (seed {seed}) landed in {trial['landed']}, resumed from "
            f"{trial['resumed_from']}",
        )
    landed = {phase: [t for t in trials if t["landed"] == phase] for phase in LANDINGS}
    return tally(
        trials,
        "resumes bitwise exact; kills landed in "
        + ", ".join(f"{phase} {len(here)}" for phase, here in landed.items() if here),
        reference_seconds={"training": reference.training, "ending": reference.ending},
    )


LANDINGS = (*PHASES, "ended before the kill")


def kills_table(result: dict) -> str:
    trials = result["trials"]
    rows = []
    for phase in LANDINGS:
        here = [t for t in trials if t["landed"] == phase]
        if here:
            rows.append([phase, f"{sum(t['survived'] for t in here)}/{len(here)}"])
    rows.append(["**all**", f"**{result['survived']}/{result['total']}**"])
    for what, key in (
        ("of which a checkpoint folder was left half-written", "unfinished_checkpoint"),
        ("of which a metrics line was cut short", "cut_metrics_line"),
    ):
        here = [t for t in trials if t[key]]
        rows.append([what, f"{sum(t['survived'] for t in here)}/{len(here)}"])
    return format_table(["where the kill landed", "resumes bitwise exact"], rows)


# ----- damaged checkpoint files ------------------------------------------------------------------


def plant_pickle_with_its_manifest(path: Path, marker: Path) -> None:
    """A foreign file that the checkpoint's manifest vouches for: only loading can refuse it."""
    plant_pickle(path, marker)
    state_file = path.parent / "trainer_state.json"
    state = json.loads(state_file.read_text())
    content = path.read_bytes()
    state["files"][path.name] = {
        "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
    }
    state_file.write_text(json.dumps(state))


DAMAGES: dict[str, Callable[[Path, Path], None]] = {
    "truncated": truncate,
    "emptied": empty,
    "garbage": garbage,
    "pickle": plant_pickle,
    "pickle, manifest matching": plant_pickle_with_its_manifest,
}
FOREIGN = "pickle, manifest matching"


def damage_trial(
    campaign: Campaign, setup: Setup, reference: Reference, name: str, damage: str
) -> dict:
    """Damage file ``name`` of the newest checkpoint of a copy of the reference run; run it again.

    Damage must make the run fall back to the previous checkpoint and say so. A foreign file that
    the manifest vouches for must be refused by loading in the same way, or be harmless (the RNG
    states: accelerate ignores unreadable ones, and the dropout masks do not depend on them)."""
    folder = campaign.folder(f"damage-{setup.processes}-{name}-{damage}".replace(" ", "_"))
    out, marker = folder / "run", folder / "payload-ran"
    shutil.copytree(reference.out, out)
    newest, previous = list_checkpoints(out)[:-3:-1]
    DAMAGES[damage](newest / name, marker)
    again = finish(setup.commands(campaign.train(setup, out)), folder / "again")
    problems = again.problems()
    if marker.exists():
        problems.append("the planted pickle ran")
    fell_back = resumed_from(again.stdout) == previous.name
    said = re.search(
        rf"checkpoint {re.escape(str(newest))} (is damaged|could not be loaded) \((.*?)\); set aside",
        again.stdout,
    )
    if damage != FOREIGN and not (fell_back and said):
        problems.append(f"resumed from {resumed_from(again.stdout)} with no line about the damage")
    if damage == FOREIGN and fell_back != bool(said):
        problems.append("fell back without a line" if fell_back else "a line, yet no fall-back")
    problems += differences(reference.outcome, outcome(out))
    return conclude(
        folder,
        problems,
        file=name,
        damage=damage,
        fell_back=fell_back,
        line=said.group(0) if said else None,
    )


def damage_trials(campaign: Campaign, setup: Setup, plan: Plan) -> dict:
    reference = campaign.reference(setup)
    newest = list_checkpoints(reference.out)[-1]
    names = sorted(p.name for p in newest.iterdir() if p.is_file())
    cases = [
        (name, damage)
        for name in names
        for damage in DAMAGES
        if not (name == "trainer_state.json" and damage == FOREIGN)  # it holds the manifest
    ]
    if plan.quick:
        cases = [("optimizer.bin", "truncated"), ("model.safetensors", "pickle")]
    trials = []
    for name, damage in cases:
        trials.append(damage_trial(campaign, setup, reference, name, damage))
        say(setup.name, trials[-1], f"{name} {damage}")
    fell_back = sum(t["fell_back"] for t in trials)
    return tally(
        trials,
        f"fell back to the previous checkpoint with one line {fell_back} times, resumed a foreign "
        f"file harmlessly {len(trials) - fell_back} times; never a traceback, never code run; "
        "bitwise exact",
    )


def damage_table(result: dict) -> str:
    rows = []
    for name in sorted({t["file"] for t in result["trials"]}):
        row = [name]
        for damage in DAMAGES:
            found = [t for t in result["trials"] if (t["file"], t["damage"]) == (name, damage)]
            if not found:
                row.append("")
            elif not found[0]["survived"]:
                row.append("**failed**")
            else:
                row.append("fell back" if found[0]["fell_back"] else "resumed it")
        rows.append(row)
    return format_table(["file of the newest checkpoint", *DAMAGES], rows)


# ----- a full disk -------------------------------------------------------------------------------


def full_disk_trial(campaign: Campaign, reference: Reference, kib: int) -> dict:
    """Train on a ``kib`` KiB tmpfs of a private mount namespace, then again on a roomy disk."""
    folder = campaign.folder(f"full-disk-{kib}")
    disk, kept = folder / "disk", folder / "kept"
    disk.mkdir()
    on_disk = disk / "run"
    train = campaign.train(ONE, on_disk)
    result = run_on_a_small_disk(train, disk, kib, on_disk, kept, env=environment(), timeout=600)
    problems = []
    lines = result.stderr.splitlines()
    if result.returncode != 2 or len(lines) != 1 or not lines[0].startswith("error: "):
        problems.append(f"exit code {result.returncode}, stderr: {last_lines(result.stderr)}")
    line = lines[0] if lines else ""
    failed = re.search(r"could not write (.*?) \(", line)
    newest = list_checkpoints(kept)[-1] if list_checkpoints(kept) else None
    if newest is not None:
        if f"{on_disk / 'checkpoints' / newest.name} is intact" not in line:
            problems.append("the line does not name the newest checkpoint, intact")
        if find_damage(newest) is not None:
            problems.append(f"{newest.name} is damaged: {find_damage(newest)}")
    if unfinished_checkpoints(kept):
        problems.append("a half-written checkpoint folder was left")
    moved = kept.rename(folder / "run")  # the same command, the folder now on a disk with room
    again = finish([campaign.train(ONE, moved)], folder / "again")
    problems += again.problems() or differences(reference.outcome, outcome(moved))
    return conclude(
        folder,
        problems,
        disk_kib=kib,
        could_not_write=Path(failed.group(1)).name if failed else None,
        line=line,
        newest_intact=newest.name if newest else None,
        resumed_from=resumed_from(again.stdout),
    )


def full_disk_trials(campaign: Campaign, plan: Plan) -> dict:
    if not can_mount_a_small_disk(campaign.folder("full-disk-probe")):
        return {"skipped": "cannot mount a small tmpfs here (needs unshare and user namespaces)"}
    reference = campaign.reference(ONE)
    count = 1 if plan.quick else plan.few
    # from too small for the first checkpoint to just too small for the last three and a fourth
    sizes = [200 + 1200 * i // max(1, count - 1) for i in range(count)]
    trials = []
    for kib in sizes:
        trials.append(full_disk_trial(campaign, reference, kib))
        say(f"{kib} KiB", trials[-1], f"could not write {trials[-1]['could_not_write']}")
    return tally(
        trials,
        "stopped with one line naming the file and the intact newest checkpoint; the same "
        "command then resumed, bitwise exact",
    )


def full_disk_table(result: dict) -> str:
    rows = [
        [
            f"{t['disk_kib']} KiB",
            t["could_not_write"],
            t["newest_intact"] or "none yet",
            t["resumed_from"],
            "yes" if t["survived"] else "**no**",
        ]
        for t in result["trials"]
    ]
    headers = ["disk", "could not write", "newest checkpoint (intact)", "then resumed from", "ok"]
    return format_table(headers, rows)


# ----- W&B online without a network --------------------------------------------------------------


def wandb_trials(campaign: Campaign, plan: Plan) -> dict:
    """Online, an API key, and W&B's server a closed port: W&B really tries the network."""
    reference = campaign.reference(ONE)
    folder = campaign.folder("wandb")
    out = folder / "run"
    env = environment(
        WANDB_MODE=None,
        WANDB_SILENT=None,
        WANDB_BASE_URL=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        WANDB_API_KEY="0" * 40,
        HOME=str(folder),  # no credentials of this machine's user
        WANDB_INIT_TIMEOUT="2" if plan.quick else None,
    )
    plain = finish([campaign.train(ONE, folder / "plain")], folder / "plain")
    online = finish([campaign.train(ONE, out, "train.wandb.mode=online")], folder / "online", env)
    output = online.stdout + online.stderr
    warnings = [line for line in output.splitlines() if "W&B" in line and "goes on without" in line]
    problems = online.problems() + plain.problems() + differences(reference.outcome, outcome(out))
    if len(warnings) != 1:
        problems.append(f"{len(warnings)} warning lines")
    if "wandb:" in output:
        problems.append("W&B printed lines of its own")
    trial = conclude(
        folder,
        problems,
        warnings=warnings,
        seconds=round(online.seconds, 1),
        seconds_without_wandb=round(plain.seconds, 1),
    )
    say("online, no network", trial, f"{trial['seconds']} s, {len(warnings)} warning")
    return tally(
        [trial],
        f"training went on, metrics.jsonl complete and bitwise exact, one warning line; the run "
        f"took {trial['seconds']:.0f} s against {trial['seconds_without_wandb']:.0f} s without W&B",
    )


def wandb_table(result: dict) -> str:
    (trial,) = result["trials"]
    rows = [
        [
            "yes" if trial["survived"] else "**no**",
            " / ".join(trial["warnings"]),
            f"{trial['seconds']} ({trial['seconds_without_wandb']})",
        ]
    ]
    return format_table(["ok", "what the run said", "seconds (without W&B)"], rows)


# ----- one process of two dies -------------------------------------------------------------------


def peer_death_trial(campaign: Campaign, setup: Setup, reference: Reference, seed: int) -> dict:
    """SIGKILL one worker after the first checkpoint; time how long the other takes to stop."""
    rng = random.Random(seed)
    folder = campaign.folder(f"peer-death-{setup.machines}-{seed}")
    out = folder / "run"
    started = start(setup.commands(campaign.train(setup, out)), folder / "run")
    workers = started.workers()
    while not (out / "checkpoints" / "step_0000010").exists() and started.alive():
        time.sleep(POLL)
    time.sleep(rng.uniform(0, 0.5 * reference.training))
    rank = rng.randrange(setup.processes)
    killed = time.monotonic()
    noticed = None
    with contextlib.suppress(psutil.Error, KeyError):
        workers[rank].kill()
        workers[1 - rank].wait(timeout=300)
        noticed = time.monotonic() - killed
    codes = started.wait(300)
    stderr = started.output()[1]
    problems = [] if noticed is not None else ["the other process did not stop within 300 s"]
    newest = list_checkpoints(out)[-1] if list_checkpoints(out) else None
    lost = [line for line in stderr.splitlines() if "lost contact" in line]
    expected = rf"error: rank {1 - rank} of 2 lost contact with the other processes at step \d+"
    if len(lost) != 1 or not re.match(expected, lost[0]):
        problems.append(f"{len(lost)} lost-contact lines: {lost[:2]}")
    elif newest is None or f"newest complete checkpoint is {newest}" not in lost[0]:
        problems.append("the line does not name the newest checkpoint")
    if worker_tracebacks(stderr):
        problems.append("a worker traceback")
    again = finish(setup.commands(campaign.train(setup, out)), folder / "again")
    problems += again.problems() or differences(reference.outcome, outcome(out))
    if newest is not None and resumed_from(again.stdout) != newest.name:
        problems.append(f"resumed from {resumed_from(again.stdout)}, not {newest.name}")
    return conclude(
        folder,
        problems,
        setup=setup.name,
        seed=seed,
        killed_rank=rank,
        seconds_to_notice=None if noticed is None else round(noticed, 3),
        exit_codes=codes,
        line=lost[0] if lost else None,
        resumed_from=resumed_from(again.stdout),
    )


def worker_tracebacks(stderr: str) -> list[str]:
    """Tracebacks other than the launcher's own (torchrun's summary of the failure)."""
    blocks = re.split(r"(?=Traceback \(most recent call last\))", stderr)[1:]
    return [block for block in blocks if "accelerate/commands/launch.py" not in block]


def peer_death_trials(campaign: Campaign, plan: Plan) -> dict:
    reference = campaign.reference(TWO)  # two machines of one process train the same model
    seeds = random.Random(plan.seed)
    trials = []
    for setup in (TWO, TWO_MACHINES):
        for number in range(plan.few):
            trials.append(peer_death_trial(campaign, setup, reference, seeds.getrandbits(32)))
            trial = trials[-1]
            say(
                f"{setup.name} {number + 1}/{plan.few}",
                trial,
                f"rank {trial['killed_rank']} killed, the other stopped after "
                f"{trial['seconds_to_notice']} s",
            )
    times = [t["seconds_to_notice"] for t in trials if t["seconds_to_notice"] is not None]
    return tally(
        trials,
        "the other process stopped with one line naming the newest complete checkpoint, "
        f"{seconds_range(times)} after the kill; the same command then resumed, bitwise exact",
    )


def seconds_range(times: list[float]) -> str:
    if not times:
        return "never"
    return f"{statistics.median(times):.2f} s (median; at most {max(times):.2f} s)"


def peer_death_table(result: dict) -> str:
    rows = []
    for setup in (TWO, TWO_MACHINES):
        trials = [t for t in result["trials"] if t["setup"] == setup.name]
        times = [t["seconds_to_notice"] for t in trials if t["seconds_to_notice"] is not None]
        survived = f"{sum(t['survived'] for t in trials)}/{len(trials)}"
        rows.append([setup.name, survived, seconds_range(times)])
    return format_table(
        ["where", "one line, then resumed exact", "time until the other stopped"], rows
    )


# ----- Ctrl-C twice ------------------------------------------------------------------------------


def ctrl_c_trial(campaign: Campaign, reference: Reference, seed: int, slow: bool) -> dict:
    """Ctrl-C at a random instant of the training, and a second one: while the checkpoint that
    the first asked for is written (``slow``: that checkpoint is slowed down), or at any instant
    of what follows (the checkpoint, the report, the exit)."""
    rng = random.Random(seed)
    folder = campaign.folder(f"ctrl-c-{seed}")
    out, board = folder / "run", Board(folder / "board")
    script = board.probe("--slow-saves", str(SLOW_SAVE), *campaign.train(ONE, out))
    started = start([script], folder / "run")
    (process,) = started.processes
    board.wait_for(lambda phase: phase != "start-up", started)
    time.sleep(rng.uniform(0, 0.8 * reference.training))
    if slow:
        board.arm()
    process.send_signal(signal.SIGINT)
    time.sleep(rng.uniform(0, 2 * SLOW_SAVE if slow else reference.ending))
    second_landed = board.phase() if process.poll() is None else "after the exit"
    process.send_signal(signal.SIGINT)
    sent = time.monotonic()
    said = None
    while process.poll() is None and time.monotonic() < sent + 120:
        if said is None and "stopped at once" in started.output()[0]:
            said = time.monotonic() - sent
        time.sleep(POLL)
    code, stopped = process.poll(), time.monotonic() - sent
    started.kill()
    stdout, stderr = started.output()
    ended_first = "interrupted at step" in stdout  # the run had ended before the second Ctrl-C
    finished_first = "finished at step" in stdout  # the first came after the last step
    if ended_first and second_landed != "after the exit":
        second_landed = "the exit"
    problems = []
    if finished_first:  # nothing was left to stop: the run ends as finished, or stops at once
        second_landed = "after the last step"
        if code not in (0, 130):
            problems.append(f"exit code {code}")
    elif ended_first:
        if code not in (130, -signal.SIGINT):
            problems.append(f"exit code {code}")
    elif code != 130 or "stopped at once by a second interrupt" not in stdout:
        problems.append(f"exit code {code}, and no line said that it stopped at once")
    if "Traceback" in stderr:
        problems.append(f"a traceback: {last_lines(stderr)}")
    damaged = [p.name for p in list_checkpoints(out) if find_damage(p)]
    if damaged:
        problems.append(f"damaged checkpoints {damaged}")
    left = [p.name for p in list_checkpoints(out)]
    again = finish([campaign.train(ONE, out)], folder / "again")
    found = without_stop_evaluations(outcome(out), reference.outcome)
    problems += again.problems() or differences(reference.outcome, found)
    return conclude(
        folder,
        problems,
        seed=seed,
        checkpoint_slowed=slow,
        second_landed=second_landed,
        exit_code=code,
        seconds_to_the_line=None if said is None else round(said, 3),
        seconds_to_exit=round(stopped, 3),
        checkpoints_left=left,
        resumed_from=resumed_from(again.stdout),
    )


def ctrl_c_trials(campaign: Campaign, plan: Plan) -> dict:
    reference = campaign.reference(ONE)
    seeds = random.Random(plan.seed)
    count = 1 if plan.quick else 2 * plan.few
    trials = []
    for number in range(count):
        slow = number % 2 == 0
        trials.append(ctrl_c_trial(campaign, reference, seeds.getrandbits(32), slow))
        trial = trials[-1]
        say(
            f"{number + 1}/{count}",
            trial,
            f"the second Ctrl-C landed in {trial['second_landed']}, exit "
            f"{trial['exit_code']} after {trial['seconds_to_exit']} s",
        )
    said = [t["seconds_to_the_line"] for t in trials if t["seconds_to_the_line"] is not None]
    exits = [t["seconds_to_exit"] for t in trials if t["seconds_to_the_line"] is not None]
    return tally(
        trials,
        f"said it stopped at once {seconds_range(said)} after the second Ctrl-C, exit 130 "
        f"{seconds_range(exits)} after it; every checkpoint left intact; the same command then "
        "resumed, bitwise exact",
    )


def ctrl_c_table(result: dict) -> str:
    rows = []
    for landed in sorted({t["second_landed"] for t in result["trials"]}):
        trials = [t for t in result["trials"] if t["second_landed"] == landed]
        said = [t["seconds_to_the_line"] for t in trials if t["seconds_to_the_line"] is not None]
        exits = [t["seconds_to_exit"] for t in trials]
        rows.append(
            [
                landed,
                f"{sum(t['survived'] for t in trials)}/{len(trials)}",
                ", ".join(sorted({str(t["exit_code"]) for t in trials})),
                seconds_range(said) if said else "(the run had ended)",
                seconds_range(exits),
            ]
        )
    headers = ["second Ctrl-C landed in", "ok", "exit code", "line after", "exit after"]
    return format_table(headers, rows)


# ----- the bad-input table -----------------------------------------------------------------------


def bad_input_trials(campaign: Campaign, plan: Plan) -> dict:
    """Every case of bench/bad_inputs.py, checked exactly as tests/test_bad_inputs.py checks it."""
    from bench import bad_inputs as table

    folders = table.prepare_folders(campaign.folder("bad-inputs/good"))
    launches = iter(range(10**6))
    launch = table.launch_environments(
        folders, lambda: campaign.folder(f"bad-inputs/launch-{next(launches)}")
    )
    names = list(table.CASES)[:2] if plan.quick else list(table.CASES)
    trials = []
    for index, name in enumerate(names):
        case = table.CASES[name]
        if case.cpu_only and torch.cuda.is_available():
            continue  # bad input only on a machine without a GPU
        problems = table.refusal_problems(case, folders, launch, campaign.work / f"bad-{index}")
        trials.append(conclude(campaign.work / f"bad-{index}", problems, case=name))
        if problems:
            say(name, trials[-1], "")
    shutil.rmtree(campaign.work / "bad-inputs")
    return tally(
        trials,
        "refused with exit code 2 and one line naming the problem and the fix; no traceback, "
        "no file changed",
        not_run_with_a_gpu=len(names) - len(trials),
    )


def bad_inputs_table(result: dict) -> str:
    commands = {}
    for trial in result["trials"]:
        command = trial["case"].split(":")[0]
        refused, total = commands.get(command, (0, 0))
        commands[command] = (refused + trial["survived"], total + 1)
    rows = [[command, f"{refused}/{total}"] for command, (refused, total) in commands.items()]
    return format_table(["cases", "refused as they must be"], rows)


# ----- the campaign ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    title: str
    run: Callable[[Campaign, Plan], dict]
    table: Callable[[dict], str]


PARTS = {
    "kills-1": Part(
        "SIGKILL, then the same command: 1 process",
        lambda campaign, plan: kill_trials(campaign, ONE, plan.trials, plan),
        kills_table,
    ),
    "kills-2": Part(
        "SIGKILL of the launcher and both workers, then the same command: 2 processes",
        lambda campaign, plan: kill_trials(campaign, TWO, plan.two_process_trials, plan),
        kills_table,
    ),
    "damage-1": Part(
        "a damaged file in the newest checkpoint: 1 process",
        lambda campaign, plan: damage_trials(campaign, ONE, plan),
        damage_table,
    ),
    "damage-2": Part(
        "a damaged file in the newest checkpoint: 2 processes",
        lambda campaign, plan: damage_trials(campaign, TWO, plan),
        damage_table,
    ),
    "full-disk": Part("no space left on the disk", full_disk_trials, full_disk_table),
    "wandb": Part("W&B online without a network", wandb_trials, wandb_table),
    "peer-death": Part("one process of two dies", peer_death_trials, peer_death_table),
    "ctrl-c": Part("Ctrl-C twice", ctrl_c_trials, ctrl_c_table),
    "bad-inputs": Part("bad inputs (bench/bad_inputs.py)", bad_input_trials, bad_inputs_table),
    "two-runs": Part("a second run on a folder in use", two_runs_trials, two_runs_table),
    "untrusted": Part(
        "damaged weights and swapped tokenizers, to every reader", untrusted_trials, untrusted_table
    ),
    "read-only": Part(
        "a read-only filesystem, for every command that writes", read_only_trials, read_only_table
    ),
    "kill-rerun": Part(
        "data_prep and export SIGKILLed, then the same command", kill_rerun_trials, kill_rerun_table
    ),
    "full-disk-commands": Part(
        "a full filesystem, for every command that writes",
        full_disk_commands_trials,
        full_disk_commands_table,
    ),
}
QUICK_PARTS = (
    "kills-1", "damage-1", "full-disk", "wandb", "ctrl-c", "bad-inputs",
    "two-runs", "untrusted", "read-only", "kill-rerun", "full-disk-commands",
)  # fmt: skip


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.faults",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[1:]),
    )
    parser.add_argument("--trials", type=int, default=100, help="kill trials of each setup")
    parser.add_argument(
        "--two-process-trials", type=int, help="kill trials of 2 processes (default: --trials)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="2 kill trials and a few of the single-process faults"
    )
    parser.add_argument("--only", action="append", choices=PARTS, help="run only these parts")
    parser.add_argument("--seed", type=int, default=0, help="the seed of the trials' seeds")
    parser.add_argument("--replay", metavar="TARGET:SEED", help="one kill trial (with --only)")
    parser.add_argument("--work", type=Path, help="keep failed trials' runs in this folder")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    # A campaign started in the background (`... &` in a script) inherits SIGINT ignored, and so
    # would every run it starts, where a second Ctrl-C then does nothing: the runs get the default.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    trials = 2 if args.quick else args.trials
    plan = Plan(
        trials=trials,
        two_process_trials=args.two_process_trials or trials,
        few=max(1, trials // 10),
        seed=args.seed,
        quick=args.quick,
        replay=args.replay,
    )
    parts = args.only or (QUICK_PARTS if args.quick else list(PARTS))
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="faults-")))
        work.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(work / "data", ignore_errors=True)  # of an earlier campaign in --work
        campaign = Campaign(work, prepare_corpus(work / "data"))
        command = shlex.join(["python", "-m", "bench.faults", *argv])
        date = datetime.now(timezone.utc).date().isoformat()
        results = {}
        for key in parts:
            print(f"\n## {PARTS[key].title}\n", flush=True)
            results[key] = {"command": command, "date": date} | PARTS[key].run(campaign, plan)
            print("\n" + PARTS[key].table(results[key]), flush=True)
    print("\n## Faults survived\n\n" + summary_table(results))
    path = write_results(
        "faults",
        {
            "command": command,
            "date": date,
            "minutes": round((time.monotonic() - began) / 60, 1),
            "seed": args.seed,
            "run": RUN,
            "parts": earlier_parts(args) | results,
        },
        args.quick,
    )
    print(f"\nwrote {path}")


def earlier_parts(args: argparse.Namespace) -> dict:
    """With --only, the other parts of the results file as they were (each names its command)."""
    path = bench.RESULTS_DIR / ("quick" if args.quick else "") / "faults.json"
    if not args.only or args.replay or not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    made_by = {"command": earlier["command"], "date": earlier["date"]}
    return {key: made_by | part for key, part in earlier["parts"].items()}


def summary_table(results: dict) -> str:
    rows = []
    for key, result in results.items():
        if "skipped" in result:
            rows.append([PARTS[key].title, "skipped", result["skipped"]])
        else:
            rows.append(
                [PARTS[key].title, f"{result['survived']}/{result['total']}", result["summary"]]
            )
    return format_table(["fault", "survived", "how"], rows)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
