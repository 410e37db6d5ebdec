"""``python -m data_prep`` (or ``gpt-prep``): turn text into a folder the trainer reads.

python -m data_prep --input data/tinyshakespeare.txt --tokenizer char --out data/shakespeare_char
python -m data_prep --input 'corpus/**/*.txt' --tokenizer bpe --vocab-size 8192 --out data/corpus
python -m data_prep --hf-dataset json --hf-data-files a.jsonl --tokenizer bpe --out data/a
python -m data_prep --input new.txt --tokenizer data/corpus/tokenizer.json --out data/new
python -m data_prep --input my.txt --tokenizer models/gpt2 --out data/my_gpt2
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from data_prep.options import build_parser
from data_prep.prepare import (
    Settings,
    check_output_folder,
    check_settings,
    describe,
    prepare,
)
from data_prep.sources import DatasetCorpus, FileCorpus
from gpt.base.cli import run_cli
from gpt.base.errors import UserError
from gpt.base.folder_lock import hold_folder

# A thread each; more than the cores gains nothing, and 100 million threads took a machine down.
# A fixed bound, not the cores, so that a command line means the same on every machine.
MAX_THREADS = 256


def run(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    _check_dataset_flags(args)
    if not 1 <= args.num_proc <= MAX_THREADS:
        raise UserError(
            f"--num-proc {args.num_proc} must be at least 1 and at most {MAX_THREADS} (this "
            f"machine has {os.cpu_count()} cores); leave it out to use them all"
        )
    if args.bpe_sample_mb < 1:
        raise UserError(f"--bpe-sample-mb {args.bpe_sample_mb} must be at least 1")
    _use_threads(args.num_proc)
    settings = Settings(
        out=Path(args.out),
        tokenizer=args.tokenizer,
        vocab_size=args.vocab_size,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        bpe_sample_mb=args.bpe_sample_mb,
        overwrite=args.overwrite,
        num_proc=args.num_proc,
    )
    check_settings(settings)  # before a dataset is downloaded or converted; prepare checks again
    with hold_folder(settings.out, "python -m data_prep", "--out"):  # one writer at a time
        meta = _prepare(args, settings)
    print(describe(meta, settings.out))


def _prepare(args: argparse.Namespace, settings: Settings) -> dict:
    """Read the corpus that ``args`` name and prepare it as ``settings`` say; its meta.json."""
    check_output_folder(settings.out, settings.overwrite)
    corpus = (
        FileCorpus(args.input, args.exclude)
        if args.input
        else DatasetCorpus(
            args.hf_dataset,
            args.hf_config,
            args.hf_split,
            args.hf_data_files,
            args.text_column,
            args.streaming,
        )
    )
    if isinstance(corpus, FileCorpus) and corpus.skipped_note():
        print(corpus.skipped_note(), file=sys.stderr)
    recorded = {key: value for key, value in vars(args).items() if key not in ("out", "overwrite")}
    return prepare(corpus, settings, recorded)


def _check_dataset_flags(args: argparse.Namespace) -> None:
    if args.input is None:
        if args.exclude:
            raise UserError("--exclude only applies to --input, not to --hf-dataset")
        return
    given = [
        flag
        for flag, value in [
            ("--hf-config", args.hf_config),
            ("--hf-data-files", args.hf_data_files),
            ("--streaming", args.streaming),
        ]
        if value
    ]
    if given:
        raise UserError(f"{', '.join(given)} only apply to --hf-dataset, not to --input")


def _use_threads(num_proc: int) -> None:
    """Size the Rust thread pool that ``tokenizers`` trains BPE with.

    Encoding runs one batch per worker thread (data_prep.prepare), and the pool caps those at
    ``num_proc`` cores too. ``tokenizers`` reads these variables when it first runs in a process,
    so they are set before any work.
    """
    os.environ["RAYON_NUM_THREADS"] = str(num_proc)
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if num_proc > 1 else "false"


def main(argv: list[str] | None = None) -> NoReturn:
    sys.exit(run_cli(run, argv))


if __name__ == "__main__":
    main()
