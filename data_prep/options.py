"""data_prep's options: the command line's parser, which sweeps use too, to check a sweep file's
``data`` section before any work."""

from __future__ import annotations

import argparse
import os

from data_prep.prepare import DEFAULT_BPE_VOCAB
from gpt.base.cli import ArgumentParser


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
