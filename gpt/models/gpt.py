"""GPT: a GPT-2-style decoder-only transformer, its KV cache for generation, and ``build_model``.

The model, for a batch of token ids ``idx`` of shape (B, T)::

    x = dropout(token_embedding[idx] + position_embedding[0..T-1])      # (B, T, n_embd)
    for each of n_layer blocks:                                         # pre-LayerNorm residual
        x = x + dropout(attention(LayerNorm(x)))                        #   causal, multi-head
        x = x + dropout(W2 · GELU(W1 · LayerNorm(x)))                   #   4x wide MLP
    logits = LayerNorm(x) · token_embedding^T                           # (B, T, vocab)

``model.residual: false`` drops the ``x +`` of both lines, and ``model.norm: none`` the LayerNorms,
for the depth lesson (configs/experiments/depth.yaml). The output head shares its matrix with the
token embedding (weight tying, Press & Wolf, 2017).

The modern options, each one key, together Llama's and Qwen3's design (configs/llama_124m.yaml):
``rope`` (rotary positions, :class:`Rotation`, instead of the position table), ``norm: rms``
(RMSNorm, gpt/lm.py), ``activation: swiglu`` (:class:`GatedFeedForward`), ``qk_norm``,
``n_kv_head`` (grouped-query attention), ``tie_embeddings: false`` and ``zero_init_proj``
(gpt/lm.py). With every key at its default the model is the textbook one above.

Attention runs through ``F.scaled_dot_product_attention``, which picks a fused or flash kernel
where one is available. GELU is by default the exact one, x·Φ(x), rather than GPT-2's tanh
approximation: the two differ by less than 1e-3 and a model trained from scratch does not care, but
PyTorch's CPU kernel for the exact form is about 2.4 times faster, which makes the whole training
step of the small CPU config several percent faster (bench/README.md). ``model.activation:
gelu_tanh`` selects the approximation, which pretrained GPT-2 weights need (gpt/gpt2.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gpt.base.config import ModelConfig
from gpt.models.baselines import CNNLanguageModel, MLPLanguageModel
from gpt.models.lm import LanguageModel, norm_layer


class Rotation:
    """Rotary position embedding (RoPE; Su et al., 2021) for the tokens at ``positions``.

    Each head's features are split into two halves, (x1, x2), and the pair (x1[i], x2[i]) is
    rotated by the angle position · base^(-2i / head_dim). Rotating queries and keys so makes
    q·k depend on their positions only through the difference of the two, so attention sees
    relative positions and no position table is learnt. The halves layout (``rotate_half``) is
    Llama's and Qwen's in transformers, so their weights load without permutation. Cosines and
    sines are computed in fp32, as transformers does, then cast to the activations' dtype.
    """

    def __init__(self, positions: torch.Tensor, config: ModelConfig):
        head_dim = config.attention_head_dim
        device = positions.device
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float()
        inverse_wavelengths = 1.0 / (config.rope_base ** (exponents / head_dim))
        angles = torch.outer(positions.float(), inverse_wavelengths)  # (time, head_dim / 2)
        angles = torch.cat([angles, angles], dim=-1)  # (time, head_dim): both halves
        self.cos, self.sin = angles.cos(), angles.sin()

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, heads, time, head_dim) rotated: x · cos + rotate_half(x) · sin."""
        first, second = x.chunk(2, dim=-1)
        rotated_half = torch.cat([-second, first], dim=-1)
        cos, sin = self.cos.to(x.dtype), self.sin.to(x.dtype)
        return x * cos + rotated_half * sin


def check_room(start: int, new: int, block_size: int) -> None:
    """Refuse to feed ``new`` tokens at position ``start`` past the model's context."""
    if start + new > block_size:
        raise ValueError(
            f"cannot feed {new} tokens at position {start}: the model's context is "
            f"block_size={block_size} tokens"
        )


