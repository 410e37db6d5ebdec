"""gpt.evaluate: every token of a split scored once, against hand computations; bits per byte on a
char and a BPE folder of the same text; tokenizer checks; old folders; a real 2-process launch."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from bench.fault_runs import free_port
from gpt.analysis.evaluation import count_bytes, score_tokens, window_ends
from gpt.base import progress
from gpt.base.cli import run_cli
from gpt.base.config import ModelConfig
from gpt.data.tokenizer import load_tokenizer
from gpt.data.tokens import read_meta, split_tokens
from gpt.evaluate import _main as evaluate_main
from gpt.models.gpt import build_model
from gpt.run.weights import load_trained

from .conftest import CORPUS, ROOT, run_python

BLOCK = 32
TINY_RUN = [
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=32",
    f"model.block_size={BLOCK}",
    "train.batch_size=8",
    "train.max_iters=30",
    "train.eval_interval=15",
    "train.eval_iters=2",
    "train.log_interval=5",
    "train.warmup_iters=5",
    "train.learning_rate=3e-3",
    "train.min_lr=3e-4",
    "train.wandb.mode=disabled",
    "train.report=false",
]


def corpus_text() -> str:
    """40 kB of Shakespeare with multi-byte characters sprinkled in, so bytes differ from chars."""
    lines = CORPUS.read_text(encoding="utf-8")[:40_000].splitlines(keepends=True)
    return "".join(
        line.replace("\n", " — café ☕ 😀\n") if i % 7 == 3 else line
        for i, line in enumerate(lines)
    )


def prepare(source: Path, out: Path, *argv: str) -> Path:
    result = run_python("-m", "data_prep", "--input", str(source), "--out", str(out), *argv)
    assert result.returncode == 0, result.stderr
    return out


def train(data: Path, out: Path, *overrides: str) -> Path:
    config = ROOT / "configs" / "shakespeare_char_cpu.yaml"
    args = [f"data.dir={data}", f"train.out_dir={out}", *TINY_RUN, *overrides]
    result = run_python("train.py", str(config), *args)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A char and a BPE data folder of the same text, and a tiny GPT trained on each."""
    root = tmp_path_factory.mktemp("evaluate")
    source = root / "corpus.txt"
    source.write_text(corpus_text(), encoding="utf-8")
    char = prepare(source, root / "char", "--tokenizer", "char")
    bpe = prepare(source, root / "bpe", "--tokenizer", "bpe", "--vocab-size", "300")
    return {
        "char": char,
        "bpe": bpe,
        "char_run": train(char, root / "char_run"),
        "bpe_run": train(bpe, root / "bpe_run"),
    }


def evaluate(*argv: str | Path) -> int:
    return run_cli(evaluate_main, [str(arg) for arg in argv])


def evaluate_json(capsys, *argv: str | Path) -> dict:
    assert evaluate(*argv, "--json") == 0
    return json.loads(capsys.readouterr().out)


def error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1
    return lines[0]


def test_windows_score_every_token_once_with_the_promised_context():
    for num_tokens, length, stride in [(100, 32, 16), (100, 32, 32), (33, 32, 16), (101, 32, 1),
                                       (77, 10, 3), (12, 11, 5)]:  # fmt: skip
        ends = window_ends(num_tokens, length, stride)
        scored, previous = [], 0
        for index, end in enumerate(ends):
            targets = list(range(end - length + 1, end + 1))  # each predicted from its window
            new = [t for t in targets if t > previous]
            scored += new
            if index > 0:  # context = the inputs up to the target's position in the window
                assert min(t - (end - length) for t in new) >= length - stride + 1
            previous = end
        assert scored == list(range(1, num_tokens)), (num_tokens, length, stride)
        assert ends[0] - length == 0 and ends[-1] == num_tokens - 1


@torch.inference_mode()
def full_context_losses(model, tokens: np.ndarray) -> torch.Tensor:
    """Hand computation: token t (t >= 1) predicted from the min(t, block_size) tokens before it."""
    ids = torch.from_numpy(tokens.astype(np.int64))
    block = model.block_size
    first = model(ids[None, :block])[0][0]  # positions 0..block-1 predict tokens 1..block
    losses = [F.cross_entropy(first, ids[1 : block + 1], reduction="none")]
    for start in range(block + 1, len(ids), 256):
        targets = torch.arange(start, min(start + 256, len(ids)))
        contexts = torch.stack([ids[t - block : t] for t in targets])
        logits = model(contexts)[0][:, -1]
        losses.append(F.cross_entropy(logits, ids[targets], reduction="none"))
    return torch.cat(losses)


