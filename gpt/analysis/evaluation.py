"""Score a trained model on a whole split (``python -m gpt.evaluate``).

The training loop's evaluation estimates the loss from a few random windows; this scores every
token of a split exactly once, deterministically, to give the numbers a model is reported with:

* **loss**: the mean cross-entropy in nats per token, -ln p(token | the tokens before it);
* **perplexity**: e^loss, the number of equally likely tokens the model is as unsure as;
* **bits per byte**: the summed loss in bits (nats / ln 2) over the UTF-8 bytes of the split's
  original text. A token count depends on the tokenizer, a byte count does not, so this compares a
  character model with a BPE model on the same text (for ASCII text it is bits per character).

Sliding windows. A model sees at most ``block_size`` tokens, so a split longer than that is read in
windows of ``block_size`` inputs that start ``stride`` tokens apart. The first window scores all of
its positions; every later window scores only its last ``stride`` positions, the tokens no earlier
window scored; the last window is moved back to end at the split's last token, so it is full too
and scores only what is left. So every token after the first (which nothing predicts) is scored
exactly once, and each one scored in a later window is predicted from at least ``block_size -
stride + 1`` tokens. ``stride = block_size`` is fastest but scores the start of each window with
little context; ``stride = 1`` gives every token the full context, at ``block_size`` times the cost.
The default, ``block_size // 2``, is the usual compromise.

Under ``accelerate launch`` each process scores its own contiguous share of the windows and the
sums of the losses and of the token counts are added up across processes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import pre_tokenizers

from gpt.base.errors import UserError
from gpt.base.progress import Progress
from gpt.data.tokenizer import Tokenizer, load_tokenizer, tokenizer_fingerprint
from gpt.data.tokens import read_meta, split_tokens
from gpt.models.lm import LanguageModel
from gpt.run.folder import TOKENIZER_FILE, WEIGHTS_FILE, run_data_dir
from gpt.run.weights import load_trained, tokenizer_file

EVAL_SPLITS = ("test", "val", "train")


@dataclass(frozen=True)
class Score:
    """Summed loss (nats) and how many tokens it covers; sums add up across processes."""

    loss_sum: float
    tokens: int


@dataclass(frozen=True)
class Evaluation:
    """What ``gpt.evaluate`` reports, and writes to ``OUT_DIR/eval_<split>.json``."""

    split: str
    data: str
    weights: str
    arch: str
    loss: float  # nats per token
    perplexity: float
    bits_per_byte: float | None  # None where the split's byte count is unknown
    tokens: int  # scored
    bytes: int | None
    block_size: int
    stride: int
    seconds: float
    processes: int


def window_ends(num_tokens: int, length: int, stride: int) -> np.ndarray:
    """The position of the last target of each window (targets are positions 1..num_tokens-1).

    A window has ``length`` inputs: tokens ``end - length .. end - 1`` predict ``end - length + 1
    .. end``. The first ends at ``length``, each next one ``stride`` later, the last at the end.
    """
    last = num_tokens - 1
    return np.append(np.arange(length, last, stride, dtype=np.int64), last)


@torch.inference_mode()
def score_tokens(
    model: LanguageModel,
    tokens: np.ndarray,
    stride: int,
    batch_size: int,
    device: torch.device,
    shard: tuple[int, int] = (0, 1),
    progress: bool = False,
) -> Score:
    """The summed loss over every token of ``tokens`` after the first, in sliding windows.

    ``shard = (index, count)``: score only the ``index``-th of ``count`` contiguous shares of the
    windows (one per process); the shares' scores add up to the whole. ``progress``: show this
    process's progress on stderr (:mod:`gpt.base.progress`).
    """
    length = min(model.block_size, len(tokens) - 1)  # a short split is one window
    ends = window_ends(len(tokens), length, stride)
    scored = np.diff(ends, prepend=0)  # the first window scores all of its positions
    mine = np.array_split(np.arange(len(ends)), shard[1])[shard[0]]
    model.eval()
    loss_sum, count = 0.0, 0
    batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    with Progress("evaluate", int(scored[mine].sum()), "tokens", enabled=progress) as shown:
        for batch in batches:
            rows = np.stack([tokens[end - length : end + 1] for end in ends[batch]])
            rows = torch.from_numpy(rows.astype(np.int64)).to(device)
            inputs, targets = rows[:, :-1], rows[:, 1:].clone()
            new = torch.from_numpy(scored[batch]).to(device)
            seen_before = torch.arange(length, device=device)[None, :] < (length - new)[:, None]
            targets[seen_before] = -1
            logits, _ = model(inputs)
            loss = F.cross_entropy(
                logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1, reduction="sum"
            )
            loss_sum += loss.item()
            count += int(new.sum())
            shown.update(int(new.sum()))
    return Score(loss_sum, count)


def token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray | None:
    """How many UTF-8 bytes of text each token id stands for (0 for special tokens such as
    end-of-text), or None for a tokenizer whose tokens are neither characters nor byte-level BPE.

    A char token is one character; a byte-level BPE token is written in GPT-2's alphabet of 256
    printable characters, one per byte. So a split's byte count is the sum over its tokens, exact
    and without decoding any text.
    """
    hf = tokenizer.hf
    special = {token.content for token in hf.get_added_tokens_decoder().values() if token.special}
    lengths = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    for token, token_id in hf.get_vocab().items():
        if token in special:
            continue
        if tokenizer.kind == "char":
            lengths[token_id] = len(token.encode("utf-8"))
        elif set(token) <= alphabet:
            lengths[token_id] = len(token)
        else:
            return None
    return lengths


def count_bytes(tokens: np.ndarray, tokenizer: Tokenizer) -> int | None:
    """The UTF-8 bytes of the text that ``tokens`` encode (special tokens excluded)."""
    lengths = token_byte_lengths(tokenizer)
    if lengths is None:
        return None
    step = 1 << 24  # bounded memory for a split of any size
    return sum(
        int(lengths[np.asarray(tokens[i : i + step], dtype=np.int64)].sum())
        for i in range(0, len(tokens), step)
    )


def split_bytes(meta: dict, split: str, tokens: np.ndarray, tokenizer: Tokenizer) -> int | None:
    """The split's byte count: from meta.json, or counted from its tokens in an older folder."""
    recorded = meta.get("bytes", {}).get(split)
    return recorded if recorded is not None else count_bytes(tokens, tokenizer)


