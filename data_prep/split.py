"""The held-out split: which text trains and which validates.

With several documents, each one goes to ``val`` when a hash of (seed, its index) falls below
``val_fraction``, so about that fraction of the documents is held out, the same ones on every run,
without knowing in advance how many documents a stream holds. One document of look-ahead keeps both
splits non-empty: if every document before the last went to the same split, the last one goes to the
other. A corpus of a single document is split inside it: its final ``val_fraction`` of bytes, from
the next line break on, validates.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from data_prep.sources import Document, utf8_length

T = TypeVar("T")
SPLITS = ("train", "val")


@dataclass(frozen=True)
class Piece:
    """A chunk of text bound for one split; ``ends_document`` asks for end-of-text after it."""

    text: str
    split: str
    document: str
    ends_document: bool


def split_pieces(documents: Iterable[Document], val_fraction: float, seed: int) -> Iterator[Piece]:
    """Every chunk of every document, in order, each marked with its split."""
    documents_in = {"train": 0, "val": 0}
    for index, (document, is_last) in enumerate(mark_last(documents)):
        if index == 0 and is_last:
            yield from _split_inside(document, val_fraction)
            return
        split = _choose_split(seed, index, val_fraction)
        if is_last and documents_in[split] == index:
            split = "train" if split == "val" else "val"
        documents_in[split] += 1
        for chunk, is_last_chunk in mark_last(document.chunks()):
            yield Piece(chunk, split, document.name, ends_document=is_last_chunk)


def _choose_split(seed: int, index: int, val_fraction: float) -> str:
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    uniform = int.from_bytes(digest[:8], "big") / 2**64
    return "val" if uniform < val_fraction else "train"


def _split_inside(document: Document, val_fraction: float) -> Iterator[Piece]:
    """A corpus's only document: its last ``val_fraction`` validates, the text before it trains.

    Each part ends with an end-of-text token, as if it were a document of its own.
    """
    boundary = min(int(document.size * (1 - val_fraction)), document.size - 1)  # in bytes
    seen = 0
    split = "train"
    for chunk, is_last in mark_last(document.chunks()):
        size = utf8_length(chunk)
        if split == "train" and seen + size > boundary:
            cut = _cut_index(chunk, boundary - seen)
            yield Piece(chunk[:cut], "train", document.name, ends_document=True)
            chunk, split = chunk[cut:], "val"
        seen += size
        yield Piece(chunk, split, document.name, ends_document=is_last)


def _cut_index(chunk: str, byte_offset: int) -> int:
    """The character index after the first line break from ``byte_offset`` on, if one follows."""
    index = len(chunk.encode("utf-8")[:byte_offset].decode("utf-8", errors="ignore"))
    newline = chunk.find("\n", index)
    return newline + 1 if 0 <= newline < len(chunk) - 1 else index


def mark_last(items: Iterable[T]) -> Iterator[tuple[T, bool]]:
    """Each item with a flag that is True for the final one (one item of look-ahead)."""
    iterator = iter(items)
    try:
        current = next(iterator)
    except StopIteration:
        return
    for following in iterator:
        yield current, False
        current = following
    yield current, True
