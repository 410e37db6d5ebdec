"""Step-keyed batches from the memory-mapped token streams that data_prep writes.

The trainer reads ``train.bin`` and ``val.bin`` only; ``test.bin`` (in folders made since data_prep
holds out a test split) is read by ``python -m gpt.evaluate`` alone, through :func:`split_tokens`.

Which windows of ``train.bin`` a step trains on is a pure function of (seed, step, position in the
global batch). A global batch has ``batch_size x gradient_accumulation_steps x processes`` positions;
process ``r`` owns a contiguous slice of them and reads only those windows from disk. So the same
global batch trains the same model however it is split across micro-steps and processes, and a
resumed run continues with exactly the batches it would have seen, with no sampler state to save.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gpt.base.errors import UserError
from gpt.base.paths import why_not
from gpt.data.tokenizer import load_tokenizer

SPLITS = ("train", "val")  # what training reads; never the test split
_EVAL_STREAM = 2**31 - 1  # keeps the evaluation windows apart from every training step's


@dataclass(frozen=True)
class BatchSlice:
    """The positions of a global batch that one process handles in one micro-step."""

    global_size: int
    start: int
    size: int

    @classmethod
    def for_micro_step(
        cls, batch_size: int, accumulation: int, num_processes: int, rank: int, micro_step: int
    ) -> BatchSlice:
        global_size = batch_size * accumulation * num_processes
        start = (rank * accumulation + micro_step) * batch_size
        return cls(global_size, start, batch_size)

    @classmethod
    def for_evaluation(
        cls, batch_size: int, eval_iters: int, num_processes: int, rank: int, index: int
    ) -> BatchSlice:
        """The ``index``-th of a process's ``eval_iters`` evaluation batches: an evaluation reads
        ``eval_iters x batch_size x num_processes`` windows of a split, one batch at a time on
        every process, whatever the gradient accumulation."""
        global_size = eval_iters * batch_size * num_processes
        start = (index * num_processes + rank) * batch_size
        return cls(global_size, start, batch_size)


class TokenStream:
    """One split (``train`` or ``val``) as a read-only memory map of token ids.

    A ``fraction`` below 1 keeps only the first that fraction of the file's tokens
    (``data.train_fraction``): every window lies inside them, and the rest is never read.
    """

    def __init__(self, path: Path, dtype: str, block_size: int, fraction: float = 1.0):
        num_tokens, remainder = divmod(path.stat().st_size, np.dtype(dtype).itemsize)
        if remainder:
            raise UserError(
                f"{path} is not a whole number of {dtype} token ids: it was cut short; "
                "run data_prep again"
            )
        used = math.floor(num_tokens * fraction)
        if used <= block_size:
            held = f"{num_tokens} tokens"
            if fraction < 1.0:
                held = f"{used} tokens in the first data.train_fraction={fraction} of its {held}"
            raise UserError(
                f"{path} holds {held}, too few for windows of model.block_size={block_size}; "
                "use more data, a larger fraction or a smaller block_size"
            )
        self.tokens = np.memmap(path, dtype=dtype, mode="r")[:used]
        self.block_size = block_size

    def batch(self, seed: int, key: int, part: BatchSlice) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets for the ``part`` of the global batch keyed by ``key``."""
        starts = self._window_starts(seed, key, part.global_size)[
            part.start : part.start + part.size
        ]
        windows = np.stack([self.tokens[s : s + self.block_size + 1] for s in starts])
        windows = torch.from_numpy(windows.astype(np.int64))
        return windows[:, :-1], windows[:, 1:]

    def every_window(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of the stream cut into consecutive windows from its start, each token
        a target once (the last tokens, too few to fill a window, are left out)."""
        count = (len(self.tokens) - 1) // self.block_size
        tokens = torch.from_numpy(self.tokens[: count * self.block_size + 1].astype(np.int64))
        return tokens[:-1].view(count, -1), tokens[1:].view(count, -1)

    def _window_starts(self, seed: int, key: int, count: int) -> np.ndarray:
        rng = np.random.default_rng([seed, key])
        return rng.integers(0, len(self.tokens) - self.block_size, size=count)


class TokenData:
    """A data_prep folder: its metadata, tokenizer path and the two token streams, the training
    stream cut to its first ``train_fraction``."""

    def __init__(self, directory: str | Path, block_size: int, train_fraction: float = 1.0):
        self.dir = Path(directory)
        self.meta = read_meta(self.dir)
        self.vocab_size: int = self.meta["vocab_size"]
        self.tokenizer_path = self.dir / "tokenizer.json"
        fractions = {"train": train_fraction, "val": 1.0}
        self.splits = {
            split: TokenStream(
                self.dir / f"{split}.bin", self.meta["dtype"], block_size, fractions[split]
            )
            for split in SPLITS
        }

    @property
    def train_tokens(self) -> int:
        """The tokens of train.bin that training reads."""
        return len(self.splits["train"].tokens)

    def train_batch(self, seed: int, step: int, part: BatchSlice):
        return self.splits["train"].batch(seed, step, part)

    def every_train_window(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole training split, as ``train.full_batch`` trains on it every step."""
        return self.splits["train"].every_window()

    def eval_batch(self, split: str, seed: int, part: BatchSlice):
        """The ``part`` of the evaluation windows (:meth:`BatchSlice.for_evaluation`): the same
        windows at every evaluation, and in every run that reads as many of them."""
        return self.splits[split].batch(seed, _EVAL_STREAM, part)


def read_meta(directory: Path) -> dict:
    """``meta.json`` of a data_prep folder, after checking that the folder is complete."""
    if not directory.is_dir():
        raise UserError(
            f"data folder {directory} {why_not(directory, 'folder')}; prepare it with "
            f"`python -m data_prep --input FILE --out {directory}` or fix data.dir"
        )
    missing = [
        name
        for name in ("meta.json", "tokenizer.json", "train.bin", "val.bin")
        if not (directory / name).is_file()
    ]
    if missing:
        raise UserError(
            f"data folder {directory} lacks {', '.join(missing)}; run data_prep again for it"
        )
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    except ValueError:
        meta = None
    problem = _meta_problem(meta)
    if problem:
        raise UserError(f"{directory / 'meta.json'} is damaged ({problem}); run data_prep again")
    vocab_size = load_tokenizer(directory / "tokenizer.json").vocab_size
    if vocab_size != meta["vocab_size"]:
        raise UserError(
            f"{directory / 'tokenizer.json'} has {vocab_size} tokens but meta.json says "
            f"{meta['vocab_size']}: they come from different data_prep runs; run data_prep again"
        )
    return meta


def _meta_problem(meta: object) -> str | None:
    """What is wrong with a parsed meta.json, or None."""
    if not isinstance(meta, dict):
        return "not a JSON object"
    vocab_size, dtype = meta.get("vocab_size"), meta.get("dtype")
    if not isinstance(vocab_size, int) or vocab_size < 1:
        return f"vocab_size {vocab_size!r} is not a positive whole number"
    if dtype not in ("uint16", "uint32"):
        return f"dtype {dtype!r} is neither uint16 nor uint32"
    return None


def split_tokens(directory: Path, split: str, meta: dict) -> np.ndarray:
    """Every token id of one split (``train``, ``val`` or ``test``) of a data_prep folder."""
    path = directory / f"{split}.bin"
    if not path.is_file() and split == "test":
        raise UserError(
            f"data folder {directory} has no test split (it was prepared before data_prep held "
            "one out, or with --test-fraction 0); use --split val, or prepare the data again "
            "with `python -m data_prep ... --test-fraction 0.1`"
        )
    if not path.is_file():
        raise UserError(f"data folder {directory} lacks {path.name}; run data_prep again for it")
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=meta["dtype"])
    return np.memmap(path, dtype=meta["dtype"], mode="r")
