"""gpt.sweep: a sweep file's runs trained one after another, scored and compared; stopped and
continued; bad sweep files refused in one line before any work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gpt.analysis.lessons import ANALYSES
from gpt.analysis.sweep import config_changes, run_state
from gpt.analysis.sweep_file import load_sweep
from gpt.base.cli import run_cli
from gpt.base.config import Config, config_from_dict
from gpt.sweep import _command, parse_args
from gpt.sweep import _main as sweep_main

from .conftest import CORPUS, ROOT

BASE = str(ROOT / "configs" / "shakespeare_char_cpu.yaml")
TINY = {
    "model.n_layer": 1,
    "model.n_head": 2,
    "model.n_embd": 16,
    "model.block_size": 16,
    "train.batch_size": 4,
    "train.max_iters": 6,
    "train.warmup_iters": 1,
    "train.eval_interval": 3,
    "train.eval_iters": 2,
    "train.log_interval": 3,
    "train.checkpoint_interval": 100,
    "train.wandb.mode": "disabled",
    "train.report": False,  # each run's own; the sweep's report is drawn all the same
    "train.cpu": True,
}


def sweep_file(folder: Path, **changes) -> Path:
    """A sweep of tiny runs on a 30 KB corpus, written into ``folder``."""
    (folder / "tiny.txt").write_text(CORPUS.read_text(encoding="utf-8")[:30_000], encoding="utf-8")
    spec = {
        "description": "a tiny sweep",
        "base": BASE,
        "data": {"input": "tiny.txt", "tokenizer": "char"},
        "overrides": TINY,
        "runs": {"a": {}, "b": {"model.n_embd": 32}},
        "analysis": "capacity",
        **changes,
    }
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def start_sweep(*args: str) -> subprocess.Popen:
    """``python -m gpt.sweep ARGS`` in a process group of its own, as a terminal starts a command."""
    return subprocess.Popen(
        [sys.executable, "-m", "gpt.sweep", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(process: subprocess.Popen, timeout: float = 240) -> str:
    output, _ = process.communicate(timeout=timeout)
    return output


def numbers(out: Path) -> dict[str, dict]:
    runs = json.loads((out / "report" / "sweep.json").read_text())["runs"]
    return {run["name"]: run for run in runs}


def wait_for_training(run_dir: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until the run has logged a training step."""
    deadline = time.monotonic() + timeout
    metrics = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.is_file() and '"kind": "train"' in metrics.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{run_dir} logged no training step: {finish(process)}")


# ----- end to end ---------------------------------------------------------------------------------


def test_a_sweep_stopped_by_ctrl_c_continues_where_it_stopped(tmp_path):
    """The life of a sweep: two runs asked for (--only) and interrupted in the second, then the
    full command trains the rest, skipping what is done; a run that fails does not stop the ones
    after it."""
    slow = {"train.max_iters": 400, "train.eval_interval": 200, "train.log_interval": 5}
    runs = {
        "a": {},
        "broken": {"model.vocab_size": 10},  # smaller than the data's: the trainer refuses it
        "b": {"model.n_embd": 32, **slow},
    }
    sweep, out = sweep_file(tmp_path, runs=runs), tmp_path / "out"
    command = [str(sweep), "--out", str(out)]

    first = start_sweep(*command, "--only", "a", "b")
    wait_for_training(out / "b", first)
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
    output = finish(first)
    assert first.returncode == 130, output
    assert "[1/2] a: training into" in output and "a: test loss" in output
    assert "sweep: stopped at run b; run the same command again to continue" in output
    facts = json.loads((out / "b" / "run.json").read_text())
    assert facts["interrupted"] and 0 < facts["step"] < 400
    assert "Traceback" not in output
    a_files = {p.name: p.stat().st_mtime_ns for p in (out / "a").iterdir()}

    second = start_sweep(*command)
    output = finish(second)
    assert second.returncode == 1, output  # broken failed; the others are done
    assert "[1/3] a: finished earlier" in output and "[3/3] b: resuming" in output
    assert f"resumed from {out / 'b' / 'checkpoints'}" in output
    assert "model.vocab_size=10 is smaller than the data's vocabulary" in output
    assert "broken failed (exit code 2" in output
    assert "1 of 3 runs failed: broken" in output
    assert {p.name: p.stat().st_mtime_ns for p in (out / "a").iterdir()} == a_files  # untouched
    assert json.loads((out / "b" / "run.json").read_text())["step"] == 400

    measured = numbers(out)
    assert list(measured) == ["a", "b"]  # broken trained nothing, so it is not compared
    for name in measured:
        test = json.loads((out / name / "eval_test.json").read_text())
        assert measured[name]["test_loss"] == test["loss"]
        assert measured[name]["cpu_seconds"] > 0
    assert measured["b"]["steps"] == 400 and measured["b"]["tokens_seen"] == 400 * 4 * 16
    assert measured["a"]["parameters"] < measured["b"]["parameters"]
    summary = (out / "report" / "sweep.md").read_text()
    assert "a tiny sweep" in summary and "![Loss against model size](capacity.png)" in summary
    for figure in ("capacity.png", "loss_vs_step.png", "report.md"):
        assert (out / "report" / figure).is_file()