def check_same_tokenizer(run: Tokenizer, run_file: Path, data_dir: Path) -> None:
    """Refuse data made with another tokenizer than the model's (``run``, read from ``run_file``):
    its ids would mean other text to the model."""
    data_file = data_dir / TOKENIZER_FILE
    if tokenizer_fingerprint(run_file) != tokenizer_fingerprint(data_file):
        data = load_tokenizer(data_file)
        raise UserError(
            f"{data_dir} was prepared with another tokenizer than the model's ({data.kind}, "
            f"{data.vocab_size} tokens vs {run.kind}, {run.vocab_size}); prepare it with "
            "`python -m data_prep --tokenizer OUT_DIR/tokenizer.json ...`"
        )


@dataclass(frozen=True)
class EvaluationRequest:
    """What to score: a run's best weights (or one of its checkpoints) on a split of its own data
    (or of another folder made with its tokenizer), in windows ``stride`` tokens apart."""

    out_dir: Path
    split: str = "test"
    data: Path | None = None  # default: the run's data.dir
    checkpoint: Path | None = None  # default: the run's best weights
    stride: int | None = None  # default: block_size // 2
    batch_size: int = 8


def evaluate(request: EvaluationRequest, accelerator) -> Evaluation:
    """Load, check and score; every process scores its share and gets the whole result."""
    weights = request.checkpoint or request.out_dir
    model, tokenizer = load_trained(weights, accelerator.device)
    stride = max(1, model.block_size // 2) if request.stride is None else request.stride
    if not 1 <= stride <= model.block_size:
        raise UserError(
            f"--stride {stride} must be from 1 to the model's block_size ({model.block_size})"
        )
    data_dir = request.data or run_data_dir(request.out_dir)
    meta = read_meta(data_dir)
    check_same_tokenizer(tokenizer, tokenizer_file(weights), data_dir)
    tokens = split_tokens(data_dir, request.split, meta)
    if len(tokens) < 2:
        raise UserError(f"the {request.split} split of {data_dir} has no token to predict")

    started = time.perf_counter()
    shard = (accelerator.process_index, accelerator.num_processes)
    part = score_tokens(
        model, tokens, stride, request.batch_size, accelerator.device, shard,
        progress=accelerator.is_main_process,
    )  # fmt: skip
    total = _add_up(part, accelerator)
    seconds = time.perf_counter() - started

    byte_count = split_bytes(meta, request.split, tokens, tokenizer)
    loss = total.loss_sum / total.tokens
    return Evaluation(
        split=request.split,
        data=str(data_dir),
        weights=str(weights / WEIGHTS_FILE),
        arch=model.config.arch,
        loss=loss,
        perplexity=math.exp(loss),
        bits_per_byte=total.loss_sum / math.log(2) / byte_count if byte_count else None,
        tokens=total.tokens,
        bytes=byte_count,
        block_size=model.block_size,
        stride=stride,
        seconds=seconds,
        processes=accelerator.num_processes,
    )


def describe(evaluation: Evaluation) -> str:
    e = evaluation
    bits = f"{e.bits_per_byte:.4f}" if e.bits_per_byte is not None else "unknown for this tokenizer"
    return "\n".join(
        [
            f"{e.arch} model {e.weights} on the {e.split} split of {e.data}",
            f"  loss           {e.loss:.4f} nats per token",
            f"  perplexity     {e.perplexity:.3f}",
            f"  bits per byte  {bits}",
            f"  tokens scored  {e.tokens:,} in windows of {e.block_size}, stride {e.stride}",
            f"  time           {e.seconds:.1f} s ({e.tokens / e.seconds:,.0f} tokens/s, "
            f"{e.processes} process{'es' if e.processes > 1 else ''})",
        ]
    )


def _add_up(score: Score, accelerator) -> Score:
    if accelerator.num_processes == 1:
        return score
    sums = torch.tensor([score.loss_sum, score.tokens], dtype=torch.float64)
    sums = accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu()
    return Score(sums[0].item(), round(sums[1].item()))
