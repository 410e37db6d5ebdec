"""The modern options of GPT (RoPE, RMSNorm, SwiGLU, QK-norm, grouped-query attention, an untied
head, zero-initialised projections) and the Muon optimizer: each changes the model or the update
as it claims, and a run with all of them learns and resumes exactly."""

import json
import re
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gpt.base.config import ModelConfig, TrainConfig, load_config
from gpt.base.errors import UserError
from gpt.models.gpt import GPT, GatedFeedForward, Rotation, build_model
from gpt.training.checkpoint import check_model_shape
from gpt.training.launch import check_launch
from gpt.training.optim import (
    MuonWithAdamW,
    build_optimizer,
    muon_matrices,
    newton_schulz_float32,
    set_learning_rate,
)
from gpt.training.trainer import Trainer

from .conftest import ROOT, run_python
from .test_optim import RUN, small_data  # noqa: F401 (a fixture)
from .test_trainer import (
    EQUIVALENCE,
    accelerate_launch,
    assert_same_weights,
    final_weights,
    free_port,
    read_metrics,
    train_args,
)

VOCAB, BLOCK = 37, 16
CPU = torch.device("cpu")
MODERN = dict(
    rope=True,
    norm="rms",
    activation="swiglu",
    qk_norm=True,
    n_kv_head=2,
    tie_embeddings=False,
    zero_init_proj=True,
    bias=False,
)


def make_gpt(seed: int = 0, **options) -> GPT:
    torch.manual_seed(seed)
    settings = dict(n_layer=2, n_head=4, n_embd=32, block_size=BLOCK, vocab_size=VOCAB)
    return build_model(ModelConfig(**{**settings, **options}))


def tokens(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(VOCAB, shape, generator=torch.Generator().manual_seed(seed))


# ----- each model option -------------------------------------------------------------------------


def test_rope_replaces_the_position_table_and_attends_by_relative_position():
    model = make_gpt(rope=True)
    assert "position_embedding.weight" not in dict(model.named_parameters())
    assert "position_embedding.weight" in dict(make_gpt().named_parameters())
    config = model.config  # head_dim 32 / 4 = 8
    q, k = torch.randn(2, 1, 1, 1, 8).unbind(0)  # (batch, head, position, head_dim) each

    def score(query_position: int, key_position: int) -> torch.Tensor:
        at_q = Rotation(torch.tensor([query_position], device=CPU), config)
        at_k = Rotation(torch.tensor([key_position], device=CPU), config)
        return (at_q.apply(q) * at_k.apply(k)).sum()

    torch.testing.assert_close(score(7, 3), score(17, 13))  # the same distance: the same score
    torch.testing.assert_close(score(3, 3), (q * k).sum())  # no distance: no rotation between them
    assert not torch.allclose(score(7, 3), score(7, 5))


def test_rope_model_sees_token_order_without_a_position_table():
    """Without a position table, attention alone would be order-blind up to causality: the first
    position's logits would be those of a model with no positions. RoPE makes order matter."""
    model = make_gpt(rope=True).eval()
    sequence = tokens(1, 8)
    swapped = sequence[:, [1, 0, *range(2, 8)]]
    logits, _ = model(sequence)
    logits_swapped, _ = model(swapped)
    assert not torch.allclose(logits[:, -1], logits_swapped[:, -1], atol=1e-6)


def test_rms_norm_replaces_layer_norm_with_a_learnable_scale():
    model = make_gpt(norm="rms")
    norms = [m for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.RMSNorm))]
    assert len(norms) == 2 * 2 + 1 and all(isinstance(m, nn.RMSNorm) for m in norms)
    assert all(m.weight.requires_grad and torch.equal(m.weight, torch.ones(32)) for m in norms)
    x = torch.randn(3, 32)
    expected = x / x.square().mean(-1, keepdim=True).add(1e-5).sqrt()
    torch.testing.assert_close(norms[0](x), expected)