def test_stride_one_equals_a_hand_computation_over_every_token(folders, capsys, one_thread):
    result = evaluate_json(capsys, folders["char_run"], "--stride", "1", "--batch-size", "64")
    model, _ = load_trained(folders["char_run"])
    tokens = np.fromfile(folders["char"] / "test.bin", dtype=np.uint16)
    losses = full_context_losses(model, tokens)
    assert result["tokens"] == len(tokens) - 1 == len(losses)
    assert result["loss"] == pytest.approx(losses.double().mean().item(), rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert result["split"] == "test" and result["stride"] == 1 and result["block_size"] == BLOCK
    default = evaluate_json(capsys, folders["char_run"])  # stride 16: less context, same tokens
    assert default["tokens"] == result["tokens"] and default["stride"] == BLOCK // 2
    assert default["loss"] != result["loss"]
    assert json.loads((folders["char_run"] / "eval_test.json").read_text()) == default


def test_a_split_shorter_than_the_context_is_one_full_sequence(folders, one_thread):
    model, _ = load_trained(folders["char_run"])
    tokens = np.fromfile(folders["char"] / "val.bin", dtype=np.uint16)[:20]
    score = score_tokens(model, tokens, stride=16, batch_size=8, device=torch.device("cpu"))
    ids = torch.from_numpy(tokens.astype(np.int64))
    with torch.inference_mode():
        logits = model(ids[None, :-1])[0][0]
    assert score.tokens == 19
    assert score.loss_sum == pytest.approx(F.cross_entropy(logits, ids[1:], reduction="sum").item())


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_mlp_and_cnn_windows_equal_one_pass_over_the_whole_split(arch, folders, one_thread):
    """Their outputs depend on the last 8 (mlp) or 7 (cnn) tokens only, and every window gives a
    scored token at least 17, so the windows must agree exactly with one pass over all tokens."""
    vocab = read_meta(folders["char"])["vocab_size"]
    config = ModelConfig(
        arch=arch, n_layer=2, n_embd=16, block_size=BLOCK, vocab_size=vocab, context=8
    )
    torch.manual_seed(0)
    model = build_model(config).eval()
    tokens = np.fromfile(folders["char"] / "test.bin", dtype=np.uint16)
    ids = torch.from_numpy(tokens.astype(np.int64))
    with torch.inference_mode():
        logits = model(ids[None, :-1])[0][0]
    expected = F.cross_entropy(logits, ids[1:], reduction="sum").item()
    for batch_size in (1, 7):
        score = score_tokens(model, tokens, BLOCK // 2, batch_size, torch.device("cpu"))
        assert score.tokens == len(tokens) - 1
        assert score.loss_sum == pytest.approx(expected, rel=1e-5)


def test_shards_add_up_to_the_whole(folders, one_thread):
    model, _ = load_trained(folders["char_run"])
    tokens = np.fromfile(folders["char"] / "test.bin", dtype=np.uint16)
    cpu = torch.device("cpu")
    whole = score_tokens(model, tokens, 16, 8, cpu)
    parts = [score_tokens(model, tokens, 16, 8, cpu, shard=(i, 3)) for i in range(3)]
    assert sum(p.tokens for p in parts) == whole.tokens
    assert sum(p.loss_sum for p in parts) == pytest.approx(whole.loss_sum, rel=1e-6)


def test_bits_per_byte_on_a_char_and_a_bpe_folder_of_the_same_text(folders, capsys, one_thread):
    results = {kind: evaluate_json(capsys, folders[f"{kind}_run"]) for kind in ("char", "bpe")}
    decoded = {}
    for kind, result in results.items():
        tokenizer = load_tokenizer(folders[kind] / "tokenizer.json")
        ids = np.fromfile(folders[kind] / "test.bin", dtype=np.uint16).tolist()
        decoded[kind] = tokenizer.hf.decode(ids, skip_special_tokens=True)
        assert result["bytes"] == len(decoded[kind].encode("utf-8"))
        summed_loss = result["loss"] * result["tokens"]
        assert result["bits_per_byte"] == pytest.approx(
            summed_loss / math.log(2) / result["bytes"], rel=1e-9
        )
    assert decoded["char"] == decoded["bpe"] and "😀" in decoded["char"]  # the same text
    assert results["bpe"]["tokens"] < results["char"]["tokens"]
    assert results["char"]["bytes"] > results["char"]["tokens"] + 1  # multi-byte characters


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_byte_counts_of_older_folders_come_from_their_tokens(kind, folders, capsys, tmp_path):
    """Folders made before meta.json held byte counts: counted from the tokens, to the same value."""
    folder = folders[kind]
    meta = read_meta(folder)
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    for split in ("train", "val", "test"):
        tokens = split_tokens(folder, split, meta)
        assert count_bytes(tokens, tokenizer) == meta["bytes"][split], split
    older = shutil.copytree(folder, tmp_path / "older")
    del meta["bytes"]
    (older / "meta.json").write_text(json.dumps(meta))
    run = folders[f"{kind}_run"]
    own, from_tokens = (evaluate_json(capsys, run, "--data", data) for data in (folder, older))
    assert from_tokens["bytes"] == own["bytes"] and from_tokens["loss"] == own["loss"]
    assert from_tokens["bits_per_byte"] == pytest.approx(own["bits_per_byte"], rel=1e-12)
    assert (run / "eval_test-older.json").is_file()  # another folder: its own result file


def test_a_different_tokenizer_is_refused(folders, capsys):
    assert evaluate(folders["char_run"], "--data", folders["bpe"]) == 2
    message = error_line(capsys)
    assert "another tokenizer" in message and "--tokenizer OUT_DIR/tokenizer.json" in message


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--stride", "0"], "--stride 0 must be from 1"),
        (["--stride", str(BLOCK + 1)], f"block_size ({BLOCK})"),
        (["--batch-size", "0"], "--batch-size 0"),
        (["--checkpoint", "no/such/folder"], "does not exist"),
        (["--data", "no/such/folder"], "does not exist"),
    ],
)
def test_bad_arguments_are_one_line(folders, capsys, argv, expected):
    assert evaluate(folders["char_run"], *argv) == 2
    assert expected in error_line(capsys)


