"""GPT-2 weights in and out, checked against Hugging Face transformers itself (offline).

Tiny random GPT-2 models are made by transformers in the tests, with every weight perturbed (so a
bias or a LayerNorm mapped to the wrong place shows), and a tiny byte-level BPE tokenizer is trained
on the bundled corpus by our own data_prep code.
"""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gpt.base.config import ModelConfig
from gpt.base.errors import UserError
from gpt.data.tokenizer import END_OF_TEXT, Tokenizer, train_bpe_tokenizer, train_char_tokenizer
from gpt.interop.export import export_hf
from gpt.interop.gpt2 import GPT2Folder, load_gpt2
from gpt.models.generate import SamplingSettings, generate, generate_text
from gpt.models.gpt import GPT
from gpt.run.weights import save_model

from .conftest import CORPUS, ROOT, run_python

transformers = pytest.importorskip("transformers")

VOCAB = 320
TOLERANCE = 1e-5  # float32 logits
PROMPT = "ROMEO:\nWhat light"


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    text = CORPUS.read_text(encoding="utf-8")[:100_000]
    return train_bpe_tokenizer(iter([text]), VOCAB)


def make_hf_gpt2(folder: Path, tokenizer: Tokenizer, activation: str = "gelu_new") -> Path:
    """A random 2-layer GPT-2 saved by transformers, every weight perturbed, with the tokenizer
    saved beside it the way a Hub download has it."""
    config = transformers.GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        n_positions=64,
        vocab_size=tokenizer.vocab_size,
        activation_function=activation,
        bos_token_id=None,
        eos_token_id=None,
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    model.save_pretrained(folder)
    hf_tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.hf, eos_token=END_OF_TEXT, bos_token=END_OF_TEXT
    )
    hf_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory, bpe) -> Path:
    return make_hf_gpt2(tmp_path_factory.mktemp("hf") / "gpt2", bpe)


