"""The trainer, end to end on the bundled corpus: short CPU runs through the real command line."""

import json
import math
import signal
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from bench.fault_runs import free_port
from gpt.analysis.runs import load_run
from gpt.base.config import ModelConfig, TrainConfig
from gpt.data.tokens import BatchSlice, TokenData
from gpt.run.weights import load_model
from gpt.training.schedule import learning_rate

from .conftest import CORPUS, ROOT, run_python, start_python

SLOW_EVALUATIONS = str(ROOT / "tests" / "slow_evaluations.py")

TINY = [
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=32",
    "model.dropout=0.0",
    "train.batch_size=8",
    "train.warmup_iters=5",
    "train.learning_rate=3e-3",
    "train.min_lr=3e-4",
    "train.eval_iters=4",
    "train.log_interval=5",
    "train.wandb.mode=disabled",
    "train.cpu=true",  # bitwise results are promised on the CPU; 2 processes need no 2 GPUs
    "train.report=false",  # a second of figures, which the tests of the report turn back on
]


def train_args(data: Path, out: Path, *overrides: str, config: str = "shakespeare_char_cpu.yaml"):
    return [
        "train.py",
        str(ROOT / "configs" / config),
        f"data.dir={data}",
        f"train.out_dir={out}",
        *TINY,
        *overrides,
    ]


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    newest = sorted((out / "checkpoints").glob("step_*"))[-1]
    return load_file(newest / "model.safetensors")


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if atol:
            torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)
        else:
            assert torch.equal(a[name], b[name]), name


def accelerate_launch(machines: int, machine_rank: int, port: int) -> list[str]:
    """``accelerate launch`` of 2 processes in all (gloo on CPU), over 1 or 2 "machines" on loopback."""
    return [
        "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", str(machines), "--machine_rank", str(machine_rank),
        "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
        "--mixed_precision", "no", "--dynamo_backend", "no",
    ]  # fmt: skip


# ----- unit tests of the pieces ------------------------------------------------------------------


def test_learning_rate_warms_up_then_decays_to_min_lr():
    config = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_iters=10, max_iters=110)
    rates = [learning_rate(step, config) for step in range(120)]
    assert rates[0] == pytest.approx(1 / 11)
    assert all(a < b for a, b in zip(rates[:10], rates[1:11], strict=True))
    assert rates[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[10:110], rates[11:111], strict=True))
    assert rates[60] == pytest.approx(0.55)  # cosine: half way down at half the decay
    assert rates[110:] == [pytest.approx(0.1)] * 10
    linear = config.model_copy(update={"lr_schedule": "linear"})
    assert learning_rate(35, linear) == pytest.approx(1.0 - 0.25 * 0.9)
    constant = config.model_copy(update={"lr_schedule": "constant"})
    assert learning_rate(100, constant) == 1.0


def test_batch_slices_partition_the_global_batch():
    seen = []
    for rank in range(2):
        for micro in range(3):
            part = BatchSlice.for_micro_step(4, 3, 2, rank, micro)
            assert part.global_size == 24
            seen += range(part.start, part.start + part.size)
    assert sorted(seen) == list(range(24))


def test_batches_are_a_pure_function_of_seed_step_and_position(shakespeare_char):
    data = TokenData(shakespeare_char, block_size=16)
    whole = data.train_batch(1, 7, BatchSlice(8, 0, 8))
    halves = [data.train_batch(1, 7, BatchSlice(8, start, 4)) for start in (0, 4)]
    assert torch.equal(whole[0], torch.cat([h[0] for h in halves]))
    assert torch.equal(whole[1][:, :-1], whole[0][:, 1:])  # targets are the inputs shifted by one
    assert not torch.equal(whole[0], data.train_batch(1, 8, BatchSlice(8, 0, 8))[0])
    assert not torch.equal(whole[0], data.train_batch(2, 7, BatchSlice(8, 0, 8))[0])
    val = data.eval_batch("val", 1, BatchSlice(8, 0, 8))
    assert torch.equal(val[0], data.eval_batch("val", 1, BatchSlice(8, 0, 8))[0])


