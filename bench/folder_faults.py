"""The campaign's faults on folders and files (``python -m bench.faults``; issue 23):

* two-runs: a second ``train.py`` (``train.resume`` auto, then never) on the folder of a run in
  progress: it must be refused with one line, the first run go on, and the folder hold the first
  run's records only;
* untrusted: a flipped byte in the weights and a tokenizer of the same size swapped in, given to
  every reader (sample.py, gpt.evaluate, gpt.export; a checkpoint to sample.py; an exported folder
  to ``train.init_from``): each must be refused with one line, writing nothing;
* read-only: every command that writes (train.py, data_prep, gpt.export, gpt.evaluate --json) onto
  a read-only filesystem (``unshare -rm``; skipped where that is not allowed): one line, nothing
  left behind;
* kill-rerun: data_prep and gpt.export SIGKILLed at a random instant, then the same command: it
  must succeed and leave the output folder alone, no staging folder, no lock;
* full-disk-commands: every command that writes (train.py, data_prep, gpt.export, gpt.evaluate
  --json, gpt.report) onto a real filesystem that is full but for a few KiB (a tmpfs filled by a
  file, ``unshare -rm``): one line naming the file and the space left, nothing left behind.
  (gpt.sweep writes through train.py and gpt.evaluate --json, which are tried here.)

Every refusal is checked the same way: exit code 2, nothing on stdout, one ``error: ...`` line on
stderr and no traceback.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import bench
from bench import CORPUS, DISCARDED, format_table
from bench.fault_runs import ONE, Campaign, conclude, environment, say, tally
from bench.injection import (
    can_mount_a_small_disk,
    flip_last_byte,
    full_tmpfs,
    read_only_bind,
    read_only_tmpfs,
    run_with_mount,
    swap_two_tokens,
)

if TYPE_CHECKING:
    from bench.faults import Plan

ENDLESS = (
    "train.max_iters=100000", "train.eval_interval=100000", "train.checkpoint_interval=5",
)  # fmt: skip
SHORT = ("train.max_iters=2", "train.eval_interval=2")


def python(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python ARGS`` in the repository root, offline, as a user would type it."""
    return bench.run_python(args, environment(), timeout, check=False)


def refusal_problems(result: subprocess.CompletedProcess, *fragments: str) -> list[str]:
    """What is wrong with ``result`` as a refusal: exit 2, one error line holding ``fragments``."""
    lines = result.stderr.splitlines()
    problems = []
    if result.returncode != 2:
        problems.append(f"exit code {result.returncode}, not 2")
    if result.stdout or len(lines) != 1 or not lines[0].startswith("error: "):
        problems.append(f"not one error line: {result.stderr[-500:]!r}")
    problems += [
        f"the line lacks {fragment!r}" for fragment in fragments if fragment not in result.stderr
    ]
    return problems


def trained(campaign: Campaign, out: Path) -> Path:
    """A short run of the campaign's model: its best weights and a checkpoint."""
    result = python(*campaign.train(ONE, out, *SHORT))
    if result.returncode != 0:
        raise RuntimeError(f"a short run failed: {result.stderr[-2000:]}")
    return out


# ----- two runs on one folder --------------------------------------------------------------------


def two_runs_trial(campaign: Campaign, folder: Path, resume: str) -> dict:
    out = folder / "run"
    first = bench.start_python(campaign.train(ONE, out, *ENDLESS), environment(), DISCARDED)
    problems = []
    try:
        deadline = time.monotonic() + 300
        while not list((out / "checkpoints").glob("step_*")):
            if first.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the first run did not reach its first checkpoint")
            time.sleep(0.05)
        second = python(*campaign.train(ONE, out, f"train.resume={resume}"))
        problems += refusal_problems(second, f"{out} is in use by train.py (pid {first.pid}")
        if first.poll() is not None:
            problems.append("the first run stopped")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    steps = [record["step"] for record in read_records(out)]
    if steps != sorted(steps):
        problems.append(f"two runs' records mixed: steps {steps}")
    if (out / "earlier_runs").exists():
        problems.append("the running run's files were moved to earlier_runs/")
    return conclude(folder, problems, resume=resume, mixed=steps != sorted(steps))