class KVCache:
    """The keys and values of the tokens fed so far, for every layer, so that generating a token
    costs one position's work instead of re-running the whole context.

    The tensors are allocated once at their full length (B, n_kv_head, block_size, head_dim) per
    layer (grouped-query attention stores only its key/value heads); ``length`` counts the positions
    filled, and :meth:`GPT.forward` advances it. Keys are stored rotated (RoPE), each at the
    position it was fed at. Attention reads the filled positions alone, so its shapes grow with
    every token; :class:`StaticKVCache` keeps them fixed.
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_head: int,
        block_size: int,
        head_dim: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        shape = (n_layer, batch_size, n_head, block_size, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    def positions(self, new: int) -> torch.Tensor:
        """The positions of the next ``new`` tokens: length..length+new-1."""
        check_room(self.length, new, self.keys.size(3))
        return torch.arange(self.length, self.length + new, device=self.keys.device)

    def advance(self, new: int) -> None:
        """Count ``new`` more positions as filled (once every layer has stored them)."""
        self.length += new

    def update(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions' keys and values of ``layer``; return all of them so far."""
        end = self.length + keys.size(2)
        self.keys[layer, :, :, self.length : end] = keys
        self.values[layer, :, :, self.length : end] = values
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def causal_mask(self, new_positions: int) -> torch.Tensor | None:
        """(new, length + new) booleans: a new token sees every cached position and itself.

        None for a single new token, the common case when generating: it sees every position, so
        attention needs no mask, and leaving it out makes a decoding step 10-20% faster on a CPU.
        """
        if new_positions == 1:
            return None
        total = self.length + new_positions
        mask = torch.ones(new_positions, total, dtype=torch.bool, device=self.keys.device)
        return mask.tril(diagonal=self.length)


