"""What every language model here shares: the loss, the parameter count, the FLOPs per token, the
optimizer's parameter groups, and the two weight initialisation schemes.

A subclass builds its layers, naming its output layer ``lm_head`` and every layer whose output is
added to a residual stream ``residual_proj``, then calls :meth:`LanguageModel.init_weights`.

Initialisation (``model.init``)
-------------------------------
Both schemes reason with Var(y) = n_in · Var(w) · Var(x), for y a sum of n_in products w·x.

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

``gpt2`` (Radford et al., 2019)
    Every weight and embedding from N(0, 0.02²), biases zero, LayerNorm gains one; the
    ``residual_proj`` layers are scaled by 1/sqrt(number of residual additions), 2 · n_layer in GPT,
    so that the residual stream's variance does not grow with depth.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gpt.config import ModelConfig

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
        """Two AdamW groups: decay on matrices, embeddings and kernels; none on biases and norms.

        ``parameters()`` yields a tied matrix once, so every parameter lands in exactly one group.
        """
        parameters = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0},
        ]

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every layer by ``config.init`` (see the module docstring)."""
        scheme = self.config.init
        residual_additions = sum(name.endswith("residual_proj") for name, _ in self.named_modules())
        for name, module in self.named_modules():
            if isinstance(module, nn.Embedding) or name == "lm_head":
                _init_logit_scale(module.weight, scheme)
            elif isinstance(module, (nn.Linear, nn.Conv1d)):
                _init_matrix(module.weight, scheme)
                if scheme == "gpt2" and name.endswith("residual_proj"):
                    module.weight.div_(math.sqrt(residual_additions))
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
            if isinstance(getattr(module, "bias", None), nn.Parameter):
                nn.init.zeros_(module.bias)


def _init_matrix(weight: torch.Tensor, scheme: str) -> None:
    if scheme == "xavier":
        nn.init.xavier_uniform_(weight)
    else:
        nn.init.normal_(weight, mean=0.0, std=GPT2_STD)


def _init_logit_scale(weight: torch.Tensor, scheme: str) -> None:
    """The output head (rows of width n_embd) and the embedding tables."""
    std = LOGIT_STD / math.sqrt(weight.size(1)) if scheme == "xavier" else GPT2_STD
    nn.init.normal_(weight, mean=0.0, std=std)
