"""Generation: tokens/s with GPT's KV cache against recomputing the whole context for every token.

    python -m bench.generation

The model is the one ``configs/shakespeare_char_cpu.yaml`` trains (65-character vocabulary; random
weights, which take exactly as long as trained ones). Both paths run through
``gpt.models.generate.generate``, sampling at temperature 1 from a 16-token prompt, for 128, 512 and 2048
new tokens at batch 1 and 8. The last two run past ``block_size``, where the cached path refills its
cache with the last half block once it is full (the sliding window of gpt/models/generate.py) and the
recomputing path re-runs the last ``block_size`` tokens for every token. Each setting times the two
paths alternately, ``--repeats`` times, and reports the median.

A last row times a larger model, the "baby GPT" shape of bench.training (6 layers x 384, block 256),
at batch 1 and 512 new tokens only, to show how the cache's gain grows with the model.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench import CONFIGS, format_table, write_results
from gpt.base.cli import run_cli
from gpt.base.config import load_config
from gpt.models.generate import SamplingSettings, generate
from gpt.models.gpt import build_model
from gpt.models.lm import LanguageModel

VOCAB_SIZE = 65  # the bundled corpus's characters
PROMPT = list(range(16))
LARGER_MODEL = ["model.n_layer=6", "model.n_head=6", "model.n_embd=384", "model.block_size=256"]
LARGER_MODEL_SETTING = (512, 1)  # new tokens, batch size


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.generation", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", default=str(CONFIGS / "shakespeare_char_cpu.yaml"))
    parser.add_argument("--tokens", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path and setting")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="a tiny model and few tokens")
    args = parser.parse_args(argv)
    args.overrides = []
    if args.quick:
        args.overrides = [
            "model.n_layer=2",
            "model.n_head=2",
            "model.n_embd=32",
            "model.block_size=32",
        ]
        args.tokens, args.batch_sizes, args.repeats = [16, 64], [1, 2], 1
    return args


def seconds_to_generate(
    model: LanguageModel, new_tokens: int, batch_size: int, use_cache: bool, compiled: bool = False
) -> float:
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(0)
    start = time.perf_counter()
    for _ in generate(
        model,
        PROMPT,
        new_tokens,
        SamplingSettings(temperature=1.0),
        num_samples=batch_size,
        generator=generator,
        use_cache=use_cache,
        compiled=compiled,
    ):
        pass
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(model: LanguageModel, new_tokens: int, batch_size: int, repeats: int) -> dict:
    """Median tokens/s (all samples' tokens) of each path, timed alternately after a warm-up."""
    paths = {"cached": True, "recomputed": False}
    for use_cache in paths.values():
        seconds_to_generate(model, min(new_tokens, 8), batch_size, use_cache)
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    for repeat in range(repeats):
        order = list(paths) if repeat % 2 == 0 else list(reversed(paths))
        for name in order:
            seconds[name].append(seconds_to_generate(model, new_tokens, batch_size, paths[name]))
    tokens_per_sec = {
        name: new_tokens * batch_size / statistics.median(times) for name, times in seconds.items()
    }
    return {
        "new_tokens": new_tokens,
        "batch_size": batch_size,
        "seconds": seconds,
        "tokens_per_sec": tokens_per_sec,
        "speedup": tokens_per_sec["cached"] / tokens_per_sec["recomputed"],
    }


def build(config_path: str, overrides: list[str], device: str) -> LanguageModel:
    config = load_config(config_path, [*overrides, f"model.vocab_size={VOCAB_SIZE}"]).model
    torch.manual_seed(0)
    return build_model(config).to(device)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    model = build(args.config, args.overrides, args.device)
    results = [
        measure(model, new_tokens, batch_size, args.repeats)
        for batch_size in args.batch_sizes
        for new_tokens in args.tokens
    ]
    rows = [[shape_name(model), *result_row(result)] for result in results]
    larger = None
    if not args.quick:
        larger_model = build(args.config, LARGER_MODEL, args.device)
        larger = measure(larger_model, *LARGER_MODEL_SETTING, args.repeats)
        larger["model"] = larger_model.config.model_dump()
        rows.append([shape_name(larger_model), *result_row(larger)])
    headers = ["model", "batch", "new tokens", "KV cache tok/s", "recompute tok/s", "speedup"]
    print(format_table(headers, rows))
    path = write_results(
        "generation",
        {
            "model": model.config.model_dump(),
            "device": args.device,
            "torch_threads": torch.get_num_threads(),
            "results": results,
            "larger_model": larger,
        },
        args.quick,
    )
    print(f"\nwrote {path}")


def shape_name(model: LanguageModel) -> str:
    config = model.config
    return f"{config.n_layer}x{config.n_embd}, block {config.block_size}"


def result_row(result: dict) -> list:
    return [
        result["batch_size"],
        result["new_tokens"],
        result["tokens_per_sec"]["cached"],
        result["tokens_per_sec"]["recomputed"],
        f"{result['speedup']:.1f}x",
    ]


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