class StaticKVCache(KVCache):
    """A KV cache whose tensors keep their shapes from token to token, so that a decoding step can
    be compiled once and replayed as a CUDA graph (:mod:`gpt.models.generate`'s compiled path).

    ``length`` is a tensor on the device, advanced in place; new keys and values are written at
    it, and attention reads all ``block_size`` positions, the unfilled ones masked out. The host
    never reads the length: feeding past ``block_size`` is the caller's to avoid (the write then
    fails on its index).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.length = torch.zeros((), dtype=torch.long, device=self.keys.device)

    def positions(self, new: int) -> torch.Tensor:
        return self.length + torch.arange(new, device=self.keys.device)

    def advance(self, new: int) -> None:
        self.length.add_(new)

    def clear(self) -> None:
        """Empty the cache for reuse (what the positions past its length hold is never read)."""
        self.length.zero_()

    def update(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        positions = self.positions(keys.size(2))
        self.keys[layer].index_copy_(2, positions, keys.to(self.keys.dtype))
        self.values[layer].index_copy_(2, positions, values.to(self.values.dtype))
        return self.keys[layer], self.values[layer]

    def causal_mask(self, new_positions: int) -> torch.Tensor:
        """(new, block_size) booleans: a new token sees the filled positions and itself."""
        every_position = torch.arange(self.keys.size(3), device=self.keys.device)
        return every_position <= self.positions(new_positions)[:, None]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; with ``n_kv_head`` < ``n_head``, grouped-query attention
    (each key/value head serves n_head / n_kv_head query heads), with ``qk_norm`` an RMSNorm of
    every query and key head, and with ``rope`` the rotary position embedding of both."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head = config.n_head, config.kv_heads
        self.head_dim = config.attention_head_dim
        self.dropout = config.dropout
        widths = [self.n_head * self.head_dim, 2 * self.n_kv_head * self.head_dim]
        self.qkv = nn.Linear(config.n_embd, sum(widths), bias=config.bias)
        self.residual_proj = nn.Linear(widths[0], config.n_embd, bias=config.bias)
        self.residual_dropout = nn.Dropout(config.dropout)
        if config.qk_norm:
            self.q_norm = nn.RMSNorm(self.head_dim, eps=config.norm_eps)
            self.k_norm = nn.RMSNorm(self.head_dim, eps=config.norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
        rotation: Rotation | None = None,
    ) -> torch.Tensor:
        batch, time, _ = x.shape
        q_width, kv_width = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        q, k, v = self.qkv(x).split([q_width, kv_width, kv_width], dim=2)
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rotation is not None:
            q, k = rotation.apply(q), rotation.apply(k)
        dropout_p = self.dropout if self.training else 0.0
        grouped = {"enable_gqa": True} if self.n_kv_head != self.n_head else {}
        if cache is None:
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout_p, is_causal=True, **grouped
            )
        else:
            mask = cache.causal_mask(time)
            k, v = cache.update(layer, k, v)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, **grouped
            )
        y = y.transpose(1, 2).reshape(batch, time, q_width)  # heads side by side again
        return self.residual_dropout(self.residual_proj(y))

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, heads · head_dim) -> (B, heads, T, head_dim), a view."""
        batch, time, width = t.shape
        return t.view(batch, time, width // self.head_dim, self.head_dim).transpose(1, 2)


class FeedForward(nn.Module):
    """W2 · GELU(W1 · x): GPT-2's MLP."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        width = config.feed_forward_width
        self.fc = nn.Linear(config.n_embd, width, bias=config.bias)
        self.residual_proj = nn.Linear(width, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.gelu_approximation = "tanh" if config.activation == "gelu_tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.gelu(self.fc(x), approximate=self.gelu_approximation)
        return self.dropout(self.residual_proj(hidden))


class GatedFeedForward(nn.Module):
    """W2 · (SiLU(W_gate · x) ⊙ W1 · x): the SwiGLU MLP (Shazeer, 2020) of Llama and Qwen.

    The gate, a smooth 0-to-1 switch per hidden unit computed from the input, multiplies a second
    linear map of the same input; three matrices instead of two, hence the narrower default width.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        width = config.feed_forward_width
        self.gate = nn.Linear(config.n_embd, width, bias=config.bias)
        self.fc = nn.Linear(config.n_embd, width, bias=config.bias)
        self.residual_proj = nn.Linear(width, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.silu(self.gate(x)) * self.fc(x)
        return self.dropout(self.residual_proj(hidden))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.residual = config.residual
        self.attention_norm = norm_layer(config, config.n_embd)
        self.attention = CausalSelfAttention(config)
        self.feed_forward_norm = norm_layer(config, config.n_embd)
        mlp = GatedFeedForward if config.activation == "swiglu" else FeedForward
        self.feed_forward = mlp(config)

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
        rotation: Rotation | None = None,
    ) -> torch.Tensor:
        x = self._add(x, self.attention(self.attention_norm(x), cache, layer, rotation))
        return self._add(x, self.feed_forward(self.feed_forward_norm(x)))

    def _add(self, x: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        """x + update along the residual path; without one (``model.residual: false``), update."""
        return x + update if self.residual else update


class GPT(LanguageModel):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.token_embedding = nn.Embedding(config.vocab_size, config.n_embd)
        if not config.rope:
            self.position_embedding = nn.Embedding(config.block_size, config.n_embd)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.final_norm = norm_layer(config, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight  # weight tying
        self.init_weights()

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) for token ids ``idx`` (B, T), and the loss if ``targets`` are given.

        With a ``cache``, ``idx`` holds the next tokens after the ``cache.length`` already fed; they
        see those through the cache, which is then extended by them.
        """
        time = idx.size(1)
        if cache is None:
            check_room(0, time, self.block_size)
            positions = torch.arange(time, device=idx.device)
        else:
            positions = cache.positions(time)
        x = self.token_embedding(idx)
        rotation = None
        if self.config.rope:
            rotation = Rotation(positions, self.config)
        else:
            x = x + self.position_embedding(positions)
        x = self.embedding_dropout(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer, rotation)
        logits = self.lm_head(self.final_norm(x))
        if cache is not None:
            cache.advance(time)
        return logits, None if targets is None else self.loss(logits, targets)

    def new_cache(self, batch_size: int, static: bool = False) -> KVCache:
        """An empty KV cache for generating ``batch_size`` sequences with this model; ``static``:
        one of fixed shapes, for a compiled decoding step (:class:`StaticKVCache`)."""
        config = self.config
        weight = self.token_embedding.weight
        return (StaticKVCache if static else KVCache)(
            n_layer=config.n_layer,
            batch_size=batch_size,
            n_head=config.kv_heads,
            block_size=config.block_size,
            head_dim=config.attention_head_dim,
            device=weight.device,
            dtype=weight.dtype,
        )

    def flops_per_token(self) -> float:
        """6 FLOPs per matrix weight (see the base class) plus attention's own products.

        Per layer and token, the scores q·k and the weighted sum of values each take n_head ·
        head_dim (n_embd by default) multiply-adds per context position: 4 · n_embd · block_size
        FLOPs forward, three times that with the backward pass. This is the PaLM / nanoGPT
        estimate, 6N + 12 · n_layer · n_embd · block_size, which counts the full context rather
        than the causal half.
        """
        config = self.config
        width = config.n_head * config.attention_head_dim
        attention = 12 * config.n_layer * width * config.block_size
        return super().flops_per_token() + attention


_ARCHITECTURES: dict[str, type[LanguageModel]] = {
    "gpt": GPT,
    "mlp": MLPLanguageModel,
    "cnn": CNNLanguageModel,
}


def build_model(config: ModelConfig) -> LanguageModel:
    """The model ``config.arch`` names, freshly initialised; ``config.vocab_size`` must be set."""
    return _ARCHITECTURES[config.arch](config)
