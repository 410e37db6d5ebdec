"""The GPU path's training options, trained for real on the CPU: bf16 mixed precision (accelerate
autocasts the forward to bf16 on the CPU as on a GPU) and ``torch.compile`` (inductor's C++
backend). Each run learns, checkpoints, resumes, and its weights sample, evaluate and export.

A resume is tested by running to the end, setting the last checkpoint aside and running the same
command again: it resumes from the checkpoint before and must end where the first run ended.
"""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gpt.interop.pretrained import load_pretrained

from .conftest import run_python
from .test_trainer import assert_same_weights, final_weights, read_metrics, train_args

STEPS = ["train.max_iters=40", "train.eval_interval=20", "train.checkpoint_interval=20"]
# bf16's train loss differs from fp32's by at most this over the first 20 steps of the tiny model
# (measured: 3.1e-4 on 2026-12-07, 2 AMD EPYC cores; asserted with a margin of six)
BF16_LOSS_TOLERANCE = 2e-3


def train(data: Path, out: Path, *overrides: str) -> Path:
    result = run_python(*train_args(data, out, *STEPS, "train.log_interval=1", *overrides))
    assert result.returncode == 0, result.stderr
    return out


def train_losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(out) if r["kind"] == "train"]


def val_losses(out: Path) -> list[float]:
    return [r["val_loss"] for r in read_metrics(out) if r["kind"] == "eval"]


def losses(out: Path) -> list[tuple]:
    """Every logged loss, by step: what a resumed run must repeat exactly."""
    return [(r["kind"], r["step"], r.get("loss"), r.get("val_loss")) for r in read_metrics(out)]


def resumed_from_the_middle(data: Path, run: Path, copy: Path, *overrides: str) -> Path:
    """A copy of the finished ``run`` without its last checkpoint, trained on to the end again."""
    shutil.copytree(run, copy)
    shutil.rmtree(sorted((copy / "checkpoints").glob("step_*"))[-1])
    result = run_python(*train_args(data, copy, *STEPS, "train.log_interval=1", *overrides))
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stdout and "step_0000020" in result.stdout
    return copy


def assert_samples_evaluates_and_exports(run: Path, export: Path) -> None:
    """The run's best weights sample and evaluate, and export to a folder holding them exactly."""
    sample = run_python("sample.py", "--checkpoint", str(run), "--max-new-tokens", "20")
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.strip()
    evaluation = run_python("-m", "gpt.evaluate", str(run), "--split", "val", "--json")
    assert evaluation.returncode == 0, evaluation.stderr
    assert math.isfinite(json.loads(evaluation.stdout)["loss"])
    exported = run_python("-m", "gpt.export", str(run), "--to", "hf", str(export))
    assert exported.returncode == 0, exported.stderr
    best = load_file(run / "model.safetensors")
    reloaded = load_pretrained(export).state_dict()
    assert_same_weights(best, {name: reloaded[name] for name in best})


def test_bf16_on_the_cpu_learns_resumes_exactly_and_stays_near_fp32(shakespeare_char, tmp_path):
    bf16 = train(shakespeare_char, tmp_path / "bf16", "train.mixed_precision=bf16")
    evals = val_losses(bf16)
    assert evals[-1] < evals[0] - 0.5

    fp32 = train(shakespeare_char, tmp_path / "fp32")
    pairs = zip(train_losses(bf16)[:20], train_losses(fp32)[:20], strict=True)
    differences = [abs(a - b) for a, b in pairs]
    assert 0 < max(differences) < BF16_LOSS_TOLERANCE  # not 0: bf16 did run

    resumed = resumed_from_the_middle(
        shakespeare_char, bf16, tmp_path / "resumed", "train.mixed_precision=bf16"
    )
    assert_same_weights(final_weights(bf16), final_weights(resumed))
    assert losses(resumed) == losses(bf16)
    for tensor in final_weights(bf16).values():
        assert tensor.dtype == torch.float32  # autocast computes in bf16; the weights stay fp32
    assert_samples_evaluates_and_exports(bf16, tmp_path / "exported")


def files_naming(folder: Path, text: bytes) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file() and text in path.read_bytes()]


@pytest.mark.slow  # the first compilation of the tiny model takes up to a minute, cached after
def test_compile_on_the_cpu_learns_and_resumes_across_compiled_and_eager(
    shakespeare_char, tmp_path
):
    """Compiled and eager runs take the same steps to float rounding (inductor fuses kernels), so
    weights across the two are compared with a tolerance: measured 4e-7, asserted 1e-5."""
    compiled = train(shakespeare_char, tmp_path / "compiled", "train.compile=true")
    evals = val_losses(compiled)
    assert evals[-1] < evals[0] - 0.5
    eager = train(shakespeare_char, tmp_path / "eager")
    assert_same_weights(final_weights(compiled), final_weights(eager), atol=1e-5)

    to_eager = resumed_from_the_middle(shakespeare_char, compiled, tmp_path / "to_eager")
    to_compiled = resumed_from_the_middle(
        shakespeare_char, eager, tmp_path / "to_compiled", "train.compile=true"
    )
    assert_same_weights(final_weights(to_eager), final_weights(compiled), atol=1e-5)
    assert_same_weights(final_weights(to_compiled), final_weights(eager), atol=1e-5)
    for run in (compiled, to_eager, to_compiled):
        assert files_naming(run, b"_orig_mod") == []  # torch.compile's wrapper, in no saved name
    assert_samples_evaluates_and_exports(compiled, tmp_path / "exported")
