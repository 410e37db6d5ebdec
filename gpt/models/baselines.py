"""Two baselines to compare GPT against on the same data, trainer, checkpoints and sampler.

``model.arch: mlp``: :class:`MLPLanguageModel`, a fixed-window MLP (Bengio et al., 2003).
``model.arch: cnn``: :class:`CNNLanguageModel`, causal dilated convolutions (WaveNet-style).

Both end like GPT, in a LayerNorm (``model.norm``) and an output head, so the same initialisation reasoning (see
:mod:`gpt.models.lm`) gives an initial loss near ln(vocab) for all three. Their heads are not tied to the
token embedding. Neither has position embeddings, so neither has a hard length limit: ``block_size``
is only the context that generation keeps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gpt.base.config import ModelConfig
from gpt.models.lm import LanguageModel, norm_layer

DILATION_CYCLE = 8  # CNN dilations run 1, 2, 4, ..., 128, then start again at 1


class MLPLanguageModel(LanguageModel):
    """Position t sees the ``context`` tokens t-context+1..t, embedded and concatenated.

    ``n_layer`` hidden layers of width 4 · n_embd, each Linear, GELU (tanh approximation) and
    dropout, then LayerNorm and the output head. Positions before the start of the sequence are
    zero vectors ("no token"), so the first tokens of a sequence are predicted from a shorter
    context, as at the start of generation.
    """

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        width = 4 * config.n_embd
        self.token_embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.embedding_dropout = nn.Dropout(config.dropout)
        layers: list[nn.Module] = []
        fan_in = config.context * config.n_embd
        for _ in range(config.n_layer):
            layers += [
                nn.Linear(fan_in, width, bias=config.bias),
                nn.GELU(approximate="tanh"),
                nn.Dropout(config.dropout),
            ]
            fan_in = width
        self.hidden = nn.Sequential(*layers)
        self.final_norm = norm_layer(config, width)
        self.lm_head = nn.Linear(width, config.vocab_size, bias=False)
        self.init_weights()

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.embedding_dropout(self.token_embedding(idx))
        logits = self.lm_head(self.final_norm(self.hidden(self._windows(x))))
        return logits, None if targets is None else self.loss(logits, targets)

    def _windows(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, n_embd) -> (B, T, context · n_embd): each position's window, concatenated."""
        context = self.config.context
        padded = F.pad(x, (0, 0, context - 1, 0))  # context-1 zero vectors before the first token
        windows = padded.unfold(1, context, 1)  # (B, T, n_embd, context), a view
        return windows.transpose(2, 3).flatten(2)


class CausalConvBlock(nn.Module):
    """x + dropout(W · GELU(conv(LayerNorm(x)))), the convolution padded on the left only.

    Left padding of (kernel_size - 1) · dilation makes the output at t depend on inputs t,
    t - dilation, ..., t - (kernel_size - 1) · dilation and never on the future. ``model.norm``
    swaps the LayerNorm for BatchNorm or nothing, and ``model.residual: false`` drops the ``x +``.
    """

    def __init__(self, config: ModelConfig, dilation: int):
        super().__init__()
        self.residual = config.residual
        self.norm = norm_layer(config, config.n_embd)
        self.left_padding = (config.kernel_size - 1) * dilation
        self.conv = nn.Conv1d(
            config.n_embd, config.n_embd, config.kernel_size, dilation=dilation, bias=config.bias
        )
        self.residual_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x).transpose(1, 2)  # Conv1d wants (B, channels, T)
        h = self.conv(F.pad(h, (self.left_padding, 0))).transpose(1, 2)
        update = self.dropout(self.residual_proj(F.gelu(h, approximate="tanh")))
        return x + update if self.residual else update


class CNNLanguageModel(LanguageModel):
    """Token embedding, ``n_layer`` causal dilated convolution blocks, LayerNorm, output head.

    Block i has dilation 2 ** (i % DILATION_CYCLE), so the receptive field doubles with each block:
    1 + (kernel_size - 1) · (2 ** n_layer - 1) tokens within a cycle, 127 for six blocks of width 3.
    """

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.token_embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.Sequential(
            *(CausalConvBlock(config, 2 ** (i % DILATION_CYCLE)) for i in range(config.n_layer))
        )
        self.final_norm = norm_layer(config, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.init_weights()

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.blocks(self.embedding_dropout(self.token_embedding(idx)))
        logits = self.lm_head(self.final_norm(x))
        return logits, None if targets is None else self.loss(logits, targets)
