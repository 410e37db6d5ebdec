"""Inside a network at one step: how the activations and the gradients spread, layer by layer.

The course's plot of initialisation and depth (after Glorot & Bengio, 2010): for each layer, the
standard deviation and the histogram of its output activations on a batch, and of the loss's
gradient with respect to those activations on the way back. A good initialisation keeps both on one
scale through depth; a bad one makes them shrink or grow geometrically from layer to layer, and the
gradients that reach the first layers vanish or explode. Beside them, the norm of the gradient of
each layer's own parameters: what the optimizer actually gets to work with, layer by layer.

:func:`diagnose` measures one training-mode forward and backward pass of a model on one batch. Its
layers (:func:`depth_layers`) are the embedding's output (layer 0) and then, going up:

* GPT and CNN: each block's output, the residual stream after the block (without residual
  connections, simply the block's output);
* MLP: each hidden layer's output, after its GELU.

Gradients are those of the batch's mean loss, so their size scales with 1 / (batch x positions):
compare them between layers and between models measured on the same batch, not with anything else.
The embedding's parameter gradient norm is that of its tables, and GPT's token table is also its
output head: its gradient holds the head's too.

:func:`initial_weights_of_run` rebuilds a run's model as it was at step 0 (the trainer seeds, then
builds the model, nothing else in between), and :func:`first_batch_of_run` gives the batch of its
first step; a trained model comes from :func:`gpt.training.checkpoint.load_trained`, for any checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gpt.base.config import Config
from gpt.data.tokens import BatchSlice, TokenData
from gpt.models.gpt import build_model
from gpt.models.lm import LanguageModel

HISTOGRAM_BINS = 60


@dataclass(frozen=True)
class Histogram:
    counts: list[int]
    edges: list[float]  # len(counts) + 1 bin edges, from the smallest value to the largest

    @classmethod
    def of(cls, values: torch.Tensor, bins: int = HISTOGRAM_BINS) -> Histogram:
        counts, edges = torch.histogram(values.detach().float().flatten().cpu(), bins=bins)
        return cls([int(c) for c in counts.tolist()], edges.tolist())


@dataclass(frozen=True)
class LayerStatistics:
    name: str  # "embedding", "block 1", ... or "layer 1", ...
    activation_std: float
    activation_histogram: Histogram
    gradient_std: float  # of d(mean loss) / d(activation)
    gradient_histogram: Histogram
    parameter_grad_norm: float  # the norm of the gradient of the layer's own parameters


@dataclass(frozen=True)
class Diagnostics:
    loss: float
    layers: list[LayerStatistics]  # from the embedding up
    parameter_grad_norms: dict[str, float]  # every parameter, by name


@dataclass(frozen=True)
class Layer:
    """Where a layer's output comes from (``output``) and which parameters are its own."""

    name: str
    output: nn.Module
    parameters: list[nn.Parameter]


def depth_layers(model: LanguageModel) -> list[Layer]:
    """The layers :func:`diagnose` measures, from the embedding up (see the module docstring)."""
    tables = [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]
    layers = [Layer("embedding", model.embedding_dropout, tables)]
    if model.config.arch == "mlp":
        linears = [m for m in model.hidden if isinstance(m, nn.Linear)]
        activations = [m for m in model.hidden if isinstance(m, nn.GELU)]
        for number, (linear, gelu) in enumerate(zip(linears, activations, strict=True), 1):
            layers.append(Layer(f"layer {number}", gelu, list(linear.parameters())))
    else:
        for number, block in enumerate(model.blocks, 1):
            layers.append(Layer(f"block {number}", block, list(block.parameters())))
    return layers


def diagnose(
    model: LanguageModel,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    layers: list[Layer] | None = None,
    bins: int = HISTOGRAM_BINS,
) -> Diagnostics:
    """One training-mode forward and backward pass of ``model`` on a batch, measured.

    ``layers`` defaults to :func:`depth_layers`; any modules whose outputs are tensors will do, in
    any model that returns ``(output, loss)``. The model is left as it was found: its training mode,
    no gradients, and BatchNorm's running statistics (which the pass updates) put back.
    """
    layers = depth_layers(model) if layers is None else layers
    outputs: dict[str, torch.Tensor] = {}

    def keep_output(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            output.retain_grad()
            outputs[name] = output

        return hook

    hooks = [layer.output.register_forward_hook(keep_output(layer.name)) for layer in layers]
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    was_training = model.training
    try:
        model.train()
        model.zero_grad(set_to_none=True)
        _, loss = model(inputs, targets)
        loss.backward()
        statistics = [_layer_statistics(layer, outputs[layer.name], bins) for layer in layers]
        norms = {
            name: parameter.grad.norm().item()
            for name, parameter in model.named_parameters()
            if parameter.grad is not None
        }
    finally:
        for hook in hooks:
            hook.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
    return Diagnostics(loss.item(), statistics, norms)


def _layer_statistics(layer: Layer, output: torch.Tensor, bins: int) -> LayerStatistics:
    squares = sum(
        p.grad.float().square().sum().item() for p in layer.parameters if p.grad is not None
    )
    return LayerStatistics(
        name=layer.name,
        activation_std=output.detach().float().std().item(),
        activation_histogram=Histogram.of(output, bins),
        gradient_std=output.grad.float().std().item(),
        gradient_histogram=Histogram.of(output.grad, bins),
        parameter_grad_norm=math.sqrt(squares),
    )


def initial_weights_of_run(config: Config) -> LanguageModel:
    """The model of a run (its resolved config, ``OUT_DIR/config.yaml``) as it was at step 0."""
    torch.manual_seed(config.train.seed)  # what accelerate's set_seed does for torch's weights
    return build_model(config.model)


def first_batch_of_run(config: Config, data_dir: str | Path | None = None):
    """The inputs and targets of a run's first step (one process's, all its micro-batches)."""
    train = config.train
    data = TokenData(
        data_dir or config.data.dir, config.model.block_size, config.data.train_fraction
    )
    size = train.batch_size * train.gradient_accumulation_steps
    return data.train_batch(train.seed, 0, BatchSlice(size, 0, size))
