"""The held-out splits: which text trains, which validates and which is kept for the final test.

With several documents, each one is placed by a hash of (seed, its index), read as a number ``u``
uniform in [0, 1): ``u < val_fraction`` validates, ``u < val_fraction + test_fraction`` tests, and the
rest trains. So about those fractions of the documents are held out, the same ones on every run,
without knowing in advance how many documents a stream holds, and adding a test split leaves the
validation documents of a seed as they were. Two documents of look-ahead keep every split
non-empty: once no more documents are left than splits still empty, a document that would join a
split already filled goes to the first empty one instead (so a corpus needs at least one document
per split). A corpus of a single document is split inside it: train | val | test, the last
``test_fraction`` of its bytes testing and the ``val_fraction`` before them validating, each part
starting after a line break where there is one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from data_prep.sources import Document, utf8_length

T = TypeVar("T")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Piece:
    """A chunk of text bound for one split; ``ends_document`` asks for end-of-text after it."""

    text: str
    split: str
    document: str
    ends_document: bool


@dataclass(frozen=True)
class Fractions:
    """The shares held out; a split with share 0 is not made at all."""

    val: float
    test: float

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits to write: train, val, and test if it is asked for."""
        return SPLITS if self.test > 0 else SPLITS[:2]


def split_pieces(documents: Iterable[Document], fractions: Fractions, seed: int) -> Iterator[Piece]:
    """Every chunk of every document, in order, each marked with its split."""
    documents_in = dict.fromkeys(fractions.splits, 0)
    horizon = len(fractions.splits) - 1
    for index, (document, following) in enumerate(count_following(documents, horizon)):
        if index == 0 and following == 0:
            yield from _split_inside(document, fractions)
            return
        split = _choose_split(seed, index, fractions)
        empty = [name for name, count in documents_in.items() if count == 0]
        if following < len(empty) and split not in empty:
            split = empty[0]
        documents_in[split] += 1
        for chunk, is_last_chunk in mark_last(document.chunks()):
            yield Piece(chunk, split, document.name, ends_document=is_last_chunk)


def _choose_split(seed: int, index: int, fractions: Fractions) -> str:
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    uniform = int.from_bytes(digest[:8], "big") / 2**64
    if uniform < fractions.val:
        return "val"
    if uniform < fractions.val + fractions.test:
        return "test"
    return "train"


def _split_inside(document: Document, fractions: Fractions) -> Iterator[Piece]:
    """A corpus's only document: train | val | test, the held-out parts from its end.

    Each part ends with an end-of-text token, as if it were a document of its own. A part that
    comes out empty (a tiny document) yields nothing, and data_prep reports the empty split.
    """
    size = document.size
    starts = [("val", size * (1 - fractions.val - fractions.test))]  # in bytes
    if fractions.test > 0:
        starts.append(("test", size * (1 - fractions.test)))
    starts = [(split, min(int(start), size - 1)) for split, start in starts]
    split, seen = "train", 0  # seen: the bytes of the document before this chunk
    for chunk, is_last in mark_last(document.chunks()):
        position = 0  # the characters of this chunk already given out
        while starts and seen + utf8_length(chunk) > starts[0][1]:
            next_split, start = starts.pop(0)
            cut = max(position, _cut_index(chunk, start - seen))
            if cut > position:
                yield Piece(chunk[position:cut], split, document.name, ends_document=True)
            position, split = cut, next_split
        seen += utf8_length(chunk)
        if position < len(chunk):
            yield Piece(chunk[position:], split, document.name, ends_document=is_last)


def _cut_index(chunk: str, byte_offset: int) -> int:
    """The character index after the first line break from ``byte_offset`` on, if one follows."""
    index = len(chunk.encode("utf-8")[:byte_offset].decode("utf-8", errors="ignore"))
    newline = chunk.find("\n", index)
    return newline + 1 if 0 <= newline < len(chunk) - 1 else index


def count_following(items: Iterable[T], horizon: int) -> Iterator[tuple[T, int]]:
    """Each item with how many follow it, counted up to ``horizon`` (so ``horizon`` means "at
    least that many"); it looks ``horizon`` items ahead."""
    iterator = iter(items)
    window: list[T] = []
    for item in iterator:
        window.append(item)
        if len(window) > horizon:
            yield window.pop(0), horizon
    for following, item in reversed(list(enumerate(reversed(window)))):
        yield item, following


def mark_last(items: Iterable[T]) -> Iterator[tuple[T, bool]]:
    """Each item with a flag that is True for the final one (one item of look-ahead)."""
    for item, following in count_following(items, 1):
        yield item, following == 0
