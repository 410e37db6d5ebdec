"""The generation library: sampling, the KV cache and its sliding window, streaming text, stops."""

from itertools import pairwise
from pathlib import Path

import pytest
import torch
from torch import nn

from gpt.base.config import ModelConfig
from gpt.base.errors import UserError
from gpt.data.tokenizer import Tokenizer, train_bpe_tokenizer, train_char_tokenizer
from gpt.models.generate import (
    CachedContext,
    Continuation,
    SamplingSettings,
    encode_prompt,
    generate,
    generate_text,
    sample_next_tokens,
)
from gpt.models.gpt import build_model
from gpt.models.lm import LanguageModel

CORPUS = Path(__file__).resolve().parents[1] / "data" / "tinyshakespeare.txt"
BLOCK = 16
GREEDY = SamplingSettings(temperature=0)
# Text with multi-byte characters of two, three and four bytes, for the BPE tokenizer.
UNICODE_TEXT = "Crème brûlée, s'il vous plaît. 日本語のテキスト。 Ünïcödé 🙂🎭 façade naïve. "


pytestmark = pytest.mark.usefixtures("one_thread")


def shakespeare(chars: int = 20_000) -> str:
    return CORPUS.read_text(encoding="utf-8")[:chars]


def char_tokenizer(end_of_text: bool = False) -> Tokenizer:
    return train_char_tokenizer([shakespeare()], end_of_text)


def bpe_tokenizer() -> Tokenizer:
    return train_bpe_tokenizer(iter([shakespeare(5_000), UNICODE_TEXT * 20]), vocab_size=400)


# The options of the Llama / Qwen3 design that change what the KV cache holds or how positions enter.
MODERN = dict(
    n_head=4, n_kv_head=2, rope=True, norm="rms", activation="swiglu", qk_norm=True, bias=False
)


def tiny_model(vocab_size: int, arch: str = "gpt", seed: int = 0, **options) -> LanguageModel:
    torch.manual_seed(seed)
    settings = dict(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK, context=4)
    config = ModelConfig(arch=arch, vocab_size=vocab_size, **{**settings, **options})
    return build_model(config)


def generated(*args, **kwargs) -> list[list[int]]:
    """Run :func:`generate`; return each sample's tokens."""
    steps = list(generate(*args, **kwargs))
    return [list(sample) for sample in zip(*steps, strict=True)]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class CoinModel(nn.Module):
    """Whatever the context, the next token is ``heads`` or ``tails`` with equal probability."""

    block_size = BLOCK

    def __init__(self, vocab_size: int, heads: int, tails: int):
        super().__init__()
        logits = torch.full((vocab_size,), float("-inf"))
        logits[[heads, tails]] = 0.0
        self.logits = nn.Parameter(logits)

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.logits.expand(*idx.shape, -1), None


# --- generate: the KV cache, the window, reproducibility ---


@pytest.mark.parametrize("options", [{}, MODERN], ids=["textbook", "modern"])
def test_greedy_tokens_are_the_same_with_and_without_the_kv_cache(options):
    model = tiny_model(65, **options)
    prompt = [5, 17, 3, 40, 22]
    # The last token is chosen from a full block of context: the longest run both paths share.
    length = BLOCK + 1 - len(prompt)

    cached = generated(model, prompt, length, GREEDY, num_samples=2, use_cache=True)
    recomputed = generated(model, prompt, length, GREEDY, num_samples=2, use_cache=False)

    assert cached == recomputed
    assert len(cached[0]) == length
    assert len(set(cached[0])) > 1  # not a degenerate repetition that any bug would also produce


def test_seeded_samples_are_the_same_with_and_without_the_kv_cache_for_the_modern_model():
    model = tiny_model(65, **MODERN)
    prompt, length = [5, 17, 3], BLOCK - 3
    cached = generated(model, prompt, length, num_samples=2, generator=seeded(3), use_cache=True)
    recomputed = generated(
        model, prompt, length, num_samples=2, generator=seeded(3), use_cache=False
    )
    assert cached == recomputed


