"""Data preparation: MB/s and peak memory of ``python -m data_prep``, against ``tokenizers`` alone.

    python -m bench.preparation                  # bundled corpus, generated 100 MB and 500 MB
    python -m bench.preparation --quick          # its first 100 kB only

The corpora are the bundled Shakespeare (1.1 MB) and generated ones of ``--sizes-mb`` megabytes: the
bundled corpus's lines, shuffled again for every copy, written to a temporary folder and deleted
afterwards. Every run is a fresh subprocess, timed from start to exit (so Python's start-up counts),
and its peak resident memory is the kernel's ``ru_maxrss`` for that process, taken by the small
launcher :mod:`bench.rusage` (see there why not from this process).

Two tables:

* **Pipeline**: ``python -m data_prep --tokenizer char|bpe --num-proc 1|2`` on every corpus, the
  whole job a user runs, building the tokenizer included (char: a pass over all of the text; BPE:
  training on the first 64 MB). Memory must not grow with the corpus.
* **Encoding**: ``python -m data_prep --tokenizer TOKENIZER_JSON`` (the tokenizer given, so the job
  is to read, encode and write) against ``python -m bench.encode_directly`` (``encode_batch_fast``
  on the same file with the same tokenizer.json, the ids dropped), on the bundled corpus and the
  first generated one, with 1 and 2 threads.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import CORPUS, OFFLINE, ROOT, format_table, write_results
from gpt.base.cli import run_cli

MB = 10**6
TOKENIZERS = ("char", "bpe")
QUICK_BYTES = 100_000


@dataclass(frozen=True)
class Process:
    """What the kernel says about a finished subprocess."""

    seconds: float  # wall time, start to exit
    cpu_seconds: float  # user + system time of all its threads
    peak_rss_mb: float
    output: str


@dataclass(frozen=True)
class Run:
    """One timed run of data_prep or of the baseline on one corpus."""

    corpus: str
    corpus_mb: float
    tokenizer: str
    workers: int
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    tokens: int  # written (data_prep, end-of-text tokens included) or encoded (tokenizers alone)

    @property
    def mb_per_sec(self) -> float:
        return self.corpus_mb / self.seconds

    @property
    def cores_busy(self) -> float:
        return self.cpu_seconds / self.seconds


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.preparation", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--sizes-mb", type=int, nargs="*", default=[100, 500], help="generated corpora to add"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--quick", action="store_true", help="100 kB of the bundled corpus only")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes_mb = []
    return args


def run_measured(command: list[str], env: dict[str, str] | None = None) -> Process:
    """Run ``python COMMAND`` to its end, under the small launcher :mod:`bench.rusage`."""
    with tempfile.TemporaryDirectory() as temporary:
        result_path = Path(temporary) / "rusage.json"
        completed = subprocess.run(
            [sys.executable, "-m", "bench.rusage", str(result_path), sys.executable, *command],
            cwd=ROOT,
            env={**os.environ, **OFFLINE, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stdout}")
        usage = json.loads(result_path.read_text())
    return Process(
        usage["seconds"], usage["cpu_seconds"], usage["peak_rss_bytes"] / MB, completed.stdout
    )


def run_data_prep(corpus: Path, tokenizer: str, workers: int, out: Path) -> Run:
    process = run_measured(
        ["-m", "data_prep", "--input", str(corpus), "--tokenizer", tokenizer, "--out", str(out)]
        + ["--num-proc", str(workers), "--overwrite"]
    )
    tokens = sum(json.loads((out / "meta.json").read_text())["tokens"].values())
    return measured_run(corpus, tokenizer, workers, process, tokens)


def run_directly(corpus: Path, tokenizer_json: Path, kind: str, workers: int) -> Run:
    process = run_measured(
        ["-m", "bench.encode_directly", str(tokenizer_json), str(corpus)],
        env={"RAYON_NUM_THREADS": str(workers), "TOKENIZERS_PARALLELISM": str(workers > 1).lower()},
    )
    tokens = json.loads(process.output.splitlines()[-1])["tokens"]
    return measured_run(corpus, kind, workers, process, tokens)


def measured_run(corpus: Path, tokenizer: str, workers: int, process: Process, tokens: int) -> Run:
    return Run(
        corpus.name,
        corpus.stat().st_size / MB,
        tokenizer,
        workers,
        process.seconds,
        process.cpu_seconds,
        process.peak_rss_mb,
        tokens,
    )


def generate_corpus(path: Path, size_mb: int, seed: int = 0) -> Path:
    """At least ``size_mb`` MB of the bundled corpus's lines, reshuffled for every copy."""
    lines = CORPUS.read_text(encoding="utf-8").splitlines(keepends=True)
    rng = random.Random(seed)
    written = 0
    with open(path, "w", encoding="utf-8") as file:
        while written < size_mb * MB:
            rng.shuffle(lines)
            block = "".join(lines)
            file.write(block)
            written += len(block.encode("utf-8"))
    return path