def test_scoring_shows_its_progress_on_stderr_and_the_json_stays_pure(folders, capsys, monkeypatch):
    monkeypatch.setattr(progress, "DELAY_SECONDS", 0.0)  # as if scoring took minutes
    assert evaluate(folders["char_run"], "--split", "val", "--stride", "8", "--json") == 0
    out, err = capsys.readouterr()  # not a terminal: whole lines, no bar
    scored = json.loads(out)["tokens"]
    lines = err.splitlines()
    assert lines and all(line.startswith("evaluate: ") for line in lines), err
    assert lines[-1].startswith(f"evaluate: {scored:,}/{scored:,} tokens (100%), ")


def test_a_checkpoint_can_be_scored(folders, capsys):
    checkpoint = sorted((folders["char_run"] / "checkpoints").glob("step_*"))[-1]
    result = evaluate_json(
        capsys, folders["char_run"], "--checkpoint", checkpoint, "--split", "val"
    )
    assert result["split"] == "val" and result["weights"].startswith(str(checkpoint))
    assert (folders["char_run"] / "eval_val.json").is_file()


def test_folders_without_a_test_split_still_train_sample_and_evaluate(tmp_path, capsys):
    """A folder as data_prep wrote it before the test split: no test.bin, no byte counts."""
    source = tmp_path / "corpus.txt"
    source.write_text(corpus_text(), encoding="utf-8")
    old = prepare(source, tmp_path / "old", "--test-fraction", "0")
    meta = read_meta(old)
    del meta["bytes"]
    (old / "meta.json").write_text(json.dumps(meta))
    assert not (old / "test.bin").exists()
    run = train(old, tmp_path / "run", "train.max_iters=10", "train.eval_interval=5")
    sample = run_python("sample.py", "--checkpoint", str(run), "--max-new-tokens", "20")
    assert sample.returncode == 0, sample.stderr
    assert evaluate(run, "--split", "test") == 2
    assert "has no test split" in (message := error_line(capsys)) and "--split val" in message
    result = evaluate_json(capsys, run, "--split", "val")
    assert result["bytes"] == len(load_tokenizer(old / "tokenizer.json").decode(
        np.fromfile(old / "val.bin", dtype=np.uint16).tolist()).encode())  # fmt: skip

    # The trainer never reads test.bin: a poisoned one (ids far outside the vocabulary) changes
    # nothing, neither the losses nor the kept weights.
    poisoned = shutil.copytree(old, tmp_path / "poisoned")
    np.full(1000, 65535, dtype=np.uint16).tofile(poisoned / "test.bin")
    again = train(poisoned, tmp_path / "again", "train.max_iters=10", "train.eval_interval=5")
    assert read_losses(again) == read_losses(run)
    kept, expected = (load_file(r / "model.safetensors") for r in (again, run))
    assert kept.keys() == expected.keys()
    assert all(torch.equal(kept[name], expected[name]) for name in kept)


def read_losses(run: Path) -> list[tuple]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("loss"), r.get("val_loss"), r.get("train_loss")) for r in records]


def test_two_processes_score_like_one(folders):
    """A real 2-process (gloo) accelerate launch: each scores half the windows; the sums add up."""
    out = folders["char_run"]
    single = run_python("-m", "gpt.evaluate", str(out), "--split", "val", "--json")
    assert single.returncode == 0, single.stderr
    launch = [
        "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()),
        "--mixed_precision", "no", "--dynamo_backend", "no",
    ]  # fmt: skip
    double = run_python(*launch, "-m", "gpt.evaluate", str(out), "--split", "val", "--json")
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = json.loads(single.stdout), json.loads(double.stdout)
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["tokens"] == one["tokens"]
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)


def test_console_scripts_are_declared():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["gpt-evaluate"] == "gpt.evaluate:main"
    assert scripts["gpt-report"] == "gpt.report:main"