@pytest.mark.slow  # compiling each model's step on the CPU takes 10-20 s, cached after
@pytest.mark.parametrize("options", [{}, MODERN], ids=["textbook", "modern"])
def test_the_compiled_step_samples_the_tokens_of_the_eager_one_past_block_size(options):
    """``compiled=True``: the one-token step compiled with a static cache (on the CPU, inductor
    without CUDA graphs), through several refills of the window, and once more in a new call."""
    model = tiny_model(65, **options)
    prompt, length = [5, 17, 3, 40, 22], 3 * BLOCK

    def sampled(compiled: bool) -> list[list[int]]:
        return generated(
            model, prompt, length, num_samples=2, generator=seeded(3), compiled=compiled
        )

    eager = sampled(compiled=False)
    assert sampled(compiled=True) == eager
    assert sampled(compiled=True) == eager
    assert len(set(eager[0])) > 1


@pytest.mark.parametrize("options", [{}, MODERN], ids=["textbook", "modern"])
def test_the_cache_holds_the_last_tokens_and_gives_their_logits_past_block_size(options):
    """After every refill too: with RoPE the refilled tokens are rotated from position 0 again."""
    model = tiny_model(65, **options).eval()
    tokens = torch.randint(65, (2, 3 * BLOCK), generator=seeded(0))
    context = CachedContext(model, tokens[:, :3])
    windows = []
    for end in range(4, tokens.size(1) + 1):
        context.append(tokens[:, end - 1])
        window = context.tokens.size(1)
        windows.append(window)
        assert min(end, BLOCK // 2) <= window <= BLOCK
        assert torch.equal(context.tokens, tokens[:, end - window : end])
        with torch.inference_mode():
            expected = model(context.tokens)[0][:, -1]
        torch.testing.assert_close(context.logits, expected, rtol=1e-4, atol=1e-5)
    slides = sum(after < before for before, after in pairwise(windows))
    assert slides >= 2


@pytest.mark.parametrize(
    ("arch", "use_cache"), [("gpt", True), ("gpt", False), ("mlp", True), ("cnn", True)]
)
def test_generation_goes_on_past_block_size(arch, use_cache):
    model = tiny_model(65, arch)
    samples = generated(
        model, [1, 2, 3], 3 * BLOCK, num_samples=2, generator=seeded(0), use_cache=use_cache
    )
    assert [len(sample) for sample in samples] == [3 * BLOCK, 3 * BLOCK]
    assert all(0 <= token < 65 for sample in samples for token in sample)


def test_a_prompt_longer_than_the_context_is_cropped_to_its_end():
    model = tiny_model(65)
    prompt = list(range(40))
    assert generated(model, prompt, 5, GREEDY) == generated(model, prompt[-BLOCK:], 5, GREEDY)


def test_the_same_seed_gives_the_same_tokens_and_another_seed_others():
    model = tiny_model(65)
    settings = SamplingSettings(temperature=1.0, top_p=0.95)
    first = generated(model, [1], 30, settings, num_samples=3, generator=seeded(7))
    again = generated(model, [1], 30, settings, num_samples=3, generator=seeded(7))
    other = generated(model, [1], 30, settings, num_samples=3, generator=seeded(8))
    assert first == again
    assert first != other
    assert first[0] != first[1]  # the samples of a batch differ from each other


def test_top_k_1_is_greedy():
    model = tiny_model(65)
    top_1 = SamplingSettings(temperature=1.5, top_k=1)
    sampled = generated(model, [1, 2], 30, top_1, num_samples=2, generator=seeded(0))
    assert sampled == generated(model, [1, 2], 30, GREEDY, num_samples=2)


def test_padding_ids_beyond_the_vocabulary_are_never_sampled():
    model = tiny_model(80)
    samples = generated(model, [1], 200, num_samples=4, generator=seeded(0), vocab_size=65)
    assert max(max(sample) for sample in samples) < 65


# --- sample_next_tokens: temperature, top-k, top-p ---


def sampled_tokens(probabilities: list[float], settings: SamplingSettings) -> set[int]:
    logits = torch.tensor([probabilities]).log().expand(4000, -1)
    return set(sample_next_tokens(logits, settings, seeded(0)).tolist())


def test_top_k_keeps_the_k_most_likely_tokens():
    probabilities = [0.05, 0.5, 0.15, 0.3]
    assert sampled_tokens(probabilities, SamplingSettings(top_k=2)) == {1, 3}
    assert sampled_tokens(probabilities, SamplingSettings(top_k=3)) == {1, 2, 3}
    assert sampled_tokens(probabilities, SamplingSettings(top_k=10)) == {0, 1, 2, 3}


def test_top_p_keeps_the_fewest_tokens_that_hold_p():
    probabilities = [0.05, 0.5, 0.15, 0.3]
    assert sampled_tokens(probabilities, SamplingSettings(top_p=0.4)) == {1}
    assert sampled_tokens(probabilities, SamplingSettings(top_p=0.75)) == {1, 3}
    assert sampled_tokens(probabilities, SamplingSettings(top_p=0.9)) == {1, 2, 3}
    assert sampled_tokens(probabilities, SamplingSettings(top_p=1.0)) == {0, 1, 2, 3}


def test_temperature_0_picks_the_most_likely_token():
    logits = torch.tensor([[0.1, 2.0, 1.9], [3.0, -1.0, 0.0]])
    assert sample_next_tokens(logits, GREEDY).tolist() == [1, 0]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(temperature=-0.1), "temperature must be 0 or more"),
        (dict(temperature=float("nan")), r"temperature must be 0 or more and finite \(got nan\)"),
        (dict(temperature=float("inf")), r"temperature must be 0 or more and finite \(got inf\)"),
        (dict(top_k=0), "top-k must be 1 or more"),
        (dict(top_p=0.0), r"top-p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top-p must be in \(0, 1\]"),
    ],
)
def test_bad_settings_are_user_errors(settings, message):
    with pytest.raises(UserError, match=message):
        SamplingSettings(**settings)


