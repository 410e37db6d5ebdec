"""``sample.py``: output format, streaming, stops, checkpoints, and every kind of bad input."""

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch

from gpt.base import progress
from gpt.base.cli import run_cli
from gpt.run.weights import save_model
from gpt.sample_cli import SEPARATOR, _main
from tests.conftest import run_python
from tests.test_generate import BLOCK, bpe_tokenizer, char_tokenizer, tiny_model

PROMPT = "ROMEO:"
CHILD_ENV = {"PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}  # one thread: see one_thread


pytestmark = pytest.mark.usefixtures("one_thread")


def write_out_dir(path: Path, tokenizer, arch: str = "gpt") -> Path:
    """A training output folder as the trainer leaves it, minus the files sampling ignores."""
    path.mkdir(parents=True)
    save_model(path / "model.safetensors", tiny_model(tokenizer.vocab_size, arch))
    tokenizer.save(path / "tokenizer.json")
    return path


def write_checkpoint(out_dir: Path, step: int = 10) -> Path:
    """A checkpoints/step_* folder next to the output folder's tokenizer."""
    folder = out_dir / "checkpoints" / f"step_{step:07d}"
    folder.mkdir(parents=True)
    model = tiny_model(char_tokenizer().vocab_size, seed=1)
    save_model(folder / "model.safetensors", model)
    weights = (folder / "model.safetensors").read_bytes()
    manifest = {"size": len(weights), "sha256": hashlib.sha256(weights).hexdigest()}
    state = {
        "step": step,
        "best_val_loss": 2.5,
        "model_config": model.config.model_dump(),
        "files": {"model.safetensors": manifest},
    }
    (folder / "trainer_state.json").write_text(json.dumps(state), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def char_out(tmp_path_factory) -> Path:
    return write_out_dir(tmp_path_factory.mktemp("char") / "out", char_tokenizer())


@pytest.fixture(scope="module")
def bpe_out(tmp_path_factory) -> Path:
    return write_out_dir(tmp_path_factory.mktemp("bpe") / "out", bpe_tokenizer())


def sample(capsys, *args: str) -> tuple[int, str, str]:
    """Run the command in-process; return (exit code, stdout, stderr)."""
    code = run_cli(_main, list(args))
    out, err = capsys.readouterr()
    return code, out, err


def continuations(out: str, prompt: str = PROMPT) -> list[str]:
    assert out.endswith("\n")
    samples = out[:-1].split(SEPARATOR)
    assert all(text.startswith(prompt) for text in samples)
    return [text[len(prompt) :] for text in samples]


# --- output ---


def test_each_sample_is_the_prompt_and_its_continuation(capsys, char_out):
    code, out, err = sample(
        capsys, "--checkpoint", str(char_out), "--prompt", PROMPT, "--num-samples", "3",
        "--max-new-tokens", "20", "--seed", "1",
    )  # fmt: skip
    assert code == 0, err
    texts = continuations(out)
    assert len(texts) == 3
    assert all(len(text) == 20 for text in texts)  # a char model: one character per token
    assert len(set(texts)) == 3


def test_several_samples_show_their_progress_on_stderr_until_printed(capsys, char_out, monkeypatch):
    monkeypatch.setattr(progress, "DELAY_SECONDS", 0.0)  # as if sampling took minutes
    args = ["--checkpoint", str(char_out), "--max-new-tokens", "20", "--seed", "1"]
    code, out, err = sample(capsys, *args, "--num-samples", "3")
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("3 samples: ")]
    assert lines and lines[-1].startswith("3 samples: 20/20 tokens (100%), "), err
    assert len(continuations(out, "")) == 3  # stdout holds the samples only
    for one_at_a_time in (["--num-samples", "1"], ["--num-samples", "3", "--stream"]):
        code, _, err = sample(capsys, *args, *one_at_a_time)  # the text itself shows progress
        assert code == 0 and "samples: " not in err, err


def test_the_same_seed_gives_the_same_text(capsys, char_out):
    def run(seed: str) -> str:
        args = ["--checkpoint", str(char_out), "--prompt", PROMPT, "--max-new-tokens", "30"]
        code, out, err = sample(capsys, *args, "--num-samples", "2", "--seed", seed)
        assert code == 0, err
        return out

    assert run("5") == run("5")
    assert run("5") != run("6")


@pytest.mark.parametrize("out_dir", ["char_out", "bpe_out"])
@pytest.mark.parametrize("stop", [[], ["e"]])
def test_streamed_output_equals_the_printed_output(capsys, request, out_dir, stop):
    args = ["--checkpoint", str(request.getfixturevalue(out_dir)), "--prompt", "Ro"]
    args += ["--max-new-tokens", "40", "--num-samples", "4", "--seed", "2", "--temperature", "1.5"]
    args += [f"--stop={s}" for s in stop]
    code, printed, _ = sample(capsys, *args)
    assert code == 0
    code, streamed, _ = sample(capsys, *args, "--stream")
    assert code == 0
    assert streamed == printed
    if out_dir == "bpe_out":
        assert any(ord(char) > 127 and char != "\ufffd" for char in printed)
    if stop:
        texts = continuations(printed, "Ro")
        assert all(text.count("e") == text.endswith("e") for text in texts)  # 1 at the end, or 0
        assert any(text.endswith("e") for text in texts)


def test_a_stop_string_ends_the_sample_after_it(capsys, char_out):
    args = ["--checkpoint", str(char_out), "--prompt", PROMPT, "--temperature", "0"]
    code, out, _ = sample(capsys, *args, "--max-new-tokens", "30")
    (greedy,) = continuations(out)
    stop = greedy[6:8]
    code, out, _ = sample(capsys, *args, "--max-new-tokens", "30", "--stop", stop)
    assert code == 0
    assert continuations(out) == [greedy[: greedy.index(stop) + len(stop)]]


@pytest.mark.parametrize("cache", [[], ["--no-cache"]])
def test_generation_goes_on_past_block_size(capsys, char_out, cache):
    args = ["--checkpoint", str(char_out), "--prompt", PROMPT, "--max-new-tokens", str(3 * BLOCK)]
    code, out, err = sample(capsys, *args, "--seed", "0", "--verbose", *cache)
    assert code == 0, err
    assert [len(text) for text in continuations(out)] == [3 * BLOCK]
    method = "recomputed" if cache else "KV cache"
    assert f"{3 * BLOCK} tokens in" in err and f"tokens/s ({method}" in err


def test_a_checkpoint_folder_samples_with_its_output_folders_tokenizer(capsys, tmp_path):
    out_dir = write_out_dir(tmp_path / "out", char_tokenizer())
    checkpoint = write_checkpoint(out_dir)
    args = ["--prompt", PROMPT, "--max-new-tokens", "20", "--temperature", "0"]
    code, from_checkpoint, err = sample(capsys, "--checkpoint", str(checkpoint), *args)
    assert code == 0, err
    assert err == f"sampling from {checkpoint}: step 10 (best val loss by then 2.5000)\n"
    _, from_best, _ = sample(capsys, "--checkpoint", str(out_dir), *args)
    assert from_checkpoint != from_best  # other weights (seed 1 vs 0)


def test_sampling_says_which_weights_it_uses_and_when_they_were_saved(capsys, tmp_path):
    """On stderr, one line, without --verbose too; the run's step and val loss when recorded."""
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    model = tiny_model(char_tokenizer().vocab_size)
    save_model(recorded / "model.safetensors", model, {"step": "1200", "val_loss": "1.59012"})
    char_tokenizer().save(recorded / "tokenizer.json")
    older = write_out_dir(tmp_path / "older", char_tokenizer())  # no step in the file
    for out_dir, said in [
        (recorded, "step 1200, val loss 1.5901 (the best so far)"),
        (older, "step unknown"),
    ]:
        code, out, err = sample(capsys, "--checkpoint", str(out_dir), "--max-new-tokens", "3")
        assert code == 0 and out, err
        assert err.startswith(f"sampling from {out_dir / 'model.safetensors'}: {said}"), err
        assert err.count("\n") == 1


def test_an_empty_prompt_prints_only_the_continuation(capsys, bpe_out):
    code, out, err = sample(capsys, "--checkpoint", str(bpe_out), "--max-new-tokens", "5")
    assert code == 0, err
    assert "<|endoftext|>" not in out


def test_the_prompt_can_come_from_a_file(capsys, char_out, tmp_path):
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("JULIET:\nO Romeo,", encoding="utf-8")
    args = ["--checkpoint", str(char_out), "--prompt-file", str(prompt_file)]
    code, out, err = sample(capsys, *args, "--max-new-tokens", "5")
    assert code == 0, err
    assert out.startswith("JULIET:\nO Romeo,")


def test_a_prompt_longer_than_the_context_is_cropped_with_a_note(capsys, char_out):
    prompt = "First Citizen:\nBefore we proceed any further, hear me speak."
    args = ["--checkpoint", str(char_out), "--prompt", prompt, "--max-new-tokens", "5"]
    code, out, err = sample(capsys, *args)
    assert code == 0
    assert out.startswith(prompt)
    assert len(err.splitlines()) == 2  # which weights, then the note
    assert f"has {len(prompt)} tokens but the model's context is {BLOCK}" in err
    assert repr(prompt[:20]) in err and f"({len(prompt) - BLOCK} characters)" in err


# --- bad input: one line on stderr, exit code 2 ---


def assert_user_error(code: int, out: str, err: str, *fragments: str) -> None:
    assert code == 2
    assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--temperature", "-0.5"], "temperature must be 0 or more"),
        (["--top-p", "0"], "top-p must be in (0, 1]"),
        (["--top-p", "1.01"], "top-p must be in (0, 1]"),
        (["--top-k", "0"], "top-k must be 1 or more"),
        (["--max-new-tokens", "0"], "max-new-tokens must be 1 or more"),
        (["--num-samples", "0"], "num-samples must be from 1 to 1024"),
        (["--stop", ""], "stop string is empty"),
        (["--prompt", "Roméo and Jüliet"], "2 character(s) the model's char tokenizer"),
        (["--prompt-file", "no/such/prompt.txt"], "cannot read --prompt-file"),
        (["--max-new-tokens", "abc"], "invalid int value: 'abc'; see python sample.py --help"),
        (["--device", "tpu"], "invalid choice: 'tpu'"),
        (["--compile", "--no-cache"], "--compile compiles the KV cache's step; drop --no-cache"),
    ],
)
def test_bad_arguments_are_one_line_errors(capsys, char_out, args, fragment):
    assert_user_error(*sample(capsys, "--checkpoint", str(char_out), *args), fragment)


