"""The GPU figures in one command, for the day a GPU is lent: training, sampling, FSDP and fp16.

    python -m bench.gpu            # on one GPU: both 124M configs, bf16, compiled (minutes)
    python -m bench.gpu --quick    # the same code on the CPU, tiny shapes, eager (seconds)

Each phase is one function, and each reports its peak memory (the GPU allocator's peak; none on the
CPU) and, where it compiles, the seconds its warm-up took:

* **Training** (:func:`measure_training`): for ``configs/gpt2_124m.yaml`` (the textbook GPT-2
  small) and ``configs/llama_124m.yaml`` (the same shape, every modern option, Muon) in turn, the
  trainer built exactly as ``train.py`` builds it (bf16 mixed precision, ``torch.compile``, one
  process, no gradient accumulation); ``Trainer._train_step``, the step training runs, timed after
  warm-up steps that include the compilation: tokens/s, and MFU against the data-sheet peak of the
  GPU (:func:`gpt.training.throughput.peak_flops`; on the CPU a matmul measurement).
* **Sampling** (:func:`measure_sampling`): the trained model samples with the KV cache under bf16
  autocast at batch 1 and 8, eager and compiled (``generate(compiled=True)``: the one-token step
  with a static cache, ``torch.compile``'s "reduce-overhead" mode, CUDA graphs), tokens/s of all
  samples' tokens after a warm-up that compiles. ``--quick`` skips the compiled variant and says so
  in the JSON: compiling it on the CPU takes 10-20 s per model, more than the rest of the quick run,
  and ``tests/test_generate.py`` checks its tokens against the eager step's (a slow test).
* **FSDP saved, killed and resumed** (:func:`measure_fsdp_resume`): ``train.py CONFIG
  train.fsdp=true`` (GPT-2 124M, bf16, eager, 2 micro-steps a step) as real processes of their
  own on the one device (a process group of one): an uninterrupted run, and a run killed with
  SIGKILL as soon as its first checkpoint is complete, then resumed by the same command; whether
  the final sharded checkpoints hold bitwise the same weights, and the largest difference if not.
* **fp16 with its gradient scaler** (:func:`measure_fp16`): a few eager steps of GPT-2 124M in fp16:
  tokens/s, how many steps the scaler skipped (overflowing gradients) and its last scale. On the
  CPU it is skipped, with the reason in the JSON: accelerate's fp16 needs CUDA (``train.py``
  refuses it on the CPU).

The tokens are the bundled Shakespeare, prepared with the char tokenizer: the speed of a step does
not depend on which tokens it reads, and the configs' vocabulary (50,304) covers the 65 characters.
It writes ``bench/results/gpu.json`` (``--quick``: ``bench/results/quick/gpu.json``) and prints its
tables. Not measured yet: no GPU has been lent to this project, so the 8-minute budget of the GPU
run (compilation included) is an estimate, and each phase records its wall time to check it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from accelerate.state import AcceleratorState

import bench  # bench.start_python: the suite puts its warm interpreter's forks there
from bench import (
    CONFIGS,
    DISCARDED,
    OFFLINE,
    ROOT,
    format_table,
    prepare_corpus,
    run_python,
    write_results,
)
from bench.fault_runs import resumed_from
from bench.generation import seconds_to_generate
from gpt.base.cli import run_cli
from gpt.base.config import load_config
from gpt.base.errors import UserError
from gpt.models.gpt import build_model
from gpt.run.checkpoints import find_damage, saved_model_config
from gpt.run.folder import latest_checkpoint
from gpt.training.trainer import Trainer

MODELS = {"gpt2-124m": "gpt2_124m.yaml", "llama-124m": "llama_124m.yaml"}
SAMPLE_BATCHES = (1, 8)
# On the GPU: the configs' shapes and per-GPU batch (12 x 1024 tokens), bf16 and compiled.
GPU = ["train.cpu=false", "train.mixed_precision=bf16", "train.compile=true"]
# --quick: a tiny model of each config's kind on the CPU, eager (compiling on the CPU is tested in
# tests/test_gpu_path_on_cpu.py and takes up to a minute).
QUICK = [
    "train.cpu=true",
    "train.mixed_precision=bf16",
    "train.compile=false",
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_kv_head=null",
    "model.n_embd=32",
    "model.block_size=32",
    "train.batch_size=2",
]
# The FSDP phase: GPT-2 124M eager (compiling three runs would take minutes), 2 micro-steps a step;
# --quick: the tiny model, its vocabulary the data's 65 characters.
FSDP_CONFIG = "gpt2_124m.yaml"
FSDP = [
    "train.fsdp=true",
    "train.compile=false",
    "train.gradient_accumulation_steps=2",  # gradients reduce-scattered on the second alone
    "train.eval_iters=4",
    "train.keep_checkpoints=2",
]
FSDP_QUICK = [*QUICK, "model.vocab_size=null"]
COMPILED_SAMPLING_ON_CPU = (
    "not on the CPU: compiling the step takes 10-20 s per model there, more than the rest of "
    "--quick; tests/test_generate.py (slow) checks the compiled step's tokens against the eager one's"
)
FP16_ON_CPU = (
    "not on the CPU: accelerate's fp16 and its gradient scaler need CUDA (on the CPU it would "
    "train in fp32, and train.py refuses train.mixed_precision=fp16 there)"
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes on the CPU, eager")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (compilation)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps")
    parser.add_argument("--new-tokens", type=int, default=None, help="sampled tokens per sample")
    args = parser.parse_args(argv)
    defaults = (2, 3, 8) if args.quick else (10, 30, 256)
    for name, default in zip(("warmup", "steps", "new_tokens"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    return args


def build_trainer(
    config: str, data_dir: Path, out_dir: Path, quick: bool, *overrides: str
) -> Trainer:
    """A Trainer as ``train.py`` builds it for ``config``, on this machine's GPU (or the CPU)."""
    overrides = [
        f"data.dir={data_dir}",
        f"train.out_dir={out_dir}",
        "train.wandb.mode=disabled",
        "train.gradient_accumulation_steps=1",
        *(QUICK if quick else GPU),
        *overrides,
    ]
    return Trainer(load_config(CONFIGS / config, overrides))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> int | None:
    """Bytes at the allocator's peak since the last reset; None on the CPU."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def measure_training(trainer: Trainer, warmup: int, steps: int) -> dict:
    """Tokens/s and MFU of ``steps`` training steps after ``warmup`` untimed ones."""
    device = trainer.device
    reset_peak_memory(device)
    start = time.perf_counter()
    for step in range(warmup):
        trainer._train_step(step)
    synchronize(device)
    warmup_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for step in range(warmup, warmup + steps):
        trainer._train_step(step)
    synchronize(device)
    seconds = time.perf_counter() - start
    tokens_per_sec = trainer._tokens_per_step() * steps / seconds
    return {
        "tokens_per_step": trainer._tokens_per_step(),
        "steps": steps,
        "seconds": seconds,
        "warmup_seconds": warmup_seconds,
        "tokens_per_sec": tokens_per_sec,
        "mfu": trainer.flops_per_token * tokens_per_sec / trainer.peak_flops,
        "peak_flops": trainer.peak_flops,
        "peak_memory_bytes": peak_memory(device),
    }


def measure_sampling(
    trainer: Trainer, new_tokens: int, batch_size: int, compiled: bool, quick: bool
) -> dict:
    """Tokens/s of KV-cached sampling from the trained model, eager or with the one-token step
    compiled, after a warm-up (which compiles)."""
    setting = {"batch_size": batch_size, "compiled": compiled, "new_tokens": new_tokens}
    if compiled and quick:
        return {**setting, "skipped": COMPILED_SAMPLING_ON_CPU}
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    device = trainer.device
    reset_peak_memory(device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        start = time.perf_counter()
        seconds_to_generate(model, 8, batch_size, use_cache=True, compiled=compiled)
        warmup_seconds = time.perf_counter() - start
        seconds = seconds_to_generate(
            model, new_tokens, batch_size, use_cache=True, compiled=compiled
        )
    return {
        **setting,
        "warmup_seconds": warmup_seconds,
        "tokens_per_sec": new_tokens * batch_size / seconds,
        "peak_memory_bytes": peak_memory(device),
    }


def measure(config: str, data_dir: Path, out_dir: Path, args: argparse.Namespace) -> dict:
    trainer = build_trainer(config, data_dir, out_dir, args.quick)
    try:
        return {
            "config": config,
            "device": str(trainer.device),
            "model": trainer.model_config.model_dump(),
            "parameters": trainer.num_params,
            "training": measure_training(trainer, args.warmup, args.steps),
            "sampling": [
                measure_sampling(trainer, args.new_tokens, batch, compiled, args.quick)
                for compiled in (False, True)
                for batch in SAMPLE_BATCHES
            ],
        }
    finally:  # the next config gets an accelerator of its own
        AcceleratorState._reset_state(reset_partial_state=True)


def measure_fp16(data_dir: Path, out_dir: Path, args: argparse.Namespace) -> dict:
    """A few eager training steps of GPT-2 124M in fp16: tokens/s, and how many steps' updates
    the gradient scaler skipped (their gradients overflowed).

    The scaler halves its scale at each skipped step and grows it only after ``growth_interval``
    (2000) clean steps in a row, so over fewer steps than that the count is exactly log2(first
    scale / last scale), read once at the end: no read of the device in the timed steps (fused
    AdamW, the trainer's on CUDA, skips an update on the device, where accelerate cannot see it).
    """
    if args.quick:
        return {"skipped": FP16_ON_CPU}
    overrides = ("train.mixed_precision=fp16", "train.compile=false")
    trainer = build_trainer(MODELS["gpt2-124m"], data_dir, out_dir, False, *overrides)
    try:
        device, scaler = trainer.device, trainer.accelerator.scaler
        if args.steps >= scaler.get_growth_interval():
            raise UserError(f"--steps must be below {scaler.get_growth_interval()} (see fp16)")
        first_scale = scaler.get_scale()
        reset_peak_memory(device)
        start = time.perf_counter()
        for step in range(args.steps):
            trainer._train_step(step)
        synchronize(device)
        seconds = time.perf_counter() - start
        last_scale = scaler.get_scale()
        return {
            "config": MODELS["gpt2-124m"],
            "steps": args.steps,
            "tokens_per_sec": trainer._tokens_per_step() * args.steps / seconds,
            "skipped_steps": round(math.log2(first_scale / last_scale)),
            "first_scale": first_scale,
            "last_scale": last_scale,
            "peak_memory_bytes": peak_memory(device),
        }
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def fsdp_steps(quick: bool) -> tuple[int, int]:
    """The FSDP runs' length and checkpoint interval, in steps."""
    return (4, 2) if quick else (30, 10)


def fsdp_command(data_dir: Path, out_dir: Path, quick: bool, memory_file: Path) -> list[str]:
    """The arguments of ``python train.py`` of GPT-2 124M sharded over a process group of one,
    its GPU memory peak written to ``memory_file`` (:mod:`bench.gpu_memory`)."""
    steps, interval = fsdp_steps(quick)
    overrides = [
        f"data.dir={data_dir}",
        f"train.out_dir={out_dir}",
        "train.wandb.mode=disabled",
        "train.report=false",  # the figures are not what is measured
        f"train.max_iters={steps}",
        f"train.checkpoint_interval={interval}",
        f"train.eval_interval={steps}",
        f"train.log_interval={steps}",
        *(FSDP_QUICK if quick else GPU),
        *FSDP,
    ]
    script = [str(ROOT / "train.py"), str(CONFIGS / FSDP_CONFIG), *overrides]
    return ["-m", "bench.gpu_memory", str(memory_file), *script]


def kill_after_first_checkpoint(args: list[str], out_dir: Path) -> dict:
    """Start ``python ARGS``, SIGKILL it as soon as its first checkpoint is complete."""
    checkpoints = out_dir / "checkpoints"
    process = bench.start_python(args, {**os.environ, **OFFLINE}, DISCARDED)
    while not any(checkpoints.glob("step_*")):
        if process.poll() is not None:
            raise RuntimeError(f"the run to kill ended first (exit code {process.returncode})")
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return {
        "killed": process.returncode == -signal.SIGKILL,  # not finished before the signal came
        "checkpoints_when_killed": sorted(path.name for path in checkpoints.glob("step_*")),
    }


def final_weights(out_dir: Path) -> dict[str, torch.Tensor]:
    """The weights in the run's newest sharded checkpoint, verified, whole (read here in one
    process, without a process group)."""
    checkpoint = latest_checkpoint(out_dir)
    damage = find_damage(checkpoint)
    if damage is not None:
        raise RuntimeError(f"{checkpoint} is damaged: {damage}")
    state = {"model": build_model(saved_model_config(checkpoint)).state_dict()}
    with warnings.catch_warnings():  # that it reads in one process, as meant
        warnings.filterwarnings("ignore", "torch.distributed is disabled")
        dcp.load(state, checkpoint_id=checkpoint / "sharded", no_dist=True)
    return state["model"]


def measure_fsdp_resume(data_dir: Path, scratch: Path, quick: bool) -> dict:
    """A sharded run killed after its first checkpoint and resumed, against an uninterrupted one:
    bitwise the same final weights? (Promised on the CPU; on a GPU, kernels may not be
    deterministic.)"""
    uninterrupted, interrupted = scratch / "fsdp_uninterrupted", scratch / "fsdp_interrupted"
    memory = {name: scratch / f"{name}_memory.json" for name in ("uninterrupted", "resumed")}
    start = time.perf_counter()
    run_python(fsdp_command(data_dir, uninterrupted, quick, memory["uninterrupted"]))
    command = fsdp_command(data_dir, interrupted, quick, memory["resumed"])
    kill = kill_after_first_checkpoint(command, interrupted)
    resumed_stdout = run_python(command).stdout
    expected, found = final_weights(uninterrupted), final_weights(interrupted)
    differences = [(expected[name].float() - found[name].float()).abs().max() for name in expected]
    peaks = [json.loads(path.read_text())["peak_memory_bytes"] for path in memory.values()]
    return {
        "config": FSDP_CONFIG,
        **kill,
        "steps": fsdp_steps(quick)[0],
        "resumed_from": resumed_from(resumed_stdout),
        "bitwise_equal": all(torch.equal(expected[name], found[name]) for name in expected),
        "max_abs_difference": max(differences).item(),
        "peak_memory_bytes": None if None in peaks else max(peaks),
        "seconds": time.perf_counter() - start,
    }


def gigabytes(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**30:.1f} GiB"


def sampling_cell(sampling: list[dict], batch_size: int, compiled: bool) -> object:
    for setting in sampling:
        if setting["batch_size"] == batch_size and setting["compiled"] == compiled:
            return "skipped" if "skipped" in setting else setting["tokens_per_sec"]
    raise KeyError((batch_size, compiled))


def table(results: dict) -> str:
    rows = []
    for name, result in results.items():
        training, sampling = result["training"], result["sampling"]
        rows.append(
            [
                name,
                training["tokens_per_sec"],
                f"{training['mfu']:.1%}",
                gigabytes(training["peak_memory_bytes"]),
                *(
                    sampling_cell(sampling, batch, compiled)
                    for compiled in (False, True)
                    for batch in SAMPLE_BATCHES
                ),
            ]
        )
    headers = ["config", "train tok/s", "MFU", "train peak memory"]
    headers += [
        f"sample tok/s, batch {batch}{', compiled' if compiled else ''}"
        for compiled in (False, True)
        for batch in SAMPLE_BATCHES
    ]
    return format_table(headers, rows)


def fsdp_table(fsdp: dict) -> str:
    row = [
        fsdp["config"],
        "yes" if fsdp["killed"] else "no (it finished first)",
        fsdp["resumed_from"],
        "yes" if fsdp["bitwise_equal"] else f"no, max |diff| {fsdp['max_abs_difference']:.2e}",
        gigabytes(fsdp["peak_memory_bytes"]),
    ]
    headers = [
        "FSDP run",
        "SIGKILLed",
        "resumed from",
        "final weights bitwise equal",
        "peak memory",
    ]
    return format_table(headers, [row])


def fp16_table(fp16: dict) -> str:
    if "skipped" in fp16:
        return f"fp16 with its gradient scaler: skipped, {fp16['skipped']}"
    row = [
        fp16["config"],
        fp16["tokens_per_sec"],
        f"{fp16['skipped_steps']} of {fp16['steps']}",
        fp16["last_scale"],
        gigabytes(fp16["peak_memory_bytes"]),
    ]
    headers = [
        "fp16 run",
        "train tok/s",
        "steps skipped by the scaler",
        "last scale",
        "peak memory",
    ]
    return format_table(headers, [row])


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if not args.quick and not torch.cuda.is_available():
        raise UserError(
            "python -m bench.gpu needs a CUDA GPU; run python -m bench.gpu --quick on the CPU"
        )
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        data_dir = prepare_corpus(scratch / "data")
        results = {
            name: measure(config, data_dir, scratch / name, args) for name, config in MODELS.items()
        }
        fp16 = measure_fp16(data_dir, scratch / "fp16", args)
        fsdp = measure_fsdp_resume(data_dir, scratch, args.quick)
    print(table(results), fsdp_table(fsdp), fp16_table(fp16), sep="\n\n")
    summary = {"quick": args.quick, "results": results, "fsdp_resume": fsdp, "fp16": fp16}
    path = write_results("gpu", summary, args.quick)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
