"""``python train.py CONFIG [key=value ...]``: train a model described by a YAML config."""

import argparse
import gc
import signal
import sys

from gpt.base.cli import ArgumentParser, run_cli
from gpt.base.config import load_config


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python train.py",
        description="Train a GPT (or an MLP/CNN baseline) on a data_prep folder. Runs on one device "
        "as is, and on several GPUs or machines under `accelerate launch`.",
        epilog="example: python train.py configs/shakespeare_char_cpu.yaml model.n_layer=4 "
        "train.max_iters=200",
    )
    parser.add_argument("config", help="a YAML config, e.g. configs/shakespeare_char_cpu.yaml")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides, e.g. train.batch_size=16",
    )
    return parser.parse_args(argv)


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    config = load_config(args.config, args.overrides)
    # imported after validation: a config error costs no torch import
    from gpt.analysis.report import write_run_report
    from gpt.training.launch import LoneProcessError, check_launch, leave_launcher_quietly
    from gpt.training.trainer import train

    try:
        check_launch(config.train)
    except LoneProcessError:
        leave_launcher_quietly()  # or it adds a traceback under the one line
        raise
    after_run = write_run_report if config.train.report else None  # OUT_DIR/report/
    try:
        return train(config, after_run).exit_code  # 130 or 143 when a signal stopped it
    except KeyboardInterrupt:  # a second Ctrl-C, which stops at once (the trainer said so)
        return 130


def main() -> None:
    exit_code = run_cli(_main)  # the run has ended and said how, an error included
    # What is left is to exit. A stop signal now is ignored: when a worker dies, the launcher
    # SIGTERMs the others, and one that has printed its line must not die before exit code 2.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    # The model and its process group sit in reference cycles. Left to the interpreter's
    # shutdown, gloo's threads were torn down after Python's own state, and 1 two-process run in
    # 10 ended in SIGABRT ("terminate called without an active exception") after finishing;
    # freed here, while everything is alive, 0 in 100.
    gc.collect()
    sys.exit(exit_code)


if __name__ == "__main__":  # python -m gpt.train_cli, as gpt.sweep starts each run
    main()
