"""What every language model here shares: the loss, the parameter count, the FLOPs per token, the
optimizer's parameter groups, the normalisation layers and the weight initialisation schemes.

A subclass builds its layers, naming its output layer ``lm_head`` and every layer whose output is
added to a residual stream ``residual_proj``, taking its normalisation layers from :func:`norm_layer`,
then calls :meth:`LanguageModel.init_weights`.

Initialisation (``model.init``, ``model.init_scale``)
-----------------------------------------------------
All three schemes reason with Var(y) = n_in · Var(w) · Var(x), for y a sum of n_in products w·x.

``xavier`` (Glorot & Bengio, 2010), the default
    Every Linear and Conv1d weight is drawn from U(-a, a) with Var(w) = 2 / (fan_in + fan_out), the
    compromise between keeping the activations' variance through a layer (1 / fan_in) and keeping
    the gradients' variance (1 / fan_out). A fused query-key-value layer is one Linear(d, 3d) and is
    initialised as such. Biases start at zero, LayerNorm gains at one.

    The output head is the exception. Its input is LayerNorm'd (unit variance), so the logits have
    variance n_embd · Var(w). Xavier would make that 2 · n_embd / (vocab + n_embd): 1.7 for a
    65-character vocabulary and n_embd 384. Random logits of variance s² give an expected loss of
    about ln(vocab) + s²/2, so the model would start 20% above ln(vocab), confidently predicting
    noise, and spend its first steps unlearning it. A softmax layer should start near the uniform
    distribution instead, so the head is drawn from N(0, LOGIT_STD² / n_embd): the initial logits
    have standard deviation LOGIT_STD = 1/2 whatever the width and vocabulary, and the initial loss
    is about ln(vocab) + 1/8. (GPT-2 small's 0.02 gives 0.55.) GPT ties its head to the token
    embedding, one matrix that cannot satisfy the fans of both roles; it takes the head's
    distribution, which is what decides the initial loss. The other embedding tables (positions,
    the baselines' token tables) get the same distribution, so that token and position vectors start
    on one scale.

``lecun`` (LeCun, Bottou, Orr & Müller, "Efficient BackProp", 1998)
    Every Linear and Conv1d weight from N(0, 1 / fan_in): the choice that keeps the activations'
    variance through a linear layer, Var(y) = Var(x), and ignores what happens to the gradients on
    the way back (their variance is multiplied by fan_out / fan_in per layer, 4 in a 4x-wide MLP's
    first layer and 1/4 in its second). It suits a nonlinearity of slope one at zero, such as tanh;
    GELU's slope there is 1/2 and it keeps about a third of a unit-variance input's variance, so a
    deep GELU stack still shrinks under it (He et al., 2015, double it for ReLU for this reason). The
    head and the embedding tables are drawn as under ``xavier``, for the same reason as there.

``gpt2`` (Radford et al., 2019)
    Every weight and embedding from N(0, 0.02²), biases zero, LayerNorm gains one; the
    ``residual_proj`` layers are scaled by 1/sqrt(number of residual additions), 2 · n_layer in GPT,
    so that the residual stream's variance does not grow with depth.

``model.init_scale`` (default 1) multiplies the standard deviation of every weight a scheme draws,
matrices, embeddings and head alike (biases stay zero, norm gains one). It is there to get
initialisation wrong on purpose: without normalisation, each layer multiplies the activations'
variance by init_scale², so after L layers their standard deviation is off by init_scale ** L, and
the gradients on the way back by as much: they vanish or explode with depth.

Normalisation (``model.norm``)
------------------------------
``layer`` (Ba, Kiros & Hinton, 2016), the default
    LayerNorm: each position's vector is normalised over its own features, then scaled and shifted
    by learnt gains and biases. It looks at one position only, so it keeps a model causal, and it
    computes the same in training and in evaluation.
``batch`` (Ioffe & Szegedy, 2015), the CNN baseline only
    BatchNorm: each channel is normalised by its mean and variance over the batch and the time
    steps, (B, T) values, in training; by running averages of those in evaluation. The statistics
    over time mix the positions of a sequence: in training, the output at position t depends,
    weakly (through means over B · T values), on the positions after t, a leak of the future that
    LayerNorm does not have, and that evaluation with running averages does not have either. The
    config refuses it for GPT and the MLP; the CNN offers it as the course's batch norm, leak noted.
``rms`` (Zhang & Sennrich, 2019), Llama's
    RMSNorm: each position's vector divided by its root mean square, x / sqrt(mean(x²) + eps), then
    scaled by learnt gains; no mean subtracted, no bias. Cheaper than LayerNorm and, in practice, as
    good.
``none``
    No normalisation layers at all (including the one before the head).

``model.zero_init_proj`` starts every ``residual_proj`` (the output projections of attention and
MLP) at zero, whatever the scheme: each block then starts as the identity, x + 0, and the network as
the embedding followed by the head, the deep model growing from a shallow one (modded-nanogpt does
this). Their gradients are not zero, since their inputs are not, so they move at the first step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gpt.base.config import ModelConfig

LOGIT_STD = 0.5  # the initial logits' standard deviation under the xavier scheme
GPT2_STD = 0.02


class LanguageModel(nn.Module):
    """A causal language model: ``forward(idx, targets=None) -> (logits, loss)``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size must be set before building a model")
        self.config = config

    @property
    def block_size(self) -> int:
        """The longest context the model takes; generation crops its context to this."""
        return self.config.block_size

    @staticmethod
    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over all positions whose target is not -1."""
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)

    def num_params(self) -> int:
        """The number of parameters; a tied matrix counts once."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward and backward), for model FLOPs utilisation.

        Every weight that takes part in a matrix product costs 2 FLOPs per token forward (a multiply
        and an add) and 4 backward (gradients for its input and for itself): 6 per token. A Conv1d
        kernel of C_out x C_in x k weights applies each weight once per output position, so the
        same count holds for it. Embedding tables that are only indexed cost nothing, unless they
        double as the output head. Biases and norms are counted too, a negligible overestimate.
        """
        lookups = sum(
            module.weight.numel()
            for module in self.modules()
            if isinstance(module, nn.Embedding) and module.weight is not self.lm_head.weight
        )
        return 6.0 * (self.num_params() - lookups)

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """Two groups: weight decay on matrices, embeddings and kernels; none on biases and norms.

        ``parameters()`` yields a tied matrix once, so every parameter lands in exactly one group.
        """
        parameters = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0},
        ]

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every layer by ``config.init`` and ``config.init_scale`` (see the module
        docstring)."""
        scheme, scale = self.config.init, self.config.init_scale
        residual_additions = sum(name.endswith("residual_proj") for name, _ in self.named_modules())
        for name, module in self.named_modules():
            if isinstance(module, nn.Embedding) or name == "lm_head":
                _init_logit_scale(module.weight, scheme)
                module.weight.mul_(scale)
            elif isinstance(module, (nn.Linear, nn.Conv1d)):
                _init_matrix(module.weight, scheme)
                if scheme == "gpt2" and name.endswith("residual_proj"):
                    module.weight.div_(math.sqrt(residual_additions))
                module.weight.mul_(scale)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm, nn.BatchNorm1d)):
                module.reset_parameters()
            if self.config.zero_init_proj and name.endswith("residual_proj"):
                nn.init.zeros_(module.weight)
            if isinstance(getattr(module, "bias", None), nn.Parameter):
                nn.init.zeros_(module.bias)


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channels of (B, T, C) activations, statistics over batch and time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(0, -2)).view_as(x)


def norm_layer(config: ModelConfig, width: int) -> nn.Module:
    """The normalisation layer ``config.norm`` names, over the last dimension of size ``width``."""
    if config.norm == "layer":
        return nn.LayerNorm(width, eps=config.norm_eps, bias=config.bias)
    if config.norm == "rms":
        return nn.RMSNorm(width, eps=config.norm_eps)
    if config.norm == "batch":
        return TokenBatchNorm(width)
    return nn.Identity()


def _init_matrix(weight: torch.Tensor, scheme: str) -> None:
    if scheme == "xavier":
        nn.init.xavier_uniform_(weight)
    elif scheme == "lecun":
        nn.init.kaiming_normal_(weight, nonlinearity="linear")  # gain 1: N(0, 1 / fan_in)
    else:
        nn.init.normal_(weight, mean=0.0, std=GPT2_STD)


def _init_logit_scale(weight: torch.Tensor, scheme: str) -> None:
    """The output head (rows of width n_embd) and the embedding tables."""
    std = GPT2_STD if scheme == "gpt2" else LOGIT_STD / math.sqrt(weight.size(1))
    nn.init.normal_(weight, mean=0.0, std=std)