def read_records(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def two_runs_trials(campaign: Campaign, plan: Plan) -> dict:
    count = 2 * plan.few
    trials = []
    for number in range(count):
        resume = ("auto", "never")[number % 2]
        trials.append(two_runs_trial(campaign, campaign.folder(f"two-runs-{number}"), resume))
        say(f"{number + 1}/{count}", trials[-1], f"a second run with train.resume={resume}")
    return tally(
        trials,
        "the second run refused with one line naming the holder; the first went on; "
        f"{sum(t['mixed'] for t in trials)} folders with two runs' records",
    )


def two_runs_table(result: dict) -> str:
    rows = [
        [
            resume,
            f"{sum(t['survived'] for t in here)}/{len(here)}",
            str(sum(t["mixed"] for t in here)),
        ]
        for resume in ("auto", "never")
        if (here := [t for t in result["trials"] if t["resume"] == resume])
    ]
    return format_table(["second run", "refused, first run intact", "folders mixed"], rows)


# ----- damaged weights and swapped tokenizers, given to every reader -----------------------------


DAMAGES = {  # what is done to which file, and what the refusal must name
    "a flipped byte": (flip_last_byte, "model.safetensors", "damaged"),
    "a swapped tokenizer": (swap_two_tokens, "tokenizer.json", "tokenizer"),
}
READERS = ("sample.py", "sample.py a checkpoint", "gpt.evaluate", "gpt.export", "train.init_from")


def damaged_reader(
    campaign: Campaign, good: Path, folder: Path, damage: str, reader: str
) -> list[str]:
    """A copy of the run ``good`` (of its export ``good/../hf`` for train.init_from) in ``folder``
    with ``damage`` done, and the command of ``reader`` given it."""
    do, name, _ = DAMAGES[damage]
    if reader == "train.init_from":
        hf = Path(shutil.copytree(good.parent / "hf", folder / "hf"))
        do(hf / name)
        args = campaign.train(ONE, folder / "run", *SHORT, f"train.init_from={hf}")
        return [*args, "model.bias=true"]  # as the GPT-2 weights have it
    run = Path(shutil.copytree(good, folder / "run"))
    checkpoint = sorted((run / "checkpoints").glob("step_*"))[-1]
    # a checkpoint's weights are its own; its tokenizer is the run's
    do(
        (checkpoint if reader == "sample.py a checkpoint" and name != "tokenizer.json" else run)
        / name
    )
    sample = ["sample.py", "--max-new-tokens", "3", "--checkpoint"]
    return {
        "sample.py": [*sample, str(run)],
        "sample.py a checkpoint": [*sample, str(checkpoint)],
        "gpt.evaluate": ["-m", "gpt.evaluate", str(run), "--split", "val"],
        "gpt.export": ["-m", "gpt.export", str(run), "--to", "hf", str(folder / "hf")],
    }[reader]


def damaged_readers(quick: bool) -> list[tuple[str, str]]:
    """Every damage given to every reader; in short, each reader meets one damage, in turn."""
    if quick:
        return [(list(DAMAGES)[n % len(DAMAGES)], reader) for n, reader in enumerate(READERS)]
    return [(damage, reader) for damage in DAMAGES for reader in READERS]


def untrusted_trials(campaign: Campaign, plan: Plan) -> dict:
    good = trained(campaign, campaign.folder("untrusted-good") / "run")
    exported = python("-m", "gpt.export", str(good), "--to", "hf", str(good.parent / "hf"))
    if exported.returncode != 0:
        raise RuntimeError(f"the export failed: {exported.stderr[-2000:]}")
    trials = []
    for damage, reader in damaged_readers(plan.quick):
        named = DAMAGES[damage][2]
        folder = campaign.folder(f"untrusted-{len(trials)}")
        args = damaged_reader(campaign, good, folder, damage, reader)
        problems = refusal_problems(python(*args), named)
        if reader == "gpt.export" and (folder / "hf").exists():
            problems.append("the export wrote its folder")
        trials.append(conclude(folder, problems, damage=damage, reader=reader))
        say(reader, trials[-1], damage)
    shutil.rmtree(good.parent)
    return tally(trials, "refused with one line; nothing written")


def untrusted_table(result: dict) -> str:
    damages = dict.fromkeys(t["damage"] for t in result["trials"])
    rows = [
        [damage, f"{sum(t['survived'] for t in here)}/{len(here)}"]
        for damage in damages
        if (here := [t for t in result["trials"] if t["damage"] == damage])
    ]
    return format_table(["given to every reader", "refused"], rows)


# ----- read-only filesystems under every command that writes -------------------------------------


NO_MOUNTS = "cannot mount a filesystem here (needs unshare and user namespaces)"


def disk_and_run(campaign: Campaign, part: str) -> tuple[Path, Path, Path] | None:
    """The part's folder, an empty ``disk`` in it to mount filesystems on, and a short run beside
    it; None where no filesystem can be mounted here."""
    work = campaign.folder(part)
    disk = work / "disk"
    disk.mkdir()
    if not can_mount_a_small_disk(disk):
        return None
    return work, disk, trained(campaign, work / "run")


def read_only_trials(campaign: Campaign, plan: Plan) -> dict:
    if (mounted := disk_and_run(campaign, "read-only")) is None:
        return {"skipped": NO_MOUNTS}
    work, disk, run = mounted
    onto_disk = {
        "train.py": campaign.train(ONE, disk / "run", *SHORT),
        "data_prep": ["-m", "data_prep", "--input", str(CORPUS), "--out", str(disk / "data")],
        "gpt.export": ["-m", "gpt.export", str(run), "--to", "hf", str(disk / "hf")],
    }
    if plan.quick:  # in short, one command onto the disk: the others meet it the same way
        onto_disk = {"train.py": onto_disk["train.py"]}
    trials = []
    for command, args in onto_disk.items():
        listing = work / f"listing-{len(trials)}"
        result = run_with_mount(read_only_tmpfs(disk), args, disk, listing, env=environment())
        problems = refusal_problems(result, "Read-only file system")
        if listing.read_text():
            problems.append(f"left behind: {listing.read_text().split()}")
        trials.append({"command": command, "survived": not problems, "problems": problems})
        say(command, trials[-1], "onto a read-only filesystem")
    args = ["-m", "gpt.evaluate", str(run), "--split", "val", "--json"]
    before = sorted(path.name for path in run.iterdir())
    result = run_with_mount(read_only_bind(run), args, work, work / "listing-evaluate",
                            env=environment())  # fmt: skip
    problems = refusal_problems(result, "Read-only file system")
    if sorted(path.name for path in run.iterdir()) != before:
        problems.append("the run folder changed")
    trials.append(
        {"command": "gpt.evaluate --json", "survived": not problems, "problems": problems}
    )
    say("gpt.evaluate --json", trials[-1], "into a read-only run folder")
    if all(trial["survived"] for trial in trials):
        shutil.rmtree(work)
    return tally(trials, "one line naming the file and the read-only filesystem; nothing left")


def read_only_table(result: dict) -> str:
    if "skipped" in result:
        return f"skipped: {result['skipped']}"
    rows = [[t["command"], "yes" if t["survived"] else "NO"] for t in result["trials"]]
    return format_table(["command onto a read-only filesystem", "one line, nothing left"], rows)


# ----- data_prep and export killed, then the same command ----------------------------------------


def killed_then_again(args: list[str], out: Path, seconds: float) -> tuple[str, list[str]]:
    """``python ARGS`` SIGKILLed after ``seconds``, then again: where the kill landed, and what
    is wrong with the second run (it must succeed, and leave ``out`` alone in its folder)."""
    process = bench.start_python(args, environment(), DISCARDED)
    time.sleep(seconds)
    ended = process.poll() is not None
    process.send_signal(signal.SIGKILL)
    process.wait()
    staging = out.with_name(f"{out.name}.tmp-{process.pid}")
    landed = "ended before the kill" if ended else "staging" if staging.exists() else "starting"
    again = python(*args)
    problems = [] if again.returncode == 0 else [f"exit {again.returncode}: {again.stderr[-500:]}"]
    left = sorted(path.name for path in out.parent.iterdir() if path.name.startswith(out.name))
    if left != [out.name]:
        problems.append(f"left beside the output: {left}")
    return landed, problems


def kill_rerun_trials(campaign: Campaign, plan: Plan) -> dict:
    """Each command is timed uninterrupted once; its kills land at a random instant of that time."""
    seeds = random.Random(plan.seed)
    work = campaign.folder("kill-rerun")
    corpus = work / "corpus.txt"  # the bundled corpus 10 times over: data_prep takes seconds
    copies = 1 if plan.quick else 10  # in short, the code runs; where the kills land is chance
    corpus.write_text(CORPUS.read_text(encoding="utf-8") * copies, encoding="utf-8")
    run = trained(campaign, work / "run")
    commands = {  # --overwrite: the same command again replaces what a finished one wrote
        "data_prep": ["-m", "data_prep", "--input", str(corpus), "--num-proc", "1", "--overwrite"],
        "gpt.export": ["-m", "gpt.export", str(run), "--to", "hf", "--overwrite"],
    }
    trials = []
    for command, args in commands.items():
        began = time.monotonic()
        timed = python(*args, *out_argument(command, work / f"timed-{command}"))
        duration = time.monotonic() - began
        if timed.returncode != 0:
            raise RuntimeError(f"{command} failed: {timed.stderr[-2000:]}")
        for number in range(plan.few):
            folder = campaign.folder(f"kill-rerun-{command}-{number}")
            seconds = seeds.uniform(0, duration)
            out = folder / "out"
            landed, problems = killed_then_again([*args, *out_argument(command, out)], out, seconds)
            trials.append(conclude(folder, problems, command=command, landed=landed,
                                   seconds=round(seconds, 2)))  # fmt: skip
            say(command, trials[-1], f"killed after {seconds:.2f} s ({landed})")
    shutil.rmtree(work)
    return tally(trials, "the same command again succeeded; no staging folder or lock left")


def out_argument(command: str, out: Path) -> list[str]:
    return ["--out", str(out)] if command == "data_prep" else [str(out)]


def kill_rerun_table(result: dict) -> str:
    rows = []
    for command in dict.fromkeys(t["command"] for t in result["trials"]):
        here = [t for t in result["trials"] if t["command"] == command]
        staging = sum(t["landed"] == "staging" for t in here)
        rows.append([command, f"{sum(t['survived'] for t in here)}/{len(here)}", str(staging)])
    return format_table(
        ["killed, then again", "succeeded, nothing left", "kills while staging"], rows
    )


# ----- a full filesystem under every command that writes -----------------------------------------


DISK_KIB = 65536  # the tmpfs: room for a copy of the run, then filled up but for a few KiB


def full_disk_commands(campaign: Campaign, run: Path, disk: Path) -> dict[str, list[str]]:
    """Each command that writes, writing onto ``disk`` (gpt.evaluate --json into a copy of
    ``run`` there, which the mount puts in place before the disk is filled)."""
    return {
        "train.py": campaign.train(ONE, disk / "new-run", *SHORT),
        "data_prep": ["-m", "data_prep", "--input", str(CORPUS), "--out", str(disk / "data")],
        "gpt.export": ["-m", "gpt.export", str(run), "--to", "hf", str(disk / "hf")],
        "gpt.evaluate --json": [
            "-m",
            "gpt.evaluate",
            str(disk / "run"),
            "--split",
            "val",
            "--json",
        ],
        "gpt.report": ["-m", "gpt.report", str(run), "--out", str(disk / "report")],
    }


def full_disk_commands_trials(campaign: Campaign, plan: Plan) -> dict:
    """The space left is drawn from 0-32 KiB for each trial (0 for gpt.evaluate --json, whose
    file is smaller than that): the disk fills at different writes."""
    if (mounted := disk_and_run(campaign, "full-disk-commands")) is None:
        return {"skipped": NO_MOUNTS}
    work, disk, run = mounted
    seeds = random.Random(plan.seed)
    trials = []
    for _ in range(1 if plan.quick else plan.few):
        for command, args in full_disk_commands(campaign, run, disk).items():
            free_kib = 0 if command == "gpt.evaluate --json" else seeds.randint(0, 32)
            listing = work / f"listing-{len(trials)}"
            mount = full_tmpfs(disk, DISK_KIB, free_kib, run if "evaluate" in command else None)
            result = run_with_mount(mount, args, disk, listing, env=environment())
            problems = refusal_problems(result, "No space left on device", "free on its disk")
            if command == "train.py":  # its progress goes to stdout, and its folder stays to resume
                problems = [problem for problem in problems if "not one error line" not in problem]
                problems += one_error_line_last(result)
            expected = {"filler", "run" if "evaluate" in command else "new-run"}
            paths = [Path(line).relative_to(disk) for line in listing.read_text().split()]
            left = {path.parts[0] for path in paths} | {
                f"a half file {path}" for path in paths if ".tmp" in path.name
            }
            if "evaluate" in command:
                left |= set() if listing_matches_run(listing, disk, run) else {"run (changed)"}
            if left - expected:
                problems.append(f"left behind: {sorted(left - expected)}")
            if problems:
                problems.append(f"stderr: {result.stderr[-400:]!r}")
            trials.append({"command": command, "free_kib": free_kib, "survived": not problems,
                           "problems": problems})  # fmt: skip
            say(command, trials[-1], f"onto a full filesystem, {free_kib} KiB free")
    if all(trial["survived"] for trial in trials):
        shutil.rmtree(work)
    return tally(trials, "one line naming the file and the space left; nothing left behind")


def one_error_line_last(result: subprocess.CompletedProcess) -> list[str]:
    """What is wrong with ``result`` as a run stopped by an error: exit 2, no traceback, and its
    last line on stderr the one error line."""
    lines = result.stderr.splitlines()
    if result.returncode == 2 and lines and lines[-1].startswith("error: "):
        return [] if "Traceback" not in result.stderr else ["a traceback"]
    return [f"not stopped by one error line: exit {result.returncode}"]


def listing_matches_run(listing: Path, disk: Path, run: Path) -> bool:
    """Whether the copy of ``run`` on the disk holds the run's files and no others."""
    copied = {Path(line).relative_to(disk / "run") for line in listing.read_text().split()
              if Path(line).is_relative_to(disk / "run")} - {Path(".")}  # fmt: skip
    return copied == {path.relative_to(run) for path in run.rglob("*")}


def full_disk_commands_table(result: dict) -> str:
    if "skipped" in result:
        return f"skipped: {result['skipped']}"
    rows = []
    for command in dict.fromkeys(t["command"] for t in result["trials"]):
        here = [t for t in result["trials"] if t["command"] == command]
        free = sorted(t["free_kib"] for t in here)
        rows.append([command, f"{sum(t['survived'] for t in here)}/{len(here)}",
                     f"{free[0]}-{free[-1]}"])  # fmt: skip
    return format_table(
        ["command onto a full filesystem", "one line, nothing left", "KiB free"], rows
    )
