"""Time to quality: the textbook GPT against the modern one, to the same validation loss, by wall clock.

    python -m bench.time_to_quality                # each recipe once: textbook, then modern
    python -m bench.time_to_quality --repeats 3    # textbook, modern, textbook, modern, ...
    python -m bench.time_to_quality --quick        # tiny models for 10 steps

The two recipes are ``configs/shakespeare_char_cpu.yaml`` (GPT-2's design, AdamW) and
``configs/shakespeare_char_modern.yaml`` (the Llama/Qwen3 options and Muon). The bundled corpus is
prepared once, so both train on the same data and split. Each run is ``python train.py CONFIG``
exactly as a user would type it (W&B off, a temporary output folder), one at a time, alternating;
the benchmark follows its ``metrics.jsonl`` while it runs: an evaluation's wall time is when its
record appeared, counted from the start of the command (start-up, data loading and the evaluations
themselves included).

Each textbook run and the modern run after it form a pair, scored against the textbook run:

* the target is the textbook run's best validation loss; each run's **time to target** is when its
  validation loss reached it, linearly interpolated in time between the last evaluation above the
  target and the first at or below it (for the textbook run: its best evaluation's time);
* each run's **val loss at the textbook's wall time** T is linearly interpolated between the
  evaluations on either side of T; a run that ended before T keeps its last evaluation's loss.

Both recipes evaluate every EVAL_INTERVAL steps here instead of their configs' 200, so that the
interpolation is between points close together; the evaluations cost both recipes alike. Issue 24's
targets: the modern run reaches the target in at most TIME_RATIO_TARGET of the textbook's time, and
ends at least LOSS_GAP_TARGET nats lower at the same wall time. Each run's training tokens per
second (the steps alone, evaluations excluded; the median of its train records) give the per-step
cost of each recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import bench  # bench.start_python: the suite puts its warm interpreter's forks there
from bench import CONFIGS, OFFLINE, ROOT, format_table, prepare_corpus, write_results
from gpt.base.cli import run_cli

POLL_SECONDS = 0.5
RECIPES = {
    "textbook": CONFIGS / "shakespeare_char_cpu.yaml",
    "modern": CONFIGS / "shakespeare_char_modern.yaml",
}
EVAL_INTERVAL = 100  # steps between evaluations, for both recipes
TIME_RATIO_TARGET = 0.5  # modern's time to the textbook's best val loss / the textbook's
LOSS_GAP_TARGET = 0.05  # nats: textbook - modern val loss at the textbook's wall time
QUICK_OVERRIDES = (
    "model.n_layer=2 model.n_head=2 model.n_embd=32 model.block_size=32 train.batch_size=8 "
    "train.max_iters=10 train.warmup_iters=2 train.eval_interval=5 train.eval_iters=2 "
    "train.log_interval=5 train.checkpoint_interval=10"
).split()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.time_to_quality", description=__doc__.split("\n")[0]
    )
    for name, config in RECIPES.items():
        parser.add_argument(f"--{name}", default=str(config), help=f"the {name} recipe's config")
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs, alternating")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for both")
    parser.add_argument("--quick", action="store_true", help="tiny models for 10 steps")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    bench_overrides = QUICK_OVERRIDES if args.quick else [f"train.eval_interval={EVAL_INTERVAL}"]
    args.overrides = bench_overrides + args.overrides
    return args


def follow_training(command: list[str], metrics: Path) -> tuple[list[dict], list[dict], float]:
    """Run the training command; its evaluation records, each with the ``seconds`` it appeared
    at, its train records, and the command's total wall time."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        output = (Path(folder) / "stdout", Path(folder) / "stderr")
        process = bench.start_python(command, {**os.environ, **OFFLINE}, output)
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
            raise RuntimeError(f"training failed:\n{output[1].read_text()[-4000:]}")
    train_records = [r for r in map(json.loads, complete_lines(metrics)) if r["kind"] == "train"]
    return evaluations, train_records, time.perf_counter() - start


def complete_lines(path: Path) -> list[str]:
    """The lines of ``path`` written so far, without a last one still being written."""
    text = path.read_text() if path.exists() else ""
    return text[: text.rfind("\n") + 1].splitlines()


def train_once(config: str, overrides: list[str], data: Path, out: Path) -> dict:
    """One run of ``train.py config``: its evaluations (timed), training speed and wall time."""
    command = [
        "train.py",
        config,
        *overrides,
        f"data.dir={data}",
        f"train.out_dir={out}",
        "train.wandb.mode=disabled",
    ]
    evaluations, train_records, total_seconds = follow_training(command, out / "metrics.jsonl")
    return {
        "config": os.path.relpath(config, ROOT),
        "evaluations": evaluations,
        "final_val_loss": evaluations[-1]["val_loss"],
        "best_val_loss": min(e["val_loss"] for e in evaluations),
        "final_step": evaluations[-1]["step"],
        "total_seconds": total_seconds,
        "tokens_per_sec": statistics.median(r["tokens_per_sec"] for r in train_records),
        "resolved_config": (out / "config.yaml").read_text(),
    }


def seconds_to_reach(evaluations: list[dict], target: float) -> float | None:
    """When the validation loss reached ``target``, interpolated linearly in time between the
    last evaluation above it and the first at or below it; None if it never did."""
    for before, after in zip([None, *evaluations], evaluations, strict=False):
        if after["val_loss"] <= target:
            if before is None:
                return after["seconds"]
            fall = (before["val_loss"] - target) / (before["val_loss"] - after["val_loss"])
            return before["seconds"] + fall * (after["seconds"] - before["seconds"])
    return None


