"""gpt.report: figures and summary from synthetic metrics with known values, and from real runs."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import matplotlib.image
import pytest
import yaml
from PIL import Image

from gpt.analysis.figures import (
    SCHEDULE_POINTS,
    gap_figure,
    learning_rate_figure,
    loss_figure,
    schedule_steps,
)
from gpt.analysis.report import FIGURES, REPORT_FILE
from gpt.analysis.runs import gap_growth_start, load_runs
from gpt.base.cli import run_cli
from gpt.base.config import ModelConfig, TrainConfig
from gpt.models.gpt import build_model
from gpt.report import _main as report_main
from gpt.run.weights import save_model
from gpt.training.schedule import learning_rate

from .conftest import ROOT, run_python, start_python
from .test_trainer import signal_once, sigterm_after_the_first_train_record

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Evaluations every 20 steps. The gap (val - train) is 0.10, 0.11, 0.105, 0.12, 0.15, 0.19: its
# last rise-at-every-evaluation stretch starts at step 40. The best val loss is 2.10, at step 60.
EVALS = [
    (0, 4.00, 4.10),
    (20, 3.00, 3.11),
    (40, 2.30, 2.405),
    (60, 1.98, 2.10),
    (80, 1.96, 2.11),
    (100, 1.93, 2.12),
]
TOKENS_PER_SECOND = 1000.0


def synthetic_run(folder: Path, *, with_facts: bool = True, with_test: bool = True) -> Path:
    """A run folder with known figures: 256 tokens per step and process (batch 4 x 2 x block 32)."""
    folder.mkdir(parents=True)
    records = []
    for step, train_loss, val_loss in EVALS:
        records.append({"step": step, "kind": "eval", "train_loss": train_loss,
                        "val_loss": val_loss, "best_val_loss": min(val_loss, 4.1)})  # fmt: skip
    for step in range(10, 101, 10):
        records.append({"step": step, "kind": "train", "loss": 4 - step / 50, "lr": step / 1e5,
                        "grad_norm": 1 / step, "tokens_per_sec": TOKENS_PER_SECOND,
                        "mfu": step / 1000})  # fmt: skip
    records.sort(key=lambda r: (r["step"], r["kind"] == "eval"))
    lines = [json.dumps(r) for r in records]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 10')  # a cut-off line
    config = {
        "data": {"dir": "data/x"},
        "model": {"block_size": 32},
        "train": {"batch_size": 4, "gradient_accumulation_steps": 2, "max_iters": 1000,
                  "early_stopping_patience": 2},
    }  # fmt: skip
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    if with_facts:
        facts = {"step": 100, "processes": 2, "tokens_per_step": 512, "stopped_early": True,
                 "interrupted": False}  # fmt: skip
        (folder / "run.json").write_text(json.dumps(facts))
    if with_test:
        (folder / "eval_test.json").write_text(
            json.dumps({"loss": 2.3456, "bits_per_byte": 3.3841})
        )
    model = build_model(
        ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=50, bias=False)
    )
    save_model(folder / "model.safetensors", model)
    return folder


def table(report: Path) -> list[dict[str, str]]:
    """report.md's summary table as one dict per run."""
    rows = [line for line in report.read_text().splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    return [
        dict(zip(header, [cell.strip() for cell in row.strip("|").split("|")], strict=True))
        for row in rows[2:]
    ]


def assert_valid_pngs(folder: Path) -> None:
    for name in FIGURES:
        path = folder / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE, name
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (700, 360)
        height, width, _ = matplotlib.image.imread(path).shape
        assert (width, height) == (700, 360)
        assert path.stat().st_size < 50_000  # small enough to commit


def test_the_gap_starts_to_grow_where_it_rises_to_the_end():
    steps = [0, 10, 20, 30, 40, 50]
    assert gap_growth_start(steps, [0.1, 0.11, 0.105, 0.12, 0.15, 0.19]) == 20
    assert gap_growth_start(steps, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]) == 0
    assert gap_growth_start(steps, [0.5, 0.4, 0.3, 0.2, 0.1, 0.0]) is None  # shrinking
    assert gap_growth_start(steps, [0.1, 0.1, 0.1, 0.1, 0.1, 0.2]) is None  # one rise: not yet
    assert gap_growth_start(steps, [0.1, 0.1, 0.1, 0.1, 0.2, 0.3]) == 30
    assert gap_growth_start(steps, [0.1, 0.1, 0.1, 0.1005, 0.101, 0.1015]) is None  # noise
    assert gap_growth_start(steps[:1], [0.1]) is None


