"""Fine-tuning from GPT-2 folders and exporting to them, through the real command lines.

A tiny char GPT is trained here and exported with ``python -m gpt.export``; that folder is the
pretrained model that ``train.init_from`` fine-tunes (transformers is not needed for any of it).
"""

import json
import math
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from data_prep.__main__ import run as data_prep_run
from gpt.base.cli import run_cli
from gpt.base.config import ModelConfig
from gpt.data.tokenizer import load_tokenizer, train_char_tokenizer
from gpt.export import _main as export_main
from gpt.models.gpt import build_model
from gpt.run.weights import save_model

from .conftest import CORPUS, ROOT, run_python, start_python
from .test_integrity import flip_last_byte
from .test_trainer import assert_same_weights, final_weights, read_metrics, train_args

# The tiny source model (tests/test_trainer.py's TINY settings) and the matching fine-tuning shape.
SOURCE = ["train.max_iters=40", "train.eval_interval=40", "train.checkpoint_interval=40"]
FINETUNE = [
    "model.block_size=32",
    "train.batch_size=8",
    "train.gradient_accumulation_steps=1",
    "train.eval_iters=4",
    "train.max_iters=40",
    "train.eval_interval=20",
    "train.checkpoint_interval=10",
    "train.warmup_iters=5",
    "train.learning_rate=3e-4",
    "train.min_lr=3e-5",
    "train.mixed_precision='no'",  # YAML reads a bare no as false
    "train.cpu=true",
    "train.wandb.mode=disabled",
]


def finetune_args(data: Path, pretrained: Path, out: Path, *overrides: str) -> list[str]:
    return [
        "train.py",
        str(ROOT / "configs" / "finetune_gpt2_shakespeare.yaml"),
        f"data.dir={data}",
        f"train.init_from={pretrained}",
        f"train.out_dir={out}",
        *FINETUNE,
        *overrides,
    ]