def val_loss_at(evaluations: list[dict], seconds: float) -> float:
    """The validation loss at wall time ``seconds``, interpolated linearly between the
    evaluations around it; before the first, the first's; after the last, the last's."""
    if seconds <= evaluations[0]["seconds"]:
        return evaluations[0]["val_loss"]
    for before, after in zip(evaluations, evaluations[1:], strict=False):
        if seconds <= after["seconds"]:
            share = (seconds - before["seconds"]) / (after["seconds"] - before["seconds"])
            return before["val_loss"] + share * (after["val_loss"] - before["val_loss"])
    return evaluations[-1]["val_loss"]


def score_pair(textbook: dict, modern: dict) -> dict:
    """The modern run against the textbook run: time to the textbook's best val loss, and val
    loss at the textbook's total wall time, with the ratio and the gap the issue's targets name."""
    target = textbook["best_val_loss"]
    deadline = textbook["total_seconds"]
    runs = {"textbook": textbook["evaluations"], "modern": modern["evaluations"]}
    to_target = {name: seconds_to_reach(evaluations, target) for name, evaluations in runs.items()}
    at_deadline = {name: val_loss_at(evaluations, deadline) for name, evaluations in runs.items()}
    reached = to_target["modern"] is not None
    return {
        "target_val_loss": target,
        "textbook_wall_seconds": deadline,
        "seconds_to_target": to_target,
        "val_loss_at_textbook_wall_time": at_deadline,
        "time_ratio": to_target["modern"] / to_target["textbook"] if reached else None,
        "loss_gap": at_deadline["textbook"] - at_deadline["modern"],
        "step_cost_ratio": textbook["tokens_per_sec"] / modern["tokens_per_sec"],
    }


def summarise(pairs: list[dict]) -> dict:
    """The medians over the pairs, and whether they meet the issue's targets (a pair in which
    the modern run never reached the target counts as an infinite ratio)."""
    ratios = [p["time_ratio"] if p["time_ratio"] is not None else float("inf") for p in pairs]
    time_ratio = statistics.median(ratios)
    loss_gap = statistics.median(p["loss_gap"] for p in pairs)
    return {
        "time_ratio": time_ratio,
        "time_ratio_target": TIME_RATIO_TARGET,
        "time_ratio_met": time_ratio <= TIME_RATIO_TARGET,
        "loss_gap": loss_gap,
        "loss_gap_target": LOSS_GAP_TARGET,
        "loss_gap_met": loss_gap >= LOSS_GAP_TARGET,
        "step_cost_ratio": statistics.median(p["step_cost_ratio"] for p in pairs),
    }


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    configs = {name: getattr(args, name) for name in RECIPES}
    pairs = []
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as temporary:
        data = prepare_corpus(Path(temporary) / "data")
        for repeat in range(args.repeats):
            runs = {}
            for name, config in configs.items():  # textbook first, then modern
                out = Path(temporary) / f"{name}-{repeat}"
                runs[name] = train_once(config, args.overrides, data, out)
            pairs.append({"runs": runs, **score_pair(runs["textbook"], runs["modern"])})
    result = {
        "recipes": {name: os.path.relpath(config, ROOT) for name, config in configs.items()},
        "overrides": args.overrides,
        "quick": args.quick,
        "repeats": args.repeats,
        "pairs": pairs,
        "summary": summarise(pairs),
    }
    print(quality_table(result))
    print()
    print(summary_line(result["summary"], args.repeats))
    path = write_results("time_to_quality", result, args.quick)
    print(f"\nwrote {path}")


def quality_table(result: dict) -> str:
    rows = []
    for index, pair in enumerate(result["pairs"], 1):
        for name, run in pair["runs"].items():
            seconds = pair["seconds_to_target"][name]
            rows.append(
                [
                    f"{index}",
                    f"{name}: {run['config']}" + (" (quick)" if result["quick"] else ""),
                    f"{pair['target_val_loss']:.4f}",
                    "not reached" if seconds is None else f"{seconds:.0f} s",
                    f"{pair['val_loss_at_textbook_wall_time'][name]:.4f}",
                    f"{run['best_val_loss']:.4f}",
                    f"{run['total_seconds']:.0f} s ({run['final_step']} steps)",
                    f"{run['tokens_per_sec']:,.0f}",
                ]
            )
    headers = [
        "pair",
        "recipe",
        "target (textbook's best val)",
        "time to target",
        "val loss at textbook's wall time",
        "best val loss",
        "total wall time",
        "train tokens/s",
    ]
    return format_table(headers, rows)


def summary_line(summary: dict, repeats: int) -> str:
    over = "" if repeats == 1 else f" (medians of {repeats} pairs)"
    ratio_met = "met" if summary["time_ratio_met"] else "NOT met"
    gap_met = "met" if summary["loss_gap_met"] else "NOT met"
    return (
        f"modern/textbook time to the textbook's best val loss: {summary['time_ratio']:.2f}x "
        f"(target <= {summary['time_ratio_target']}x: {ratio_met}); val loss lower at the "
        f"textbook's wall time by {summary['loss_gap']:.3f} nats (target >= "
        f"{summary['loss_gap_target']}: {gap_met}); a modern step costs "
        f"{summary['step_cost_ratio']:.2f}x a textbook step{over}"
    )


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