def test_compile_samples_through_the_compiled_step(capsys, char_out, monkeypatch):
    """--compile reaches generate(compiled=True), whose tokens test_generate.py checks against
    the eager step's; here it runs eager, to spare a compilation, and the text is the same."""
    from gpt.models import generate as generation

    asked = []
    real_generate = generation.generate

    def generate(*args, compiled: bool = False, **kwargs):
        asked.append(compiled)
        return real_generate(*args, compiled=False, **kwargs)

    monkeypatch.setattr(generation, "generate", generate)
    options = ["--checkpoint", str(char_out), "--prompt", PROMPT, "--seed", "5", "--verbose"]
    code, compiled_out, err = sample(capsys, *options, "--compile")
    assert code == 0 and asked == [True] and "(KV cache, compiled," in err
    assert sample(capsys, *options)[1] == compiled_out and asked == [True, False]


def test_unknown_prompt_characters_are_listed(capsys, char_out):
    code, out, err = sample(capsys, "--checkpoint", str(char_out), "--prompt", "Roméo ünd")
    assert_user_error(code, out, err, "'é', 'ü'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_unavailable_device_is_a_user_error(capsys, char_out):
    code, out, err = sample(capsys, "--checkpoint", str(char_out), "--device", "cuda")
    assert_user_error(code, out, err, "--device cuda is not available")


def test_a_missing_checkpoint_folder_is_a_user_error(capsys, tmp_path):
    code, out, err = sample(capsys, "--checkpoint", str(tmp_path / "nothing"))
    assert_user_error(code, out, err, "does not exist")


def test_a_folder_without_weights_is_a_user_error(capsys, tmp_path):
    char_tokenizer().save(tmp_path / "tokenizer.json")
    code, out, err = sample(capsys, "--checkpoint", str(tmp_path))
    assert_user_error(code, out, err, "holds no model.safetensors")


def test_an_incomplete_checkpoint_folder_is_a_user_error(capsys, tmp_path):
    checkpoint = write_checkpoint(write_out_dir(tmp_path / "out", char_tokenizer()))
    (checkpoint / "model.safetensors").unlink()
    code, out, err = sample(capsys, "--checkpoint", str(checkpoint))
    assert_user_error(code, out, err, "is damaged (model.safetensors is missing)")


def test_a_checkpoint_without_its_tokenizer_is_a_user_error(capsys, tmp_path):
    out_dir = write_out_dir(tmp_path / "out", char_tokenizer())
    (out_dir / "tokenizer.json").unlink()
    code, out, err = sample(capsys, "--checkpoint", str(out_dir))
    assert_user_error(code, out, err, "tokenizer.json is missing")


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_damaged_weights_file_is_a_user_error(capsys, tmp_path, damage):
    out_dir = write_out_dir(tmp_path / "out", char_tokenizer())
    weights = out_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else bytes(len(data)))
    code, out, err = sample(capsys, "--checkpoint", str(out_dir))
    assert_user_error(code, out, err, "not a complete weights file")


