"""The run folder: what a training run writes in ``train.out_dir``, named and read in one place.

    OUT_DIR/
      config.yaml            the resolved config the run trained with
      tokenizer.json         the data's tokenizer: with config.yaml and the weights, all sampling needs
      metrics.jsonl          one JSON record a line (``kind`` train or eval), appended as it trains
      model.safetensors      the best weights by validation loss (gpt.run.weights)
      checkpoints/step_*/    the full training state, sealed by a manifest (gpt.run.checkpoints)
      run.json               the run's facts when it ended: steps, processes, tokens per step, how
      eval_<split>.json      gpt.evaluate's results on the run's own data
      report/                gpt.report's figures and summary
      wandb/                 W&B's offline runs
      earlier_runs/<time>/   an earlier run's files, moved aside by a new run

The trainer writes these through this module; the report, sweeps, evaluation, lessons, export and
sampling read them through it.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from gpt.base.config import Config, load_config
from gpt.base.errors import UserError, one_line
from gpt.base.files import write_text

CONFIG_FILE = "config.yaml"
TOKENIZER_FILE = "tokenizer.json"
METRICS_FILE = "metrics.jsonl"
WEIGHTS_FILE = "model.safetensors"
RUN_FACTS_FILE = "run.json"
CHECKPOINTS_DIR = "checkpoints"
REPORT_DIR = "report"
EARLIER_RUNS_DIR = "earlier_runs"
# The files a run writes in its output folder (W&B's offline runs included), eval_*.json aside.
RUN_FILES = (
    CONFIG_FILE,
    TOKENIZER_FILE,
    METRICS_FILE,
    WEIGHTS_FILE,
    CHECKPOINTS_DIR,
    "wandb",
    RUN_FACTS_FILE,
    REPORT_DIR,
)


def read_json(path: Path) -> Any:
    """A JSON file's content, or None where it is missing or unreadable (a run still going, a
    file cut short by a kill): for readers that make do without it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_json(path: Path, value: Any) -> None:
    """Create or replace a JSON file, atomically."""
    write_text(path, json.dumps(value, indent=2) + "\n")


def read_config_dict(out_dir: Path) -> dict:
    """config.yaml as plain data, or {} where it is missing or unreadable (for reports)."""
    try:
        return yaml.safe_load((out_dir / CONFIG_FILE).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}


def read_config(out_dir: Path) -> Config:
    """The validated config a run trained with."""
    path = out_dir / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing; pass a training output folder")
    return load_config(path)


def run_data_dir(out_dir: Path) -> Path:
    """The data folder a run trained on, from its config.yaml."""
    config = out_dir / CONFIG_FILE
    if not config.is_file():
        raise UserError(f"{config} is missing; say which data to score with --data DIR")
    return Path(load_config(config).data.dir)


def tokens_per_step(
    batch_size: int, gradient_accumulation_steps: int, block_size: int, processes: int = 1
) -> int:
    """Tokens in one optimizer step: sequences per micro-step x micro-steps x sequence length x
    processes. The one definition the trainer, the report and sweeps use."""
    return batch_size * gradient_accumulation_steps * block_size * processes


def config_tokens_per_step(config: dict) -> int | None:
    """Tokens per step of one process from config.yaml's data (None where it lacks the keys)."""
    try:
        train, model = config["train"], config["model"]
        return tokens_per_step(
            train["batch_size"], train["gradient_accumulation_steps"], model["block_size"]
        )
    except (KeyError, TypeError):
        return None


# ----- evaluations --------------------------------------------------------------------------------


def evaluation_file(out_dir: Path, split: str, data_dir: Path) -> Path:
    """``eval_<split>.json`` for the run's own data, ``eval_<split>-<folder>.json`` for other data,
    so that scoring another corpus never replaces the run's own test result."""
    own = (out_dir / CONFIG_FILE).is_file() and _same_path(data_dir, run_data_dir(out_dir))
    name = f"eval_{split}.json" if own else f"eval_{split}-{data_dir.absolute().name}.json"
    return out_dir / name


def read_test_result(out_dir: Path) -> dict | None:
    """gpt.evaluate's result on the run's own test split, if it has written one."""
    return read_json(out_dir / "eval_test.json")


