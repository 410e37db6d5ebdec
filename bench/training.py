"""Training throughput: our training step against a plain-PyTorch step of HF transformers' GPT-2.

    python -m bench.training                     # the two CPU shapes, fp32
    python -m bench.training --device cuda --shape gpt2-124m --mixed-precision bf16 --compile
    python -m bench.training --profile           # where the time of one step goes (torch profiler)

*Ours* is ``gpt.training.trainer.Trainer._train_step``, the very step that training runs: a batch read from
the memory-mapped tokens, forward, loss, backward, global gradient-norm clipping, fused AdamW step,
the learning rate of the step, and the loss read back, all through accelerate. *The reference* is
``transformers.GPT2LMHeadModel`` with the identical shape (biases on, dropout off on both sides)
and SDPA attention, trained by the textbook loop: the same batch tensors, the same cross-entropy,
the same AdamW parameter groups and hyperparameters, ``clip_grad_norm_``, the same schedule, the
loss and norm read back. Both live in one process with the same threads, dtype and device.

Timing alternates: after warm-up, each round times a window of steps of one, then of the other
(the order flips every round), so a machine that speeds up or slows down (other jobs, clocks)
affects both alike. The table reports median tokens/s, the median and range of the rounds' speed
ratios (each round's two windows are adjacent in time), and model FLOPs utilisation
(MFU) against the device's peak: the data-sheet figure for a known GPU; otherwise the best of
large-matmul measurements taken before and between the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from bench import CONFIGS, format_table, prepare_corpus, write_results
from gpt.base.cli import run_cli
from gpt.base.config import load_config
from gpt.data.tokens import BatchSlice
from gpt.training.schedule import learning_rate
from gpt.training.throughput import measure_matmul_flops, peak_flops
from gpt.training.trainer import Trainer

StepFunction = Callable[[int], object]


@dataclass(frozen=True)
class Shape:
    """A model and batch to benchmark: a bundled config plus ``key=value`` overrides."""

    config: str
    overrides: str = ""


SHAPES = {
    # configs/shakespeare_char_cpu.yaml as it is (its shape and batch size)
    "char-cpu": Shape("shakespeare_char_cpu.yaml"),
    # the "baby GPT" of configs/shakespeare_char.yaml, with a batch that suits a CPU
    "char-6x384": Shape(
        "shakespeare_char_cpu.yaml",
        "model.n_layer=6 model.n_head=6 model.n_embd=384 model.block_size=256 train.batch_size=8",
    ),
    "gpt2-124m": Shape("gpt2_124m.yaml"),
    # seconds, not minutes: for --quick and the smoke test
    "tiny": Shape(
        "shakespeare_char_cpu.yaml",
        "model.n_layer=2 model.n_head=2 model.n_embd=32 model.block_size=32 train.batch_size=4",
    ),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.training", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument(
        "--shape",
        action="append",
        choices=SHAPES,
        help="repeatable (default: char-cpu and char-6x384)",
    )
    parser.add_argument("--batch-size", type=int, help="override the shape's batch size")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--rounds", type=int, default=20, help="timed windows per contender")
    parser.add_argument("--window", type=float, default=2.0, help="seconds per timed window")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per contender")
    parser.add_argument("--profile", action="store_true", help="print each step's top operators")
    parser.add_argument("--quick", action="store_true", help="a tiny shape and short windows")
    args = parser.parse_args(argv)
    if args.quick:
        args.shape, args.rounds, args.window, args.warmup = ["tiny"], 2, 0.2, 1
    args.shape = args.shape or ["char-cpu", "char-6x384"]
    return args


class ReferenceStep:
    """A plain-PyTorch training step of ``GPT2LMHeadModel``, set up like the trainer's step."""

    def __init__(self, trainer: Trainer):
        model_config, train = trainer.model_config, trainer.config.train
        self.trainer = trainer
        self.device = trainer.device
        hf_config = GPT2Config(
            n_layer=model_config.n_layer,
            n_head=model_config.n_head,
            n_embd=model_config.n_embd,
            n_positions=model_config.block_size,
            vocab_size=model_config.vocab_size,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=None,
            eos_token_id=None,
            attn_implementation="sdpa",
        )
        self.model = GPT2LMHeadModel(hf_config).to(self.device)
        parameters = list(self.model.parameters())
        groups = [
            {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": train.weight_decay},
            {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(
            groups,
            lr=train.learning_rate,
            betas=(train.beta1, train.beta2),
            fused=self.device.type in ("cuda", "cpu"),
        )
        self.forward = torch.compile(self.model) if train.compile else self.model
        self.bf16 = train.mixed_precision == "bf16"
        self.grad_clip = train.grad_clip
        self.batch = BatchSlice(train.batch_size, 0, train.batch_size)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def __call__(self, step: int) -> tuple[float, float]:
        train = self.trainer.config.train
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(step, train)
        inputs, targets = self.trainer.data.train_batch(train.seed, step, self.batch)
        inputs, targets = inputs.to(self.device), targets.to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.forward(input_ids=inputs).logits
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item(), grad_norm.item()


def build_trainer(shape: str, args: argparse.Namespace, data_dir: Path, out_dir: Path) -> Trainer:
    """A Trainer exactly as ``train.py`` builds it, for a benchmark shape."""
    overrides = [
        *SHAPES[shape].overrides.split(),
        f"data.dir={data_dir}",
        f"train.out_dir={out_dir}",
        "train.wandb.mode=disabled",
        "train.gradient_accumulation_steps=1",
        "model.dropout=0.0",
        "model.bias=true",  # GPT-2 has biases everywhere: the same parameters on both sides
        f"train.cpu={args.device == 'cpu'}",
        f"train.mixed_precision={args.mixed_precision!r}",  # quoted: YAML reads no as false
        f"train.compile={args.compile}",
    ]
    if args.batch_size:
        overrides.append(f"train.batch_size={args.batch_size}")
    return Trainer(load_config(CONFIGS / SHAPES[shape].config, overrides))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Contender:
    """A step function with its own step counter, so that both sides see the same batches."""

    def __init__(self, step: StepFunction, device: torch.device):
        self.step_function = step
        self.device = device
        self.next_step = 0

    def run(self, steps: int) -> float:
        """Seconds for the next ``steps`` steps."""
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step_function(self.next_step)
            self.next_step += 1
        synchronize(self.device)
        return time.perf_counter() - start


class DevicePeak:
    """The device's peak FLOP/s, as :func:`gpt.training.throughput.peak_flops` gives it.

    A GPU's comes from its data sheet. A CPU's is measured, and other jobs on a shared machine
    lower any single measurement, so :meth:`sample` measures again and the best one is kept.
    """

    def __init__(self, device: torch.device, mixed_precision: str):
        self.device = device
        self.flops = peak_flops(device, mixed_precision)

    def sample(self) -> None:
        if self.device.type == "cpu":
            self.flops = max(self.flops, measure_matmul_flops(self.device))


def compare(trainer: Trainer, args: argparse.Namespace, peak: DevicePeak) -> dict:
    """Alternate timed windows of our step and the reference's; medians, ratio and MFU."""
    reference = ReferenceStep(trainer)
    contenders = {
        "ours": Contender(trainer._train_step, trainer.device),
        "transformers": Contender(reference, trainer.device),
    }
    for contender in contenders.values():
        contender.run(args.warmup)
    step_seconds = contenders["ours"].run(1)
    steps = max(1, round(args.window / step_seconds))
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for round_index in range(args.rounds):
        order = list(contenders) if round_index % 2 == 0 else list(reversed(contenders))
        for name in order:
            seconds[name].append(contenders[name].run(steps))
        peak.sample()
    train = trainer.config.train
    tokens_per_step = train.batch_size * trainer.model_config.block_size
    tokens_per_sec = {
        name: tokens_per_step * steps / statistics.median(times) for name, times in seconds.items()
    }
    pairs = zip(seconds["ours"], seconds["transformers"], strict=True)
    round_ratios = [reference / ours for ours, reference in pairs]
    return {
        "model": trainer.model_config.model_dump(
            include={"n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias"}
        ),
        "batch_size": train.batch_size,
        "params": {"ours": trainer.model.num_params(), "transformers": reference.num_params()},
        "flops_per_token": trainer.flops_per_token,
        "steps_per_window": steps,
        "window_seconds": seconds,
        "tokens_per_sec": tokens_per_sec,
        "round_ratios": round_ratios,
        "ratio": statistics.median(round_ratios),
    }


def profile(trainer: Trainer, steps: int = 10) -> None:
    """Print the operators that take the most time in our step and in the reference's."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU]
    if trainer.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    sort_by = "self_cuda_time_total" if trainer.device.type == "cuda" else "self_cpu_time_total"
    for name, step in [("ours", trainer._train_step), ("transformers", ReferenceStep(trainer))]:
        contender = Contender(step, trainer.device)
        contender.run(3)
        with torch_profile(activities=activities) as profiler:
            contender.run(steps)
        print(f"\n## {name}: top operators over {steps} steps\n")
        print(profiler.key_averages().table(sort_by=sort_by, row_limit=20))


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    peak = DevicePeak(device, args.mixed_precision)
    results = {}
    with tempfile.TemporaryDirectory() as temporary:
        data_dir = prepare_corpus(Path(temporary) / "data")
        for shape in args.shape:
            trainer = build_trainer(shape, args, data_dir, Path(temporary) / shape)
            if args.profile:
                profile(trainer)
            else:
                results[shape] = compare(trainer, args, peak)
    if args.profile:
        return
    for result in results.values():  # against the best peak measured over the whole run
        result["mfu"] = {
            name: result["flops_per_token"] * tps / peak.flops
            for name, tps in result["tokens_per_sec"].items()
        }
    print(training_table(results, peak.flops))
    settings = {k: vars(args)[k] for k in ("device", "mixed_precision", "compile", "rounds")}
    path = write_results(
        "training",
        {
            "settings": settings,
            "torch_threads": torch.get_num_threads(),
            "peak_flops": peak.flops,
            "shapes": results,
        },
        args.quick,
    )
    print(f"\nwrote {path}")


def training_table(results: dict, peak: float) -> str:
    rows = []
    for shape, result in results.items():
        model = result["model"]
        rows.append(
            [
                f"{shape} ({model['n_layer']}x{model['n_embd']}, T={model['block_size']}, "
                f"B={result['batch_size']})",
                result["tokens_per_sec"]["ours"],
                result["tokens_per_sec"]["transformers"],
                f"{result['ratio']:.2f}x ({min(result['round_ratios']):.2f}-"
                f"{max(result['round_ratios']):.2f})",
                f"{100 * result['mfu']['ours']:.1f}%",
                f"{100 * result['mfu']['transformers']:.1f}%",
            ]
        )
    headers = [
        "shape",
        "ours tok/s",
        "transformers tok/s",
        "ratio (range)",
        "ours MFU",
        "transformers MFU",
    ]
    return format_table(headers, rows) + f"\n\npeak: {peak / 1e9:,.1f} GFLOP/s"


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