def copy_start(path: Path, size_bytes: int) -> Path:
    """The first ``size_bytes`` of the bundled corpus, cut at a line break."""
    text = CORPUS.read_text(encoding="utf-8")[:size_bytes]
    path.write_text(text[: text.rfind("\n") + 1], encoding="utf-8")
    return path


def pipeline_runs(corpus: Path, workers: list[int], out: Path) -> list[Run]:
    """data_prep from text to token files, tokenizer building included; outputs left in ``out``."""
    runs = []
    for tokenizer in TOKENIZERS:
        for count in workers:
            runs.append(run_data_prep(corpus, tokenizer, count, out / tokenizer))
    return runs


def encoding_runs(corpus: Path, tokenizers: dict[str, Path], workers: list[int], out: Path):
    """data_prep with a given tokenizer, and tokenizers directly; pairs timed back to back."""
    pairs = []
    for kind, tokenizer_json in tokenizers.items():
        for count in workers:
            ours = run_data_prep(corpus, str(tokenizer_json), count, out / "encoded")
            direct = run_directly(corpus, tokenizer_json, kind, count)
            pairs.append((replace_tokenizer(ours, kind), direct))
    shutil.rmtree(out / "encoded", ignore_errors=True)
    return pairs


def replace_tokenizer(run: Run, kind: str) -> Run:
    return Run(**{**asdict(run), "tokenizer": kind})


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-preparation-") as temporary:
        folder = Path(temporary)
        bundled = copy_start(folder / "start.txt", QUICK_BYTES) if args.quick else CORPUS
        corpora = [bundled] + [
            generate_corpus(folder / f"generated_{size}mb.txt", size) for size in args.sizes_mb
        ]
        # The bundled corpus's tokenizers are the given ones of the encoding comparison.
        pipeline = pipeline_runs(bundled, args.workers, folder / "bundled")
        given = {kind: folder / "bundled" / kind / "tokenizer.json" for kind in TOKENIZERS}
        encoding = []
        for corpus in corpora[:2]:
            encoding += encoding_runs(corpus, given, args.workers, folder)
        for corpus in corpora[1:]:
            pipeline += pipeline_runs(corpus, args.workers, folder / corpus.stem)
            shutil.rmtree(folder / corpus.stem)
            corpus.unlink()
    print(pipeline_table(pipeline))
    print()
    print(encoding_table(encoding))
    path = write_results(
        "preparation",
        {
            "pipeline": [describe(run) for run in pipeline],
            "encoding": [
                {
                    "data_prep": describe(ours),
                    "direct": describe(direct),
                    "ratio": ours.mb_per_sec / direct.mb_per_sec,
                }
                for ours, direct in encoding
            ],
        },
        args.quick,
    )
    print(f"\nwrote {path}")


def describe(run: Run) -> dict:
    return {**asdict(run), "mb_per_sec": run.mb_per_sec, "cores_busy": run.cores_busy}


def pipeline_table(runs: list[Run]) -> str:
    one_worker = {(r.corpus, r.tokenizer): r for r in runs if r.workers == 1}
    rows = [
        [
            f"{run.corpus} ({run.corpus_mb:.3g} MB)",
            run.tokenizer,
            run.workers,
            f"{run.mb_per_sec:.2f}",
            f"{run.cores_busy:.2f}",
            _speedup(run, one_worker.get((run.corpus, run.tokenizer))),
            f"{run.peak_rss_mb:,.0f}",
        ]
        for run in runs
    ]
    headers = ["corpus", "tokenizer", "workers", "MB/s", "cores busy", "vs 1 worker", "peak RSS MB"]
    return "Pipeline (python -m data_prep --tokenizer char|bpe)\n\n" + format_table(headers, rows)


def encoding_table(pairs: list[tuple[Run, Run]]) -> str:
    """data_prep against tokenizers alone; scaling against tokenizers on one thread."""
    one_thread = {(d.corpus, d.tokenizer): d for _, d in pairs if d.workers == 1}
    rows = [
        [
            f"{ours.corpus} ({ours.corpus_mb:.3g} MB)",
            ours.tokenizer,
            ours.workers,
            f"{ours.mb_per_sec:.2f} ({ours.cores_busy:.1f})",
            f"{direct.mb_per_sec:.2f} ({direct.cores_busy:.1f})",
            f"{ours.mb_per_sec / direct.mb_per_sec:.0%}",
            _speedup(ours, one_thread.get((ours.corpus, ours.tokenizer))),
            f"{ours.peak_rss_mb:,.0f}",
        ]
        for ours, direct in pairs
    ]
    headers = [
        "corpus",
        "tokenizer",
        "workers",
        "data_prep MB/s (cores busy)",
        "tokenizers MB/s (cores busy)",
        "data_prep / tokenizers",
        "data_prep vs tokenizers on 1 thread",
        "data_prep peak RSS MB",
    ]
    return "Encoding with a given tokenizer.json\n\n" + format_table(headers, rows)


def _speedup(run: Run, base: Run | None) -> str:
    return f"{run.mb_per_sec / base.mb_per_sec:.2f}x" if base and run.workers > 1 else ""


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
