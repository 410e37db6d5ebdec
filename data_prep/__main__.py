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

from data_prep.prepare import (
    DEFAULT_BPE_VOCAB,
    Settings,
    check_output_folder,
    check_settings,
    describe,
    prepare,
)
from data_prep.sources import DatasetCorpus, FileCorpus
from gpt.cli import ArgumentParser, run_cli
from gpt.errors import UserError
from gpt.folder_lock import hold_folder


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m data_prep",
        description="Tokenize a text corpus into DIR/tokenizer.json, DIR/train.bin, DIR/val.bin, "
        "DIR/test.bin (flat token ids, uint16 or uint32) and DIR/meta.json, the folder that "
        "training reads.",
    )
    source = parser.add_argument_group("text to prepare (give --input or --hf-dataset)")
    inputs = source.add_mutually_exclusive_group(required=True)
    inputs.add_argument(
        "--input",
        nargs="+",
        metavar="PATH",
        help="UTF-8 text files, folders (every file below, hidden ones skipped) or quoted globs "
        "such as 'corpus/**/*.txt'; each file is one document",
    )
    inputs.add_argument(
        "--hf-dataset",
        metavar="NAME",
        help="a Hugging Face dataset: a Hub name, or a builder for local files (text, json, "
        "parquet, csv) with --hf-data-files; each row is one document",
    )
    source.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="leave out files of --input folders and globs that match, from the right of their "
        "path ('*.log', 'docs/*.md') or, without a slash, by a folder name ('build'); repeatable. "
        "Hidden files, __pycache__ and binary files are left out anyway",
    )
    source.add_argument("--hf-config", metavar="C", help="the dataset's configuration (subset)")
    source.add_argument(
        "--hf-split", default="train", metavar="SPLIT", help="the split to read (default: train)"
    )
    source.add_argument(
        "--hf-data-files", nargs="+", metavar="FILE", help="local data files for --hf-dataset"
    )
    source.add_argument(
        "--text-column",
        default="text",
        metavar="COLUMN",
        help="the dataset column holding the text (default: text)",
    )
    source.add_argument(
        "--streaming",
        action="store_true",
        help="stream the dataset instead of downloading and converting it first",
    )
    parser.add_argument(
        "--tokenizer",
        default="char",
        metavar="char|bpe|PATH",
        help="char: the corpus's characters; bpe: byte-level BPE trained on the corpus; or an "
        "existing tokenizer.json, or a folder holding one (a data folder, to prepare more data "
        "for the same model; a Hugging Face model folder such as a GPT-2 download, to fine-tune "
        "it) (default: char)",
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        metavar="N",
        help=f"bpe: the vocabulary size, end-of-text included (default: {DEFAULT_BPE_VOCAB}); "
        "char: the most distinct characters allowed (default: no limit)",
    )
    parser.add_argument(
        "--bpe-sample-mb",
        type=int,
        default=64,
        metavar="MB",
        help="bpe: train on the first MB megabytes of the corpus (default: 64)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="the folder to write")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        metavar="F",
        help="the share held out for validation: of the documents, or the end of a single "
        "document (default: 0.1)",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.1,
        metavar="F",
        help="the share held out for the final test (python -m gpt.evaluate), chosen like the "
        "validation share; training never reads it; 0 makes no test split (default: 0.1)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="N", help="picks the held-out documents (default: 0)"
    )
    parser.add_argument(
        "--num-proc",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="cores that train the BPE tokenizer and encode (default: all of them)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace DIR if it is an earlier data_prep output"
    )
    return parser


def run(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    _check_dataset_flags(args)
    if args.num_proc < 1:
        raise UserError(f"--num-proc {args.num_proc} must be at least 1")
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