class CreateFileWhenUnpickled:
    """A pickle payload: unpickling it calls open(path, "w"), creating the file."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_a_pickle_in_place_of_the_weights_is_refused_without_running_it(tmp_path):
    proof = tmp_path / "payload_works"
    pickle.loads(pickle.dumps(CreateFileWhenUnpickled(proof))).close()
    assert proof.exists()  # the payload is live: loading it with pickle would run it

    marker = tmp_path / "pwned"
    checkpoint = write_checkpoint(write_out_dir(tmp_path / "out", char_tokenizer()))
    payload = {"token_embedding.weight": CreateFileWhenUnpickled(marker)}
    planted = pickle.dumps(payload)  # its size depends on the marker's path
    (checkpoint / "model.safetensors").write_bytes(planted)

    result = run_python(
        "sample.py", "--checkpoint", str(checkpoint), "--max-new-tokens", "5", env=CHILD_ENV
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert f"is damaged (model.safetensors has {len(planted)} bytes" in result.stderr
    assert not marker.exists()


def test_the_entry_point_streams_multi_byte_text_as_utf8(bpe_out):
    args = ["--checkpoint", str(bpe_out), "--prompt", "Crème", "--max-new-tokens", "30"]
    args += ["--seed", "4", "--temperature", "1.5"]
    printed = run_python("sample.py", *args, env=CHILD_ENV)
    streamed = run_python("sample.py", *args, "--stream", env=CHILD_ENV)
    assert printed.returncode == streamed.returncode == 0, printed.stderr + streamed.stderr
    assert streamed.stdout == printed.stdout
    assert streamed.stdout.startswith("Crème")


def test_a_checkpoint_with_a_damaged_trainer_state_is_a_user_error(capsys, tmp_path):
    out_dir = write_out_dir(tmp_path / "out", char_tokenizer())
    checkpoint = out_dir / "checkpoints" / "step_0000001"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes((out_dir / "model.safetensors").read_bytes())
    (checkpoint / "trainer_state.json").write_text('{"step": 1}')
    code, out, err = sample(capsys, "--checkpoint", str(checkpoint))
    assert_user_error(code, out, err, "is damaged", "holds no manifest of the checkpoint's files")


@pytest.mark.parametrize("prompt", [[], ["--prompt", "RO"]])
def test_a_tokenizer_larger_than_the_models_vocabulary_is_refused(capsys, tmp_path, prompt):
    """What a refused resume with another data folder's tokenizer can leave behind."""
    out_dir = write_out_dir(tmp_path / "out", char_tokenizer())
    bpe_tokenizer().save(out_dir / "tokenizer.json")  # 400 tokens, for a model of 58
    code, out, err = sample(capsys, "--checkpoint", str(out_dir), *prompt, "--max-new-tokens", "5")
    vocab = char_tokenizer().vocab_size
    assert_user_error(code, out, err, "has 400 tokens", f"vocabulary of {vocab}")


def test_a_padded_model_vocabulary_samples_with_the_smaller_tokenizer(capsys, tmp_path):
    tokenizer = char_tokenizer()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    save_model(out_dir / "model.safetensors", tiny_model(tokenizer.vocab_size + 6))
    tokenizer.save(out_dir / "tokenizer.json")
    code, out, err = sample(capsys, "--checkpoint", str(out_dir), "--prompt", PROMPT, "--seed", "1")
    assert code == 0, err
    assert continuations(out)
