"""Nothing is loaded on trust: every reader of a run's weights refuses a damaged weights file and a
tokenizer.json that is not the one the weights were trained with (gpt/integrity.py). A damaged
exported folder given to train.init_from is among tests/test_finetune.py's damaged folders."""

import shutil
import subprocess
from pathlib import Path

import pytest
import safetensors
from safetensors.torch import load_file, save_file

from bench.injection import flip_last_byte, swap_two_tokens
from gpt.run.folder import list_checkpoints

from .conftest import run_python
from .test_trainer import train_args

SAMPLE = ("sample.py", "--max-new-tokens", "3", "--checkpoint")


@pytest.fixture(scope="module")
def run(shakespeare_char, tmp_path_factory) -> Path:
    """A real run of a few steps: best weights and a checkpoint."""
    out = tmp_path_factory.mktemp("integrity") / "run"
    args = train_args(shakespeare_char, out, "train.max_iters=2", "train.eval_interval=2")
    result = run_python(*args)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture
def copy(run, tmp_path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def refused(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ")
    for fragment in fragments:
        assert fragment in line


def readers(run: Path, tmp_path: Path) -> dict[str, tuple[str, ...]]:
    return {
        "sample": (*SAMPLE, str(run)),
        "evaluate": ("-m", "gpt.evaluate", str(run), "--split", "val"),
        "export": ("-m", "gpt.export", str(run), "--to", "hf", str(tmp_path / "hf")),
    }


@pytest.mark.parametrize("reader", ["sample", "evaluate", "export"])
def test_a_flipped_byte_in_the_best_weights_is_refused_by_every_reader(copy, tmp_path, reader):
    flip_last_byte(copy / "model.safetensors")
    result = run_python(*readers(copy, tmp_path)[reader])
    refused(result, f"{copy / 'model.safetensors'} is damaged", "SHA-256")
    assert not (tmp_path / "hf").exists()


def test_a_flipped_byte_in_a_checkpoints_weights_is_refused(copy):
    checkpoint = list_checkpoints(copy)[-1]
    flip_last_byte(checkpoint / "model.safetensors")
    result = run_python(*SAMPLE, str(checkpoint))
    refused(result, f"checkpoint {checkpoint} is damaged", "SHA-256 differs")


@pytest.mark.parametrize("reader", ["sample", "export"])
def test_a_tokenizer_of_the_same_size_swapped_in_is_refused(copy, tmp_path, reader):
    tokenizer = copy / "tokenizer.json"
    swap_two_tokens(tokenizer)
    result = run_python(*readers(copy, tmp_path)[reader])
    refused(result, f"{tokenizer} is not the tokenizer {copy / 'model.safetensors'} was trained")
    assert not (tmp_path / "hf").exists()


def test_a_checkpoints_swapped_tokenizer_is_refused(copy):
    swap_two_tokens(copy / "tokenizer.json")
    checkpoint = list_checkpoints(copy)[-1]
    refused(run_python(*SAMPLE, str(checkpoint)), "is not the tokenizer", "fingerprint differs")


def test_weights_saved_before_the_checksum_existed_load_with_a_note(copy):
    weights = copy / "model.safetensors"
    with safetensors.safe_open(str(weights), framework="pt") as opened:
        metadata = opened.metadata()
    older = {key: value for key, value in metadata.items() if "sha256" not in key}
    save_file(load_file(weights), str(weights), metadata=older)
    result = run_python(*SAMPLE, str(copy))
    assert result.returncode == 0, result.stderr
    assert f"note: {weights} carries no checksum (saved by an earlier version" in result.stderr