def test_swiglu_is_a_gated_silu_mlp_of_the_configured_width():
    model = make_gpt(activation="swiglu", mlp_width=24)
    mlp = model.blocks[0].feed_forward
    assert isinstance(mlp, GatedFeedForward) and mlp.fc.out_features == 24
    x = torch.randn(2, 3, 32)
    expected = mlp.residual_proj(F.silu(mlp.gate(x)) * mlp.fc(x))
    torch.testing.assert_close(mlp(x), expected)
    default = make_gpt(activation="swiglu").blocks[0].feed_forward  # as many weights as 4x GELU
    assert default.fc.out_features == 88 and 3 * 88 * 32 == pytest.approx(2 * 128 * 32, rel=0.04)


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
    def logits_with_scaled_qk(qk_norm: bool, scale: float) -> torch.Tensor:
        model = make_gpt(qk_norm=qk_norm).eval()
        with torch.no_grad():
            for block in model.blocks:
                block.attention.qkv.weight[:64] *= scale  # the query and key rows
        return model(tokens(2, 8))[0]

    def change(qk_norm: bool) -> float:  # only the norm's epsilon tells the scales apart
        return (
            (logits_with_scaled_qk(qk_norm, 1.0) - logits_with_scaled_qk(qk_norm, 5.0)).abs().max()
        )

    assert change(qk_norm=True) < 1e-3 and change(qk_norm=False) > 1e-2
    attention = make_gpt(qk_norm=True).blocks[0].attention
    assert isinstance(attention.q_norm, nn.RMSNorm) and attention.q_norm.weight.shape == (8,)


def test_grouped_query_attention_shares_key_value_heads_and_caches_only_them():
    model = make_gpt(n_kv_head=2).eval()
    assert model.blocks[0].attention.qkv.out_features == 32 + 2 * 2 * 8
    cache = model.new_cache(batch_size=3)
    assert cache.keys.shape == (2, 3, 2, BLOCK, 8)  # (layer, batch, n_kv_head, block, head_dim)
    sequence = tokens(3, 10)
    full, _ = model(sequence)
    first, _ = model(sequence[:, :6], cache=cache)
    rest, _ = model(sequence[:, 6:], cache=cache)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full)
    with pytest.raises(UserError, match="n_kv_head"):
        load_config(None, ["model.n_head=4", "model.n_kv_head=3", "model.n_embd=32"])


def test_the_static_kv_cache_decodes_rotated_grouped_heads_as_the_growing_one():
    """Its keys are written at a position tensor and rotated from it, as a compiled step needs."""
    model = make_gpt(n_kv_head=2, rope=True, qk_norm=True).eval()
    sequence = tokens(3, 10)
    logits = {}
    for static in (False, True):
        cache = model.new_cache(batch_size=3, static=static)
        pieces = [model(sequence[:, :6], cache=cache)[0]]
        pieces += [model(sequence[:, t : t + 1], cache=cache)[0] for t in range(6, 10)]
        logits[static] = torch.cat(pieces, dim=1)
    torch.testing.assert_close(logits[True], logits[False], rtol=0, atol=1e-5)
    torch.testing.assert_close(logits[True], model(sequence)[0], rtol=0, atol=1e-5)


def test_untied_head_has_its_own_matrix_and_tying_stays_the_default():
    tied, untied = make_gpt(), make_gpt(tie_embeddings=False)
    assert tied.lm_head.weight is tied.token_embedding.weight
    assert untied.lm_head.weight is not untied.token_embedding.weight
    assert untied.num_params() == tied.num_params() + VOCAB * 32
    assert untied.flops_per_token() == tied.flops_per_token()  # the head is a product either way


def test_zero_initialised_projections_start_every_block_as_the_identity():
    model = make_gpt(zero_init_proj=True)
    projections = [m for name, m in model.named_modules() if name.endswith("residual_proj")]
    assert len(projections) == 2 * 2 and all(not p.weight.any() for p in projections)
    sequence = tokens(2, 8)
    x = model.token_embedding(sequence) + model.position_embedding.weight[:8]
    expected = model.lm_head(model.final_norm(x))
    logits, loss = model(sequence, sequence)
    torch.testing.assert_close(logits, expected)
    loss.backward()
    assert all(p.weight.grad.abs().sum() > 0 for p in projections)


def test_default_keys_build_the_textbook_gpt():
    model = make_gpt()
    assert isinstance(model.final_norm, nn.LayerNorm) and model.config.kv_heads == 4
    assert not isinstance(model.blocks[0].feed_forward, GatedFeedForward)
    assert model.blocks[0].attention.q_norm is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.rope=true", "model.n_embd=36", "model.n_head=4"], "must be even"),
        (["model.arch=mlp", "model.rope=true"], "model.rope are options of model.arch=gpt"),
        (["model.arch=cnn", "model.activation=swiglu"], "model.activation=swiglu are options"),
        (["train.muon_learning_rate=0.01"], "are for train.optimizer=muon"),
        (["model.n_embd=30", "model.n_head=4"], "or set model.head_dim"),
    ],
)
def test_inconsistent_modern_settings_are_refused_in_one_line(overrides, message):
    with pytest.raises(UserError, match=message):
        load_config(None, overrides)


