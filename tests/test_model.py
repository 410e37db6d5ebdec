"""The three language models: shapes, causality, initialisation, training, KV cache, bookkeeping."""

import math
import os
import stat

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from gpt.base.config import ModelConfig
from gpt.models.baselines import CNNLanguageModel, MLPLanguageModel
from gpt.models.gpt import GPT, build_model
from gpt.models.lm import GPT2_STD, LOGIT_STD, LanguageModel, TokenBatchNorm
from gpt.run.weights import load_model, save_model

ARCHS = ["gpt", "mlp", "cnn"]
VOCAB = 65
BLOCK = 32


def make_model(arch: str, seed: int = 0, **overrides) -> LanguageModel:
    fields = dict(
        arch=arch, n_layer=2, n_head=4, n_embd=32, block_size=BLOCK, vocab_size=VOCAB, context=4
    )
    torch.manual_seed(seed)
    return build_model(ModelConfig(**{**fields, **overrides}))


def random_tokens(*shape: int, vocab: int = VOCAB, seed: int = 1) -> torch.Tensor:
    return torch.randint(vocab, shape, generator=torch.Generator().manual_seed(seed))


def test_build_model_makes_the_configured_architecture():
    assert isinstance(make_model("gpt"), GPT)
    assert isinstance(make_model("mlp"), MLPLanguageModel)
    assert isinstance(make_model("cnn"), CNNLanguageModel)
    with pytest.raises(ValueError, match="vocab_size"):
        build_model(ModelConfig(arch="gpt", n_embd=32, n_head=4))


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_returns_logits_and_mean_cross_entropy(arch):
    model = make_model(arch)
    tokens = random_tokens(3, BLOCK + 1)
    inputs, targets = (
        tokens[:, :-1],
        tokens[:, 1:],
    )  # targets: a non-contiguous view, as in training

    logits, loss = model(inputs)
    assert logits.shape == (3, BLOCK, VOCAB)
    assert loss is None

    logits, loss = model(inputs, targets)
    expected = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
    assert loss.shape == ()
    torch.testing.assert_close(loss, expected)
    assert model.block_size == BLOCK


@pytest.mark.parametrize("arch", ARCHS)
def test_loss_ignores_targets_of_minus_one(arch):
    model = make_model(arch)
    inputs, targets = random_tokens(2, 8), random_tokens(2, 8, seed=2)
    ignored = targets.clone()
    ignored[:, 4:] = -1
    logits, loss = model(inputs, ignored)
    expected = F.cross_entropy(logits[:, :4].reshape(-1, VOCAB), targets[:, :4].reshape(-1))
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_changing_a_token_never_changes_earlier_logits(arch):
    model = make_model(arch).eval()
    tokens = random_tokens(2, BLOCK)
    changed = tokens.clone()
    t = 13
    changed[:, t] = (tokens[:, t] + 1) % VOCAB
    before, _ = model(tokens)
    after, _ = model(changed)
    torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=1e-6)
    assert not torch.allclose(after[:, t], before[:, t])  # the change does reach position t


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("init", ["xavier", "lecun", "gpt2"])
@pytest.mark.parametrize(("vocab", "n_embd"), [(65, 32), (65, 256), (1000, 64)])
def test_initial_loss_is_near_ln_vocab(arch, init, vocab, n_embd):
    model = make_model(arch, init=init, vocab_size=vocab, n_embd=n_embd)
    tokens = random_tokens(8, BLOCK + 1, vocab=vocab)
    _, loss = model(tokens[:, :-1], tokens[:, 1:])
    assert abs(loss.item() - math.log(vocab)) < 0.1 * math.log(vocab)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("n_embd", [32, 256])
def test_xavier_initial_logits_have_the_documented_spread(arch, n_embd):
    """The head is scaled for logits of standard deviation LOGIT_STD, whatever the width."""
    model = make_model(arch, n_embd=n_embd)
    logits, _ = model(random_tokens(8, BLOCK))
    assert logits.std().item() == pytest.approx(LOGIT_STD, rel=0.15)


