"""Tokenizers: character-level or byte-level BPE, both one HF ``tokenizers`` file, ``tokenizer.json``.

A character tokenizer is a ``WordLevel`` model whose vocabulary is the corpus's characters, sorted, with
a pre-tokenizer that splits text into single code points; a corpus of several documents adds
``<|endoftext|>`` after them, the separator between documents. A BPE tokenizer is GPT-2-style byte-level
BPE, so any Unicode text round-trips exactly, with ``<|endoftext|>`` between documents. Both are saved
and loaded the same way, and :func:`load_tokenizer` is the one loader that data_prep, the trainer and
the sampler share.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, trainers

from gpt.base.errors import UserError
from gpt.base.paths import why_not

END_OF_TEXT = "<|endoftext|>"
MIN_BPE_VOCAB = 256 + 1  # every byte, plus the end-of-text token
MAX_BPE_VOCAB = 2**32 - 1  # token ids are stored as uint32 at most


class Tokenizer:
    """A thin, typed view of an HF tokenizer: encode, decode, and what the rest of the code asks."""

    def __init__(self, hf: tokenizers.Tokenizer):
        self.hf = hf
        self.kind = "char" if isinstance(hf.model, models.WordLevel) else "bpe"
        self.vocab_size = hf.get_vocab_size()
        self.eot_id: int | None = hf.token_to_id(END_OF_TEXT)
        self._vocab = hf.get_vocab() if self.kind == "char" else None

    def encode(self, text: str) -> list[int]:
        self._check_known(text)
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts at once; ``tokenizers`` spreads the work over all cores."""
        for text in texts:
            self._check_known(text)
        return [e.ids for e in self.hf.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def unknown_chars(self, text: str) -> list[str]:
        """Characters a char tokenizer cannot encode (always empty for byte-level BPE)."""
        if self._vocab is None:
            return []
        if self.eot_id is not None:  # the end-of-text token is known as a whole
            text = text.replace(END_OF_TEXT, "")
        return sorted(set(text) - self._vocab.keys())

    def save(self, path: str | Path) -> None:
        """Write ``tokenizer.json`` (through Python's files, so a failed write is an OSError)."""
        Path(path).write_text(self.hf.to_str(pretty=True), encoding="utf-8")

    def _check_known(self, text: str) -> None:
        unknown = self.unknown_chars(text)
        if unknown:
            shown = ", ".join(repr(c) for c in unknown[:20])
            raise UserError(
                f"the text has {len(unknown)} character(s) the char tokenizer does not know: {shown}; "
                "remove them or prepare the data with a tokenizer that covers them"
            )


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a ``tokenizer.json`` written by data_prep (or any HF tokenizer file)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"tokenizer file {path} {why_not(path, 'file')}; run data_prep to create it"
        )
    try:
        return Tokenizer(tokenizers.Tokenizer.from_file(str(path)))
    except Exception as error:  # tokenizers raises plain Exception on malformed files
        raise UserError(
            f"{path} is not a valid tokenizer.json ({error}); use the one data_prep wrote"
        ) from None


def train_char_tokenizer(texts: Iterable[str], end_of_text: bool = False) -> Tokenizer:
    """A character vocabulary: every character of ``texts``, sorted by code point.

    ``end_of_text`` adds ``<|endoftext|>`` as the last id, a special token that separates
    documents (and that sampling stops at); a corpus of one document needs none.
    """
    chars: set[str] = set()
    for text in texts:
        chars.update(text)
    if not chars:
        raise UserError("the corpus is empty; give it some text")
    vocab = {char: index for index, char in enumerate(sorted(chars))}
    if end_of_text:
        vocab[END_OF_TEXT] = len(vocab)
    hf = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token=None))
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    hf.decoder = decoders.Fuse()
    if end_of_text:  # matched whole, before the text is split into characters
        hf.add_special_tokens([AddedToken(END_OF_TEXT, special=True)])
    return Tokenizer(hf)


def train_bpe_tokenizer(texts: Iterator[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE trained on ``texts`` with ``vocab_size`` tokens, end-of-text included."""
    if not MIN_BPE_VOCAB <= vocab_size <= MAX_BPE_VOCAB:
        raise UserError(
            f"--vocab-size {vocab_size} is out of range for byte-level BPE; "
            f"use {MIN_BPE_VOCAB} (the 256 bytes plus {END_OF_TEXT}) or more"
        )
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(hf)


def tokenizer_fingerprint(path: Path) -> str:
    """The SHA-256 of ``path``'s JSON in canonical form (keys sorted, no insignificant spaces):
    two tokenizer files mean the same ids as the same text exactly when their fingerprints are
    equal, however they were laid out. The one rule by which training, resuming, evaluation,
    export and every reader of weights tell whether two tokenizers are the same."""
    try:
        content = json.loads(Path(path).read_bytes())
    except ValueError:
        raise UserError(
            f"{path} is not valid JSON; use the tokenizer.json data_prep wrote"
        ) from None
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