def _same_path(a: Path, b: Path) -> bool:
    return a.absolute().resolve() == b.absolute().resolve()


# ----- the run's facts ----------------------------------------------------------------------------


def write_run_facts(out_dir: Path, facts: dict) -> None:
    """run.json: what the trainer knows of a run when it ends (its step, processes, tokens per
    step, whether it stopped early or was interrupted)."""
    write_json(out_dir / RUN_FACTS_FILE, facts)


def read_run_facts(out_dir: Path) -> dict:
    """run.json, or {} for a run that has not ended (or ended before run.json existed)."""
    facts = read_json(out_dir / RUN_FACTS_FILE)
    return facts if isinstance(facts, dict) else {}


# ----- earlier runs -------------------------------------------------------------------------------


def move_earlier_run_aside(out_dir: Path) -> Path | None:
    """Move an earlier run's files out of the way of a new run in ``out_dir``.

    They go to ``earlier_runs/<UTC time>/`` whole, so the two runs never mix (the earlier run's
    checkpoints with the new run's, say). Returns that folder, or None if there was nothing to move.
    """
    present = [out_dir / name for name in RUN_FILES if (out_dir / name).exists()]
    present += sorted(out_dir.glob("eval_*.json"))
    if not present:
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H-%M-%SZ")
    destination = out_dir / EARLIER_RUNS_DIR / stamp
    suffix = 2
    while destination.exists():
        destination = out_dir / EARLIER_RUNS_DIR / f"{stamp}-{suffix}"
        suffix += 1
    destination.mkdir(parents=True)
    for path in present:
        os.replace(path, destination / path.name)
    return destination


class MetricsLog:
    """``metrics.jsonl``: one JSON record a line, each with ``step`` and ``kind``. One process
    writes it (the trainer's main process)."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / METRICS_FILE

    def write(self, record: dict) -> None:
        try:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as error:
            raise write_failed(str(self.path), one_line(error), self.path.parent) from None

    def keep_until(self, step: int) -> None:
        """Drop records past ``step``: a resumed run redoes those steps and logs them again.

        A line that does not parse (cut short by a kill while it was written) is past the
        checkpoint too, and is dropped with them.
        """
        if not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if _step_of(line) is not None and _step_of(line) <= step]
        write_run_file(self.path, "".join(kept))


def read_metrics(out_dir: Path) -> list[dict]:
    """metrics.jsonl's records, oldest first; a line cut short by a killed run is skipped."""
    path = out_dir / METRICS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(
            f"{path} is not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset "
            f"{error.start}), so train.py did not write it; restore the run's metrics.jsonl"
        ) from None
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return [r for r in records if isinstance(r, dict) and "step" in r]


def _step_of(line: str) -> int | None:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return None


def write_run_file(path: Path, text: str) -> None:
    """Write a file of the output folder under a temporary name, then rename it."""
    try:
        write_text(path, text)
    except OSError as error:
        raise write_failed(str(path), one_line(error), path.parent) from None


CHECKPOINT_PREFIX = "step_"
# in a checkpoint of a train.fsdp run: the model's and optimizer's shards
SHARDED_STATE_DIR = "sharded"


def write_failed(target: str, reason: str, out_dir: Path) -> UserError:
    """A write that failed (a full disk, most often), as one line: what, why, the space left and
    the newest checkpoint, which is intact (a checkpoint is published only once complete)."""
    newest = latest_checkpoint(out_dir)
    free = shutil.disk_usage(out_dir).free / 2**20
    intact = f"{newest} is intact" if newest else "no checkpoint was saved yet"
    return UserError(
        f"could not write {target} ({reason}); {free:.1f} MiB free on its disk; {intact}: free "
        "some space (or set another train.out_dir) and run the same command again"
    )


def latest_checkpoint(out_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(out_dir)
    return checkpoints[-1] if checkpoints else None


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary and damaged ones are not named step_*)."""
    root = out_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir())


def write_run_description(out_dir: Path, config: Config, tokenizer: Path) -> None:
    """config.yaml and tokenizer.json: with them and the weights the folder is all sampling needs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_run_file(out_dir / CONFIG_FILE, config.to_yaml())
    write_run_file(out_dir / TOKENIZER_FILE, tokenizer.read_text(encoding="utf-8"))
