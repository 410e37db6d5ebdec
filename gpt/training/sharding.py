"""Fully sharded data parallel (``train.fsdp``): PyTorch's ``fully_shard`` (FSDP2), applied here.

Each process holds a shard of every parameter, of its gradient and of its optimizer state; a
block's parameters are gathered while it runs and freed after. The trainer shards the model itself
rather than through accelerate's FSDP plugin because accelerate shards only on GPUs: on CPUs it
falls back to plain DDP, so its FSDP path could never run without GPUs, in the tests least of all.
``fully_shard`` and ``torch.distributed.checkpoint`` run over NCCL and gloo alike, so this is one code
path on GPUs and CPUs. accelerate still starts the processes, forms the process group, scales the
loss for gradient accumulation, clips the gradient norm (a DTensor's, reduced over the shards) and
saves each process's RNG state.

* **Sharding**: every transformer block is a unit of its own, then the whole model (embeddings,
  final norm and head, tied or not). With ``train.mixed_precision=bf16`` parameters are gathered
  and used in bf16 and gradients reduced in fp32 (FSDP2's mixed precision policy).
* **Gradient accumulation**: accelerate's ``no_sync`` reaches DDP models only, so the trainer
  turns FSDP2's gradient sync off for every micro-step but the last
  (``set_requires_gradient_sync``): gradients accumulate unsharded on each process and are
  reduce-scattered once per optimizer step, as DDP all-reduces them once, at the cost of holding
  the unsharded gradients between micro-steps.
* **Optimizer**: wrapped as accelerate wraps it (so that it steps once per accumulated step) but
  not registered with the accelerator, whose ``save_state`` would write the main process's shard
  of its state as if it were the whole.
* **Checkpoints**: every process writes its shards of the model and optimizer state with
  ``torch.distributed.checkpoint`` into ``sharded/`` of the checkpoint folder, and reads them back
  on resume, from hooks of accelerate's ``save_state`` and ``load_state``: the checkpoint is still
  written, sealed and verified as one folder by :mod:`gpt.training.checkpoint`.
* **Best weights**: gathered on the main process alone (:func:`gathered_weights`).
* **train.init_from**: the main process reads the weights; the others build the model on the meta
  device (no memory, no reading) and receive their shards from it (:func:`sharded_model`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from gpt.base.config import ModelConfig
from gpt.models.gpt import build_model
from gpt.models.lm import LanguageModel
from gpt.run.folder import SHARDED_STATE_DIR


def sharded_model(
    accelerator: Accelerator,
    config: ModelConfig,
    mixed_precision: str,
    pretrained: Callable[[], LanguageModel] | None = None,
) -> LanguageModel:
    """The model of ``config``, sharded over the processes.

    Fresh weights are drawn on every process from the same seed, so each keeps its own shard of
    the same model. ``pretrained`` (``train.init_from``) is called on the main process alone; the
    others build the model on the meta device and receive their shards from it.
    """
    if pretrained is None:
        return _shard(build_model(config).to(accelerator.device), accelerator, mixed_precision)
    weights = pretrained().state_dict() if accelerator.is_main_process else {}
    with torch.device("meta"):
        model = build_model(config)
    _shard(model, accelerator, mixed_precision)
    model.to_empty(device=accelerator.device)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, weights, options=options)
    return model


def _shard(model: LanguageModel, accelerator: Accelerator, mixed_precision: str) -> LanguageModel:
    """Apply ``fully_shard`` to each block, then to the model (in place; returns it)."""
    _form_group_of_one(accelerator)
    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    compute_dtype = torch.bfloat16 if mixed_precision == "bf16" else None
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    for block in getattr(model, "blocks", ()):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def _form_group_of_one(accelerator: Accelerator) -> None:
    """accelerate forms no process group for a run of one process, and FSDP needs one: such a
    run (``python train.py``, one GPU) gets a group of its own, in memory."""
    if not torch.distributed.is_initialized():
        backend = "nccl" if accelerator.device.type == "cuda" else "gloo"
        store = torch.distributed.HashStore()
        torch.distributed.init_process_group(backend, store=store, rank=0, world_size=1)


def prepare_sharded(
    accelerator: Accelerator, model: LanguageModel, optimizer: torch.optim.Optimizer
) -> AcceleratedOptimizer:
    """The optimizer of a sharded model, wrapped for gradient accumulation; checkpoints hold
    the model's and optimizer's shards from now on (see the module's docstring)."""
    wrapped = AcceleratedOptimizer(optimizer, device_placement=False, scaler=accelerator.scaler)
    accelerator.register_save_state_pre_hook(
        lambda _models, _weights, folder: save_shards(model, optimizer, Path(folder))
    )
    accelerator.register_load_state_pre_hook(
        lambda _models, folder: load_shards(model, optimizer, Path(folder))
    )
    return wrapped


def save_shards(model: LanguageModel, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Every process writes its shards into ``folder/sharded``; a failure on any process is an
    OSError on every process (each hears of it from the collective write)."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    try:
        dcp.save(
            {"model": model_state, "optimizer": optimizer_state},
            checkpoint_id=folder / SHARDED_STATE_DIR,
        )
    except CheckpointException as error:  # a BaseException, which nothing above expects
        raise OSError(f"writing the sharded state failed: {_first_failure(error)}") from None


def load_shards(model: LanguageModel, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Read this process's shards from ``folder/sharded`` into the model and optimizer."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    try:
        dcp.load(state, checkpoint_id=folder / SHARDED_STATE_DIR)
    except CheckpointException as error:
        raise RuntimeError(f"reading the sharded state failed: {_first_failure(error)}") from None
    set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
    )


def _first_failure(error: CheckpointException) -> str:
    """What went wrong on the first process that failed (DCP gathers them all)."""
    for rank, failure in sorted(error.failures.items()):
        return f"rank {rank}: {failure}"
    return str(error)


def gathered_weights(model: LanguageModel) -> dict[str, torch.Tensor]:
    """The whole model's weights on the main process, on the CPU (an empty dict on the others).

    Tied parameters (the embedding and the head) are one tensor under both names, as in an
    unsharded model's state dict, so the weights file stores it once."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    for alias, name in _tied_names(model).items():
        if name in weights:
            weights[alias] = weights[name]
    return weights


def _tied_names(model: torch.nn.Module) -> dict[str, str]:
    """Each other name of a parameter registered under several, and its first name."""
    first_names: dict[int, str] = {}
    aliases = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        first = first_names.setdefault(id(parameter), name)
        if first != name:
            aliases[name] = first
    return aliases
