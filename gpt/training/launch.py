"""Whether a launch will train as it says: checks of the process's environment, before any work.

``accelerate launch`` hands its choices to the processes it starts in environment variables, and
some combinations run without a complaint but not as asked:

* several processes asked of accelerate's single-process launcher (``--num_processes 2`` without
  ``--multi_gpu``, several machines without it, or a MULTI_CPU config without mpirun): each
  launcher starts one process that trains alone;
* accelerate's FSDP: the trainer shards the model itself (``train.fsdp``, :mod:`gpt.training.sharding`),
  and accelerate's plugin would shard it a second time (or, on the CPU, fall back to plain DDP);
* DeepSpeed on the CPU: accelerate falls back to plain, unsharded DDP;
* fp16 on the CPU: accelerate autocasts to fp16 on GPUs only, so the run trains in fp32;
* a launch whose mixed precision differs from ``train.mixed_precision``: the trainer passes its
  own setting to accelerate, which then ignores the launch's;
* Muon (``train.optimizer: muon``) under accelerate's FSDP or DeepSpeed: each process would hold a
  shard of every weight matrix, and Muon would orthogonalise the shards instead of the matrices
  (the config refuses it with ``train.fsdp`` the same way).

Each of these is refused with a :class:`UserError` naming the fix, before a process group forms
(so every process of a launch refuses on its own, none waits for the others).

accelerate's single-process launcher answers any non-zero exit of its process with a
``CalledProcessError`` traceback of its own under the refusal, unless it was started with
``--quiet``. Only a stop signal makes it exit without one: it then copies the rest of the
process's output and stops it. So a process it started alone asks it to stop before refusing
(:func:`leave_launcher_quietly`), and the user sees the one line.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping

import torch

from gpt.base.config import TrainConfig
from gpt.base.errors import UserError

_MPI_WORLD_SIZES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def runs_on_cpu(train: TrainConfig) -> bool:
    """Where the trainer runs: on the CPU if asked to, or if there is no accelerator."""
    return train.cpu or not torch.accelerator.is_available()


def check_launch(train: TrainConfig, environ: Mapping[str, str] = os.environ) -> None:
    """Refuse a launch that would train otherwise than asked (see the module's docstring)."""
    on_cpu = runs_on_cpu(train)
    _check_process_count(environ)
    _check_optimizer(train, environ)
    _check_sharding(environ, on_cpu)
    _check_mixed_precision(train, environ, on_cpu)


class LoneProcessError(UserError):
    """accelerate's single-process launcher, asked for several processes, started this one."""


def _check_process_count(environ: Mapping[str, str]) -> None:
    """accelerate's single-process launcher (the one that sets ACCELERATE_USE_CPU) sets
    MASTER_PORT only when asked for several processes or machines, and then still starts one."""
    single_process_launcher = "ACCELERATE_USE_CPU" in environ
    asked_for_several = "MASTER_PORT" in environ
    started_several = "WORLD_SIZE" in environ or any(name in environ for name in _MPI_WORLD_SIZES)
    if single_process_launcher and asked_for_several and not started_several:
        raise LoneProcessError(
            "accelerate launch was asked for several processes but started this one process alone "
            "(--num_processes or --num_machines without --multi_gpu, or a MULTI_CPU config "
            "without mpirun); launch with --multi_gpu --num_processes N, on CPUs too, or with "
            "--config_file configs/accelerate/cpu_ddp_2proc.yaml"
        )


_SHARDING = (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"))


def _check_sharding(environ: Mapping[str, str], on_cpu: bool) -> None:
    if environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        raise UserError(
            "the launch asks for accelerate's FSDP, but this trainer shards the model itself "
            "(gpt/training/sharding.py), on GPUs and CPUs alike; set train.fsdp=true and launch "
            "with --multi_gpu (configs/accelerate/multi_gpu.yaml, or cpu_ddp_2proc.yaml on CPUs)"
        )
    if on_cpu and environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise UserError(
            "the launch asks for DeepSpeed, which shards the model over GPUs, but this run is on "
            "the CPU (train.cpu=true or no GPU), where accelerate would run plain DDP instead; "
            "launch on GPUs, or with --config_file configs/accelerate/cpu_ddp_2proc.yaml, with "
            "train.fsdp=true to shard"
        )


def _check_mixed_precision(train: TrainConfig, environ: Mapping[str, str], on_cpu: bool) -> None:
    if on_cpu and train.mixed_precision == "fp16":
        raise UserError(
            "train.mixed_precision=fp16 needs a GPU: on the CPU accelerate would silently train in "
            "fp32; use train.mixed_precision=bf16 or no on the CPU"
        )
    launched = environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launched not in ("no", train.mixed_precision):
        raise UserError(
            f"the launch asks for mixed precision {launched} but train.mixed_precision="
            f"{train.mixed_precision}, which is what the trainer uses; set "
            f"train.mixed_precision={launched}, or launch with --mixed_precision "
            f"{train.mixed_precision}"
        )


def leave_launcher_quietly(wait_seconds: float = 5.0) -> None:
    """Ask the accelerate launcher that started this process to stop, and wait until it has begun
    to: then it copies what this process prints next (its one line) and exits without a traceback.

    The launcher stops this process with SIGTERM once it is stopping; that SIGTERM is the sign,
    and it is blocked so that this process lives to print its line. A launcher that dies of the
    signal at once (one without a handler) is waited for instead. Does nothing when the parent is
    not accelerate's launcher (train.py run directly with a launcher's environment, say).
    """
    import psutil  # accelerate's dependency

    try:
        launcher = psutil.Process(os.getppid())
        if not _is_accelerate_launch(launcher.cmdline()):
            return
    except psutil.Error:  # gone, or not ours to look at
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # left blocked: we exit next
    launcher.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline and os.getppid() == launcher.pid:
        if signal.sigtimedwait({signal.SIGTERM}, 0.05) is not None:
            return


def _is_accelerate_launch(command: list[str]) -> bool:
    """``accelerate launch ...``, ``accelerate-launch ...`` or ``python -m
    accelerate.commands.launch ...``, as its process's command line has it."""
    words = [os.path.basename(word) for word in command[:3]]
    return (
        (len(words) > 2 and words[1] == "accelerate" and words[2] == "launch")
        or (len(words) > 1 and words[1] == "accelerate-launch")
        or (len(words) > 2 and words[1] == "-m" and words[2] == "accelerate.commands.launch")
    )


def _check_optimizer(train: TrainConfig, environ: Mapping[str, str]) -> None:
    for variable, name in _SHARDING:
        if train.optimizer == "muon" and environ.get(variable, "false").lower() == "true":
            raise UserError(
                f"train.optimizer=muon orthogonalises whole weight matrices, and {name} shards "
                "them over the processes; launch with plain DDP (configs/accelerate/multi_gpu.yaml)"
                " or use train.optimizer=adamw"
            )