# ----- deciding what to do with a run -------------------------------------------------------------


def tiny_config(out_dir: Path, **changes) -> Config:
    raw = {"model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16}}
    raw["train"] = {"out_dir": str(out_dir), "max_iters": 6, **changes}
    return config_from_dict(raw)


def write_run(run_dir: Path, config: Config, **facts) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    trained = config.model_copy(
        update={"model": config.model.model_copy(update={"vocab_size": 65})}
    )
    (run_dir / "config.yaml").write_text(trained.to_yaml())
    if facts:
        (run_dir / "run.json").write_text(json.dumps(facts))


def test_a_run_is_new_finished_unfinished_or_changed(tmp_path):
    run_dir = tmp_path / "a"
    wanted = tiny_config(run_dir)
    assert run_state(run_dir, wanted) == ("new", [])
    write_run(run_dir, wanted)  # started, never stopped cleanly
    assert run_state(run_dir, wanted) == ("unfinished", [])
    write_run(run_dir, wanted, step=3, interrupted=True)
    assert run_state(run_dir, wanted) == ("unfinished", [])
    write_run(run_dir, wanted, step=6, interrupted=False)
    assert run_state(run_dir, wanted) == ("finished", [])
    write_run(run_dir, wanted, step=4, stopped_early=True, interrupted=False)
    assert run_state(run_dir, wanted) == ("finished", [])
    longer = tiny_config(run_dir, max_iters=8)
    assert run_state(run_dir, longer) == ("changed", ["train.max_iters 6 -> 8"])


def test_what_changes_nothing_a_run_learns_is_no_change(tmp_path):
    trained = tiny_config(tmp_path / "a", warmup_iters=100)  # fitted to the run: 0 steps
    moved = tiny_config(tmp_path / "elsewhere", warmup_iters=100, resume="never")
    moved = moved.model_copy(update={"model": moved.model.model_copy(update={"vocab_size": 65})})
    assert config_changes(moved, trained) == []
    assert config_changes(trained, tiny_config(tmp_path / "a", learning_rate=0.01)) == [
        "train.learning_rate 0.001 -> 0.01"
    ]


# ----- reading a sweep file -----------------------------------------------------------------------


def test_a_preset_is_merged_over_the_defaults_and_overrides_apply_in_order(tmp_path):
    runs = {"a": {"model.n_embd": 16}, "b": {"model.n_embd": 32}, "c": {"train.seed": 1}}
    preset = {
        "description": "bigger",
        "overrides": {"train.max_iters": 50},
        "runs": {"a": None, "b": {"model.n_head": 4}, "d": {"model.n_embd": 64}},
    }
    path = sweep_file(tmp_path, runs=runs, presets={"gpu": preset})
    sweep = load_sweep(path, "gpu", ["train.seed=7"], analyses=tuple(ANALYSES))
    assert sweep.name == "sweep-gpu" and sweep.out == Path("runs/sweep-gpu")
    assert sweep.description == "bigger"
    assert [run.name for run in sweep.runs] == ["b", "c", "d"]
    b, c, d = (run.config for run in sweep.runs)
    assert (b.model.n_embd, b.model.n_head, b.train.max_iters) == (32, 4, 50)
    assert (d.model.n_embd, d.model.n_layer) == (64, 1)  # the sweep's overrides, then its own
    assert c.train.seed == 7  # the command line's come last
    assert b.train.out_dir == str(Path("runs/sweep-gpu/b"))
    assert b.data.dir == str(Path("runs/sweep-gpu/data"))
    assert sweep.data_prep_argv[:2] == ["--input", str(tmp_path / "tiny.txt")]


@pytest.mark.parametrize(
    ("changes", "argv", "message"),
    [
        ({"descripton": "x"}, [], "unknown key 'descripton'"),
        (
            {"runs": {"a": {"model.n_layr": 2}}},
            [],
            "run a: unknown config key 'model.n_layr' (did you mean 'model.n_layer'?)",
        ),  # fmt: skip
        ({"runs": {"a": {"model.dropout": 2}}}, [], "run a: config key 'model.dropout'"),
        ({"overrides": {"trian.max_iters": 3}}, [], "unknown config key 'trian'"),
        ({"base": "missing.yaml"}, [], "its base config"),
        ({"runs": {"a": {"train.out_dir": "x"}}}, [], "sets train.out_dir, which the sweep sets"),
        ({"runs": {"a": {"data.dir": "x"}}}, [], "sets data.dir, which the sweep sets"),
        ({"runs": {"a/b": {}}}, [], "run name 'a/b'"),
        ({"runs": {}}, [], "'runs'"),
        ({"analysis": "nope"}, [], "unknown analysis 'nope'"),
        (
            {"data": {"input": "tiny.txt", "tokenzer": "char"}},
            [],
            "its data section: unrecognized arguments: --tokenzer char",
        ),  # fmt: skip
        ({}, ["--preset", "gpu"], "has no preset 'gpu'"),
        ({}, ["--only", "z"], "--only z: no such run; the runs are a, b"),
        ({}, ["--only", "train.max_iters=3"], "--only needs the names of the runs"),
        ({}, ["model.n_layer=x"], "run a: config key 'model.n_layer'"),
    ],
)
def test_a_bad_sweep_is_one_line_and_exit_2_before_any_work(tmp_path, capsys, changes, argv, message):  # fmt: skip
    out = tmp_path / "out"
    argv = [str(sweep_file(tmp_path, **changes)), "--out", str(out), *argv]
    assert run_cli(sweep_main, argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not out.exists()


def test_overrides_may_come_after_only_and_the_report_records_only(tmp_path, capsys):
    argv = [str(sweep_file(tmp_path)), "--out", str(tmp_path / "out"), "--plan"]
    argv += ["--only", "b", "train.max_iters=150", "a"]  # a run name never holds '='
    assert run_cli(sweep_main, argv) == 0, capsys.readouterr().err
    plan = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("sweep:")]
    assert [line.split(":")[0] for line in plan] == ["a", "b"]
    assert all("150 steps" in line for line in plan), plan
    args = parse_args(argv)
    assert (args.only, args.overrides) == (["b", "a"], ["train.max_iters=150"])
    assert _command(args).endswith(
        f"{tmp_path / 'sweep.yaml'} train.max_iters=150 --out {tmp_path / 'out'} --only b a"
    )


def test_a_sweep_file_that_is_not_yaml_or_missing_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("runs: [unclosed\n")
    assert run_cli(sweep_main, [str(bad)]) == 2
    assert "is not valid YAML at line" in capsys.readouterr().err
    assert run_cli(sweep_main, [str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_sweep_with_two_runs_of_one_name_is_refused(tmp_path, capsys):
    """YAML itself keeps the last of two equal keys: one run would silently be dropped."""
    path = sweep_file(tmp_path)
    text = path.read_text(encoding="utf-8")
    runs = text.index("runs:\n") + len("runs:\n")
    path.write_text(text[:runs] + "  b: {model.n_embd: 64}\n" + text[runs:], encoding="utf-8")
    out = tmp_path / "out"
    assert run_cli(sweep_main, [str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: sweep file {path} gives the key 'b' twice (the second at line ")
    assert err.count("\n") == 1
    assert not out.exists()


def test_a_sweep_without_its_data_stops_before_any_work(tmp_path, capsys):
    path = sweep_file(tmp_path, data=None, overrides={**TINY, "data.dir": str(tmp_path / "no")})
    out = tmp_path / "out"
    assert run_cli(sweep_main, [str(path), "--out", str(out)]) == 2
    assert "data folder" in capsys.readouterr().err
    assert not out.exists()


def lesson(name: str, preset: str | None = None):
    return load_sweep(ROOT / "configs" / "experiments" / f"{name}.yaml", preset, [], None, tuple(ANALYSES))  # fmt: skip


@pytest.mark.parametrize("preset", [None, "gpu"])
def test_the_architecture_lesson_matches_the_modern_gpt_to_the_others_size(preset):
    from gpt.models.gpt import build_model

    runs = {run.name: run.config for run in lesson("architecture", preset).runs}
    assert list(runs) == ["gpt", "mlp", "cnn", "modern"]
    modern = runs["modern"].model
    assert (modern.rope, modern.norm, modern.activation, modern.qk_norm) == (True, "rms", "swiglu", True)  # fmt: skip
    assert modern.n_kv_head < modern.n_head and not modern.tie_embeddings and modern.zero_init_proj
    assert {config.train.optimizer for config in runs.values()} == {
        "adamw"
    }  # only the architecture differs
    sizes = {
        name: build_model(config.model.model_copy(update={"vocab_size": 65})).num_params()
        for name, config in runs.items()
    }
    assert abs(sizes["modern"] / sizes["gpt"] - 1) < 0.01, sizes


def test_the_optimiser_lesson_trains_muon_at_its_searched_rate():
    search = {run.name: run.config.train for run in lesson("optimiser_lr_search").runs}
    searched = {t.muon_learning_rate for name, t in search.items() if name.startswith("muon")}
    assert len(searched) == 4 and {t.optimizer for n, t in search.items() if n.startswith("muon")} == {"muon"}  # fmt: skip
    runs = {run.name: run.config.train for run in lesson("optimiser").runs}
    for name in ("muon", "muon_constant"):
        assert runs[name].optimizer == "muon" and runs[name].muon_learning_rate in searched
        assert runs[name].learning_rate == runs["adam"].learning_rate  # the rest by Adam's rate
        assert runs[name].weight_decay == 0 and runs[name].muon_weight_decay == 0
    assert runs["muon_constant"].lr_schedule == "constant" and runs["muon"].lr_schedule == "cosine"