def test_evaluation_slices_partition_the_evaluation_windows():
    """eval_iters=3 batches of 4 on each of 2 processes: 24 windows, each read once."""
    seen = []
    for rank in range(2):
        for index in range(3):
            part = BatchSlice.for_evaluation(4, 3, 2, rank, index)
            assert part.global_size == 24
            seen += range(part.start, part.start + part.size)
    assert sorted(seen) == list(range(24))


# ----- training runs -----------------------------------------------------------------------------


def test_loss_falls_and_the_output_folder_is_complete(shakespeare_char, tmp_path):
    out = tmp_path / "run"
    result = run_python(
        *train_args(
            shakespeare_char,
            out,
            "train.max_iters=60",
            "train.eval_interval=30",
            "train.checkpoint_interval=30",
        )
    )
    assert result.returncode == 0, result.stderr
    evals = [r for r in read_metrics(out) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 30, 60]
    assert evals[0]["val_loss"] == pytest.approx(math.log(65), rel=0.1)
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5
    trains = [r for r in read_metrics(out) if r["kind"] == "train"]
    assert [r["step"] for r in trains] == list(range(5, 61, 5))
    for record in trains:
        assert {"loss", "lr", "grad_norm", "tokens_per_sec", "mfu"} <= record.keys()
        assert record["tokens_per_sec"] > 0 and 0 < record["mfu"] < 1
    assert (out / "config.yaml").is_file() and (out / "tokenizer.json").is_file()
    assert "n_layer: 2" in (out / "config.yaml").read_text()
    assert "vocab_size: 65" in (out / "config.yaml").read_text()
    assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_0000030",
        "step_0000060",
    ]
    # weights get the permissions of any new file (safetensors alone makes them owner-only)
    default_mode = (out / "config.yaml").stat().st_mode
    for weights in [out / "model.safetensors", *out.glob("checkpoints/*/model.safetensors")]:
        assert weights.stat().st_mode == default_mode, weights


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_baselines_train_through_the_same_command(arch, shakespeare_char, tmp_path):
    out = tmp_path / arch
    args = train_args(
        shakespeare_char,
        out,
        "train.max_iters=40",
        "train.eval_interval=40",
        config=f"{arch}_baseline.yaml",
    )
    result = run_python(*args)
    assert result.returncode == 0, result.stderr
    evals = [r for r in read_metrics(out) if r["kind"] == "eval"]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.3
    assert f"arch: {arch}" in (out / "config.yaml").read_text()


EQUIVALENCE = [
    "train.max_iters=6",
    "train.eval_interval=6",
    "train.checkpoint_interval=6",
    "train.grad_clip=1.0",
    "train.warmup_iters=2",
]


