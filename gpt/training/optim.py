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
biases and norm gains (:meth:`gpt.lm.LanguageModel.optimizer_groups`).

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
"""

from __future__ import annotations

import torch

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
    groups = model.optimizer_groups(train.weight_decay)
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=train.momentum)
    adam = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
    betas = (train.beta1, train.beta2)
    return adam(groups, lr=lr, betas=betas, fused=device.type in ("cuda", "cpu"))
