"""Text generation: sample a continuation of a prompt one token at a time.

Three layers, each usable on its own:

* :func:`generate` yields the next token of every sample in a batch, step by step. A model with a
  KV cache (GPT) feeds each new token once and reuses the keys and values of the tokens before it;
  any other model (the MLP and CNN baselines, or GPT with ``use_cache=False``) is re-run over the
  last ``block_size`` tokens for every new token.
* :func:`sample_next_tokens` picks the next tokens from the logits: greedy at temperature 0, else
  softmax(logits / temperature) restricted to the ``top_k`` most likely tokens and to the smallest
  set of tokens whose probabilities add up to ``top_p`` (nucleus sampling, Holtzman et al., 2019).
* :func:`generate_text` turns the tokens into text as it becomes final, for streaming, and stops
  each sample at the end-of-text token or a stop string.

The sliding window
------------------
GPT's positions are learned embeddings for positions 0..block_size-1, so once the context holds
``block_size`` tokens a new token cannot be appended to the cache. Recomputing drops the oldest
token and re-runs the model over the last ``block_size`` tokens for every new token. The cached
path instead refills the cache with the last ``block_size // 2`` tokens (one forward pass over
them) and goes on appending, so each refill buys ``block_size // 2`` cheap steps; its context
therefore ranges from half a block to a full block. Both paths see the same tokens, and pick the
same greedy tokens, until the context first overflows; after that their contexts differ, and so
may their tokens.

The compiled step
-----------------
``generate(..., compiled=True)`` runs the cached path's one-token step through ``torch.compile``
(:class:`CompiledCachedContext`). The step then has fixed shapes (a
:class:`gpt.models.gpt.StaticKVCache`: attention over every cache position, the unfilled ones
masked), so it compiles once per model and batch size, and on a GPU the "reduce-overhead" mode
captures it as a CUDA graph replayed for every token: one launch instead of one per kernel, which
is most of a small model's decoding time at small batches. The prompt and each refill of the cache
run eager. Compiling takes seconds to a minute: worth it for long or repeated generation on a GPU.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from gpt.base.errors import UserError
from gpt.data.tokenizer import Tokenizer
from gpt.models.gpt import KVCache
from gpt.models.lm import LanguageModel

# Samples are generated as one batch, whose memory grows with it (the KV cache, the logits).
MAX_NUM_SAMPLES = 1024
REPLACEMENT_CHAR = "\ufffd"  # what decoding shows for the bytes of an incomplete character


@dataclass(frozen=True)
class SamplingSettings:
    """How the next token is chosen from the model's logits."""

    temperature: float = 1.0  # 0: always the most likely token (greedy)
    top_k: int | None = None  # sample among the k most likely tokens only
    top_p: float | None = None  # sample among the most likely tokens holding this much probability

    def __post_init__(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise UserError(
                f"temperature must be 0 or more and finite (got {self.temperature}); use 0 for "
                "greedy decoding"
            )
        if self.top_k is not None and self.top_k < 1:
            raise UserError(
                f"top-k must be 1 or more (got {self.top_k}); leave it unset for no limit"
            )
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UserError(f"top-p must be in (0, 1] (got {self.top_p}); 1 keeps every token")


def sample_next_tokens(
    logits: torch.Tensor, settings: SamplingSettings, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The next token of every row of ``logits`` (B, vocab): a LongTensor (B,)."""
    if settings.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / settings.temperature
    if settings.top_k is not None:
        logits = _keep_top_k(logits, settings.top_k)
    if settings.top_p is not None:
        logits = _keep_top_p(logits, settings.top_p)
    probabilities = logits.softmax(dim=-1)
    return torch.multinomial(probabilities, num_samples=1, generator=generator).squeeze(1)


def _keep_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    kth_largest = logits.topk(min(k, logits.size(-1)), dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def _keep_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the most likely tokens until their probabilities add up to ``p`` (at least one)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probabilities = sorted_logits.softmax(dim=-1)
    mass_before = probabilities.cumsum(dim=-1) - probabilities  # of the tokens ranked above each
    sorted_logits = sorted_logits.masked_fill(mass_before >= p, float("-inf"))
    return logits.scatter(-1, order, sorted_logits)


class RecomputedContext:
    """Runs the whole model over the last ``block_size`` tokens for every new token."""

    def __init__(self, model: LanguageModel, prompt: torch.Tensor):
        self.model = model
        self.tokens = prompt[:, -model.block_size :]
        self.logits = self._last_logits()

    @torch.inference_mode()
    def append(self, next_tokens: torch.Tensor) -> None:
        """Add one token per row and compute the logits for the token after it."""
        self.tokens = torch.cat([self.tokens, next_tokens[:, None]], dim=1)
        self.tokens = self.tokens[:, -self.model.block_size :]
        self.logits = self._last_logits()

    @torch.inference_mode()
    def _last_logits(self) -> torch.Tensor:
        logits, _ = self.model(self.tokens)
        return logits[:, -1]


def decode_step(model: LanguageModel, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """The logits (B, vocab) after feeding one more token per row, ``tokens`` (B, 1), into
    ``cache``."""
    logits, _ = model(tokens, cache=cache)
    return logits[:, -1]


@functools.cache
def compiled_decode_step() -> Callable[[LanguageModel, torch.Tensor, KVCache], torch.Tensor]:
    """:func:`decode_step` compiled, made on first use (importing the compiler takes seconds).
    ``dynamic=False``: one graph of fixed shapes per model and batch size, as CUDA graphs need."""
    return torch.compile(decode_step, mode="reduce-overhead", fullgraph=True, dynamic=False)


class CachedContext:
    """Feeds each new token once through GPT's KV cache; refills it when it is full.

    ``tokens`` are the tokens whose keys and values the cache holds, and the newest token once it
    is appended, before it is fed (see the module docstring for the sliding window).
    """

    def __init__(self, model: LanguageModel, prompt: torch.Tensor):
        self.model = model
        self.tokens = prompt[:, -model.block_size :]
        self.logits = self._feed_into_new_cache()

    @torch.inference_mode()
    def append(self, next_tokens: torch.Tensor) -> None:
        """Add one token per row and compute the logits for the token after it."""
        self.tokens = torch.cat([self.tokens, next_tokens[:, None]], dim=1)
        if self.tokens.size(1) > self.model.block_size:  # the cache is full
            self.tokens = self.tokens[:, -max(1, self.model.block_size // 2) :]
            self.logits = self._feed_into_new_cache()
        else:
            self.logits = self._decode(next_tokens[:, None])

    def _decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return decode_step(self.model, tokens, self.cache)

    def _new_cache(self) -> KVCache:
        return self.model.new_cache(self.tokens.size(0))

    @torch.inference_mode()
    def _feed_into_new_cache(self) -> torch.Tensor:
        self.cache = self._new_cache()
        logits, _ = self.model(self.tokens, cache=self.cache)
        return logits[:, -1]


class CompiledCachedContext(CachedContext):
    """The cached path with its one-token step compiled (see "The compiled step" above).

    One static cache serves the context's whole life, emptied at each refill (positions past its
    length are masked, so what they held does not matter): its tensors keep their addresses, those
    the CUDA graph was recorded with, and the graph updates them in place instead of copying them
    into its own memory at every replay."""

    def __init__(self, model: LanguageModel, prompt: torch.Tensor):
        self.static_cache = model.new_cache(prompt.size(0), static=True)
        for tensor in (self.static_cache.keys, self.static_cache.values, self.static_cache.length):
            torch._dynamo.mark_static_address(tensor, guard=False)  # no recompiling for a new one
        super().__init__(model, prompt)

    def _decode(self, tokens: torch.Tensor) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()  # a new step: the last replay's output is cloned
        return compiled_decode_step()(self.model, tokens, self.cache).clone()

    def _new_cache(self) -> KVCache:
        self.static_cache.clear()
        return self.static_cache


def check_lengths(max_new_tokens: int, num_samples: int) -> None:
    if max_new_tokens < 1:
        raise UserError(f"max-new-tokens must be 1 or more (got {max_new_tokens})")
    if not 1 <= num_samples <= MAX_NUM_SAMPLES:
        raise UserError(
            f"num-samples must be from 1 to {MAX_NUM_SAMPLES} (got {num_samples}): the samples are "
            "generated together in one batch; for more, run again with another --seed"
        )


def check_stop_strings(stop_strings: Sequence[str]) -> None:
    if any(not stop for stop in stop_strings):
        raise UserError("a stop string is empty; give a non-empty one or none")


def generate(
    model: LanguageModel,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    settings: SamplingSettings = SamplingSettings(),
    *,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    compiled: bool = False,
    vocab_size: int | None = None,
) -> Iterator[list[int]]:
    """Yield the next token of each of ``num_samples`` continuations of the prompt, step by step.

    All samples run together as one batch for up to ``max_new_tokens`` steps; stop iterating to
    stop early. A prompt longer than ``model.block_size`` is cropped to its last ``block_size``
    tokens. ``use_cache`` uses the KV cache where the model has one (GPT), ``compiled`` with its
    one-token step compiled (see the module docstring; ignored without a cache). ``vocab_size``
    keeps ids at or above it (padding rows of the output layer) from being sampled. ``generator``
    makes the sampling reproducible; it must live on the model's device. The model is put in eval
    mode.
    """
    check_lengths(max_new_tokens, num_samples)
    if not prompt_ids:
        raise UserError("the prompt is empty; give at least one token to start from")
    model.eval()
    device = next(model.parameters()).device
    prompt = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
    prompt = prompt.expand(num_samples, -1)
    context = _context_kind(model, use_cache, compiled)(model, prompt)
    for step in range(max_new_tokens):
        with torch.inference_mode():
            next_tokens = sample_next_tokens(context.logits[:, :vocab_size], settings, generator)
        yield next_tokens.tolist()
        if step + 1 < max_new_tokens:
            context.append(next_tokens)


def _context_kind(model: LanguageModel, use_cache: bool, compiled: bool) -> type:
    if not use_cache or not hasattr(model, "new_cache"):
        return RecomputedContext
    return CompiledCachedContext if compiled else CachedContext


@dataclass
class Continuation:
    """One sample's new tokens and their text, decoded as the tokens arrive.

    A token can end in the middle of a multi-byte character (byte-level BPE splits characters into
    bytes); decoding then ends in U+FFFD, and that text is held back until the character is whole.
    Each step decodes only the tokens since the text last grew, plus the tokens of the piece before
    for context (the scheme of Hugging Face's text-generation-inference): decoded with and without
    the newest tokens, the difference is the new text. ``text`` is exactly the concatenation of the
    pieces :meth:`add` and :meth:`flush` return.
    """

    tokenizer: Tokenizer
    stop_strings: Sequence[str] = ()
    ids: list[int] = field(default_factory=list)  # every token taken but the end-of-text token
    text: str = ""  # cut right after a stop string, even inside the token that completed it
    finished: bool = False
    _decoded: int = field(default=0, init=False)  # ids[:_decoded] are in text
    _context: int = field(
        default=0, init=False
    )  # ids[_context:_decoded]: decoded again, for context

    def add(self, token: int) -> str:
        """Take the next token; return the text that became final (often '', sometimes several
        characters). The end-of-text token or a stop string finishes the continuation."""
        if token == self.tokenizer.eot_id:
            return self.flush()
        self.ids.append(token)
        known = self.tokenizer.decode(self.ids[self._context : self._decoded])
        extended = self.tokenizer.decode(self.ids[self._context :])
        if extended.endswith(REPLACEMENT_CHAR) or len(extended) <= len(known):
            return ""
        self._context, self._decoded = self._decoded, len(self.ids)
        return self._append(extended[len(known) :])

    def flush(self) -> str:
        """Finish: return the text still held back, even an incomplete character's U+FFFD."""
        self.finished = True
        known = self.tokenizer.decode(self.ids[self._context : self._decoded])
        extended = self.tokenizer.decode(self.ids[self._context :])
        self._decoded = len(self.ids)
        return self._append(extended[len(known) :])

    def _append(self, new_text: str) -> str:
        """Add ``new_text``, cut after the first stop string, and return what was added."""
        search_from = max(0, len(self.text) - max(map(len, self.stop_strings), default=0))
        self.text += new_text
        ends = [
            found + len(stop)
            for stop in self.stop_strings
            if (found := self.text.find(stop, search_from)) >= 0
        ]
        if not ends:
            return new_text
        self.finished = True
        kept = min(ends) - (len(self.text) - len(new_text))
        self.text = self.text[: min(ends)]
        return new_text[:kept]


class TextPiece(NamedTuple):
    """New text of one sample; ``finished`` on the sample's last piece."""

    sample: int
    text: str
    finished: bool
    num_tokens: int  # the tokens this sample has generated so far, a stopping token included


def generate_text(
    model: LanguageModel,
    tokenizer: Tokenizer,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    settings: SamplingSettings = SamplingSettings(),
    *,
    num_samples: int = 1,
    stop_strings: Sequence[str] = (),
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    compiled: bool = False,
) -> Iterator[TextPiece]:
    """Yield the continuations' text as it becomes final, for streaming.

    Each sample stops on its own, at the end-of-text token (not shown), after the first of
    ``stop_strings`` in its continuation (shown), or after ``max_new_tokens`` tokens; the batch
    stops when all have. Finished samples still ride along in the batch until then, unseen.
    Concatenating a sample's pieces gives its whole continuation.
    """
    check_stop_strings(stop_strings)
    continuations = [Continuation(tokenizer, stop_strings) for _ in range(num_samples)]
    tokens = generate(
        model,
        prompt_ids,
        max_new_tokens,
        settings,
        num_samples=num_samples,
        generator=generator,
        use_cache=use_cache,
        compiled=compiled,
        vocab_size=tokenizer.vocab_size,
    )
    for step, next_tokens in enumerate(tokens, start=1):
        for sample, (continuation, token) in enumerate(
            zip(continuations, next_tokens, strict=True)
        ):
            if continuation.finished:
                continue
            text = continuation.add(token)
            if text or continuation.finished:
                yield TextPiece(sample, text, continuation.finished, step)
        if all(continuation.finished for continuation in continuations):
            return
    for sample, continuation in enumerate(continuations):
        if not continuation.finished:
            yield TextPiece(sample, continuation.flush(), True, max_new_tokens)


def encode_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The prompt's token ids; an empty prompt starts from a document boundary.

    That is the end-of-text token for BPE, and for a character vocabulary a newline, the nearest
    thing to a fresh start it has.
    """
    unknown = tokenizer.unknown_chars(prompt)
    if unknown:
        shown = ", ".join(repr(char) for char in unknown[:20])
        raise UserError(
            f"the prompt has {len(unknown)} character(s) the model's char tokenizer does not know: "
            f"{shown}; remove or replace them"
        )
    if prompt:
        return tokenizer.encode(prompt)
    if tokenizer.eot_id is not None:
        return [tokenizer.eot_id]
    if tokenizer.unknown_chars("\n"):
        raise UserError("the prompt is empty and this char vocabulary has no newline to start from")
    return tokenizer.encode("\n")
