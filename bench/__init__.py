"""Speed benchmarks against reference implementations; each prints a table and writes JSON.

``python -m bench.run_all`` (``make bench``) runs them all; each also runs alone, e.g.
``python -m bench.training``. This module holds what they share: the machine's description, the
results folder, the table printer and a prepared copy of the bundled corpus.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
CORPUS = ROOT / "data" / "tinyshakespeare.txt"
CONFIGS = ROOT / "configs"
# Offline hubs: nothing here downloads anything, and a subprocess must not try.
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}


def machine() -> dict:
    """What the figures were measured on: CPU model, cores, GPU, library versions."""
    import torch

    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_results(name: str, results: dict, quick: bool) -> Path:
    """Write ``bench/results/NAME.json`` atomically, with the machine's description added.

    A ``--quick`` run only checks that the benchmark works; its figures go to
    ``bench/results/quick/`` and leave the real ones alone.
    """
    folder = RESULTS_DIR / "quick" if quick else RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    temporary = path.with_name(f"{path.name}.tmp")
    temporary.write_text(json.dumps({"machine": machine(), **results}, indent=2) + "\n")
    os.replace(temporary, path)
    return path


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table, so that printed results paste straight into a README."""
    cells = [[_format_cell(value) for value in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def _format_cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def popen_python(
    args: Sequence[str], env: dict[str, str], output: tuple[Path, Path] | None = None
) -> subprocess.Popen:
    """``python ARGS`` started in the repository root with the environment ``env``, its stdout and
    stderr written to the two files of ``output`` (None: captured as text)."""
    command = [sys.executable, *args]
    if output is None:
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    with open(output[0], "w") as stdout, open(output[1], "w") as stderr:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=stdout, stderr=stderr)


DISCARDED = (Path(os.devnull), Path(os.devnull))  # an ``output`` for a command's output unread

# How the benchmarks start ``python ARGS`` (call it as ``bench.start_python``): the test suite,
# which runs the benchmarks and the fault campaign in their short forms, puts here commands forked
# from an interpreter that has imported torch already (tests/warm_python.py).
start_python = popen_python


def run_python(
    args: Sequence[str],
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """``python ARGS`` in the repository root with the environment ``env`` (offline by default),
    its output captured as text; killed after ``timeout`` seconds (and TimeoutExpired raised),
    CalledProcessError raised if it fails and ``check``."""
    process = start_python(args, env or {**os.environ, **OFFLINE})
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    if check and process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, args, stdout, stderr)
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def prepare_corpus(out: Path, tokenizer: str = "char", corpus: Path = CORPUS) -> Path:
    """``corpus`` prepared by data_prep into ``out`` (the bundled Shakespeare by default)."""
    run_python(
        ["-m", "data_prep", "--input", str(corpus), "--tokenizer", tokenizer, "--out", str(out)]
    )
    return out
