"""Prepare a corpus for training: a tokenizer, flat token files per split and their metadata.

Two streaming passes over the corpus. The first builds the tokenizer: the char vocabulary scans all
of the text; BPE trains on a bounded sample, the first ``bpe_sample_mb`` megabytes, which is plenty
to learn merges and keeps that pass's time and memory bounded; a given ``tokenizer.json`` needs no
pass. The second pass encodes the text in batches (about 1 MB, as 16 chunks) with
``encode_batch_fast`` and appends each batch's ids to ``train.bin``, ``val.bin`` or ``test.bin``. ``num_proc``
worker threads encode one batch each at a time (in Rust, without Python's GIL) while the main
thread reads the next batches and writes the finished ones. So memory holds a few batches at a
time, whatever the size of the corpus, and ``num_proc`` cores do the encoding.

Everything is written into a sibling folder ``OUT.tmp-<pid>`` that is renamed to ``OUT`` only when
complete, so an interrupted run never leaves a folder the trainer would accept.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.sources import CHUNK_CHARS, DatasetCorpus, FileCorpus, utf8_length
from data_prep.split import Fractions, Piece, split_pieces
from gpt.base.downloads import gpt2_download_command
from gpt.base.errors import UserError
from gpt.base.files import naming, publish_folder, sha256, staging_folder
from gpt.base.progress import Progress
from gpt.data.tokenizer import (
    MAX_BPE_VOCAB,
    MIN_BPE_VOCAB,
    Tokenizer,
    load_tokenizer,
    train_bpe_tokenizer,
    train_char_tokenizer,
)

Corpus = FileCorpus | DatasetCorpus
DEFAULT_BPE_VOCAB = 8192
UINT16_MAX_VOCAB = 65535  # the project's contract: uint16 up to this vocabulary size, else uint32
BATCH_CHARS = 16 * CHUNK_CHARS  # per encode_batch_fast call: work for many threads, bounded memory


@dataclass(frozen=True)
class Settings:
    """How to prepare: the choices of the command line, minus where the text comes from."""

    out: Path
    tokenizer: str  # "char", "bpe" or the path of a tokenizer.json
    vocab_size: int | None
    val_fraction: float
    test_fraction: float  # 0: no test split
    seed: int
    bpe_sample_mb: int
    overwrite: bool
    num_proc: int  # threads that encode, one batch each

    @property
    def fractions(self) -> Fractions:
        return Fractions(val=self.val_fraction, test=self.test_fraction)


def prepare(corpus: Corpus, settings: Settings, arguments: dict[str, Any]) -> dict[str, Any]:
    """Write ``settings.out``; returns its meta.json. ``arguments`` are recorded in the meta."""
    check_settings(settings)
    check_output_folder(settings.out, settings.overwrite)
    if next(iter(corpus.documents()), None) is None:
        raise UserError("the corpus is empty: every input has no text; give it some text")
    tokenizer = build_tokenizer(corpus, settings)
    with staging_folder(settings.out) as staging:
        tokenizer.save(staging / "tokenizer.json")
        dtype = "uint16" if tokenizer.vocab_size <= UINT16_MAX_VOCAB else "uint32"
        counts = write_token_files(corpus, tokenizer, dtype, settings, staging)
        meta = {
            "vocab_size": tokenizer.vocab_size,
            "dtype": dtype,
            "tokenizer": tokenizer.kind,
            "eot_id": tokenizer.eot_id,
            "tokens": counts["tokens"],
            "documents": counts["documents"],
            "bytes": counts["bytes"],
            "sources": corpus.sources,
            "content_hash": sha256(
                *(staging / f"{split}.bin" for split in settings.fractions.splits)
            ),
            "arguments": arguments,
        }
        (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        check_output_folder(settings.out, settings.overwrite)  # again: it may have appeared
        publish_folder(staging, settings.out)
    return meta


def check_settings(settings: Settings) -> None:
    """Refuse impossible settings before any work is done."""
    if not 0 < settings.val_fraction < 1:
        raise UserError(f"--val-fraction {settings.val_fraction} must be between 0 and 1, e.g. 0.1")
    if not 0 <= settings.test_fraction < 1:
        raise UserError(
            f"--test-fraction {settings.test_fraction} must be at least 0 (no test split) and "
            "below 1, e.g. 0.1"
        )
    if settings.val_fraction + settings.test_fraction >= 1:
        raise UserError(
            f"--val-fraction {settings.val_fraction} and --test-fraction {settings.test_fraction} "
            "leave nothing to train on; make their sum less than 1"
        )
    _check_tokenizer_path(settings.tokenizer)
    vocab_size = settings.vocab_size
    if settings.tokenizer == "bpe" and vocab_size is not None:
        if not MIN_BPE_VOCAB <= vocab_size <= MAX_BPE_VOCAB:
            raise UserError(
                f"--vocab-size {vocab_size} does not suit byte-level BPE: use {MIN_BPE_VOCAB} "
                f"(the 256 bytes plus end-of-text) to {MAX_BPE_VOCAB} (the uint32 limit)"
            )
    elif settings.tokenizer == "char" and vocab_size is not None:
        if not 1 <= vocab_size <= MAX_BPE_VOCAB:
            raise UserError(
                f"--vocab-size {vocab_size} does not suit the char tokenizer: it caps the count "
                f"of distinct characters, from 1 to {MAX_BPE_VOCAB}; or leave it out"
            )
    elif vocab_size is not None:
        raise UserError(
            "--vocab-size cannot change an existing tokenizer's vocabulary; leave it out, "
            "or use --tokenizer bpe to train a new one"
        )


def _check_tokenizer_path(tokenizer: str) -> None:
    """A missing tokenizer folder is most often a GPT-2 not downloaded yet: say how to. (A missing
    tokenizer.json file is load_tokenizer's to refuse.)"""
    path = Path(tokenizer)
    if tokenizer in ("char", "bpe") or path.suffix == ".json" or path.exists():
        return
    raise UserError(
        f"--tokenizer {path} does not exist; to fine-tune GPT-2, download it on a machine with "
        f"internet: {gpt2_download_command(path)} (or give char, bpe, a tokenizer.json or a "
        "data_prep folder)"
    )


def build_tokenizer(corpus: Corpus, settings: Settings) -> Tokenizer:
    """The first pass: a char vocabulary from all the text, BPE from a sample, or a given file."""
    if settings.tokenizer == "char":
        return build_char_tokenizer(corpus, settings.vocab_size)
    if settings.tokenizer == "bpe":
        sample = _first_bytes(_all_chunks(corpus), settings.bpe_sample_mb * 10**6)
        sample_total = min(corpus.total_bytes or 0, settings.bpe_sample_mb * 10**6) or None
        return train_bpe_tokenizer(
            _progress(sample, "BPE training", sample_total),
            settings.vocab_size or DEFAULT_BPE_VOCAB,
        )
    path = Path(settings.tokenizer)
    if path.is_dir() and not (path / "tokenizer.json").is_file():
        raise UserError(
            f"--tokenizer {path}: the folder holds no tokenizer.json; give a data_prep folder or "
            "a Hugging Face model folder (such as a GPT-2 download) that has one"
        )
    return load_tokenizer(path / "tokenizer.json" if path.is_dir() else path)


def build_char_tokenizer(corpus: Corpus, max_chars: int | None) -> Tokenizer:
    """Every character of the corpus; with several documents, end-of-text to separate them.

    A corpus of one document (a single file, say) gets no extra symbol: its vocabulary is exactly
    its characters, as it always was.
    """
    chars, documents = _characters(corpus)
    if max_chars is not None and len(chars) > max_chars:
        raise UserError(
            f"--vocab-size {max_chars} is too small for the char tokenizer: the "
            f"corpus has {len(chars)} distinct characters; raise it or leave it out"
        )
    return train_char_tokenizer(chars, end_of_text=documents > 1)


def _characters(corpus: Corpus) -> tuple[set[str], int]:
    """The corpus's distinct characters and its number of documents, in one pass."""
    chars: set[str] = set()
    documents = 0
    with Progress("char vocabulary", corpus.total_bytes, "B", leave=True) as bar:
        for document in corpus.documents():
            documents += 1
            for chunk in document.chunks():
                chars.update(chunk)
                bar.update(utf8_length(chunk))
    return chars, documents


def _all_chunks(corpus: Corpus) -> Iterator[str]:
    for document in corpus.documents():
        yield from document.chunks()


def _first_bytes(chunks: Iterable[str], limit: int) -> Iterator[str]:
    taken = 0
    for chunk in chunks:
        if taken >= limit:
            return
        yield chunk
        taken += utf8_length(chunk)


def _progress(chunks: Iterable[str], description: str, total: int | None) -> Iterator[str]:
    """Pass ``chunks`` through, showing the bytes done on stderr (:mod:`gpt.base.progress`)."""
    with Progress(description, total, "B", leave=True) as bar:
        for chunk in chunks:
            yield chunk
            bar.update(utf8_length(chunk))


def write_token_files(
    corpus: Corpus, tokenizer: Tokenizer, dtype: str, settings: Settings, folder: Path
) -> dict[str, dict[str, int]]:
    """The second pass: encode every piece and append its ids to ``folder/{split}.bin``.

    Returns each split's count of tokens, of documents and of bytes of text (UTF-8, without the
    end-of-text tokens between documents; bits per byte divide by it).
    """
    splits = settings.fractions.splits
    counts = {name: dict.fromkeys(splits, 0) for name in ("tokens", "documents", "bytes")}
    pieces = split_pieces(corpus.documents(), settings.fractions, settings.seed)
    paths = {split: folder / f"{split}.bin" for split in splits}
    with naming(folder), ExitStack() as stack:  # a failed close names the folder
        files = {split: stack.enter_context(open(path, "wb")) for split, path in paths.items()}
        bar = stack.enter_context(Progress("encoding", corpus.total_bytes, "B", leave=True))
        batches = _batches(pieces, BATCH_CHARS)
        for batch, encoded in _encode_ahead(batches, tokenizer, dtype, settings.num_proc):
            for split, ids in encoded.items():
                with naming(paths[split]):  # a full disk: ENOSPC, naming the file
                    files[split].write(ids.tobytes())
                counts["tokens"][split] += len(ids)
            for piece in batch:
                size = utf8_length(piece.text)
                counts["documents"][piece.split] += piece.ends_document
                counts["bytes"][piece.split] += size
                bar.update(size)
        for split, handle in files.items():
            with naming(paths[split]):
                handle.flush()
    for split in splits:
        if counts["tokens"][split] == 0:
            raise UserError(
                f"the {split} split came out empty: the corpus is too small to hold out "
                f"{_held_out(settings)} of it (each split needs a document of its own, or one "
                "document long enough to cut); give it more text"
            )
    return counts


def _held_out(settings: Settings) -> str:
    held_out = f"--val-fraction {settings.val_fraction}"
    if settings.test_fraction > 0:
        held_out += f" and --test-fraction {settings.test_fraction} (0 makes no test split)"
    return held_out


def _batches(pieces: Iterable[Piece], max_chars: int) -> Iterator[list[Piece]]:
    batch: list[Piece] = []
    chars = 0
    for piece in pieces:
        batch.append(piece)
        chars += len(piece.text)
        if chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _encode_ahead(
    batches: Iterable[list[Piece]], tokenizer: Tokenizer, dtype: str, num_workers: int
) -> Iterator[tuple[list[Piece], dict[str, np.ndarray]]]:
    """Each batch with its ids, in order, encoded by worker threads while the next is read.

    ``encode_batch_fast`` releases the GIL, so while the workers' batches are in Rust, the main
    thread reads, cuts and writes. At most ``num_workers + 1`` batches are in memory.
    """
    with ThreadPoolExecutor(max_workers=num_workers) as workers:
        in_flight: deque[tuple[list[Piece], Future]] = deque()
        for batch in batches:
            in_flight.append((batch, workers.submit(_encode, batch, tokenizer, dtype)))
            if len(in_flight) > num_workers:
                done, future = in_flight.popleft()
                yield done, future.result()
        for done, future in in_flight:
            yield done, future.result()


def _encode(batch: list[Piece], tokenizer: Tokenizer, dtype: str) -> dict[str, np.ndarray]:
    """The ids of each split's pieces, in order, with end-of-text after each document's last."""
    try:
        encoded = tokenizer.encode_batch([piece.text for piece in batch])
    except UserError as error:  # characters the char tokenizer lacks: say where they are
        document = next(piece.document for piece in batch if tokenizer.unknown_chars(piece.text))
        raise UserError(f"{document}: {error}") from None
    parts: dict[str, list[np.ndarray]] = {}
    end_of_text = np.array([] if tokenizer.eot_id is None else [tokenizer.eot_id], dtype=dtype)
    for piece, ids in zip(batch, encoded, strict=True):
        arrays = parts.setdefault(piece.split, [])
        arrays.append(np.array(ids, dtype=dtype))
        if piece.ends_document:
            arrays.append(end_of_text)
    return {split: np.concatenate(arrays) for split, arrays in parts.items()}


def check_output_folder(out: Path, overwrite: bool) -> None:
    """Refuse to replace anything but an earlier data_prep folder, and that only if asked."""
    if not out.exists():
        return
    if not overwrite:
        raise UserError(f"output folder {out} already exists; pass --overwrite to replace it")
    if not out.is_dir() or (not (out / "meta.json").is_file() and any(out.iterdir())):
        raise UserError(
            f"--out {out} exists and is not a data_prep folder (no meta.json); "
            "--overwrite only replaces those: choose another --out"
        )


def describe(meta: dict[str, Any], out: Path) -> str:
    """A one-line summary of a prepared folder, for the terminal."""
    counts = [f"{count:,} {split}" for split, count in meta["tokens"].items()]
    return (
        f"wrote {out}: {meta['tokenizer']} tokenizer with {meta['vocab_size']} tokens, "
        f"{', '.join(counts[:-1])} and {counts[-1]} tokens ({meta['dtype']})"
    )
