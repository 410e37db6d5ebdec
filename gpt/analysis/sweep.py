"""``python -m gpt.sweep SWEEP.yaml`` (or ``gpt-sweep``): train a set of runs and compare them.

A sweep file (:mod:`gpt.analysis.sweep_file`) names a base config and, per run, the keys it changes. This
command, run from the repository root:

1. validates the sweep file and every run's whole config (a mistake is one line, exit 2, before
   any work);
2. prepares the sweep's data into ``OUT/data`` with data_prep, once (a later call reuses it);
3. trains the runs one after another, each through the ordinary trainer in a process of its own
   (``python -m gpt.train_cli OUT/NAME.yaml``, the run's resolved config) into ``OUT/NAME``. A run
   that finished earlier with the same config is skipped, an unfinished one resumes from its
   checkpoint (the trainer's ``train.resume=auto``), and one whose config has changed since is
   trained again from the start (the trainer moves the earlier run to ``OUT/NAME/earlier_runs/``);
4. scores each finished run on the test split (``python -m gpt.evaluate OUT/NAME --split test
   --json``), unless its ``eval_test.json`` is newer than its weights;
5. writes the comparison into ``OUT/report/``: ``gpt.report``'s figures and ``report.md`` over all
   runs, and ``sweep.md`` (:mod:`gpt.analysis.sweep_report`): a table of what each run measured and the
   sweep's analysis figures (:mod:`gpt.analysis.lessons`).

Stopping. The runs are started in the sweep's process group, so Ctrl-C (or a signal that a
scheduler or ``timeout`` sends to the group) reaches the trainer, which finishes its step, saves a
checkpoint and exits; the sweep then stops with the trainer's exit code (130 or 143) and no
traceback. Running the same command again continues where it stopped. A signal sent to the
sweep's process alone lets the current run go on to its end, then stops the sweep.

A run that fails (it diverges, say: the trainer exits 2 with one line) does not stop the others:
the sweep goes on, reports what there is, names the failed runs and exits 1.
"""

from __future__ import annotations

import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gpt.analysis.sweep_file import REPORT_DIR, PlannedRun, Sweep
from gpt.base.config import Config, config_from_dict, fit_warmup_to_run, read_config_file
from gpt.base.errors import UserError
from gpt.base.files import write_text
from gpt.data.tokens import read_meta
from gpt.run.folder import (
    CONFIG_FILE,
    METRICS_FILE,
    WEIGHTS_FILE,
    evaluation_file,
    read_json,
    read_run_facts,
    read_test_result,
    run_data_dir,
    tokens_per_step,
    write_json,
)

TIMINGS_FILE = "timings.json"  # OUT/timings.json: each run's training processes' wall and CPU time
NOT_COMPARED = ("train.out_dir", "train.resume", "train.wandb.")  # change nothing a run learns
STOP_EXIT_CODES = (128 + signal.SIGINT, 128 + signal.SIGTERM)


# ----- whether a run is done -----------------------------------------------------------------------


def config_changes(trained: Config, wanted: Config) -> list[str]:
    """The keys whose values differ between the config a run was trained with (its config.yaml)
    and the one the sweep asks for now, as ``key old -> new``. Keys that change nothing a run
    learns are left out, and ``wanted`` is compared as the trainer resolves it (the warmup fitted
    to a short run; a vocabulary left to the data)."""
    before, after = _comparable(trained), _comparable(wanted)
    if wanted.model.vocab_size is None:
        before.pop("model.vocab_size", None)
        after.pop("model.vocab_size", None)
    return [
        f"{key} {before.get(key)!r} -> {after.get(key)!r}"
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    ]


def _comparable(config: Config) -> dict[str, Any]:
    train, _ = fit_warmup_to_run(config.train)
    values = _flatten(config.model_copy(update={"train": train}).model_dump(mode="json"))
    values["data.dir"] = str(Path(config.data.dir).resolve())
    return {k: v for k, v in values.items() if not k.startswith(NOT_COMPARED)}


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_state(run_dir: Path, wanted: Config) -> tuple[str, list[str]]:
    """``new``, ``finished``, ``unfinished`` or ``changed`` (with the changed keys)."""
    trained_with = run_dir / CONFIG_FILE
    if not trained_with.is_file():
        return "new", []
    try:
        trained = config_from_dict(read_config_file(trained_with))
    except UserError as error:  # written by another version of the trainer, say
        return "changed", [f"its config.yaml no longer validates ({error})"]
    changes = config_changes(trained, wanted)
    if changes:
        return "changed", changes
    facts = read_run_facts(run_dir)
    done = facts.get("step", 0) >= wanted.train.max_iters or facts.get("stopped_early", False)
    return ("finished" if done and not facts.get("interrupted") else "unfinished"), []


