"""The optimizer that ``train.optimizer`` names, built for a model's parameters.

Each of them turns the gradient g of the loss into a change of the weights w; the learning rate lr
is the trainer's, set before every step (warmup and decay, :func:`gpt.training.schedule.learning_rate`).

``sgd``, stochastic gradient descent (Robbins & Monro, 1951)
    w -= lr · g. With ``train.momentum`` μ > 0, the step follows a running sum of gradients instead,
    v = μ · v + g, w -= lr · v (PyTorch's form of Polyak's heavy ball), which averages out the
    noise of small batches and gathers speed along directions where the gradient keeps its sign:
    the effective rate on them is lr / (1 - μ), 10x for μ = 0.9. ``train.weight_decay`` λ is an L2
    penalty, λ · w added to g, which for SGD is the same as shrinking w by lr · λ each step.

``adam`` (Kingma & Ba, 2015)
    Running averages of g (rate ``beta1``) and of g² (rate ``beta2``), bias-corrected to m and v;
    w -= lr · m / (sqrt(v) + ε). Every coordinate gets its own step size, about lr whatever the
    gradient's scale, which is what makes Adam forgiving of badly scaled layers. Weight decay is
    the classic L2 penalty here too, λ · w added to g, so it is divided by sqrt(v) like the
    gradient: weights with large gradients are hardly decayed at all.

``adamw`` (Loshchilov & Hutter, 2019), the default
    Adam with the decay taken out of the gradient: w -= lr · (m / (sqrt(v) + ε) + λ · w), every
    weight shrunk by the same fraction lr · λ per step, whatever its gradients.

For all three the decay applies to matrices, embeddings and convolution kernels only, never to
biases and norm gains (:meth:`gpt.models.lm.LanguageModel.optimizer_groups`).

``lbfgs``, limited-memory BFGS (Liu & Nocedal, 1989)
    A quasi-Newton method: it keeps the last LBFGS_HISTORY pairs of weight and gradient changes,
    which describe the loss's curvature along the directions travelled, builds from them an
    estimate H of the inverse Hessian, and steps along -H · g, with the step length found by a line
    search that tries points until the strong Wolfe conditions hold (enough decrease, and a
    flattened slope); ``train.learning_rate`` is its first trial step, 1 the natural one. Its
    curvature pairs and its line search assume one fixed, exactly computed function, so the config
    requires ``train.full_batch`` (every training window in every evaluation, the same dropout
    masks throughout a step), no weight decay (PyTorch's L-BFGS takes no parameter groups), no
    gradient clipping and no fp16 loss scaling. One trainer step is one L-BFGS iteration: a
    gradient at its start plus the line search's evaluations, each a pass over the training set.
    That is affordable only on a small training set (``data.train_fraction``) and a small model.

``muon`` (Keller Jordan, 2024; ``torch.optim.Muon``)
    For the weight matrices of the hidden layers (attention and MLP), SGD with Nesterov momentum
    whose update is orthogonalised before it is applied: a few Newton-Schulz iterations replace the
    momentum matrix G = U S V^T by about U V^T, every singular value near one, so that the step
    moves all directions of the matrix alike instead of mostly its few dominant ones. Everything
    else (embeddings, the output head, norm gains, biases, convolution kernels) is trained by
    AdamW as above, at ``train.learning_rate`` and ``train.weight_decay``; the matrices take
    ``train.muon_learning_rate``, ``train.muon_weight_decay`` and ``train.muon_momentum``. The
    defaults are Keller Jordan's (Muon's and modded-nanogpt's): learning rate 0.02, momentum 0.95,
    Nesterov, five Newton-Schulz steps with his coefficients (3.4445, -4.775, 2.0315), the
    learning rate scaled by sqrt(max(1, rows / columns)); and no weight decay, as in his first
    speedrun records. The schedule (warmup, decay) scales both learning rates alike.
    torch.optim.Muon runs the Newton-Schulz iterations in bfloat16, which GPUs multiply fastest;
    a CPU without bfloat16 units emulates it, 70x slower than float32 on this project's 2 cores
    (12 ms against 0.16 ms for one 128 x 341 product), which made a Muon step of the 0.7M-parameter
    modern config cost 3.8 s instead of 0.1 s. On the CPU they run in float32
    (:func:`newton_schulz_in_float32`), the same iteration, rounded less.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.optim._muon as torch_muon
from torch import nn

from gpt.base.config import TrainConfig
from gpt.models.lm import LanguageModel

LBFGS_HISTORY = 20  # curvature pairs kept; Nocedal & Wright: 3 to 20 are usually enough
LBFGS_LINE_SEARCH = 25  # the most points one line search tries (PyTorch's own limit)


def build_optimizer(
    model: LanguageModel, train: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    """``train.optimizer`` for ``model``'s parameters, at ``train.learning_rate``."""
    lr = train.learning_rate
    if train.optimizer == "lbfgs":
        return torch.optim.LBFGS(
            model.parameters(),
            lr=lr,
            max_iter=1,  # one iteration per trainer step
            max_eval=1 + LBFGS_LINE_SEARCH,  # the default, 5/4 of max_iter, would forbid any
            history_size=LBFGS_HISTORY,
            line_search_fn="strong_wolfe",
        )
    if train.optimizer == "muon":
        return MuonWithAdamW(model, train, device)
    groups = model.optimizer_groups(train.weight_decay)
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=train.momentum)
    adam = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
    betas = (train.beta1, train.beta2)
    return adam(groups, lr=lr, betas=betas, fused=device.type in ("cuda", "cpu"))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's learning rate at this step, ``lr``, for every group, times the group's
    ``lr_scale`` where it has one (Muon's matrices: muon_learning_rate / learning_rate)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"] if "lr_scale" in group else lr


def muon_matrices(model: LanguageModel) -> list[nn.Parameter]:
    """The matrices Muon trains: every 2-D weight but the embedding tables and the output head."""
    tables = {id(module.weight) for module in model.modules() if isinstance(module, nn.Embedding)}
    tables.add(id(model.lm_head.weight))
    return [
        p for p in model.parameters() if p.requires_grad and p.dim() == 2 and id(p) not in tables
    ]


def newton_schulz_float32(
    grad: torch.Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int, eps: float
) -> torch.Tensor:
    """torch.optim.Muon's orthogonalisation (``_zeropower_via_newtonschulz``: ``ns_steps``
    quintic Newton-Schulz iterations X <- a X + (b A + c A²) X, A = X X^T, from G / ||G||, on the
    wide orientation of G) in float32 instead of bfloat16."""
    a, b, c = ns_coefficients
    tall = grad.size(0) > grad.size(1)
    x = grad.float().T if tall else grad.float()
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


@contextlib.contextmanager
def newton_schulz_in_float32() -> Iterator[None]:
    """torch.optim.Muon's steps inside this block orthogonalise in float32 (the CPU's case)."""
    in_bfloat16 = torch_muon._zeropower_via_newtonschulz
    torch_muon._zeropower_via_newtonschulz = newton_schulz_float32
    try:
        yield
    finally:
        torch_muon._zeropower_via_newtonschulz = in_bfloat16


class MuonWithAdamW(torch.optim.Optimizer):
    """``torch.optim.Muon`` on :func:`muon_matrices`, ``torch.optim.AdamW`` on the rest, stepped
    together as one optimizer (which is what accelerate and the trainer expect).

    ``param_groups`` lists Muon's group first, then AdamW's two (decayed, not decayed); the
    state dict holds each optimizer's own under ``muon`` and ``adamw``. On the CPU, Muon's
    Newton-Schulz iterations run in float32 (the module's docstring says why).
    """

    def __init__(self, model: LanguageModel, train: TrainConfig, device: torch.device):
        matrices = muon_matrices(model)  # every architecture here has some
        in_muon = {id(p) for p in matrices}
        self.muon = torch.optim.Muon(
            [{"params": matrices, "lr_scale": train.muon_learning_rate / train.learning_rate}],
            lr=train.muon_learning_rate,
            weight_decay=train.muon_weight_decay,
            momentum=train.muon_momentum,
            nesterov=True,
        )
        groups = [
            {**group, "params": [p for p in group["params"] if id(p) not in in_muon]}
            for group in model.optimizer_groups(train.weight_decay)
        ]
        self.adamw = torch.optim.AdamW(
            [group for group in groups if group["params"]],
            lr=train.learning_rate,
            betas=(train.beta1, train.beta2),
            fused=device.type in ("cuda", "cpu"),
        )
        self.defaults = {}  # the base class's defaults: each part keeps its own
        self.on_cpu = device.type == "cpu"

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.muon.param_groups + self.adamw.param_groups

    @property
    def state(self) -> dict[torch.Tensor, Any]:
        return {**self.muon.state, **self.adamw.state}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:
        if closure is not None:
            raise ValueError("MuonWithAdamW takes no closure")
        with newton_schulz_in_float32() if self.on_cpu else contextlib.nullcontext():
            self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The saved state, with this run's ``lr_scale``: the saved groups would bring back the
        saved run's, and with it a ``train.muon_learning_rate`` changed since."""
        lr_scale = self.muon.param_groups[0]["lr_scale"]
        self.muon.load_state_dict(state_dict["muon"])
        self.muon.param_groups[0]["lr_scale"] = lr_scale
        self.adamw.load_state_dict(state_dict["adamw"])

    def __repr__(self) -> str:
        return f"MuonWithAdamW({self.muon!r}, {self.adamw!r})"