def test_report_from_synthetic_metrics_holds_the_known_values(tmp_path):
    run = synthetic_run(tmp_path / "synthetic")
    assert run_cli(report_main, [str(run)]) == 0
    out = run / "report"
    assert_valid_pngs(out)
    report = (out / REPORT_FILE).read_text()
    (row,) = table(out / REPORT_FILE)
    parameters = build_model(
        ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=50, bias=False)
    ).num_params()
    assert row == {
        "run": "synthetic",
        "steps": "100 (early stop)",
        "parameters": f"{parameters:,}",
        "tokens seen": "51,200",  # 100 steps x 512 tokens (run.json: 2 processes)
        "wall time": "51.2 s",  # 10 records x 10 steps x 512 tokens / 1000 tokens/s
        "best val loss (step)": "2.1000 (60)",
        "final train loss": "1.9300",
        "final val loss": "2.1200",
        "test loss": "2.3456",
        "test bits per byte": "3.3841",
    }
    assert "`synthetic`: the gap grows from step 40 on." in report
    for name in FIGURES:
        assert f"]({name})" in report
    assert "assume one process" not in report


def test_figures_mark_the_best_val_loss_and_the_early_stop(tmp_path):
    runs = load_runs([synthetic_run(tmp_path / "a"), synthetic_run(tmp_path / "b")])
    for x_axis in ("step", "tokens"):
        (ax,) = loss_figure(runs, x_axis).axes
        labels = ax.get_legend_handles_labels()[1]
        for name in ("a", "b"):
            assert f"{name}: best val 2.1000 (step 60)" in labels
            assert f"{name}: early stop (step 100)" in labels
            assert f"{name}: val" in labels and f"{name}: train batches" in labels
        best = next(line for line in ax.get_lines() if line.get_label().startswith("a: best"))
        scale = 1 if x_axis == "step" else 512
        assert list(best.get_xdata()) == [60 * scale] and list(best.get_ydata()) == [2.10]


def test_a_report_of_many_runs_names_each_run_once_and_keeps_its_axes(tmp_path, recwarn):
    """Sixteen runs: every line named would be 80 legend entries and no room left for the axes."""
    runs = load_runs([synthetic_run(tmp_path / f"run{i:02d}") for i in range(16)])
    (ax,) = loss_figure(runs, "step").axes
    labels = ax.get_legend_handles_labels()[1]
    assert labels == [run.name for run in runs] + [
        "train batches", "train (evaluation)", "val", "best val"
    ]  # fmt: skip
    folders = [str(tmp_path / f"run{i:02d}") for i in range(16)]
    assert run_cli(report_main, [*folders, "--out", str(tmp_path / "report")]) == 0
    assert not [w for w in recwarn if "constrained_layout not applied" in str(w.message)]


def test_several_runs_are_overlaid_and_runs_without_run_json_assume_one_process(
    tmp_path, monkeypatch
):
    first = synthetic_run(tmp_path / "one" / "run")
    second = synthetic_run(tmp_path / "two" / "run", with_facts=False, with_test=False)
    monkeypatch.chdir(tmp_path)
    assert run_cli(report_main, [str(first), str(second)]) == 0  # default: ./report
    rows = table(tmp_path / "report" / REPORT_FILE)
    assert [row["run"] for row in rows] == [str(first), str(second)]  # same names: their paths
    assert rows[1]["tokens seen"] == "25,600" and rows[1]["wall time"] == "25.6 s"
    assert rows[1]["steps"] == "100 (early stop)"  # from the patience rule, without run.json
    assert rows[1]["test loss"] == rows[1]["test bits per byte"] == "-"
    assert f"`{second}` has no run.json" in (tmp_path / "report" / REPORT_FILE).read_text()
    assert_valid_pngs(tmp_path / "report")