def test_result_is_current(run_dir: Path) -> bool:
    """Whether eval_test.json scores the run's present best weights."""
    result, weights = (
        evaluation_file(run_dir, "test", run_data_dir(run_dir)),
        run_dir / WEIGHTS_FILE,
    )
    return result.is_file() and result.stat().st_mtime >= weights.stat().st_mtime


# ----- running ------------------------------------------------------------------------------------


class StopRequests:
    """While the sweep runs, SIGINT and SIGTERM are recorded instead of raised: the run that is
    training got the same signal (it is in the same process group) and stops cleanly by itself;
    the sweep stops after it."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _record(self, signum, frame) -> None:
        self.signal = self.signal or signum


class SweepRunner:
    def __init__(self, sweep: Sweep, command: str):
        self.sweep = sweep
        self.command = command
        self.stop = StopRequests()

    def run(self, selected: list[PlannedRun], plan: bool = False) -> int:
        with self.stop:
            if self.sweep.data_prep_argv is not None and not self._prepare_data():
                return self._stopped("while preparing the data")
            self._check_data(self.sweep.runs)
            self.sweep.out.mkdir(parents=True, exist_ok=True)
            if plan:
                self._print_plan()
                return 0
            failed = []
            for position, run in enumerate(selected, 1):
                code = self._train(run, f"[{position}/{len(selected)}] {run.name}")
                if code in STOP_EXIT_CODES or self.stop.signal:
                    return self._stopped(f"at run {run.name}", code)
                if code != 0:
                    say(f"{run.name} failed (exit code {code}; its output is above); going on")
                    failed.append(run.name)
                elif not self._evaluate(run):
                    if self.stop.signal:
                        return self._stopped(f"while scoring run {run.name}")
                    failed.append(run.name)
            self._report()
        if failed:
            say(f"{len(failed)} of {len(selected)} runs failed: {', '.join(failed)}")
            return 1
        return 0

    def _stopped(self, where: str, code: int | None = None) -> int:
        code = code if code in STOP_EXIT_CODES else 128 + (self.stop.signal or signal.SIGINT)
        say(f"stopped {where}; run the same command again to continue")
        return code

    # ----- data -------------------------------------------------------------------------------

    def _prepare_data(self) -> bool:
        """Prepare OUT/data from the sweep's data section, unless it already is. False if a
        signal stopped it."""
        sweep = self.sweep
        record = sweep.out / "data.json"  # the data section OUT/data was prepared from
        wanted = {"data": sweep.data}
        if sweep.data_dir.is_dir():
            if (read_json(record) or wanted) != wanted:
                raise UserError(
                    f"{sweep.data_dir} was prepared from another data section than "
                    f"{sweep.path}'s; pass another --out, or delete {sweep.out} to start over"
                )
            return True
        sweep.out.mkdir(parents=True, exist_ok=True)
        write_json(record, wanted)
        say(f"preparing the data: python -m data_prep {shlex.join(sweep.data_prep_argv)}")
        code = self._child(["-m", "data_prep", *sweep.data_prep_argv])
        if code != 0 and not self.stop.signal:
            raise UserError(f"data_prep failed (exit code {code}; its output is above)")
        return code == 0

    def _check_data(self, runs: list[PlannedRun]) -> None:
        """Every run's data folder is complete (one line if not), before anything trains."""
        for data_dir in sorted({run.config.data.dir for run in runs}):
            read_meta(Path(data_dir))

    def _print_plan(self) -> None:
        """Each run's model size and token budget, without training: for matching sizes."""
        from gpt.models.gpt import build_model  # torch: only here

        for run in self.sweep.runs:
            config = run.config
            vocab = config.model.vocab_size or read_meta(Path(config.data.dir))["vocab_size"]
            model = build_model(config.model.model_copy(update={"vocab_size": vocab}))
            train = config.train
            tokens = tokens_per_step(
                train.batch_size, train.gradient_accumulation_steps, config.model.block_size
            )
            changes = ", ".join(f"{k}={v}" for k, v in run.overrides.items()) or "the base config"
            print(
                f"{run.name}: {config.model.arch}, {model.num_params():,} parameters, "
                f"{train.max_iters:,} steps x {tokens:,} tokens; {changes}"
            )

    # ----- one run ----------------------------------------------------------------------------

    def _train(self, run: PlannedRun, label: str) -> int:
        run_dir = self.sweep.run_dir(run.name)
        state, changes = run_state(run_dir, run.config)
        config = run.config
        if state == "finished":
            say(f"{label}: finished earlier, in {run_dir}")
            return 0
        if state == "unfinished":
            say(f"{label}: resuming in {run_dir}")
        else:
            if state == "changed":
                say(
                    f"{label}: its config changed since it was trained ({'; '.join(changes)}); "
                    f"training it again from the start, the earlier run kept in its earlier_runs/"
                )
                config = config.model_copy(
                    update={"train": config.train.model_copy(update={"resume": "never"})}
                )
            own = ", ".join(f"{k}={v}" for k, v in run.overrides.items()) or "the base config"
            say(f"{label}: training into {run_dir} ({own})")
            self._timings(run.name, reset=True)
        config_file = self.sweep.out / f"{run.name}.yaml"
        header = f"# {run.name} of {self.sweep.path} (written by gpt.sweep; edit the sweep file)\n"
        write_text(config_file, header + config.to_yaml())
        return self._child(["-m", "gpt.train_cli", str(config_file)], timed=run.name)

    def _evaluate(self, run: PlannedRun) -> bool:
        """Score a finished run on the test split, if it has none or an old one; False if that
        failed."""
        run_dir = self.sweep.run_dir(run.name)
        if not (run_dir / WEIGHTS_FILE).is_file():
            say(f"{run.name}: no weights to score")
            return False
        if test_result_is_current(run_dir):
            return True
        if not (Path(run.config.data.dir) / "test.bin").is_file():
            say(f"{run.name}: {run.config.data.dir} has no test split; not scored")
            return True
        # A process of its own, which a Ctrl-C stops as it stops a run; its result is the file it
        # writes, eval_test.json, never its output.
        command = [sys.executable, "-m", "gpt.evaluate", str(run_dir), "--split", "test", "--json"]
        result = subprocess.run(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        scored = read_test_result(run_dir)
        if result.returncode != 0 or scored is None:
            if not self.stop.signal:
                lines = result.stderr.strip().splitlines() or ["(no output)"]
                say(f"{run.name}: scoring on the test split failed: {lines[-1]}")
            return False
        bits = scored.get("bits_per_byte")
        per_byte = f", {bits:.4f} bits per byte" if bits is not None else ""
        say(f"{run.name}: test loss {scored['loss']:.4f} nats per token{per_byte}")
        return True

    def _child(self, args: list[str], timed: str | None = None) -> int:
        """Run ``python ARGS`` in the sweep's process group, its output going to the sweep's;
        with ``timed``, add its wall and CPU time to that run's timings."""
        before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        code = subprocess.call([sys.executable, *args])
        if timed is not None:
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            self._timings(timed, wall=time.perf_counter() - started, cpu=cpu)
        return code if code >= 0 else 128 - code  # killed by a signal: as a shell reports it

    def _timings(self, name: str, wall: float = 0.0, cpu: float = 0.0, reset: bool = False):
        """OUT/timings.json: each run's training processes' wall and CPU seconds, summed over
        the sessions it took (a run trained again from the start starts again from zero)."""
        path = self.sweep.out / TIMINGS_FILE
        timings = read_json(path) or {}
        entry = {"wall_seconds": 0.0, "cpu_seconds": 0.0} if reset else timings.get(name)
        entry = entry or {"wall_seconds": 0.0, "cpu_seconds": 0.0}
        entry["wall_seconds"] += wall
        entry["cpu_seconds"] += cpu
        timings[name] = entry
        write_json(path, timings)

    # ----- the comparison ---------------------------------------------------------------------

    def _report(self) -> None:
        from gpt.analysis.lessons import ANALYSES
        from gpt.analysis.report import write_report
        from gpt.analysis.sweep_report import write_sweep_report

        sweep = self.sweep
        trained = [run for run in sweep.runs if (sweep.run_dir(run.name) / METRICS_FILE).is_file()]
        if not trained:
            return
        out = sweep.out / REPORT_DIR
        write_report([sweep.run_dir(run.name) for run in trained], out)
        timings = read_json(sweep.out / TIMINGS_FILE) or {}
        analysis = ANALYSES[sweep.analysis] if sweep.analysis else None
        summary = write_sweep_report(sweep, trained, timings, self.command, out, analysis)
        say(f"report: {summary}")


def say(text: str) -> None:
    print(f"sweep: {text}", flush=True)