@pytest.mark.slow
def test_the_same_global_batch_trains_the_same_model_however_it_is_split(
    shakespeare_char, tmp_path
):
    """Batch 8 in one process equals batch 4 accumulated twice. With dropout, whose masks are
    keyed by the micro-batch's place in the global batch like its data, batch 4 accumulated twice
    equals batch 4 in each of two processes, on one machine or two."""
    reference = tmp_path / "one_process_batch_8"
    accumulated = tmp_path / "one_process_batch_4_accumulate_2"
    dropout = [*EQUIVALENCE, "model.dropout=0.2", "train.batch_size=4"]
    accumulated_dropout = tmp_path / "dropout_one_process_batch_4_accumulate_2"
    two_processes = tmp_path / "dropout_two_processes_batch_4"
    two_machines = tmp_path / "dropout_two_machines_batch_4"
    two_accumulations = ["train.gradient_accumulation_steps=2", "train.eval_iters=8"]
    # eval_iters=8: 8 x 4 windows, the 32 that the other runs evaluate
    runs = [
        run_python(*train_args(shakespeare_char, reference, *EQUIVALENCE, "train.batch_size=8")),
        run_python(
            *train_args(
                shakespeare_char,
                accumulated,
                *EQUIVALENCE,
                "train.batch_size=4",
                *two_accumulations,
            )
        ),
        run_python(
            *train_args(shakespeare_char, accumulated_dropout, *dropout, *two_accumulations)
        ),
        run_python(
            *accelerate_launch(machines=1, machine_rank=0, port=free_port()),
            *train_args(shakespeare_char, two_processes, *dropout),
        ),
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    port = free_port()
    machines = [
        start_python(
            *accelerate_launch(machines=2, machine_rank=rank, port=port),
            *train_args(shakespeare_char, two_machines, *dropout),
        )
        for rank in (0, 1)
    ]
    said = []
    for machine in machines:
        stdout, stderr = machine.communicate(timeout=300)
        assert machine.returncode == 0, stderr[-3000:]
        said.append([line for line in stdout.splitlines() if line.startswith("device ")])
    assert said == [["device     cpu, 2 processes on 2 machines"], []]  # the main process says it

    for expected, others in [
        (reference, [accumulated]),
        (accumulated_dropout, [two_processes, two_machines]),
    ]:
        for other in others:
            assert_same_weights(final_weights(expected), final_weights(other), atol=2e-5)
            # evaluated on the same windows
            assert read_metrics(other)[-1]["val_loss"] == pytest.approx(
                read_metrics(expected)[-1]["val_loss"], abs=1e-5
            )


def test_an_evaluation_reads_eval_iters_batches_of_each_split_whatever_the_accumulation(
    shakespeare_char, tmp_path
):
    """eval_iters=3 with 4 micro-steps a step: 3 batches (forward passes) a split, not 12."""
    log = tmp_path / "evaluation_batches"
    result = run_python(
        SLOW_EVALUATIONS, "0", str(log),
        *train_args(shakespeare_char, tmp_path / "run", "train.max_iters=1", "train.eval_iters=3",
                    "train.gradient_accumulation_steps=4"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    evaluations = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "eval"]
    assert len(evaluations) == 2  # at step 0 and at the end
    assert len(log.read_text().splitlines()) == 2 * 2 * 3  # evaluations x splits x eval_iters


def test_a_slow_evaluation_counts_in_wall_time_but_not_in_the_next_records_tokens_per_sec(
    shakespeare_char, tmp_path
):
    """Every evaluation batch sleeps 0.25 s: the evaluation at step 5 takes at least 1 s, which
    the train record at step 10 counts in its wall_seconds and not in its tokens/s."""
    out, sleep = tmp_path / "run", 0.25
    result = run_python(
        SLOW_EVALUATIONS, str(sleep), str(tmp_path / "evaluation_batches"),
        *train_args(shakespeare_char, out, "train.max_iters=10", "train.eval_interval=5",
                    "train.log_interval=5", "train.eval_iters=2"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = 2 * 2 * sleep  # splits x eval_iters x the sleep of each batch
    tokens_per_step = json.loads((out / "run.json").read_text())["tokens_per_step"]
    after = next(r for r in read_metrics(out) if r["kind"] == "train" and r["step"] == 10)
    training = tokens_per_step * 5 / after["tokens_per_sec"]  # the seconds its tokens/s is over
    assert training + evaluation <= after["wall_seconds"]
    run = load_run(out, "run")
    assert run.training_seconds_at_records()[-1] + evaluation <= run.wall_seconds


RESUME = [
    "train.max_iters=120",
    "train.eval_interval=40",
    "train.checkpoint_interval=10",
    "model.dropout=0.1",
    "model.n_embd=64",
    "model.block_size=64",
]


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_bitwise_identical_weights(shakespeare_char, tmp_path):
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    assert run_python(*train_args(shakespeare_char, uninterrupted, *RESUME)).returncode == 0

    process = start_python(*train_args(shakespeare_char, resumed, *RESUME))
    deadline = time.monotonic() + 120
    while not (resumed / "checkpoints" / "step_0000030").exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (resumed / "checkpoints" / "step_0000120").exists()

    result = run_python(*train_args(shakespeare_char, resumed, *RESUME))
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stdout
    assert_same_weights(final_weights(uninterrupted), final_weights(resumed))
    steps = [(r["kind"], r["step"]) for r in read_metrics(resumed)]
    assert steps == [(r["kind"], r["step"]) for r in read_metrics(uninterrupted)]


def sigterm_after_the_first_train_record(args: list[str], out: Path) -> tuple[int, str, str]:
    """Start ``python ARGS`` (a run into ``out``), SIGTERM it once metrics.jsonl holds a train
    record, and wait for it: its exit code, stdout and stderr."""
    metrics = out / "metrics.jsonl"
    return signal_once(args, lambda: metrics.exists() and '"train"' in metrics.read_text())


def signal_once(
    args: list[str], ready: Callable[[], bool], signum: int = signal.SIGTERM
) -> tuple[int, str, str]:
    """Start ``python ARGS``, send it ``signum`` once ``ready()``, and wait for it: its exit
    code, stdout and stderr."""
    process = start_python(*args)
    deadline = time.monotonic() + 120
    while not ready():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    return process.returncode, stdout, stderr


def test_sigterm_saves_a_checkpoint_and_exits_with_the_signals_code(shakespeare_char, tmp_path):
    out = tmp_path / "run"
    args = train_args(
        shakespeare_char, out, "train.max_iters=100000", "train.checkpoint_interval=100000"
    )
    returncode, stdout, stderr = sigterm_after_the_first_train_record(args, out)
    assert returncode == 128 + signal.SIGTERM, stderr  # so `train.py && sample.py` stops
    (checkpoint,) = (out / "checkpoints").glob("step_*")
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert 5 <= state["step"] < 100000
    (ending,) = [line for line in stdout.splitlines() if line.startswith("interrupted")]
    assert ending.startswith(f"interrupted at step {state['step']} of 100000 (SIGTERM); ")
    assert ending.endswith("; checkpoint saved: run the same command again to resume")
    assert "finished at step" not in stdout


# Runs that only a signal ends, with a checkpoint at step 5 to signal them after: the step-0
# evaluation is their only scheduled one.
UNTIL_STOPPED = [
    "train.max_iters=100000",
    "train.eval_interval=100000",
    "train.checkpoint_interval=5",
    "train.keep_checkpoints=99",
]


def signal_after_step_5(args: list[str], out: Path, signum: int) -> tuple[int, str, str]:
    return signal_once(args, lambda: (out / "checkpoints" / "step_0000005").is_dir(), signum)


def best_weights_step(out: Path) -> int:
    with safe_open(str(out / "model.safetensors"), framework="pt") as weights:
        return int(weights.metadata()["step"])


def test_ctrl_c_before_the_first_evaluation_keeps_the_weights_it_trained(
    shakespeare_char, tmp_path
):
    """A run stopped before its first scheduled evaluation evaluates on its way out, so the best
    weights that sampling, gpt.evaluate and gpt.report use are not the untrained step-0 ones."""
    out = tmp_path / "run"
    returncode, stdout, stderr = signal_after_step_5(
        train_args(shakespeare_char, out, *UNTIL_STOPPED), out, signal.SIGINT
    )
    assert returncode == 128 + signal.SIGINT, stderr
    checkpoint = sorted((out / "checkpoints").glob("step_*"))[-1]
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    stopped_at = state["step"]
    evals = [r for r in read_metrics(out) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, stopped_at]
    assert evals[1]["val_loss"] < evals[0]["val_loss"]  # trained: a new best
    assert state["best_step"] == best_weights_step(out) == stopped_at
    config = ModelConfig.model_validate(state["model_config"])
    trained = load_model(checkpoint / "model.safetensors", config).state_dict()
    assert_same_weights(load_model(out / "model.safetensors").state_dict(), trained)
    assert f"step {stopped_at}: train loss " in stdout
    assert f"interrupted at step {stopped_at} of 100000 (SIGINT); best val loss " in stdout


def test_a_stopped_runs_evaluation_keeps_no_worse_weights_and_ends_no_run_early(
    shakespeare_char, tmp_path
):
    """With a learning rate too small to change a weight, the stop's evaluation equals step 0's:
    no new best, so the step-0 weights stay; and with a patience of 1 it still does not end the
    run as stopped early, for it is no scheduled evaluation: the run resumes."""
    out = tmp_path / "run"
    frozen = ["train.learning_rate=1e-30", "train.min_lr=0", "train.early_stopping_patience=1"]
    args = train_args(shakespeare_char, out, *UNTIL_STOPPED, *frozen)
    returncode, stdout, stderr = signal_after_step_5(args, out, signal.SIGTERM)
    assert returncode == 128 + signal.SIGTERM, stderr
    state = json.loads(
        (sorted((out / "checkpoints").glob("step_*"))[-1] / "trainer_state.json").read_text()
    )
    evals = [r for r in read_metrics(out) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, state["step"]]
    assert evals[1]["val_loss"] == evals[0]["val_loss"]
    assert state["best_step"] == best_weights_step(out) == 0
    assert state["evals_without_improvement"] == 0 and state["stopped_early"] is False
    assert "interrupted at step" in stdout and "stopped early" not in stdout


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(shakespeare_char, tmp_path):
    out = tmp_path / "run"
    good = run_python(
        *train_args(
            shakespeare_char,
            out,
            "train.max_iters=10",
            "train.checkpoint_interval=10",
            "train.keep_checkpoints=10",
        )
    )
    assert good.returncode == 0, good.stderr
    before = final_weights(out)
    result = run_python(
        *train_args(
            shakespeare_char,
            out,
            "train.max_iters=30",
            "train.learning_rate=1e30",
            "train.min_lr=0",
            "train.grad_clip=0",
        )
    )
    assert result.returncode == 2
    assert "training diverged at step" in result.stderr and "step_0000010" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000010"]
    assert_same_weights(before, final_weights(out))


def test_an_update_that_makes_the_weights_non_finite_is_never_saved(shakespeare_char, tmp_path):
    out = tmp_path / "run"
    good = run_python(
        *train_args(
            shakespeare_char,
            out,
            "train.max_iters=10",
            "train.checkpoint_interval=10",
            "train.keep_checkpoints=10",
        )
    )
    assert good.returncode == 0, good.stderr
    # finite gradients, but a step size that overflows float32: the update itself makes the
    # weights infinite, and the loss computed before it was finite
    result = run_python(
        *train_args(
            shakespeare_char,
            out,
            "train.max_iters=30",
            "train.checkpoint_interval=1",
            "train.keep_checkpoints=10",
            "train.learning_rate=1e39",
            "train.min_lr=1e39",
        )
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "training diverged at step 11" in result.stderr
    assert "step_0000010" in result.stderr
    for checkpoint in (out / "checkpoints").glob("step_*"):
        for name, tensor in load_file(checkpoint / "model.safetensors").items():
            assert torch.isfinite(tensor).all(), (checkpoint.name, name)
    for name, tensor in load_file(out / "model.safetensors").items():
        assert torch.isfinite(tensor).all(), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16's gradient scaler needs CUDA")
def test_fp16_steps_that_the_gradient_scaler_skips_do_not_stop_the_run(shakespeare_char, tmp_path):
    from gpt.base.config import load_config
    from gpt.training.trainer import Trainer

    out = tmp_path / "run"
    args = train_args(shakespeare_char, out, "train.max_iters=60", "train.log_interval=1")
    config = load_config(args[1], [*args[2:], "train.mixed_precision=fp16", "train.cpu=false"])
    trainer = Trainer(config)
    trainer.accelerator.scaler._init_scale = 2.0**40  # the first steps' gradients overflow fp16
    result = trainer.run()
    assert result.step == 60
    norms = [r["grad_norm"] for r in read_metrics(out) if r["kind"] == "train"]
    assert not math.isfinite(norms[0])  # skipped by the scaler, which then lowered its scale
    assert math.isfinite(norms[-1])


def test_resuming_with_another_model_shape_is_refused_before_anything_is_written(
    shakespeare_char, tmp_path
):
    out = tmp_path / "run"
    assert run_python(*train_args(shakespeare_char, out, "train.max_iters=5")).returncode == 0
    before = {name: (out / name).read_bytes() for name in ("config.yaml", "tokenizer.json")}
    result = run_python(*train_args(shakespeare_char, out, "train.max_iters=10", "model.n_layer=3"))
    assert result.returncode == 2
    assert "another model shape (model.n_layer: checkpoint 2 vs config 3)" in result.stderr
    assert {name: (out / name).read_bytes() for name in before} == before
    fresh = run_python(
        *train_args(
            shakespeare_char, out, "train.max_iters=5", "model.n_layer=3", "train.resume=never"
        )
    )
    assert fresh.returncode == 0, fresh.stderr


def test_resuming_on_data_with_another_tokenizer_is_refused(shakespeare_char, tmp_path):
    """Same vocabulary size, other characters: the ids would mean other text."""
    corpus = tmp_path / "renamed.txt"
    corpus.write_text(CORPUS.read_text().replace("Z", "~"))  # 65 characters still
    other = tmp_path / "other_data"
    prepared = run_python(
        "-m", "data_prep", "--input", str(corpus), "--tokenizer", "char", "--out", str(other)
    )
    assert prepared.returncode == 0, prepared.stderr
    assert json.loads((other / "meta.json").read_text())["vocab_size"] == 65
    out = tmp_path / "run"
    assert run_python(*train_args(shakespeare_char, out, "train.max_iters=5")).returncode == 0
    before = {name: (out / name).read_bytes() for name in ("config.yaml", "tokenizer.json")}

    result = run_python(*train_args(other, out, "train.max_iters=10"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{other / 'tokenizer.json'} differs from {out / 'tokenizer.json'}" in result.stderr
    assert {name: (out / name).read_bytes() for name in before} == before


def test_a_fresh_start_moves_the_earlier_run_aside_and_never_mixes_two_runs(
    shakespeare_char, tmp_path
):
    """An earlier run's checkpoints (at steps past the new run's) never meet the new run's."""
    out = tmp_path / "run"
    periodic = ["train.checkpoint_interval=10", "train.eval_interval=10"]
    old = run_python(*train_args(shakespeare_char, out, "train.max_iters=30", *periodic))
    assert old.returncode == 0, old.stderr
    earlier = {
        path.relative_to(out): path.read_bytes() for path in out.rglob("*") if path.is_file()
    }

    new = run_python(
        *train_args(
            shakespeare_char,
            out,
            "train.max_iters=20",
            "train.seed=7",
            "train.resume=never",
            *periodic,
        )
    )
    assert new.returncode == 0, new.stderr
    (moved,) = (out / "earlier_runs").iterdir()
    assert f"moved the earlier run in {out} to {moved}" in new.stdout
    assert {
        path.relative_to(moved): path.read_bytes() for path in moved.rglob("*") if path.is_file()
    } == earlier
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_0000010",
        "step_0000020",
    ]
    new_evals = [r for r in read_metrics(out) if r["kind"] == "eval"]
    assert [r["step"] for r in new_evals] == [0, 10, 20]

    resumed = run_python(
        *train_args(shakespeare_char, out, "train.max_iters=40", "train.seed=7", *periodic)
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {out / 'checkpoints' / 'step_0000020'} at step 20" in resumed.stdout
    evals = [r for r in read_metrics(out) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 10, 20, 30, 40]
    assert evals[:3] == new_evals  # the new run's history, continued
    best = min(r["val_loss"] for r in evals)
    assert f"best val loss {best:.4f}" in resumed.stdout


def test_a_metrics_line_cut_by_a_kill_is_dropped_on_resume(shakespeare_char, tmp_path):
    out = tmp_path / "run"
    args = ["train.checkpoint_interval=10", "train.eval_interval=10"]
    first = run_python(*train_args(shakespeare_char, out, "train.max_iters=10", *args))
    assert first.returncode == 0, first.stderr
    with (out / "metrics.jsonl").open("a") as metrics:  # what a kill during the write leaves
        metrics.write('{"step": 11, "kind": "train", "loss": 3.1')
    resumed = run_python(*train_args(shakespeare_char, out, "train.max_iters=20", *args))
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    steps = [(r["kind"], r["step"]) for r in read_metrics(out)]
    assert steps == [
        ("eval", 0), ("train", 5), ("train", 10), ("eval", 10), ("train", 15), ("train", 20),
        ("eval", 20),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def overfitting_data(tmp_path_factory) -> Path:
    """A corpus small enough to memorise: validation loss falls, then rises."""
    text = (ROOT / "data" / "tinyshakespeare.txt").read_text()[:4000]
    corpus = tmp_path_factory.mktemp("small") / "small.txt"
    corpus.write_text(text)
    out = corpus.parent / "prepared"
    result = run_python(
        "-m",
        "data_prep",
        "--input",
        str(corpus),
        "--tokenizer",
        "char",
        "--val-fraction",
        "0.25",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    return out


def test_early_stopping_keeps_the_best_val_weights(overfitting_data, tmp_path):
    out = tmp_path / "run"
    result = run_python(
        *train_args(
            overfitting_data,
            out,
            "train.max_iters=2000",
            "train.eval_interval=25",
            "train.early_stopping_patience=3",
            "train.lr_schedule=constant",
            "model.n_embd=64",
            "model.block_size=32",
            "train.weight_decay=0",
        )
    )
    assert result.returncode == 0, result.stderr
    evals = [r for r in read_metrics(out) if r["kind"] == "eval"]
    best = min(range(len(evals)), key=lambda i: evals[i]["val_loss"])
    assert (
        f"stopped early at step {evals[-1]['step']} of 2000 (val loss did not improve for 3 "
        f"evaluations); best val loss {evals[best]['val_loss']:.4f} at step {evals[best]['step']}; "
        f"weights in {out / 'model.safetensors'}" in result.stdout
    )
    assert len(evals) == best + 4  # three evaluations without progress after the best
    assert evals[-1]["step"] < 2000
    assert evals[-1]["best_val_loss"] == evals[best]["val_loss"]

    from gpt.data.tokens import TokenData
    from gpt.run.weights import load_model

    model = load_model(out / "model.safetensors")
    data = TokenData(overfitting_data, block_size=32)
    parts = [BatchSlice.for_evaluation(8, 4, 1, 0, index) for index in range(4)]
    with torch.no_grad():
        losses = [model(*data.eval_batch("val", 1337, part))[1] for part in parts]
    assert torch.stack(losses).mean().item() == pytest.approx(evals[best]["val_loss"], abs=1e-4)


def test_wandb_offline_run_is_written_with_the_logged_metrics(shakespeare_char, tmp_path):
    out = tmp_path / "run"
    result = run_python(
        *train_args(
            shakespeare_char,
            out,
            "train.max_iters=10",
            "train.eval_interval=10",
            "train.wandb.mode=offline",
            "train.wandb.run_name=offline-test",
        )
    )
    assert result.returncode == 0, result.stderr
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    logged = wandb_history(run_file)
    metrics = read_metrics(out)
    assert [h["eval/val_loss"] for h in logged if "eval/val_loss" in h] == [
        r["val_loss"] for r in metrics if r["kind"] == "eval"
    ]
    assert [h["train/loss"] for h in logged if "train/loss" in h] == [
        r["loss"] for r in metrics if r["kind"] == "train"
    ]


def wandb_history(run_file: Path) -> list[dict]:
    """The history rows of an offline W&B run file."""
    return [
        {
            item.key or "/".join(item.nested_key): json.loads(item.value_json)
            for item in record.history.item
        }
        for record in wandb_records(run_file)
        if record.WhichOneof("record_type") == "history"
    ]


def wandb_records(run_file: Path) -> Iterator:
    """The records of an offline W&B run file (protobuf ``Record``s: the run, history rows, ...).

    The file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks, each chunk a
    7-byte header (checksum, length, type) and data; a record is one FULL chunk or FIRST, MIDDLE...,
    LAST chunks.
    """
    from wandb.proto import wandb_internal_pb2

    raw, block, position, pending = run_file.read_bytes(), 32768, 7, b""
    while position + 7 <= len(raw):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _checksum, length, kind = struct.unpack("<IHB", raw[position : position + 7])
        pending += raw[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record