def test_head_dim_decouples_the_heads_width_from_the_embedding():
    model = make_gpt(head_dim=16, n_kv_head=2)
    attention = model.blocks[0].attention
    assert attention.qkv.out_features == 4 * 16 + 2 * 2 * 16
    assert attention.residual_proj.in_features == 64
    assert model(tokens(2, 5))[0].shape == (2, 5, VOCAB)


@pytest.mark.parametrize(
    ("saved", "configured", "difference"),
    [
        (dict(), dict(rope=True), "model.rope: checkpoint False vs config True"),
        (MODERN, {**MODERN, "n_kv_head": 4}, "model.n_kv_head: checkpoint 2 vs config 4"),
        (MODERN, {**MODERN, "tie_embeddings": True}, "model.tie_embeddings: checkpoint False"),
    ],
)
def test_resuming_with_other_modern_options_is_refused(tmp_path, saved, configured, difference):
    settings = dict(n_layer=2, n_head=4, n_embd=32, block_size=BLOCK, vocab_size=VOCAB)
    state = {"model_config": ModelConfig(**settings, **saved).model_dump(mode="json")}
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))
    check_model_shape(tmp_path, ModelConfig(**settings, **saved))  # the same: fine
    with pytest.raises(UserError, match=re.escape(difference)):
        check_model_shape(tmp_path, ModelConfig(**settings, **configured))


# ----- Muon --------------------------------------------------------------------------------------


def test_muon_trains_the_blocks_matrices_and_adamw_the_rest():
    model = make_gpt(**MODERN)
    train = TrainConfig(optimizer="muon", learning_rate=1e-3, muon_learning_rate=0.02)
    optimizer = build_optimizer(model, train, CPU)
    assert isinstance(optimizer, MuonWithAdamW)
    muon = {id(p) for p in optimizer.muon.param_groups[0]["params"]}
    blocks_matrices = {id(p) for n, p in model.named_parameters() if n.startswith("blocks.")}
    blocks_matrices &= {id(p) for p in model.parameters() if p.dim() == 2}
    assert muon == blocks_matrices == {id(p) for p in muon_matrices(model)}
    adamw = [p for group in optimizer.adamw.param_groups for p in group["params"]]
    assert {id(p) for p in adamw} == {id(p) for p in model.parameters()} - muon
    assert id(model.lm_head.weight) in {id(p) for p in adamw}
    set_learning_rate(optimizer, 5e-4)  # the schedule at half the peak: both rates halved
    rates = [group["lr"] for group in optimizer.param_groups]
    assert rates[0] == pytest.approx(0.01) and rates[1:] == [5e-4, 5e-4]


def test_a_resumed_run_takes_the_muon_learning_rate_of_its_config():
    model = make_gpt(**MODERN)
    saved = build_optimizer(model, TrainConfig(optimizer="muon", muon_learning_rate=0.02), CPU)
    resumed = build_optimizer(model, TrainConfig(optimizer="muon", muon_learning_rate=0.04), CPU)
    resumed.load_state_dict(saved.state_dict())
    set_learning_rate(resumed, 1e-3)  # the peak
    assert resumed.param_groups[0]["lr"] == pytest.approx(0.04)


@pytest.mark.parametrize("variable", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_muon_refuses_a_sharded_launch(variable):
    muon = TrainConfig(optimizer="muon")
    check_launch(muon, {"ACCELERATE_USE_FSDP": "false"})  # plain DDP: fine
    with pytest.raises(UserError, match="muon orthogonalises whole weight matrices"):
        check_launch(muon, {variable: "true"})


def test_a_muon_step_is_an_orthogonalised_momentum():
    """From rest, Muon's first step is lr times about U V^T of the gradient G = U S V^T: all
    singular values of the change near one, however unequal the gradient's are."""
    weight = nn.Parameter(torch.zeros(8, 8))
    optimizer = torch.optim.Muon([weight], lr=1.0, weight_decay=0.0, nesterov=False)
    u, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(0)))
    weight.grad = u @ torch.diag(torch.logspace(0, -2, 8)) @ u.T  # singular values 1 .. 0.01
    optimizer.step()
    singular_values = torch.linalg.svdvals(weight.detach())
    assert singular_values.min() > 0.5 and singular_values.max() < 1.3, singular_values


