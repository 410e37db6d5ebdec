"""Where the text comes from: files, folders and globs, or a Hugging Face dataset.

A corpus is a sequence of *documents* (a file, or a dataset row), and a document is read as a stream
of *chunks* of about ``CHUNK_CHARS`` characters, so that a file larger than memory never has to be
held whole. Chunks end at a *safe cut*: a line break with non-space text on both sides. There the
byte-level BPE pre-tokenizer (GPT-2's regex) always ends a pre-token, so encoding the chunks one by
one gives exactly the tokens that encoding the whole document would; for the char tokenizer every
cut is safe. Text without such a line break for ``4 * CHUNK_CHARS`` characters is cut anyway: it
still round-trips exactly, only the BPE tokens at that cut may differ.
"""

from __future__ import annotations

import codecs
import fnmatch
import glob
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from gpt.base.errors import UserError, one_line
from gpt.base.paths import why_not

CHUNK_CHARS = 1 << 16  # a chunk: about 64 kB of text
READ_BYTES = 1 << 16  # how much of a file is read at a time
_SAFE_CUT = re.compile(r"\S\n(?=\S)")  # a chunk may end just after this line break
_GLOB_CHARACTERS = "*?["
BINARY_PROBE_BYTES = 8192  # a file with a NUL byte in its first 8 KB is binary, as git decides


def utf8_length(text: str) -> int:
    return len(text.encode("utf-8"))


def cut_into_chunks(pieces: Iterable[str], size: int = CHUNK_CHARS) -> Iterator[str]:
    """Re-cut a stream of text pieces into chunks of about ``size`` characters, at safe cuts."""
    buffer = ""
    for piece in pieces:
        buffer += piece
        while (end := _chunk_end(buffer, size)) is not None:
            yield buffer[:end]
            buffer = buffer[end:]
    if buffer:
        yield buffer