def test_a_folder_without_metrics_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_cli(report_main, [str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {tmp_path / 'empty'} has no metrics.jsonl; pass a training output folder"
    ]


# ----- real runs ------------------------------------------------------------------------------------

TINY = [
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=32",
    "train.batch_size=8",
    "train.eval_iters=2",
    "train.log_interval=5",
    "train.warmup_iters=5",
    "train.wandb.mode=disabled",
]


def train_command(data: Path, out: Path, *overrides: str) -> list[str]:
    config = ROOT / "configs" / "shakespeare_char_cpu.yaml"
    return ["train.py", str(config), f"data.dir={data}", f"train.out_dir={out}", *TINY, *overrides]


def test_a_real_run_ends_with_its_report_and_takes_the_test_result(shakespeare_char, tmp_path):
    out = tmp_path / "run"
    result = run_python(*train_command(shakespeare_char, out, "train.max_iters=20",
                                       "train.eval_interval=10"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"report: {out / 'report' / REPORT_FILE}" in result.stdout
    assert_valid_pngs(out / "report")
    facts = json.loads((out / "run.json").read_text())
    assert facts == {"step": 20, "processes": 1, "tokens_per_step": 256, "stopped_early": False,
                     "interrupted": False}  # fmt: skip
    (row,) = table(out / "report" / REPORT_FILE)
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["kind"] == "eval"]
    best = min(evals, key=lambda r: r["val_loss"])
    assert row["best val loss (step)"] == f"{best['val_loss']:.4f} ({best['step']})"
    assert row["final val loss"] == f"{evals[-1]['val_loss']:.4f}"
    assert row["tokens seen"] == "5,120" and row["steps"] == "20" and row["test loss"] == "-"

    evaluated = run_python("-m", "gpt.evaluate", str(out), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    test = json.loads(evaluated.stdout)
    assert run_python("-m", "gpt.report", str(out)).returncode == 0
    (row,) = table(out / "report" / REPORT_FILE)
    assert row["test loss"] == f"{test['loss']:.4f}"
    assert row["test bits per byte"] == f"{test['bits_per_byte']:.4f}"


def test_a_run_with_train_report_false_writes_no_report(shakespeare_char, tmp_path):
    out = tmp_path / "run"
    result = run_python(*train_command(shakespeare_char, out, "train.max_iters=2",
                                       "train.report=false"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "report:" not in result.stdout and not (out / "report").exists()
    assert result.stdout.splitlines()[-1].startswith("finished at step 2 of 2;")


def test_a_clean_stop_writes_the_report(shakespeare_char, tmp_path):
    out = tmp_path / "run"
    command = train_command(shakespeare_char, out, "train.max_iters=100000")
    returncode, _, stderr = sigterm_after_the_first_train_record(command, out)
    assert returncode == 128 + signal.SIGTERM, stderr
    assert json.loads((out / "run.json").read_text())["interrupted"] is True
    (row,) = table(out / "report" / REPORT_FILE)
    assert row["steps"].endswith("(stopped by signal)")
    assert_valid_pngs(out / "report")


def test_a_run_stopped_between_two_logs_reports_the_steps_it_took(shakespeare_char, tmp_path):
    """Console, run.json and report.md give one step count: the trainer's, not the last logged."""
    out = tmp_path / "run"
    command = train_command(
        shakespeare_char, out, "train.max_iters=100000", "train.log_interval=100000",
        "train.eval_interval=100000", "train.checkpoint_interval=5",
    )  # fmt: skip
    returncode, stdout, stderr = signal_once(
        command, lambda: (out / "checkpoints" / "step_0000005").is_dir()
    )
    assert returncode == 128 + signal.SIGTERM, stderr
    step = json.loads((out / "run.json").read_text())["step"]
    assert step > 5 and f"interrupted at step {step} of 100000 (SIGTERM)" in stdout
    (row,) = table(out / "report" / REPORT_FILE)
    assert row["steps"] == f"{step:,} (stopped by signal)"
    assert row["tokens seen"] == f"{step * 256:,}"


def test_the_steps_are_run_json_s_where_the_records_stop_short(tmp_path):
    run = synthetic_run(tmp_path / "stopped")  # records to step 100
    facts = json.loads((run / "run.json").read_text())
    facts.update(step=121, stopped_early=False, interrupted=True)
    (run / "run.json").write_text(json.dumps(facts))
    (loaded,) = load_runs([run])
    assert loaded.last_step == 121 and loaded.tokens_seen == 121 * 512
    assert run_cli(report_main, [str(run)]) == 0
    (row,) = table(run / "report" / REPORT_FILE)
    assert row["steps"] == "121 (stopped by signal)"


def test_the_learning_rate_figure_draws_the_schedule_from_the_first_step(tiny_run):
    """The rate of every step, the warmup's start included, computed from config.yaml's
    schedule; the logged rates (every 5 steps) lie on it."""
    (run,) = load_runs([tiny_run])
    (ax,) = learning_rate_figure([run]).axes
    schedule, logged = ax.get_lines()
    train = TrainConfig.model_validate(
        yaml.safe_load((tiny_run / "config.yaml").read_text())["train"]
    )
    assert list(schedule.get_xdata()) == list(range(1, 21))
    assert list(schedule.get_ydata()) == [learning_rate(step, train) for step in range(20)]
    assert schedule.get_ydata()[0] == pytest.approx(train.learning_rate / 6)  # warmup: 1/(5+1)
    assert list(logged.get_xdata()) == [5, 10, 15, 20]
    on_schedule = dict(zip(schedule.get_xdata(), schedule.get_ydata(), strict=True))
    assert list(logged.get_ydata()) == [on_schedule[step] for step in logged.get_xdata()]
    assert ax.get_xlim()[0] == 0 and ax.get_ylim()[0] == 0


def test_a_long_runs_schedule_is_drawn_at_its_bends_and_evenly_between():
    train = TrainConfig(max_iters=600_000, warmup_iters=2_000, lr_decay_iters=500_000)
    steps = schedule_steps(600_000, train)
    assert steps[0] == 1 and steps[-1] == 600_000 and len(steps) <= SCHEDULE_POINTS + 3
    assert {2_001, 500_001} <= set(steps)  # the first step at the peak, the first at min_lr
    assert schedule_steps(20, train) == list(range(1, 21))


def test_one_evaluation_is_a_point_on_the_runs_steps_with_a_note(shakespeare_char, tmp_path):
    """A run killed before its second evaluation has one: its gap is one point, drawn large on
    an axis of the run's steps (not a sliver around step 0), and said to be no trend yet."""
    out = tmp_path / "run"
    command = train_command(
        shakespeare_char, out, "train.max_iters=100000", "train.eval_interval=100000"
    )
    process = start_python(*command)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and '"train"' in metrics.read_text()):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.kill()
    process.wait()

    (run,) = load_runs([out])
    assert len(run.evals) == 1 and run.last_step >= 5
    (ax,) = gap_figure([run]).axes
    (point,) = [line for line in ax.get_lines() if line.get_label() == "run"]
    assert list(point.get_xdata()) == [0] and point.get_markersize() >= 8
    low, high = ax.get_xlim()
    assert low < 0 and high > run.last_step
    assert [text.get_text() for text in ax.texts] == [
        "run: one evaluation, a point without a trend yet"
    ]
    assert run_cli(report_main, [str(out)]) == 0
    report = (out / "report" / REPORT_FILE).read_text()
    assert "`run`: one evaluation (step 0), so one point: how the gap changes shows" in report


def test_a_report_that_cannot_be_written_never_fails_the_run(shakespeare_char, tmp_path):
    broken = tmp_path / "broken" / "matplotlib"  # a matplotlib that cannot be imported
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('matplotlib is broken here')\n")
    out = tmp_path / "run"
    result = run_python(
        *train_command(shakespeare_char, out, "train.max_iters=5"),
        env={"PYTHONPATH": str(broken.parent)},
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "matplotlib is broken here" in warnings[0], result.stderr
    assert "finished at step 5 of 5" in result.stdout and (out / "model.safetensors").is_file()
