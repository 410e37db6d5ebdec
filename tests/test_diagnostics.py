"""gpt/analysis/diagnostics.py: per-layer activation and gradient statistics, checked where they are known."""

import math

import pytest
import torch
from torch import nn

from gpt.analysis.diagnostics import (
    Layer,
    depth_layers,
    diagnose,
    first_batch_of_run,
    initial_weights_of_run,
)
from gpt.base.config import ModelConfig, load_config
from gpt.models.gpt import build_model
from gpt.run.folder import list_checkpoints
from gpt.run.weights import load_trained
from gpt.training.trainer import Trainer

from .conftest import ROOT


class LinearStack(nn.Module):
    """``depth`` layers y = scale · x: the activations' and gradients' spread is known exactly."""

    def __init__(self, depth: int, width: int, scale: float):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width, bias=False) for _ in range(depth))
        with torch.no_grad():
            for layer in self.layers:
                layer.weight.copy_(scale * torch.eye(width))

    def forward(self, x: torch.Tensor, direction: torch.Tensor):
        for layer in self.layers:
            x = layer(x)
        return x, (x * direction).sum()  # d loss / d output = direction


def test_a_linear_stack_has_the_activation_and_gradient_spread_it_must_have():
    depth, scale = 4, 0.5
    model = LinearStack(depth, width=16, scale=scale)
    x, direction = torch.randn(64, 16), torch.randn(64, 16)
    layers = [Layer(f"layer {i}", m, list(m.parameters())) for i, m in enumerate(model.layers)]
    found = diagnose(model, x, direction, layers)

    assert found.loss == pytest.approx((scale**depth * x * direction).sum().item(), rel=1e-5)
    for k, layer in enumerate(found.layers):  # layer k multiplies by scale ** (k + 1)
        assert layer.activation_std == pytest.approx(scale ** (k + 1) * x.std().item(), rel=1e-5)
        # the gradient reaching layer k's output went back through depth - 1 - k layers
        expected = scale ** (depth - 1 - k) * direction.std().item()
        assert layer.gradient_std == pytest.approx(expected, rel=1e-5)
        # d loss / d W_k = (gradient at its output)^T (its input): scale ** (depth - 1) · D^T X
        expected_norm = scale ** (depth - 1) * (direction.T @ x).norm().item()
        assert layer.parameter_grad_norm == pytest.approx(expected_norm, rel=1e-5)
        assert sum(layer.activation_histogram.counts) == x.numel()
        assert len(layer.gradient_histogram.edges) == len(layer.gradient_histogram.counts) + 1
        assert found.parameter_grad_norms[f"layers.{k}.weight"] == pytest.approx(expected_norm)


@pytest.mark.parametrize(
    ("arch", "names"),
    [
        ("gpt", ["embedding", "block 1", "block 2", "block 3"]),
        ("cnn", ["embedding", "block 1", "block 2", "block 3"]),
        ("mlp", ["embedding", "layer 1", "layer 2", "layer 3"]),
    ],
)
def test_every_layer_of_each_architecture_is_measured(arch, names):
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(arch=arch, n_layer=3, n_head=2, n_embd=16, block_size=16, vocab_size=20)
    )
    tokens = torch.randint(20, (4, 17))
    found = diagnose(model, tokens[:, :-1], tokens[:, 1:])
    assert [layer.name for layer in found.layers] == names
    assert found.parameter_grad_norms.keys() == dict(model.named_parameters()).keys()
    layers = depth_layers(model)
    for layer, measured in zip(layers[1:], found.layers[1:], strict=True):
        own = [n for n, p in model.named_parameters() if any(p is q for q in layer.parameters)]
        squares = sum(found.parameter_grad_norms[name] ** 2 for name in own)
        assert measured.parameter_grad_norm == pytest.approx(math.sqrt(squares), rel=1e-5)
        assert measured.activation_std > 0 and measured.gradient_std > 0


def test_diagnosing_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="cnn", n_layer=2, n_embd=16, norm="batch", vocab_size=20))
    model.eval()
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    tokens = torch.randint(20, (4, 17))
    diagnose(model, tokens[:, :-1], tokens[:, 1:])
    assert not model.training
    assert all(parameter.grad is None for parameter in model.parameters())
    for name, tensor in model.state_dict().items():  # BatchNorm's running statistics included
        assert torch.equal(tensor, state[name]), name


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_the_initial_weights_of_a_run_are_the_ones_it_trained_from(shakespeare_char, tmp_path):
    out = tmp_path / "run"
    overrides = [
        f"data.dir={shakespeare_char}", f"train.out_dir={out}", "model.n_layer=1",
        "model.n_embd=16", "model.n_head=2", "model.block_size=16", "train.batch_size=4",
        "train.max_iters=1", "train.learning_rate=1e-9", "train.min_lr=0",
        "train.eval_iters=1", "train.wandb.mode=disabled", "train.cpu=true",
    ]  # fmt: skip
    Trainer(load_config(ROOT / "configs" / "shakespeare_char_cpu.yaml", overrides)).run()
    config = load_config(out / "config.yaml")  # the resolved config, vocabulary included
    after_one_tiny_step, _ = load_trained(list_checkpoints(out)[-1])
    initial = initial_weights_of_run(config)
    for name, weight in initial.state_dict().items():
        torch.testing.assert_close(
            weight, after_one_tiny_step.state_dict()[name], atol=1e-6, rtol=0
        )
    inputs, targets = first_batch_of_run(config)
    assert inputs.shape == targets.shape == (4, 16)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
