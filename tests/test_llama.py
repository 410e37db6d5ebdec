"""Llama and Qwen3 weights in and out (gpt/interop/llama.py), checked against transformers itself, offline.

Tiny random Llama and Qwen3 models are built by transformers from a config, every weight perturbed
(so a norm or a projection mapped to the wrong place shows); our modern GPT is exported and loaded
back by transformers. Logits must agree to 1e-4 in fp32.
"""

import json
import math
from pathlib import Path

import pytest
import torch

from gpt.base.config import ModelConfig
from gpt.base.errors import UserError
from gpt.export import export_hf
from gpt.interop.gpt2 import gpt2_problems
from gpt.interop.llama import llama_problems
from gpt.interop.pretrained import load_pretrained, read_folder
from gpt.models.gpt import GPT

from .conftest import ROOT, run_python
from .test_gpt2 import (  # noqa: F401 (bpe is a fixture)
    VOCAB,
    bpe,
    hf_logits,
    hf_model,
    our_logits,
    random_ids,
    trained_folder,
)

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4
# SmolLM2-135M's kind: grouped-query attention, tied embeddings; Qwen3's: QK-norm, head_dim apart.
HF_MODELS = {
    "llama": lambda vocab: transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
    ),
    "qwen3": lambda vocab: transformers.Qwen3Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=False,
    ),
}


def make_hf_folder(folder: Path, kind: str, tokenizer) -> Path:
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(HF_MODELS[kind](tokenizer.vocab_size))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    model.save_pretrained(folder)
    tokenizer.save(folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="module", params=list(HF_MODELS))
def hf_folder(request, tmp_path_factory, bpe) -> Path:  # noqa: F811
    return make_hf_folder(tmp_path_factory.mktemp("hf") / request.param, request.param, bpe)


def test_imported_weights_give_the_logits_of_transformers(hf_folder):
    model = load_pretrained(hf_folder)
    config = model.config
    assert (config.rope, config.norm, config.activation) == (True, "rms", "swiglu")
    assert config.qk_norm == (hf_folder.name == "qwen3") and config.kv_heads == 2
    assert config.tie_embeddings == (hf_folder.name == "llama") and model.block_size == 64
    ids = random_ids(3, 64, VOCAB)
    expected = hf_logits(hf_model(hf_folder), ids)
    torch.testing.assert_close(our_logits(model, ids), expected, atol=TOLERANCE, rtol=0)


def test_a_config_that_contradicts_the_weights_is_refused(hf_folder):
    folder = read_folder(hf_folder)
    assert folder.model_config(ModelConfig(dropout=0.1, block_size=16)).block_size == 16
    with pytest.raises(UserError, match=r"model.n_kv_head=1 \(the weights have 2\)"):
        folder.model_config(ModelConfig(n_kv_head=1))
    with pytest.raises(UserError, match="longer than the context .*max_position_embeddings=64"):
        folder.model_config(ModelConfig(block_size=128))


def edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: edit_config(f, hidden_act="gelu"), "sets hidden_act=gelu"),
        (lambda f: edit_config(f, rope_scaling={"rope_type": "yarn"}), "sets rope_scaling="),
        (lambda f: edit_config(f, model_type="mistral"), "holds a mistral model"),
        (lambda f: edit_config(f, hidden_size=64), "do not match its config.json"),
        (lambda f: (f / "model.safetensors").rename(f / "pytorch_model.bin"), "is a pickle"),
    ],
)
def test_a_folder_this_gpt_cannot_take_is_refused_in_one_line(tmp_path, bpe, damage, message):  # noqa: F811
    folder = make_hf_folder(tmp_path / "llama", "llama", bpe)
    damage(folder)
    with pytest.raises(UserError, match=message):
        load_pretrained(folder)


# ----- export ------------------------------------------------------------------------------------

EXPORTED = {
    "llama: GQA, untied": dict(n_kv_head=2, tie_embeddings=False),
    "qwen3: QK-norm, head_dim apart, tied": dict(qk_norm=True, head_dim=16, n_kv_head=2),
}


@pytest.mark.parametrize("options", list(EXPORTED.values()), ids=list(EXPORTED))
def test_exported_modern_models_give_our_logits_in_transformers(tmp_path, bpe, options):  # noqa: F811
    torch.manual_seed(0)
    config = ModelConfig(
        n_layer=2,
        n_head=4,
        n_embd=32,
        block_size=48,
        vocab_size=bpe.vocab_size,
        rope=True,
        rope_base=500.0,
        norm="rms",
        activation="swiglu",
        bias=False,
        **options,
    )
    model = GPT(config)
    with torch.no_grad():  # norm gains away from their initial ones
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    exported = export_hf(trained_folder(tmp_path / "run", model, bpe), tmp_path / "hf")
    hf_config = json.loads((exported / "config.json").read_text())
    family = "Qwen3ForCausalLM" if config.qk_norm else "LlamaForCausalLM"
    assert hf_config["architectures"] == [family]
    ids = random_ids(3, 48, bpe.vocab_size)
    reference = hf_model(exported)
    assert type(reference).__name__ == family
    torch.testing.assert_close(
        hf_logits(reference, ids), our_logits(model, ids), atol=TOLERANCE, rtol=0
    )
    back = load_pretrained(exported)  # and in again: the very same weights
    assert torch.equal(our_logits(back, ids), our_logits(model.eval(), ids))


def test_a_llama_folder_fine_tunes_through_train_py(tmp_path, hf_folder):
    data = tmp_path / "data"
    prepared = run_python(
        "-m", "data_prep", "--input", str(ROOT / "data" / "tinyshakespeare.txt"),
        "--tokenizer", str(hf_folder), "--out", str(data),
    )  # fmt: skip
    assert prepared.returncode == 0, prepared.stderr
    out = tmp_path / "run"
    trained = run_python(
        "train.py", str(ROOT / "configs" / "finetune_gpt2_shakespeare.yaml"),
        f"data.dir={data}", f"train.init_from={hf_folder}", f"train.out_dir={out}",
        "model.block_size=32", "train.batch_size=4", "train.gradient_accumulation_steps=1",
        "train.max_iters=2", "train.eval_interval=2", "train.eval_iters=2",
        "train.warmup_iters=1", "train.mixed_precision='no'", "train.cpu=true",
        "train.wandb.mode=disabled",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    first_eval = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first_eval["step"] == 0 and math.isfinite(first_eval["val_loss"])
    assert "rope: true" in (out / "config.yaml").read_text()


def test_which_family_a_gpt_exports_as():
    textbook_written_out = ModelConfig(n_embd=32, n_head=4, n_kv_head=4, head_dim=8, mlp_width=128)
    assert gpt2_problems(textbook_written_out) == []
    assert gpt2_problems(ModelConfig(n_embd=32, n_head=4, n_kv_head=2)) == [
        "model.n_kv_head=2 (GPT-2 has n_head key/value heads)"
    ]
    assert [problem.split("=")[0] for problem in llama_problems(ModelConfig(rope=True))] == [
        "model.norm",
        "model.activation",
        "model.bias",
    ]
    modern = ModelConfig(rope=True, norm="rms", activation="swiglu", bias=False)
    assert llama_problems(modern) == []
