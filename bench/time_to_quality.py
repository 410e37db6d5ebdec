"""Time to quality: how long ``configs/shakespeare_char_cpu.yaml`` takes to reach a validation loss.

    python -m bench.time_to_quality              # train the config as it is, target 1.9
    python -m bench.time_to_quality --quick      # a tiny model for a few steps

Prepares the bundled corpus, runs ``python train.py CONFIG`` exactly as a user would (W&B off, a
temporary output folder) and follows its ``metrics.jsonl`` while it runs: an evaluation record's
wall time is when it appeared, counted from the start of the command (start-up, data loading and
the evaluations themselves included). Reports the first evaluation at or below the target, the final
and best validation loss, and the whole run's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import CONFIGS, OFFLINE, ROOT, format_table, prepare_corpus, write_results
from gpt.base.cli import run_cli

POLL_SECONDS = 0.5
QUICK_OVERRIDES = (
    "model.n_layer=2 model.n_head=2 model.n_embd=32 model.block_size=32 train.batch_size=8 "
    "train.max_iters=10 train.warmup_iters=2 train.eval_interval=5 train.eval_iters=2 "
    "train.log_interval=5 train.checkpoint_interval=10"
).split()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.time_to_quality", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", default=str(CONFIGS / "shakespeare_char_cpu.yaml"))
    parser.add_argument("--target", type=float, default=1.9, help="validation loss to reach")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--quick", action="store_true", help="a tiny model for 10 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.overrides = QUICK_OVERRIDES + args.overrides
    return args


def follow_training(command: list[str], metrics: Path) -> tuple[list[dict], float]:
    """Run the training command; its evaluation records, each with the ``seconds`` it appeared at,
    and the command's total wall time."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(
            [sys.executable, *command],
            cwd=ROOT,
            env={**os.environ, **OFFLINE},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        evaluations: list[dict] = []
        read_lines = 0
        while True:
            finished = process.poll() is not None
            now = time.perf_counter() - start
            lines = complete_lines(metrics)
            for line in lines[read_lines:]:
                record = json.loads(line)
                if record["kind"] == "eval":
                    evaluations.append({**record, "seconds": now})
            read_lines = len(lines)
            if finished:
                break
            time.sleep(POLL_SECONDS)
        if process.returncode != 0:
            output.seek(0)
            raise RuntimeError(f"training failed:\n{output.read()[-4000:]}")
    return evaluations, time.perf_counter() - start


def complete_lines(path: Path) -> list[str]:
    """The lines of ``path`` written so far, without a last one still being written."""
    text = path.read_text() if path.exists() else ""
    return text[: text.rfind("\n") + 1].splitlines()


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as temporary:
        data = prepare_corpus(Path(temporary) / "data")
        out = Path(temporary) / "out"
        command = [
            "train.py",
            args.config,
            *args.overrides,
            f"data.dir={data}",
            f"train.out_dir={out}",
            "train.wandb.mode=disabled",
        ]
        evaluations, total_seconds = follow_training(command, out / "metrics.jsonl")
        config_text = (out / "config.yaml").read_text()
    reached = next((e for e in evaluations if e["val_loss"] <= args.target), None)
    result = {
        "config": os.path.relpath(args.config, ROOT),
        "overrides": args.overrides,
        "quick": args.quick,
        "target_val_loss": args.target,
        "reached": None
        if reached is None
        else {"step": reached["step"], "seconds": reached["seconds"]},
        "final_val_loss": evaluations[-1]["val_loss"],
        "best_val_loss": min(e["val_loss"] for e in evaluations),
        "final_step": evaluations[-1]["step"],
        "total_seconds": total_seconds,
        "evaluations": evaluations,
        "resolved_config": config_text,
    }
    print(quality_table(result))
    path = write_results("time_to_quality", result, args.quick)
    print(f"\nwrote {path}")


def quality_table(result: dict) -> str:
    reached = result["reached"]
    when = (
        "not reached" if reached is None else f"{reached['seconds']:.0f} s (step {reached['step']})"
    )
    rows = [
        [
            result["config"] + (" (quick)" if result["quick"] else ""),
            f"{result['target_val_loss']}",
            when,
            f"{result['final_val_loss']:.4f}",
            f"{result['best_val_loss']:.4f}",
            f"{result['total_seconds']:.0f} s ({result['final_step']} steps)",
        ]
    ]
    headers = [
        "config",
        "target val loss",
        "time to target",
        "final val loss",
        "best val loss",
        "total wall time",
    ]
    return format_table(headers, rows)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