def _chunk_end(buffer: str, size: int) -> int | None:
    """Where the next chunk of ``buffer`` ends, or None to wait for more text.

    The last safe cut in the second half of the first ``size`` characters, else the first one after
    them, else (once ``buffer`` holds ``4 * size`` characters without one) simply ``size``.
    """
    if len(buffer) <= size:
        return None
    newline = buffer.rfind("\n", size // 2, size)
    while newline != -1:
        if not buffer[newline - 1].isspace() and not buffer[newline + 1].isspace():
            return newline + 1
        newline = buffer.rfind("\n", size // 2, newline)
    match = _SAFE_CUT.search(buffer, size)
    if match is not None:
        return match.end()
    return size if len(buffer) >= 4 * size else None


@dataclass(frozen=True)
class FileDocument:
    """A UTF-8 text file, read in blocks, so its size is not limited by memory."""

    path: Path
    size: int  # in bytes

    @property
    def name(self) -> str:
        return str(self.path)

    def chunks(self) -> Iterator[str]:
        return cut_into_chunks(self._decoded_blocks())

    def _decoded_blocks(self) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")()
        offset = 0  # of the block about to be read
        with open(self.path, "rb") as file:
            while block := file.read(READ_BYTES):
                yield self._decode(decoder, block, offset, final=False)
                offset += len(block)
            yield self._decode(decoder, b"", offset, final=True)

    def _decode(
        self, decoder: codecs.IncrementalDecoder, block: bytes, offset: int, final: bool
    ) -> str:
        held_back = len(decoder.getstate()[0])  # the start of a character cut by the last block
        try:
            return decoder.decode(block, final)
        except UnicodeDecodeError as error:
            position = offset - held_back + error.start
            raise UserError(
                f"{self.path} is not UTF-8 text: byte 0x{error.object[error.start]:02x} at byte "
                f"offset {position} ({error.reason}); convert the file to UTF-8 or leave it out"
            ) from None


@dataclass(frozen=True)
class TextDocument:
    """A text that is already in memory: one row of a dataset."""

    name: str
    text: str

    @cached_property
    def size(self) -> int:  # in bytes, like FileDocument's
        return utf8_length(self.text)

    def chunks(self) -> Iterator[str]:
        text = self.text
        return cut_into_chunks(text[i : i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS))


Document = FileDocument | TextDocument


class FileCorpus:
    """The files named by ``--input``: one document each, in order, empty files skipped.

    ``skipped`` holds the files that folders and globs yielded but that are not read, and the
    folders left out whole, by reason (see :func:`find_input_files`).
    """

    def __init__(self, inputs: list[str], exclude: Sequence[str] = ()):
        self.paths, self.skipped = find_input_files(inputs, exclude)
        self.sources: list[Any] = [str(path) for path in self.paths]
        self.files = [FileDocument(path, path.stat().st_size) for path in self.paths]
        self.total_bytes: int | None = sum(file.size for file in self.files)

    def documents(self) -> Iterator[Document]:
        return (file for file in self.files if file.size > 0)

    def skipped_note(self) -> str | None:
        """One line saying how many files and folders were left out and why, or None."""
        if not self.skipped:
            return None
        reasons = ", ".join(
            f"{len(paths)} {SKIP_REASONS[reason]} (e.g. {paths[0]})"
            for reason, paths in self.skipped.items()
        )
        skipped = [path for paths in self.skipped.values() for path in paths]
        folders = sum(path.is_dir() for path in skipped)
        return (
            f"note: skipped {len(skipped) - folders} file(s) and {folders} whole folder(s) that "
            f"are not text by design: {reasons}; --exclude GLOB leaves out more, and a file named "
            "on its own is always read"
        )


SKIP_REASONS = {
    "hidden": "hidden, such as .git",
    "pycache": "__pycache__",
    "excluded": "matching --exclude",
    "binary": f"binary (a NUL byte in the first {BINARY_PROBE_BYTES // 1024} KB)",
}


def find_input_files(
    inputs: list[str], exclude: Sequence[str] = ()
) -> tuple[list[Path], dict[str, list[Path]]]:
    """Files, folders and globs, in order, each once; and the files left out, by reason.

    A file named on its own is read whatever it holds (and must be UTF-8 text). Of the files that
    a folder or a glob yields, these are left out: hidden files and hidden folders (like .git),
    ``__pycache__``, files and folders matching an ``exclude`` pattern, and binary files, those
    with a NUL byte in their first 8 KB (the test git uses; text almost never holds one). A folder
    left out is not walked: it is listed among the skipped as one entry.
    """
    found: dict[Path, Path] = {}  # resolved path -> path as the user wrote it
    skipped: dict[str, list[Path]] = {}
    for entry in inputs:
        for path, reason in _expand_input(entry, exclude):
            if reason is None:
                found.setdefault(path.resolve(), path)
            else:
                skipped.setdefault(reason, []).append(path)
    return list(found.values()), skipped


def _expand_input(entry: str, exclude: Sequence[str]) -> list[tuple[Path, str | None]]:
    """The files ``entry`` names, each with the reason it is skipped (None: read it)."""
    path = Path(entry)
    if path.is_file():
        return [(path, None)]
    if path.is_dir():
        files = _files_below(path, exclude)
        if not any(reason is None for _, reason in files):
            raise UserError(
                f"--input folder {entry} holds no text files"
                + (f" ({len(files)} skipped: hidden, binary or excluded)" if files else "")
                + "; put text files in it"
            )
        return files
    if any(character in entry for character in _GLOB_CHARACTERS):
        files = []
        for match in map(Path, sorted(glob.glob(entry, recursive=True))):
            if match.is_dir():
                files += _files_below(match, exclude)
            else:  # glob itself leaves out hidden names unless the pattern spells them
                files.append((match, _skip_reason(match, (), exclude)))
        if not any(reason is None for _, reason in files):
            raise UserError(f"--input pattern {entry!r} matches no text files; check the pattern")
        return files
    raise UserError(f"--input {entry} {why_not(Path(entry), 'file')}; check the path")


def _files_below(folder: Path, exclude: Sequence[str]) -> list[tuple[Path, str | None]]:
    """Every file below ``folder``, sorted, with the reason it is skipped (None: read it).

    A folder whose files would all be skipped (hidden, ``__pycache__``, or named by an
    ``exclude`` pattern without a slash) is one entry, with its reason, and is never walked: a
    virtual environment or a ``.git`` folder can hold tens of thousands of files.
    """
    found: list[tuple[Path, str | None]] = []
    for root, folders, names in os.walk(folder):
        here = Path(root)
        kept = []
        for name in folders:
            reason = _folder_skip_reason(name, exclude)
            if reason is None:
                kept.append(name)
            else:
                found.append((here / name, reason))
        folders[:] = kept  # os.walk descends into these only
        for name in names:
            path = here / name
            if path.is_file():  # not a broken link
                found.append((path, _skip_reason(path, path.relative_to(folder).parts, exclude)))
    return sorted(found, key=lambda entry: entry[0])


def _folder_skip_reason(name: str, exclude: Sequence[str]) -> str | None:
    """Why every file below a folder called ``name`` would be skipped, or None."""
    if name.startswith("."):
        return "hidden"
    if name == "__pycache__":
        return "pycache"
    if any("/" not in pattern and fnmatch.fnmatch(name, pattern) for pattern in exclude):
        return "excluded"
    return None


def _skip_reason(path: Path, parts: tuple[str, ...], exclude: Sequence[str]) -> str | None:
    """Why a file found in a folder or by a glob is not read, or None. ``parts`` is its path below
    the folder searched: hidden names count there only, so a corpus may live in a dot-folder."""
    if any(part.startswith(".") for part in parts):
        return "hidden"
    if "__pycache__" in path.parts[:-1]:
        return "pycache"
    if _excluded(path, exclude):
        return "excluded"
    with open(path, "rb") as file:
        if b"\0" in file.read(BINARY_PROBE_BYTES):
            return "binary"
    return None


def _excluded(path: Path, patterns: Sequence[str]) -> bool:
    """Whether ``path`` matches a pattern: from the right, as ``*.log`` or ``docs/*.md`` do, and
    a pattern without a slash also against every folder on the path (``build``)."""
    return any(
        path.match(pattern)
        or ("/" not in pattern and any(fnmatch.fnmatch(part, pattern) for part in path.parts[:-1]))
        for pattern in patterns
    )


class DatasetCorpus:
    """A Hugging Face dataset (from the Hub, or a local builder such as json or parquet).

    Every row's ``text_column`` is one document; empty and null values are skipped, but counted:
    a document is named by its row's 0-based index in the source, in the order the files are read.
    """

    def __init__(
        self,
        name: str,
        config: str | None,
        split: str,
        data_files: list[str] | None,
        text_column: str,
        streaming: bool,
    ):
        self.name = f"{name} ({', '.join(data_files)})" if data_files else name
        self.text_column = text_column
        self.dataset = _load_dataset(name, config, split, data_files, streaming)
        _check_column(self.dataset, name, text_column)
        self.dataset = self.dataset.select_columns([text_column])
        self.sources: list[Any] = [
            {"hf_dataset": name, "config": config, "split": split, "data_files": data_files}
        ]
        self.total_bytes: int | None = None

    def documents(self) -> Iterator[Document]:
        row = 0
        for batch in self.dataset.iter(batch_size=1000):
            for text in batch[self.text_column]:
                if text is not None and not isinstance(text, str):
                    raise UserError(
                        f"{self.name} row {row} (0-based): column {self.text_column!r} holds "
                        f"{type(text).__name__} values, not text; choose a text column with "
                        "--text-column"
                    )
                if text:
                    yield TextDocument(f"{self.name} row {row} (0-based)", text)
                row += 1


def _load_dataset(
    name: str, config: str | None, split: str, data_files: list[str] | None, streaming: bool
) -> Any:
    import datasets  # slow to import; only needed here

    if not sys.stderr.isatty():  # progress bars only on a terminal, as data_prep's own
        datasets.disable_progress_bars()
    for pattern in data_files or []:
        if not glob.glob(pattern, recursive=True):
            raise UserError(f"--hf-data-files {pattern} does not exist; check the path")
    try:
        return datasets.load_dataset(
            name, config, split=split, data_files=data_files, streaming=streaming
        )
    except ConnectionError as error:
        raise UserError(
            f"dataset {name!r} is not in the local cache and the Hub cannot be reached "
            f"({one_line(error)}); download it once while online (with HF_DATASETS_OFFLINE=1 the "
            "cache is used without asking the Hub), or give local files with --hf-data-files"
        ) from None
    except (FileNotFoundError, ValueError) as error:  # unknown dataset, config, split or format
        raise UserError(f"cannot load dataset {name!r}: {one_line(error)}") from None


def _check_column(dataset: Any, name: str, text_column: str) -> None:
    columns = dataset.column_names
    if columns is None:  # a stream whose features are unknown until the first row is read
        columns = list(next(iter(dataset), {}).keys())
    if text_column not in columns:
        raise UserError(
            f"dataset {name!r} has no column {text_column!r}; its columns are "
            f"{', '.join(columns) or 'none'}: choose one with --text-column"
        )
