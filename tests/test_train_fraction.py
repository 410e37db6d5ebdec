"""data.train_fraction: training reads only the first part of train.bin; val and test stay whole."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from gpt.base.errors import UserError
from gpt.data.tokens import BatchSlice, TokenData
from gpt.training.console import startup_block

from .test_run_output import facts, rows

TRAIN_TOKENS = 10_000
INSIDE = 2_000  # the first fifth
MARK = 64  # a token that only the part past the first fifth holds


@pytest.fixture
def marked_data(shakespeare_char, tmp_path) -> Path:
    """A copy of the char data whose train.bin is 0..63 repeated for its first fifth, then MARK."""
    folder = tmp_path / "marked"
    shutil.copytree(shakespeare_char, folder)
    tokens = np.full(TRAIN_TOKENS, MARK, dtype=np.uint16)
    tokens[:INSIDE] = np.arange(INSIDE) % MARK
    tokens.tofile(folder / "train.bin")
    return folder


def tokens_trained_on(data: TokenData, steps: int = 200) -> np.ndarray:
    windows = [data.train_batch(1337, step, BatchSlice(64, 0, 64)) for step in range(steps)]
    return np.concatenate([np.concatenate([x.numpy(), y.numpy()]) for x, y in windows])


def test_windows_never_reach_past_the_fraction(marked_data):
    limited = TokenData(marked_data, block_size=32, train_fraction=0.2)
    assert limited.train_tokens == INSIDE
    seen = tokens_trained_on(limited)
    assert MARK not in seen
    assert set(np.unique(seen)) == set(range(MARK))  # the whole first fifth is used
    assert MARK in tokens_trained_on(TokenData(marked_data, block_size=32))  # the test can fail


def test_validation_stays_whole(marked_data):
    limited = TokenData(marked_data, block_size=32, train_fraction=0.2)
    whole = TokenData(marked_data, block_size=32)
    assert len(limited.splits["val"].tokens) == len(whole.splits["val"].tokens)
    part = BatchSlice(8, 0, 8)
    assert np.array_equal(limited.eval_batch("val", 1, part)[0], whole.eval_batch("val", 1, part)[0])  # fmt: skip


def test_a_fraction_too_small_for_one_window_names_the_key(marked_data):
    with pytest.raises(UserError, match=r"100 tokens in the first data.train_fraction=0.01"):
        TokenData(marked_data, block_size=100, train_fraction=0.01)


def test_the_startup_block_says_how_many_train_tokens_are_read():
    block = startup_block(
        facts(
            data_tokens={"train": 10_000, "val": 500, "test": 500},
            train_fraction=0.2,
            train_tokens=2_000,
        )
    )
    assert rows(block)["data"] == (
        "data/shakespeare_char: 2,000 of 10,000 train (data.train_fraction=0.2), 500 val, "
        "500 test tokens"
    )
