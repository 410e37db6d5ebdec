"""``python sample.py --checkpoint OUT_DIR [--prompt TEXT]``: sample text from a trained model."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from gpt.base.cli import ArgumentParser, run_cli
from gpt.base.device import resolve_device
from gpt.base.errors import UserError
from gpt.base.progress import Progress

if TYPE_CHECKING:  # imported where used: a bad command line costs no torch import
    from gpt.models.generate import TextPiece

SEPARATOR = "\n---\n"  # between samples: a line holding only ---
INTERRUPTED_EXIT_CODE = 130  # the shell's code for Ctrl-C


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python sample.py",
        description="Sample text from a model trained by train.py. Each sample is printed as the "
        "prompt followed by its continuation; several samples are separated by a line '---'. A "
        "sample ends after --max-new-tokens tokens, at the end-of-text token, or after a --stop "
        "string.",
        epilog="example: python sample.py --checkpoint out/shakespeare_char_cpu --prompt 'ROMEO:' "
        "--max-new-tokens 300 --temperature 0.8 --seed 1",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="OUT_DIR",
        help="a training output folder (its best weights) or one of its checkpoints/step_* folders",
    )
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument(
        "--prompt",
        default="",
        metavar="TEXT",
        help="the text to continue (default: empty, which starts from the end-of-text token for "
        "BPE and from a newline for a char vocabulary)",
    )
    prompt.add_argument("--prompt-file", metavar="FILE", help="read the prompt from a UTF-8 file")
    parser.add_argument(
        "--max-new-tokens", type=int, default=500, metavar="N", help="tokens per sample (500)"
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        metavar="T",
        help="divides the logits: below 1 is more conservative, above 1 more varied; 0 is greedy "
        "(0.8)",
    )
    parser.add_argument(
        "--top-k", type=int, metavar="K", help="sample among the K most likely tokens only"
    )
    parser.add_argument(
        "--top-p",
        type=float,
        metavar="P",
        help="nucleus sampling: among the most likely tokens whose probabilities add up to P, in "
        "(0, 1]",
    )
    parser.add_argument(
        "--num-samples",
        type=int,
        default=1,
        metavar="N",
        help="samples to generate together in one batch (1)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        metavar="S",
        help="makes the samples reproducible (default: a random seed)",
    )
    parser.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="STR",
        help="end a sample right after this string appears in its continuation (the string is "
        "printed); may be repeated; in bash, $'\\n\\n' is a blank line",
    )
    parser.add_argument("--stream", action="store_true", help="print the text as it is generated")
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda", "mps"],
        default="auto",
        help="auto: cuda if available, else mps, else cpu",
    )
    parser.add_argument(
        "--no-cache",
        dest="use_cache",
        action="store_false",
        help="re-run the model over the whole context for every token instead of using GPT's "
        "KV cache (slower; for comparison)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile the KV cache's one-token step (torch.compile; CUDA graphs on a GPU): "
        "seconds to a minute of compilation first, faster tokens after; for long or many samples",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="print the model, the seed and tokens/s on stderr"
    )
    return parser.parse_args(argv)


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    import torch

    from gpt.models.generate import (
        SamplingSettings,
        check_lengths,
        check_stop_strings,
        encode_prompt,
        generate_text,
    )
    from gpt.run.weights import describe_trained, load_trained

    settings = SamplingSettings(args.temperature, args.top_k, args.top_p)
    if args.compile and not args.use_cache:
        raise UserError("--compile compiles the KV cache's step; drop --no-cache or --compile")
    check_lengths(args.max_new_tokens, args.num_samples)
    check_stop_strings(args.stop)
    prompt = read_prompt(args.prompt, args.prompt_file)
    device = resolve_device(args.device)
    model, tokenizer = load_trained(args.checkpoint, device)
    prompt_ids = encode_prompt(tokenizer, prompt)
    # the input is good: say which weights the samples come from (an untrained step 0, say)
    print(f"sampling from {describe_trained(args.checkpoint)}", file=sys.stderr)
    if len(prompt_ids) > model.block_size:
        cropped = tokenizer.decode(prompt_ids[: -model.block_size])
        print(
            f"note: the prompt has {len(prompt_ids)} tokens but the model's context is "
            f"{model.block_size}; generating from its last {model.block_size} tokens, without "
            f"{_abbreviate(cropped)}",
            file=sys.stderr,
        )
    generator = torch.Generator(device=device)
    if args.seed is None:
        seed = generator.seed()  # a fresh random seed, shown with --verbose to repeat the run
    else:
        seed = generator.manual_seed(args.seed).initial_seed()
    if args.verbose:
        print(
            f"{model.config.arch} with {model.num_params() / 1e6:.2f}M parameters, context "
            f"{model.block_size} tokens, {tokenizer.kind} tokenizer of {tokenizer.vocab_size} "
            f"tokens, on {device}, seed {seed}",
            file=sys.stderr,
        )
    pieces = generate_text(
        model,
        tokenizer,
        prompt_ids,
        args.max_new_tokens,
        settings,
        num_samples=args.num_samples,
        stop_strings=args.stop,
        generator=generator,
        use_cache=args.use_cache,
        compiled=args.compile,
    )
    started = time.perf_counter()
    try:
        num_tokens = print_samples(
            pieces, prompt, args.num_samples, args.stream, args.max_new_tokens
        )
    except KeyboardInterrupt:
        return INTERRUPTED_EXIT_CODE
    seconds = time.perf_counter() - started
    if args.verbose:
        method = "KV cache" if args.use_cache and hasattr(model, "new_cache") else "recomputed"
        method += ", compiled" if args.compile and method == "KV cache" else ""
        print(
            f"{num_tokens} tokens in {seconds:.2f} s: {num_tokens / seconds:.1f} tokens/s "
            f"({method}, {args.num_samples} sample(s) per batch)",
            file=sys.stderr,
        )
    return 0


def read_prompt(prompt: str, prompt_file: str | None) -> str:
    if prompt_file is None:
        return prompt
    try:
        return Path(prompt_file).read_text(encoding="utf-8")
    except OSError as error:
        raise UserError(f"cannot read --prompt-file {prompt_file}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"--prompt-file {prompt_file} is not UTF-8 text; convert it") from None


def print_samples(
    pieces: Iterable[TextPiece], prompt: str, num_samples: int, stream: bool, max_new_tokens: int
) -> int:
    """Print prompt + continuation for each sample, SEPARATOR between; return the tokens made.

    Several samples, not streamed, are printed only once all are done: until then, the steps of
    their generation are shown on stderr (:mod:`gpt.base.progress`).
    """
    printer = StreamPrinter(prompt, num_samples) if stream else None
    continuations = [""] * num_samples
    num_tokens = 0
    shown = num_samples > 1 and not stream
    with Progress(f"{num_samples} samples", max_new_tokens, "tokens", enabled=shown) as progress:
        for piece in pieces:
            continuations[piece.sample] += piece.text
            num_tokens += piece.num_tokens if piece.finished else 0
            progress.update(max(0, piece.num_tokens - progress.done))  # the batch's step
            if printer is not None:
                printer.add(piece)
    if printer is None:
        print(SEPARATOR.join(prompt + continuation for continuation in continuations))
    return num_tokens


class StreamPrinter:
    """Prints the samples one after another, each piece of text as soon as it can be.

    The samples are generated together, so a later sample's text can be ready while an earlier
    sample is still going; it waits until the samples before it are printed.
    """

    def __init__(self, prompt: str, num_samples: int):
        self.waiting = [prompt] * num_samples  # text not printed yet, per sample
        self.finished = [False] * num_samples
        self.current = 0  # the sample being printed
        self._print_ready()

    def add(self, piece: TextPiece) -> None:
        self.waiting[piece.sample] += piece.text
        self.finished[piece.sample] = piece.finished
        self._print_ready()

    def _print_ready(self) -> None:
        while self.current < len(self.waiting):
            sys.stdout.write(self.waiting[self.current])
            self.waiting[self.current] = ""
            if not self.finished[self.current]:
                break
            self.current += 1
            sys.stdout.write(SEPARATOR if self.current < len(self.waiting) else "\n")
        sys.stdout.flush()


def _abbreviate(text: str, limit: int = 40) -> str:
    """A short, one-line rendering of ``text``: its start and end around an ellipsis."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[: limit // 2]!r}...{text[-limit // 2 :]!r} ({len(text)} characters)"


def main() -> None:
    sys.exit(run_cli(_main))
