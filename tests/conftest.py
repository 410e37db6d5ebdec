"""Shared fixtures: offline hubs, the bundled corpus, and small prepared data folders."""

import os
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState

import bench
from tests.warm_python import WARM, Process

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "data" / "tinyshakespeare.txt"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# One thread per process: tests start several torch processes at once (2-process launches, a
# launcher beside its workers), and torch's spinning threads then slow each other down manyfold.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def own_caches(tmp_path_factory):
    """Each test process (each pytest-xdist worker) its own W&B and datasets folders,
    inherited by the commands it runs, so that workers never write one file at once."""
    home = tmp_path_factory.mktemp("caches")
    for variable, folder in [
        ("WANDB_DIR", "wandb"),
        ("WANDB_CACHE_DIR", "wandb-cache"),
        ("WANDB_CONFIG_DIR", "wandb-config"),
        ("WANDB_DATA_DIR", "wandb-data"),
        ("HF_DATASETS_CACHE", "hf-datasets"),
    ]:
        os.environ[variable] = str(home / folder)


@pytest.fixture(scope="session", autouse=True)
def warm_bench_commands():
    """The commands of the benchmarks and the fault campaign, which tests run in their short
    forms, forked from the warm interpreter too (``bench.start_python``)."""

    def start(args, env: dict[str, str], output: tuple[Path, Path] | None = None) -> Process:
        return WARM.start(list(args), ROOT, env, output)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bench, "start_python", start)
        yield


def run_python(*args: str, cwd: Path = ROOT, timeout: float = 300, env: dict | None = None):
    """Run ``python ARGS`` like a user would; returns the CompletedProcess (text mode).

    The command runs in a fork of this test process's warm interpreter (tests/warm_python.py),
    which has imported torch already, or in a fresh interpreter where a fork cannot stand in."""
    return WARM.run(list(args), cwd, {**os.environ, **(env or {})}, timeout)


def start_python(
    *args: str, cwd: Path = ROOT, env: dict | None = None, output: tuple[Path, Path] | None = None
) -> Process:
    """Start ``python ARGS`` like a user would, its stdout and stderr captured as text or written
    to the files of ``output``: a Popen, or what tests use of one (``pid``, ``poll``, ``wait``,
    ``communicate``, ``send_signal``, ``kill``) where it is forked from the warm interpreter
    like :func:`run_python`'s commands."""
    return WARM.start(list(args), cwd, {**os.environ, **(env or {})}, output)


@pytest.fixture(scope="session")
def shakespeare_char(tmp_path_factory) -> Path:
    """The bundled corpus prepared with the char tokenizer (once per test session)."""
    out = tmp_path_factory.mktemp("data") / "shakespeare_char"
    result = run_python(
        "-m", "data_prep", "--input", str(CORPUS), "--tokenizer", "char", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread, and much faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fresh_accelerate_state():
    """For tests that train in this process: accelerate keeps one device and precision per
    process, so forget this test's CPU run, and a later test here may train on a GPU or in fp16."""
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="session")
def tiny_run(shakespeare_char, tmp_path_factory) -> Path:
    """A finished run of a tiny GPT: 20 steps, 5 of them warmup, a log every 5 and an evaluation
    every 10 (once per test session: tests read it and write nothing into it)."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = run_python(
        "train.py", str(ROOT / "configs" / "shakespeare_char_cpu.yaml"),
        f"data.dir={shakespeare_char}", f"train.out_dir={out}",
        "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
        "train.batch_size=8", "train.eval_iters=2", "train.log_interval=5",
        "train.warmup_iters=5", "train.max_iters=20", "train.eval_interval=10",
        "train.wandb.mode=disabled",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out