def _matrices(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The Linear and Conv1d weights other than the output head."""
    return [
        (name, module.weight)
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv1d)) and name != "lm_head"
    ]


def _assert_variance(name: str, weight: torch.Tensor, expected: float) -> None:
    """Sample variance within 5 standard errors (sqrt(2/n) relative, the normal case, is the
    larger of normal and uniform weights)."""
    n = weight.numel()
    tolerance = 5 * math.sqrt(2 / n) * expected
    assert abs(weight.var().item() - expected) < tolerance, name
    assert abs(weight.mean().item()) < 5 * math.sqrt(expected / n), name


@pytest.mark.parametrize("arch", ARCHS)
def test_xavier_weights_have_glorot_variance(arch):
    model = make_model(arch, n_embd=64, bias=True)
    matrices = _matrices(model)
    assert len(matrices) >= 2
    for name, weight in matrices:
        fan_in, fan_out = weight[0].numel(), weight.size(0) * weight[0, 0].numel()
        _assert_variance(name, weight, 2 / (fan_in + fan_out))
    head = model.lm_head.weight
    _assert_variance("lm_head", head, LOGIT_STD**2 / head.size(1))
    for name, parameter in model.named_parameters():
        if name.endswith(".bias"):
            assert torch.all(parameter == 0), name


@pytest.mark.parametrize("arch", ARCHS)
def test_gpt2_init_is_normal_002_with_scaled_residual_projections(arch):
    model = make_model(arch, init="gpt2", n_embd=64)
    residual = [name for name, _ in model.named_modules() if name.endswith("residual_proj")]
    for name, weight in _matrices(model) + [("lm_head", model.lm_head.weight)]:
        std = GPT2_STD / math.sqrt(len(residual)) if name.endswith("residual_proj") else GPT2_STD
        _assert_variance(name, weight, std**2)
    assert len(residual) == {"gpt": 4, "mlp": 0, "cnn": 2}[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_lecun_weights_have_variance_one_over_fan_in(arch):
    model = make_model(arch, init="lecun", n_embd=64, bias=True)
    for name, weight in _matrices(model):
        _assert_variance(name, weight, 1 / weight[0].numel())  # weight[0]: one output's inputs
    head = model.lm_head.weight  # the head starts near the uniform distribution, as with xavier
    _assert_variance("lm_head", head, LOGIT_STD**2 / head.size(1))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("init", ["xavier", "lecun", "gpt2"])
def test_init_scale_multiplies_every_initial_weight(arch, init):
    """The same draws, times the scale: embeddings, matrices and head; biases and gains stay."""
    base = make_model(arch, init=init, norm="layer", bias=True).state_dict()
    scaled = make_model(arch, init=init, norm="layer", bias=True, init_scale=3.0).state_dict()
    for name, tensor in base.items():
        norm_or_bias = "norm" in name or name.endswith("bias")
        expected = tensor if norm_or_bias else 3.0 * tensor
        torch.testing.assert_close(scaled[name], expected, rtol=1e-6, atol=0, msg=name)


@pytest.mark.parametrize("arch", ["gpt", "cnn"])
@pytest.mark.parametrize("residual", [True, False])
def test_without_residual_connections_a_block_has_no_skip_path(arch, residual):
    """With every sublayer's output projection at zero, a block's sublayers add nothing: a block
    with the skip path passes x through, one without it outputs zero."""
    model = make_model(arch, residual=residual, bias=False)
    for name, parameter in model.named_parameters():
        if "residual_proj" in name:
            parameter.data.zero_()
    x = torch.randn(2, 8, 32)
    for block in model.blocks:
        expected = x if residual else torch.zeros_like(x)
        torch.testing.assert_close(block(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_norm_none_removes_every_normalisation_layer(arch):
    def norms(model):
        return [m for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.BatchNorm1d))]

    per_block = {"gpt": 2, "mlp": 0, "cnn": 1}[arch]
    assert len(norms(make_model(arch))) == 2 * per_block + 1  # and the final one
    without = make_model(arch, norm="none")
    assert norms(without) == []
    assert without.num_params() < make_model(arch).num_params()
    tokens = random_tokens(2, BLOCK)
    assert torch.isfinite(without(tokens, tokens)[1])


def test_batch_norm_normalises_each_channel_over_batch_and_time():
    model = make_model("cnn", norm="batch")
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(norms) == 3 and all(isinstance(m, TokenBatchNorm) for m in norms)
    norm = norms[0]
    x = 3.0 + 2.0 * torch.randn(4, 16, 32)
    y = norm(x)  # training mode: this batch's statistics over (batch, time), per channel
    assert y.shape == x.shape
    torch.testing.assert_close(y.mean(dim=(0, 1)), torch.zeros(32), rtol=0, atol=1e-5)
    torch.testing.assert_close(y.var(dim=(0, 1), unbiased=False), torch.ones(32), rtol=0, atol=1e-3)
    norm.eval()  # evaluation: the running averages, one update of momentum 0.1 from (0, 1)
    expected = (x - 0.1 * x.mean(dim=(0, 1))) / (0.9 + 0.1 * x.var(dim=(0, 1)) + norm.eps).sqrt()
    torch.testing.assert_close(norm(x), expected, rtol=1e-4, atol=1e-4)


def test_batch_norm_running_statistics_survive_saving_and_loading(tmp_path):
    model = make_model("cnn", norm="batch")
    model(random_tokens(4, BLOCK))  # a training-mode pass moves the running statistics
    path = tmp_path / "model.safetensors"
    save_model(path, model)
    loaded = load_model(path).eval()
    assert loaded.config.norm == "batch"
    tokens = random_tokens(2, BLOCK)
    torch.testing.assert_close(loaded(tokens)[0], model.eval()(tokens)[0], rtol=0, atol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_tiny_batch_is_learnt_by_heart(arch):
    model = make_model(arch)
    # Every token once: each context determines its next token, so zero loss is reachable.
    tokens = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(0))[: BLOCK + 1]
    inputs, targets = tokens[None, :-1], tokens[None, 1:]
    optimizer = torch.optim.AdamW(model.optimizer_groups(0.0), lr=3e-3)
    for _ in range(300):
        _, loss = model(inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05


@pytest.mark.parametrize("arch", ARCHS)
def test_dropout_acts_in_training_mode_only(arch):
    model = make_model(arch, dropout=0.5)
    tokens = random_tokens(2, BLOCK)
    model.train()
    assert not torch.equal(model(tokens)[0], model(tokens)[0])
    model.eval()
    evaluated = model(tokens)[0]
    assert torch.equal(evaluated, model(tokens)[0])
    without_dropout = make_model(arch, dropout=0.0)
    without_dropout.load_state_dict(model.state_dict())
    torch.testing.assert_close(evaluated, without_dropout.eval()(tokens)[0])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("bias", [True, False])
def test_optimizer_groups_hold_every_parameter_exactly_once(arch, bias):
    model = make_model(arch, bias=bias)
    decay, no_decay = model.optimizer_groups(weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    grouped = [id(p) for group in (decay, no_decay) for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    assert len(grouped) == len(set(grouped))
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"])
    assert any(p is model.token_embedding.weight for p in decay["params"])
    torch.optim.AdamW(model.optimizer_groups(0.1))  # refuses a parameter in two groups


def test_gpt_counts_its_tied_matrix_once():
    d, layers = 32, 2
    model = make_model("gpt", n_embd=d, n_layer=layers, bias=False)
    per_block = 12 * d * d + 2 * d  # q, k, v, projection, 4x MLP; two LayerNorm gains
    expected = VOCAB * d + BLOCK * d + layers * per_block + d
    assert model.num_params() == expected
    assert model.lm_head.weight is model.token_embedding.weight


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("bias", [True, False])
def test_flops_per_token_matches_counted_training_flops(arch, bias):
    """torch's FLOP counter over one forward and backward pass agrees with the estimate; only
    biases and norms, which the estimate counts and the counter does not, differ."""
    model = make_model(arch, bias=bias)
    tokens = random_tokens(2, BLOCK)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(tokens, tokens)[1].backward()
    counted = counter.get_total_flops() / tokens.numel()
    assert model.flops_per_token() == pytest.approx(counted, rel=0.04)
    assert model.flops_per_token() >= counted


def decoded_in_pieces(model: LanguageModel, tokens: torch.Tensor, cache) -> torch.Tensor:
    """The logits of ``tokens`` fed through ``cache`` from position 0: a prefill, one token at a
    time, then several tokens after the cached ones."""
    pieces = [model(tokens[:, :5], cache=cache)[0]]
    for t in range(5, 20):
        pieces.append(model(tokens[:, t : t + 1], cache=cache)[0])
    pieces.append(model(tokens[:, 20:], cache=cache)[0])
    return torch.cat(pieces, dim=1)


@pytest.mark.parametrize("static", [False, True], ids=["growing", "static"])
def test_kv_cache_decoding_matches_the_full_forward_pass(static):
    """The static cache (fixed shapes, for a compiled step) too, and again once emptied for reuse
    with other tokens: what its positions past the length still hold is masked out."""
    model = make_model("gpt").eval()
    tokens = random_tokens(3, BLOCK)
    cache = model.new_cache(batch_size=3, static=static)
    decoded = decoded_in_pieces(model, tokens, cache)
    assert cache.length == BLOCK
    torch.testing.assert_close(decoded, model(tokens)[0], rtol=0, atol=1e-5)
    if static:
        cache.clear()
        others = random_tokens(3, BLOCK, seed=2)
        decoded = decoded_in_pieces(model, others, cache)
        torch.testing.assert_close(decoded, model(others)[0], rtol=0, atol=1e-5)


def test_kv_cache_refuses_to_go_past_block_size():
    model = make_model("gpt").eval()
    cache = model.new_cache(batch_size=1)
    model(random_tokens(1, BLOCK - 1), cache=cache)
    model(random_tokens(1, 1), cache=cache)
    with pytest.raises(ValueError, match="block_size"):
        model(random_tokens(1, 1), cache=cache)
    with pytest.raises(ValueError, match="block_size"):
        model(random_tokens(1, BLOCK + 1))


def test_weight_tying_survives_saving_and_loading(tmp_path):
    model = make_model("gpt").eval()
    path = tmp_path / "model.safetensors"
    save_model(path, model)
    loaded = load_model(path).eval()
    assert loaded.lm_head.weight is loaded.token_embedding.weight
    torch.testing.assert_close(loaded.token_embedding.weight, model.token_embedding.weight)
    tokens = random_tokens(2, BLOCK)
    torch.testing.assert_close(loaded(tokens)[0], model(tokens)[0], rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_baselines_survive_saving_and_loading(tmp_path, arch):
    model = make_model(arch).eval()
    path = tmp_path / "model.safetensors"
    save_model(path, model)
    loaded = load_model(path).eval()
    assert loaded.config == model.config
    tokens = random_tokens(2, BLOCK)
    torch.testing.assert_close(loaded(tokens)[0], model(tokens)[0], rtol=0, atol=0)


def test_saved_weights_get_the_permissions_of_any_new_file(tmp_path):
    old_umask = os.umask(0o027)
    try:
        save_model(tmp_path / "model.safetensors", make_model("gpt"))
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "model.safetensors").stat().st_mode) == 0o640