def test_bad_lengths_are_user_errors():
    model = tiny_model(65)
    with pytest.raises(UserError, match="max-new-tokens must be 1 or more"):
        next(generate(model, [1], 0))
    with pytest.raises(UserError, match="num-samples must be from 1 to 1024"):
        next(generate(model, [1], 5, num_samples=0))
    with pytest.raises(UserError, match=r"num-samples must be from 1 to 1024 \(got 1025\)"):
        next(generate(model, [1], 5, num_samples=1025))


# --- Continuation: incremental decoding and stop strings ---


def test_a_multi_byte_character_is_held_back_until_it_is_whole():
    tokenizer = train_bpe_tokenizer(iter(["plain ascii text " * 50]), vocab_size=300)
    ids = tokenizer.encode("a日🙂b")
    assert len(ids) == 1 + 3 + 4 + 1  # the tokenizer never saw these characters: one byte each
    continuation = Continuation(tokenizer)
    pieces = [continuation.add(token) for token in ids]
    assert pieces == ["a", "", "", "日", "", "", "", "🙂", "b"]
    assert continuation.text == tokenizer.decode(ids) == "a日🙂b"


def test_flush_gives_an_incomplete_character_as_decoding_shows_it():
    tokenizer = train_bpe_tokenizer(iter(["plain ascii text " * 50]), vocab_size=300)
    ids = tokenizer.encode("a日")[:-1]
    continuation = Continuation(tokenizer)
    pieces = [continuation.add(token) for token in ids] + [continuation.flush()]
    assert "".join(pieces) == continuation.text == tokenizer.decode(ids) == "a\ufffd"


def test_streamed_bpe_text_equals_the_decoded_tokens():
    tokenizer = bpe_tokenizer()
    model = tiny_model(tokenizer.vocab_size)
    prompt = tokenizer.encode("Crème")
    settings = SamplingSettings(temperature=1.5)
    steps = 120
    tokens = generated(model, prompt, steps, settings, num_samples=4, generator=seeded(3))
    pieces = list(
        generate_text(model, tokenizer, prompt, steps, settings, num_samples=4, generator=seeded(3))
    )

    for sample, ids in enumerate(tokens):
        streamed = "".join(piece.text for piece in pieces if piece.sample == sample)
        if tokenizer.eot_id in ids:
            ids = ids[: ids.index(tokenizer.eot_id)]
        assert streamed == tokenizer.decode(ids)
    text = "".join(piece.text for piece in pieces)
    assert any(ord(char) > 127 and char != "\ufffd" for char in text)  # whole multi-byte characters
    assert [piece.sample for piece in pieces if piece.finished] == [0, 1, 2, 3]