def test_on_the_cpu_muon_orthogonalises_in_float32():
    """torch.optim.Muon's iteration, the same to bfloat16's precision, in float32: a Muon step of
    MuonWithAdamW on the CPU moves a matrix by exactly -lr x the float32 iteration's result."""
    gradient = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    coefficients = (3.4445, -4.775, 2.0315)
    in_bfloat16 = torch.optim._muon._zeropower_via_newtonschulz(gradient, coefficients, 5, 1e-7)
    in_float32 = newton_schulz_float32(gradient, coefficients, 5, 1e-7)
    assert in_bfloat16.dtype == torch.bfloat16 and in_float32.dtype == torch.float32
    difference = (in_float32 - in_bfloat16.float()).norm() / in_float32.norm()
    assert difference < 0.05  # bfloat16 keeps 8 bits: 2^-8 a product, five iterations of them
    assert torch.equal(newton_schulz_float32(gradient.T, coefficients, 5, 1e-7), in_float32.T)

    model = make_gpt(**MODERN)
    optimizer = build_optimizer(model, TrainConfig(optimizer="muon", muon_learning_rate=0.02), CPU)
    weight = optimizer.muon.param_groups[0]["params"][0]
    before = weight.detach().clone()
    model(tokens(2, 8), tokens(2, 8, seed=2))[1].backward()
    nesterov = weight.grad * (1 - 0.95**2)  # from rest: buffer 0.05 g, update g.lerp(buffer, 0.95)
    scale = max(1, weight.shape[0] / weight.shape[1]) ** 0.5  # Muon's learning-rate adjustment
    expected = before - 0.02 * scale * newton_schulz_float32(nesterov, coefficients, 5, 1e-7)
    optimizer.step()
    assert torch.allclose(weight.detach(), expected, atol=1e-6)


def test_muon_with_adamw_state_round_trips():
    model = make_gpt(**MODERN)
    train = TrainConfig(optimizer="muon")
    optimizer = build_optimizer(model, train, CPU)
    model(tokens(2, 8), tokens(2, 8, seed=2))[1].backward()
    optimizer.step()
    state = optimizer.state_dict()
    other = build_optimizer(model, train, CPU)
    other.load_state_dict(state)
    assert len(optimizer.state) == len(list(model.parameters()))
    for parameter, state in optimizer.state.items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(other.state[parameter][key]))


# ----- a real run with the modern preset ---------------------------------------------------------

MODERN_RUN = [o for o in RUN if not o.startswith("model.context")] + [
    "model.n_head=4",
    "model.n_kv_head=2",
    "train.batch_size=16",
]


def train_modern(data, out, *overrides: str) -> None:
    args = [f"data.dir={data}", f"train.out_dir={out}", *MODERN_RUN, *overrides]
    Trainer(load_config(ROOT / "configs" / "shakespeare_char_modern.yaml", args)).run()


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_the_modern_preset_learns_and_resumes_bitwise_with_muon(small_data, tmp_path):  # noqa: F811
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    train_modern(small_data, uninterrupted)
    losses = [r["loss"] for r in read_metrics(uninterrupted) if r["kind"] == "train"]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.3, losses

    shutil.copytree(uninterrupted, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_0000008")
    train_modern(small_data, resumed)
    assert_same_weights(final_weights(uninterrupted), final_weights(resumed))


@pytest.mark.slow
def test_the_modern_preset_trains_the_same_model_in_two_processes(shakespeare_char, tmp_path):
    """Muon steps on the all-reduced gradient: 2 gloo processes of 4 sequences each train the model
    that one process trains on the 8. Not to fp32's precision: the all-reduce sums in another
    order, and the Newton-Schulz iterations (in float32 on the CPU) magnify differences of 1e-7
    in the gradient, so the tolerance is the one set when they ran in bfloat16, 2^-8 of a step."""
    modern = ["model.n_head=4", "model.n_kv_head=2", *EQUIVALENCE]
    one, two = tmp_path / "one_process", tmp_path / "two_processes"
    config = "shakespeare_char_modern.yaml"
    runs = [
        run_python(
            *train_args(shakespeare_char, one, *modern, "train.batch_size=8", config=config)
        ),
        run_python(
            *accelerate_launch(machines=1, machine_rank=0, port=free_port()),
            *train_args(shakespeare_char, two, *modern, "train.batch_size=4", config=config),
        ),
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    assert_same_weights(final_weights(one), final_weights(two), atol=1e-3)
