"""The GPU figures in one command, for the day a GPU is lent: training and sampling speed.

    python -m bench.gpu            # on one GPU: both 124M configs, bf16, compiled (minutes)
    python -m bench.gpu --quick    # the same code on the CPU, tiny shapes, eager (seconds)

For ``configs/gpt2_124m.yaml`` (the textbook GPT-2 small) and ``configs/llama_124m.yaml`` (the same
shape, every modern option, Muon) in turn, it builds the trainer exactly as ``train.py`` does
(bf16 mixed precision, ``torch.compile``, one process, no gradient accumulation) and times
``Trainer._train_step``, the step training runs, after warm-up steps that include the
compilation: tokens/s, and MFU against the data-sheet peak of the GPU
(:func:`gpt.training.throughput.peak_flops`; on the CPU a matmul measurement). Then it samples with
the KV cache, eager, under bf16 autocast, at batch 1 and 8, and reports tokens/s (all samples'
tokens). Peak memory is the GPU's allocator peak of each phase (none on the CPU).

The tokens are the bundled Shakespeare, prepared with the char tokenizer: the speed of a step does
not depend on which tokens it reads, and the configs' vocabulary (50,304) covers the 65 characters.
It writes ``bench/results/gpu.json`` (``--quick``: ``bench/results/quick/gpu.json``) and prints a
table. Not measured yet: no GPU has been lent to this project.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from accelerate.state import AcceleratorState

from bench import CONFIGS, format_table, prepare_corpus, write_results
from bench.generation import seconds_to_generate
from gpt.base.cli import run_cli
from gpt.base.config import load_config
from gpt.base.errors import UserError
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


def build_trainer(config: str, data_dir: Path, out_dir: Path, quick: bool) -> Trainer:
    """A Trainer as ``train.py`` builds it for ``config``, on this machine's GPU (or the CPU)."""
    overrides = [
        f"data.dir={data_dir}",
        f"train.out_dir={out_dir}",
        "train.wandb.mode=disabled",
        "train.gradient_accumulation_steps=1",
        *(QUICK if quick else GPU),
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
    for step in range(warmup):
        trainer._train_step(step)
    synchronize(device)
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
        "tokens_per_sec": tokens_per_sec,
        "mfu": trainer.flops_per_token * tokens_per_sec / trainer.peak_flops,
        "peak_flops": trainer.peak_flops,
        "peak_memory_bytes": peak_memory(device),
    }


def measure_sampling(trainer: Trainer, new_tokens: int, batch_size: int) -> dict:
    """Tokens/s of KV-cached sampling from the trained model, after a short warm-up."""
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    device = trainer.device
    reset_peak_memory(device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        seconds_to_generate(model, 8, batch_size, use_cache=True)
        seconds = seconds_to_generate(model, new_tokens, batch_size, use_cache=True)
    return {
        "batch_size": batch_size,
        "new_tokens": new_tokens,
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
            "sampling": [measure_sampling(trainer, args.new_tokens, b) for b in SAMPLE_BATCHES],
        }
    finally:  # the next config gets an accelerator of its own
        AcceleratorState._reset_state(reset_partial_state=True)


def gigabytes(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**30:.1f} GiB"


def table(results: dict) -> str:
    rows = []
    for name, result in results.items():
        training = result["training"]
        sampling = {s["batch_size"]: s["tokens_per_sec"] for s in result["sampling"]}
        rows.append(
            [
                name,
                training["tokens_per_sec"],
                f"{training['mfu']:.1%}",
                gigabytes(training["peak_memory_bytes"]),
                *(sampling[batch] for batch in SAMPLE_BATCHES),
            ]
        )
    headers = ["config", "train tok/s", "MFU", "train peak memory"]
    headers += [f"sample tok/s, batch {batch}" for batch in SAMPLE_BATCHES]
    return format_table(headers, rows)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if not args.quick and not torch.cuda.is_available():
        raise UserError(
            "python -m bench.gpu needs a CUDA GPU; run python -m bench.gpu --quick on the CPU"
        )
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = prepare_corpus(Path(scratch) / "data")
        results = {
            name: measure(config, data_dir, Path(scratch) / name, args)
            for name, config in MODELS.items()
        }
    print(table(results))
    path = write_results("gpu", {"quick": args.quick, "results": results}, args.quick)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