def hf_model(folder: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(folder).eval()


def random_ids(count: int, length: int, vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (count, length), generator=torch.Generator().manual_seed(1))


def our_logits(model: GPT, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids)[0]


def hf_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def our_greedy_tokens(model: GPT, prompt: list[int], count: int) -> list[int]:
    steps = generate(model, prompt, count, SamplingSettings(temperature=0))
    return [tokens[0] for tokens in steps]


# ----- import ------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["gelu_new", "gelu_pytorch_tanh", "gelu"])
def test_imported_weights_give_the_logits_and_greedy_tokens_of_transformers(
    tmp_path, bpe, activation
):
    folder = make_hf_gpt2(tmp_path / "gpt2", bpe, activation)
    reference = hf_model(folder)
    model = load_gpt2(folder)
    expected = "gelu" if activation == "gelu" else "gelu_tanh"
    assert (model.config.activation, model.config.bias, model.block_size) == (expected, True, 64)

    ids = random_ids(3, 64, VOCAB)
    torch.testing.assert_close(
        our_logits(model, ids), hf_logits(reference, ids), atol=TOLERANCE, rtol=0
    )

    prompt = bpe.encode(PROMPT)
    generated = reference.generate(torch.tensor([prompt]), max_new_tokens=30, do_sample=False)
    assert our_greedy_tokens(model, prompt, 30) == generated[0, len(prompt) :].tolist()


def test_a_smaller_block_size_crops_the_position_table(hf_folder):
    # vocab_size=None is the default written out (the vocabulary decides): no contradiction
    model = load_gpt2(hf_folder, ModelConfig(block_size=16, dropout=0.1, vocab_size=None))
    assert model.block_size == 16 and model.position_embedding.weight.shape == (16, 32)
    assert (model.config.dropout, model.config.vocab_size) == (0.1, VOCAB)
    ids = random_ids(2, 16, VOCAB)
    expected = hf_logits(hf_model(hf_folder), ids)
    torch.testing.assert_close(our_logits(model, ids), expected, atol=TOLERANCE, rtol=0)


def test_gpt2_weights_refuse_a_config_without_layer_norms_or_residuals(hf_folder):
    folder = GPT2Folder.read(hf_folder)
    assert folder.model_config(ModelConfig()).norm == "layer"
    with pytest.raises(UserError, match=r"model.norm=none \(the weights have layer\)"):
        folder.model_config(ModelConfig(norm="none"))
    with pytest.raises(UserError, match=r"model.residual=false \(the weights have true\)"):
        folder.model_config(ModelConfig(residual=False))


def test_the_weights_load_however_the_folder_stores_them(tmp_path, hf_folder):
    """As the Hub's gpt2 has them (no `transformer.` prefix, the old causal-mask buffers, the tied
    head written out), and sharded with an index, as save_pretrained does for large models."""
    tensors = load_file(hf_folder / "model.safetensors")
    ids = random_ids(2, 64, VOCAB)
    expected = our_logits(load_gpt2(hf_folder), ids)

    hub = shutil.copytree(hf_folder, tmp_path / "hub")
    stored = {name.removeprefix("transformer."): tensor for name, tensor in tensors.items()}
    for layer in range(2):
        stored[f"h.{layer}.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
        stored[f"h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
    stored["lm_head.weight"] = stored["wte.weight"].clone()
    save_file(stored, str(hub / "model.safetensors"), metadata={"format": "pt"})
    assert torch.equal(our_logits(load_gpt2(hub), ids), expected)

    sharded = shutil.copytree(hf_folder, tmp_path / "sharded")
    (sharded / "model.safetensors").unlink()
    names = sorted(tensors)
    weight_map = {}
    for number, part in enumerate((names[::2], names[1::2]), start=1):
        file = f"model-{number:05d}-of-00002.safetensors"
        save_file({name: tensors[name] for name in part}, str(sharded / file), {"format": "pt"})
        weight_map |= dict.fromkeys(part, file)
    index = {"metadata": {}, "weight_map": weight_map}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    assert torch.equal(our_logits(load_gpt2(sharded), ids), expected)


# ----- export ------------------------------------------------------------------------------------


def trained_folder(folder: Path, model: GPT, tokenizer: Tokenizer) -> Path:
    """A training output folder as train.py leaves it, as far as export reads it."""
    folder.mkdir()
    save_model(folder / "model.safetensors", model)
    tokenizer.save(folder / "tokenizer.json")
    return folder


def char_tokenizer() -> Tokenizer:
    return train_char_tokenizer([CORPUS.read_text(encoding="utf-8")])


EXPORTED_MODELS = {
    # what train.py trains by default and in configs/shakespeare_char_cpu.yaml: no biases, exact GELU
    "char, no biases, exact GELU": (char_tokenizer, dict(bias=False, activation="gelu")),
    "BPE, biases, tanh GELU, dropout": (
        None,
        dict(bias=True, activation="gelu_tanh", dropout=0.1, init="gpt2"),
    ),
}


@pytest.fixture(params=list(EXPORTED_MODELS))
def our_run(request, tmp_path, bpe) -> tuple[Path, GPT, Tokenizer]:
    make_tokenizer, settings = EXPORTED_MODELS[request.param]
    tokenizer = make_tokenizer() if make_tokenizer else bpe
    torch.manual_seed(0)
    config = ModelConfig(
        n_layer=2, n_head=2, n_embd=32, block_size=48, vocab_size=tokenizer.vocab_size, **settings
    )
    model = GPT(config)
    with torch.no_grad():  # biases and LayerNorms away from their initial zeros and ones
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return trained_folder(tmp_path / "run", model, tokenizer), model.eval(), tokenizer


def test_exported_models_give_our_logits_and_greedy_text_in_transformers(tmp_path, our_run):
    run, model, tokenizer = our_run
    exported = export_hf(run, tmp_path / "hf")
    reference = hf_model(exported)
    hf_config = json.loads((exported / "config.json").read_text())
    assert hf_config["n_positions"] == 48 and hf_config["architectures"] == ["GPT2LMHeadModel"]

    ids = random_ids(3, 48, tokenizer.vocab_size)
    torch.testing.assert_close(
        hf_logits(reference, ids), our_logits(model, ids), atol=TOLERANCE, rtol=0
    )

    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    assert hf_tokenizer(PROMPT)["input_ids"] == tokenizer.encode(PROMPT)
    pieces = generate_text(model, tokenizer, tokenizer.encode(PROMPT), 30, SamplingSettings(0))
    ours = "".join(piece.text for piece in pieces)
    inputs = hf_tokenizer(PROMPT, return_tensors="pt")
    generated = reference.generate(**inputs, max_new_tokens=30, do_sample=False)
    prompt_length = inputs["input_ids"].shape[1]
    theirs = hf_tokenizer.decode(generated[0, prompt_length:], skip_special_tokens=True)
    assert theirs == ours and len(ours) > 0


def test_a_padded_vocabulary_is_exported_with_its_padding_rows(tmp_path, bpe):
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=384)).eval()
    exported = export_hf(trained_folder(tmp_path / "run", model, bpe), tmp_path / "hf")
    ids = random_ids(2, 8, VOCAB)
    logits = hf_logits(hf_model(exported), ids)
    assert logits.shape[-1] == 384
    torch.testing.assert_close(logits, our_logits(model, ids), atol=TOLERANCE, rtol=0)


def test_export_then_import_gives_identical_logits(tmp_path, our_run):
    run, model, tokenizer = our_run
    back = load_gpt2(export_hf(run, tmp_path / "hf"))
    ids = random_ids(2, 48, tokenizer.vocab_size)
    if model.config.bias:  # the very same weights
        assert torch.equal(our_logits(back, ids), our_logits(model, ids))
    else:  # zero biases added: the same function, up to the float summation order
        torch.testing.assert_close(our_logits(back, ids), our_logits(model, ids), atol=1e-6, rtol=0)
    assert back.config.activation == model.config.activation


# ----- the walkthrough: a downloaded folder, data_prep with its tokenizer, fine-tuning ---------------


def test_data_prepared_with_the_folders_tokenizer_fine_tunes_from_its_weights(
    tmp_path, hf_folder, bpe
):
    data = tmp_path / "data"
    prepared = run_python(
        "-m", "data_prep", "--input", str(CORPUS), "--tokenizer", str(hf_folder), "--out", str(data)
    )
    assert prepared.returncode == 0, prepared.stderr
    meta = json.loads((data / "meta.json").read_text())
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot_id"]) == ("bpe", VOCAB, 0)

    out = tmp_path / "run"
    trained = run_python(
        "train.py",
        str(ROOT / "configs" / "finetune_gpt2_shakespeare.yaml"),
        f"data.dir={data}",
        f"train.init_from={hf_folder}",
        f"train.out_dir={out}",
        "model.block_size=64",
        "train.batch_size=4",
        "train.gradient_accumulation_steps=1",
        "train.max_iters=2",
        "train.eval_interval=2",
        "train.eval_iters=2",
        "train.warmup_iters=1",
        "train.mixed_precision='no'",  # YAML reads a bare no as false
        "train.cpu=true",
        "train.wandb.mode=disabled",
    )
    assert trained.returncode == 0, trained.stderr
    first_eval = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first_eval["step"] == 0 and math.isfinite(first_eval["val_loss"])
    assert "activation: gelu_tanh" in (out / "config.yaml").read_text()