@pytest.fixture(scope="module")
def source_run(shakespeare_char, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("source") / "run"
    result = run_python(*train_args(shakespeare_char, out, *SOURCE))
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def pretrained(source_run) -> Path:
    """The source run exported as a Hugging Face GPT-2 folder by the real command."""
    folder = source_run.parent / "exported"
    result = run_python("-m", "gpt.export", str(source_run), "--to", "hf", str(folder))
    assert result.returncode == 0, result.stderr
    assert f"wrote {folder}" in result.stdout
    return folder


@pytest.fixture(scope="module")
def finetuned(shakespeare_char, pretrained) -> Path:
    out = pretrained.parent / "finetuned"
    result = run_python(*finetune_args(shakespeare_char, pretrained, out))
    assert result.returncode == 0, result.stderr
    return out


def test_the_export_is_a_complete_gpt2_folder(pretrained):
    assert sorted(path.name for path in pretrained.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    config = json.loads((pretrained / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["activation_function"] == "gelu"
    assert (config["n_layer"], config["n_embd"], config["n_positions"]) == (2, 32, 32)
    assert not list(pretrained.parent.glob("exported.*"))  # no temporary folder left behind


def test_finetuning_starts_at_the_imported_models_loss(source_run, finetuned):
    source_best = [r for r in read_metrics(source_run) if r["kind"] == "eval"][-1]["best_val_loss"]
    first = [r for r in read_metrics(finetuned) if r["kind"] == "eval"][0]
    assert first["step"] == 0
    assert first["val_loss"] == pytest.approx(source_best, abs=1e-5)
    assert first["val_loss"] < math.log(65) - 0.5  # well below a fresh model's ln V
    config = (finetuned / "config.yaml").read_text()
    for setting in ("n_layer: 2", "n_embd: 32", "bias: true", "activation: gelu", "block_size: 32"):
        assert setting in config


@pytest.mark.slow
def test_a_killed_finetuning_run_resumes_to_identical_weights(
    shakespeare_char, pretrained, finetuned
):
    resumed = pretrained.parent / "resumed"
    args = finetune_args(shakespeare_char, pretrained, resumed)
    process = start_python(*args)
    deadline = time.monotonic() + 120
    while not (resumed / "checkpoints" / "step_0000010").exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (resumed / "checkpoints" / "step_0000040").exists()

    result = run_python(*args)
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stdout
    assert_same_weights(final_weights(finetuned), final_weights(resumed))
    evaluations = [(r["step"], r.get("val_loss")) for r in read_metrics(finetuned)]
    assert [(r["step"], r.get("val_loss")) for r in read_metrics(resumed)] == evaluations


def test_sample_py_continues_a_prompt_with_a_finetuned_model(finetuned):
    result = run_python(
        "sample.py", "--checkpoint", str(finetuned), "--prompt", "ROMEO:",
        "--max-new-tokens", "40", "--temperature", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ROMEO:") and len(result.stdout) > len("ROMEO:") + 10


def test_a_finetuned_run_exports_again(finetuned, tmp_path):
    assert run_cli(export_main, [str(finetuned), "--to", "hf", str(tmp_path / "hf")]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["n_positions"] == 32


def test_export_and_finetuning_run_without_transformers(shakespeare_char, source_run, tmp_path):
    """transformers is an optional extra: with its import made to fail, both commands still work."""
    without_transformers = (
        "import runpy, sys; sys.modules['transformers'] = None; "  # `import transformers` fails
        "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    exported = tmp_path / "hf"
    export_script = str(ROOT / "gpt" / "export.py")
    result = run_python(
        "-c", without_transformers, export_script, str(source_run), "--to", "hf", str(exported)
    )
    assert result.returncode == 0, result.stderr
    args = finetune_args(shakespeare_char, exported, tmp_path / "run", "train.max_iters=1")
    result = run_python("-c", without_transformers, *args, "train.warmup_iters=0")
    assert result.returncode == 0, result.stderr


# ----- every mismatch is one line and exit code 2 --------------------------------------------------


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


FOLDER_DAMAGE = {
    "no config.json": (
        lambda folder: (folder / "config.json").unlink(),
        "is not a Hugging Face model folder (no config.json)",
    ),
    "pickled weights only": (
        lambda folder: (folder / "model.safetensors").rename(folder / "pytorch_model.bin"),
        "holds no model.safetensors (pytorch_model.bin is a pickle, which this project never loads)",
    ),
    "another model type": (
        lambda folder: edit_config(folder, model_type="bert"),
        "holds a bert model, not GPT-2, Llama or Qwen3 (model_type gpt2, llama or qwen3)",
    ),
    "weights that disagree with config.json": (
        lambda folder: edit_config(folder, n_embd=64),
        "do not match its config.json: wte.weight has shape [65, 32], config.json implies [65, 64]",
    ),
    "a truncated weights file": (
        lambda folder: (folder / "model.safetensors").write_bytes(
            (folder / "model.safetensors").read_bytes()[:1000]
        ),
        "is not a complete safetensors file",
    ),
    "one flipped byte in the weights": (
        lambda folder: flip_last_byte(folder / "model.safetensors"),
        "model.safetensors is damaged: its content does not match the SHA-256 recorded in it",
    ),
    "an activation this GPT lacks": (
        lambda folder: edit_config(folder, activation_function="relu"),
        "activation_function 'relu' has no counterpart here",
    ),
}


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert fragment in result.stderr


@pytest.mark.parametrize("damage", list(FOLDER_DAMAGE))
def test_a_damaged_gpt2_folder_is_a_one_line_error(damage, shakespeare_char, pretrained, tmp_path):
    folder = shutil.copytree(pretrained, tmp_path / "gpt2")
    apply, fragment = FOLDER_DAMAGE[damage]
    apply(folder)
    result = run_python(*finetune_args(shakespeare_char, folder, tmp_path / "run"))
    assert_one_line_error(result, fragment)


def test_data_prep_names_a_folder_without_tokenizer_json(capsys, pretrained, tmp_path):
    folder = shutil.copytree(pretrained, tmp_path / "gpt2")
    (folder / "tokenizer.json").unlink()
    args = ["--input", str(CORPUS), "--tokenizer", str(folder), "--out", str(tmp_path / "data")]
    assert run_cli(data_prep_run, args) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert f"--tokenizer {folder}: the folder holds no tokenizer.json" in stderr


@pytest.fixture(scope="module")
def other_data(tmp_path_factory) -> dict[str, Path]:
    """Data the char model cannot read: another char vocabulary, and a larger BPE one."""
    root = tmp_path_factory.mktemp("other")
    corpus = root / "small.txt"
    corpus.write_text(CORPUS.read_text(encoding="utf-8")[:3000], encoding="utf-8")
    folders = {}
    for kind, extra in (("char", []), ("bpe", ["--vocab-size", "300"])):
        folders[kind] = root / kind
        result = run_python(
            "-m", "data_prep", "--input", str(corpus), "--tokenizer", kind, *extra,
            "--out", str(folders[kind]), "--val-fraction", "0.2",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    return folders


def test_data_of_another_tokenizer_is_refused(other_data, pretrained, tmp_path):
    assert load_tokenizer(other_data["char"] / "tokenizer.json").vocab_size < 65
    result = run_python(*finetune_args(other_data["char"], pretrained, tmp_path / "a"))
    assert_one_line_error(result, "tokenised with another tokenizer ")
    assert f"--tokenizer {pretrained}" in result.stderr


def test_data_with_a_larger_vocabulary_is_refused(other_data, pretrained, tmp_path):
    folder = shutil.copytree(pretrained, tmp_path / "gpt2")
    (folder / "tokenizer.json").unlink()  # only the sizes can be compared then
    result = run_python(*finetune_args(other_data["bpe"], folder, tmp_path / "run"))
    assert_one_line_error(result, "has a vocabulary of 300 tokens, more than the 65 of the GPT-2")


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (
            ["model.block_size=64"],
            "model.block_size=64 is longer than the context of the GPT-2 weights",
        ),
        (
            ["model.n_layer=3", "model.bias=false"],
            "model.n_layer=3 (the weights have 2), model.bias=false (the weights have true)",
        ),
        (["model.arch=mlp"], "model.arch=mlp (the weights have gpt)"),
    ],
)
def test_a_config_contradicting_the_weights_is_a_one_line_error(
    overrides, fragment, shakespeare_char, pretrained, tmp_path
):
    result = run_python(*finetune_args(shakespeare_char, pretrained, tmp_path / "run", *overrides))
    assert_one_line_error(result, fragment)


def test_settings_the_weights_fix_may_be_repeated_in_the_config(
    shakespeare_char, pretrained, tmp_path
):
    same = ["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.bias=true"]
    result = run_python(
        *finetune_args(
            shakespeare_char,
            pretrained,
            tmp_path / "run",
            *same,
            "train.max_iters=1",
            "train.warmup_iters=0",
        )
    )
    assert result.returncode == 0, result.stderr


# ----- export errors (through the command line's function, in this process) ----------------------


def export(capsys, *args: str) -> tuple[int, str]:
    """``python -m gpt.export ARGS``: its exit code and its stderr."""
    code = run_cli(export_main, list(args))
    return code, capsys.readouterr().err


def assert_one_line_export_error(outcome: tuple[int, str], fragment: str) -> None:
    code, stderr = outcome
    assert code == 2 and stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert fragment in stderr


def test_the_baselines_are_not_exported(capsys, shakespeare_char, tmp_path):
    run = tmp_path / "mlp"
    run.mkdir()
    model = build_model(ModelConfig(arch="mlp", n_layer=1, n_embd=16, vocab_size=65))
    save_model(run / "model.safetensors", model)
    shutil.copy(shakespeare_char / "tokenizer.json", run / "tokenizer.json")
    outcome = export(capsys, str(run), "--to", "hf", str(tmp_path / "hf"))
    assert_one_line_export_error(outcome, "model.arch=mlp baseline; only GPT models map onto GPT-2")
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        (dict(residual=False), "GPT-2 cannot compute: model.residual=false (GPT-2 has residual"),
        (dict(norm="none"), "GPT-2 cannot compute: model.norm=none (GPT-2 has layer)"),
        (dict(qk_norm=True), "GPT-2 cannot compute: model.qk_norm=true (GPT-2 has none)"),
        (
            dict(rope=True),
            "Llama or Qwen3 cannot compute: model.norm=layer (Llama and Qwen3 have rms)",
        ),
    ],
)
def test_a_gpt_that_neither_gpt2_nor_llama_computes_is_not_exported(
    capsys, shakespeare_char, tmp_path, settings, problem
):
    run = tmp_path / "gpt"
    run.mkdir()
    config = ModelConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=65, **settings)
    save_model(run / "model.safetensors", build_model(config))
    shutil.copy(shakespeare_char / "tokenizer.json", run / "tokenizer.json")
    outcome = export(capsys, str(run), "--to", "hf", str(tmp_path / "hf"))
    assert_one_line_export_error(outcome, problem)
    assert not (tmp_path / "hf").exists()


def test_export_refuses_to_replace_anything_but_an_earlier_export(capsys, source_run, tmp_path):
    target = tmp_path / "hf"
    args = [str(source_run), "--to", "hf", str(target)]
    target.mkdir()  # an empty folder is fine
    assert export(capsys, *args)[0] == 0
    outcome = export(capsys, *args)
    assert_one_line_export_error(outcome, "already exists and is not empty; pass --overwrite")
    (target / "config.json").write_text("{}")  # damage the earlier export; --overwrite replaces it
    assert export(capsys, *args, "--overwrite")[0] == 0
    assert json.loads((target / "config.json").read_text())["model_type"] == "gpt2"

    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    outcome = export(capsys, str(source_run), "--to", "hf", str(other), "--overwrite")
    assert_one_line_export_error(outcome, "is not a model folder (no config.json)")
    assert (other / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--to", "onnx"], "invalid choice: 'onnx'"),
        ([], "the following arguments are required: --to"),
    ],
)
def test_bad_export_arguments_are_one_line_errors(capsys, source_run, tmp_path, args, fragment):
    outcome = export(capsys, str(source_run), str(tmp_path / "hf"), *args)
    assert_one_line_export_error(outcome, fragment)


def test_exporting_a_missing_run_is_a_one_line_error(capsys, tmp_path):
    outcome = export(capsys, str(tmp_path / "nothing"), "--to", "hf", str(tmp_path / "hf"))
    assert_one_line_export_error(outcome, "does not exist")


@pytest.mark.slow
def test_a_killed_export_leaves_no_folder_behind(tmp_path):
    """Killed while writing (a model large enough to take a while), DIR does not appear; the same
    command then writes it whole."""
    run = tmp_path / "run"
    run.mkdir()
    config = ModelConfig(n_layer=8, n_head=8, n_embd=512, block_size=64, vocab_size=65)
    save_model(run / "model.safetensors", build_model(config))
    train_char_tokenizer([CORPUS.read_text(encoding="utf-8")]).save(run / "tokenizer.json")
    target = tmp_path / "hf"
    export = ["-m", "gpt.export", str(run), "--to", "hf", str(target)]
    process = start_python(*export)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("hf.tmp-*/config.json")):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not target.exists()
    assert run_python(*export).returncode == 0
    assert (
        len(list(target.iterdir())) == 5
    )  # (the killed run's hf.tmp-PID folder stays, marked as such)