def test_a_stop_string_ends_the_text_after_it_even_inside_a_token():
    tokenizer = train_bpe_tokenizer(iter(["hello world " * 100]), vocab_size=300)
    ids = tokenizer.encode("hello world hello")
    assert tokenizer.decode(ids[:1]) == "hello"  # a token that goes on past the stop string
    continuation = Continuation(tokenizer, stop_strings=["zz", "ell"])
    pieces = []
    for token in ids:
        pieces.append(continuation.add(token))
        if continuation.finished:
            break
    assert pieces == ["hell"]
    assert continuation.text == "hell"


def test_a_stop_string_split_over_tokens_is_found():
    tokenizer = char_tokenizer()
    continuation = Continuation(tokenizer, stop_strings=["\n\n"])
    pieces = []
    for token in tokenizer.encode("To be,\nor not\n\nto be"):
        pieces.append(continuation.add(token))
        if continuation.finished:
            break
    assert "".join(pieces) == continuation.text == "To be,\nor not\n\n"


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_each_sample_stops_at_its_own_end_of_text_token(kind):
    tokenizer = bpe_tokenizer() if kind == "bpe" else char_tokenizer(end_of_text=True)
    heads = tokenizer.encode("x")[0]
    model = CoinModel(tokenizer.vocab_size, heads=heads, tails=tokenizer.eot_id)
    pieces = list(generate_text(model, tokenizer, [heads], 60, num_samples=8, generator=seeded(0)))

    texts = ["".join(piece.text for piece in pieces if piece.sample == s) for s in range(8)]
    counts = [piece.num_tokens for piece in pieces if piece.finished]
    assert len(counts) == 8
    assert all(text == "x" * (len(text)) for text in texts)  # the end-of-text token is not shown
    assert len(set(texts)) > 1  # the samples stopped at different steps
    assert max(counts) < 60  # and the batch stopped when they all had


def test_each_sample_stops_after_its_own_stop_string():
    tokenizer = char_tokenizer()
    a, b = tokenizer.encode("ab")
    model = CoinModel(tokenizer.vocab_size, heads=a, tails=b)
    pieces = list(
        generate_text(
            model, tokenizer, [a], 80, num_samples=6, stop_strings=["bb"], generator=seeded(1)
        )
    )
    texts = ["".join(piece.text for piece in pieces if piece.sample == s) for s in range(6)]
    assert all(text.endswith("bb") and text.count("bb") == 1 for text in texts)
    assert len(set(texts)) > 1


def test_an_empty_stop_string_is_a_user_error():
    tokenizer = char_tokenizer()
    with pytest.raises(UserError, match="stop string is empty"):
        next(generate_text(tiny_model(tokenizer.vocab_size), tokenizer, [1], 5, stop_strings=[""]))


# --- prompts ---


def test_an_empty_prompt_starts_from_a_document_boundary():
    bpe = bpe_tokenizer()
    assert encode_prompt(bpe, "") == [bpe.eot_id]
    char = char_tokenizer()
    assert encode_prompt(char, "") == char.encode("\n")
    separated = char_tokenizer(end_of_text=True)  # the vocabulary of several documents
    assert encode_prompt(separated, "") == [separated.eot_id] == [char.vocab_size]
    assert encode_prompt(separated, "A<|endoftext|>B") == separated.encode("A") + [
        separated.eot_id
    ] + separated.encode("B")
    with pytest.raises(UserError, match="no newline"):
        encode_prompt(train_char_tokenizer(["abc"]), "")


def test_unknown_prompt_characters_are_listed():
    with pytest.raises(UserError, match=r"2 character\(s\).*'é', 'ü'"):
        encode_prompt(char_tokenizer(), "Roméo ünd Juliet")
