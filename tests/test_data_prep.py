"""data_prep: inputs, tokenizers, the held-out split, determinism, and every bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from data_prep.__main__ import main, run
from data_prep.options import build_parser
from data_prep.sources import FileCorpus, FileDocument, cut_into_chunks
from gpt.base import progress
from gpt.base.cli import run_cli
from gpt.data.tokenizer import END_OF_TEXT, load_tokenizer
from tests.conftest import CORPUS, run_python

SPLITS = ("train", "val", "test")

TRICKY = (
    "Emoji 😀 and a family 👨‍👩‍👧, flags 🇫🇷!\r\n"
    "Combining: e\u0301 a\u0308 n\u0303, Hangul 한국어, CJK 漢字, Arabic مرحبا\r\n"
    "\n\n\n"
    "Tabs\tand  double spaces, a NUL \x00 and a BOM \ufeff mid-text\n"
    "\r\n"
    "   leading spaces, trailing spaces   \n"
    "the end, without a final newline"
)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path_factory):
    """data_prep sets the thread-pool variables and datasets caches: keep both out of the way."""
    monkeypatch.setenv("RAYON_NUM_THREADS", "2")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(
        datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf-cache"))
    )


def prepare(*argv: str | Path) -> int:
    return run_cli(run, [str(arg) for arg in argv])


def meta_of(out: Path) -> dict:
    return json.loads((out / "meta.json").read_text(encoding="utf-8"))


def ids_of(out: Path, split: str) -> np.ndarray:
    return np.fromfile(out / f"{split}.bin", dtype=meta_of(out)["dtype"])


def texts_of(out: Path) -> list[str]:
    """Each split's text (train, val, test if made), decoded; end-of-text tokens are left out."""
    tokenizer = load_tokenizer(out / "tokenizer.json")
    return [tokenizer.hf.decode(ids_of(out, split).tolist()) for split in meta_of(out)["tokens"]]


def all_documents(out: Path) -> list[str]:
    return sorted(document for split in SPLITS for document in documents_of(out, split))


def documents_of(out: Path, split: str) -> list[str]:
    """The split's documents, decoded: its ids cut at every end-of-text token."""
    tokenizer = load_tokenizer(out / "tokenizer.json")
    ids = ids_of(out, split).tolist()
    assert ids and ids[-1] == tokenizer.eot_id
    documents, start = [], 0
    for position, token in enumerate(ids):
        if token == tokenizer.eot_id:
            documents.append(tokenizer.decode(ids[start:position]))
            start = position + 1
    return documents


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))  # bytes, so "\r\n" stays as written
    return path


def error_line(capsys) -> str:
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


# --- tokenizers and round-trips ------------------------------------------------------------------


def test_char_round_trips_tricky_text(tmp_path):
    source = write(tmp_path / "tricky.txt", TRICKY * 3)
    out = tmp_path / "out"
    assert prepare("--input", source, "--tokenizer", "char", "--out", out) == 0
    meta = meta_of(out)
    tokenizer = load_tokenizer(out / "tokenizer.json")
    assert meta["tokenizer"] == "char" and meta["eot_id"] is None
    assert meta["vocab_size"] == len(set(TRICKY)) == tokenizer.vocab_size
    vocab = tokenizer.hf.get_vocab()
    assert sorted(vocab, key=vocab.get) == sorted(vocab)  # ids follow the sorted characters
    assert "".join(texts_of(out)) == TRICKY * 3
    assert meta["tokens"] == {split: len(ids_of(out, split)) for split in SPLITS}
    texts = texts_of(out)
    assert meta["bytes"] == {split: len(texts[i].encode()) for i, split in enumerate(SPLITS)}


def test_bpe_round_trips_tricky_text(tmp_path):
    source = write(tmp_path / "tricky.txt", TRICKY * 3)
    out = tmp_path / "out"
    assert prepare("--input", source, "--tokenizer", "bpe", "--vocab-size", 300, "--out", out) == 0
    meta = meta_of(out)
    assert meta["tokenizer"] == "bpe" and meta["vocab_size"] == 300 and meta["dtype"] == "uint16"
    assert load_tokenizer(out / "tokenizer.json").hf.id_to_token(meta["eot_id"]) == END_OF_TEXT
    (train,), (val,), (test,) = (documents_of(out, split) for split in SPLITS)
    assert train + val + test == TRICKY * 3
    assert meta["bytes"] == {"train": len(train.encode()), "val": len(val.encode()),
                             "test": len(test.encode())}  # fmt: skip


def test_chunks_rejoin_exactly_and_keep_bpe_tokens(tmp_path):
    text = CORPUS.read_text(encoding="utf-8")[:200_000]
    chunks = list(cut_into_chunks([text[i : i + 7_000] for i in range(0, len(text), 7_000)], 5_000))
    assert "".join(chunks) == text and len(chunks) > 30
    assert all(len(chunk) <= 5_000 and chunk.endswith("\n") for chunk in chunks[:-1])
    out = tmp_path / "out"
    assert prepare("--input", CORPUS, "--tokenizer", "bpe", "--vocab-size", 400, "--out", out) == 0
    tokenizer = load_tokenizer(out / "tokenizer.json")
    whole = tokenizer.encode(text)
    assert [token for ids in tokenizer.encode_batch(chunks) for token in ids] == whole


def test_large_file_is_read_in_blocks_with_characters_across_block_edges(tmp_path):
    text = "é😀a\n" * 40_000  # 320 kB: blocks of 64 kB cut through multi-byte characters
    source = write(tmp_path / "big.txt", text)
    assert "".join(FileDocument(source, source.stat().st_size).chunks()) == text
    out = tmp_path / "out"
    assert prepare("--input", source, "--out", out) == 0
    assert "".join(texts_of(out)) == text


@pytest.mark.parametrize(
    ("tokenizer", "first_pass"), [("char", "char vocabulary"), ("bpe", "BPE training")]
)
def test_both_passes_show_their_progress_on_stderr(
    tmp_path, capsys, monkeypatch, tokenizer, first_pass
):
    monkeypatch.setattr(progress, "DELAY_SECONDS", 0.0)  # as if the corpus were large
    source = write(tmp_path / "corpus.txt", CORPUS.read_text(encoding="utf-8")[:200_000])
    size = f"{source.stat().st_size / 1000:.0f}kB"
    assert prepare("--input", source, "--tokenizer", tokenizer, "--out", tmp_path / "out") == 0
    lines = capsys.readouterr().err.splitlines()  # not a terminal: whole lines, no bar
    for name in (first_pass, "encoding"):
        done = [line for line in lines if line.startswith(f"{name}: ")]
        assert done and done[-1].startswith(f"{name}: {size}/{size} (100%), "), lines


def test_existing_tokenizer_is_reused(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert (
        prepare("--input", CORPUS, "--tokenizer", "bpe", "--vocab-size", 500, "--out", first) == 0
    )
    new_text = write(tmp_path / "new.txt", "To be, or not to be 😀\nthat is the question.\n" * 20)
    assert prepare("--input", new_text, "--tokenizer", first, "--out", second) == 0  # its folder
    assert (second / "tokenizer.json").read_bytes() == (first / "tokenizer.json").read_bytes()
    assert meta_of(second)["vocab_size"] == 500
    assert "".join(texts_of(second)) == new_text.read_text()


def test_char_tokenizer_reuse_names_the_file_with_unknown_characters(tmp_path, capsys):
    first = tmp_path / "first"
    assert prepare("--input", write(tmp_path / "a.txt", "abc\nabc\n"), "--out", first) == 0
    other = write(tmp_path / "other.txt", "abcz\n")
    assert (
        prepare("--input", other, "--tokenizer", first / "tokenizer.json", "--out", tmp_path / "x")
        == 2
    )
    message = error_line(capsys)
    assert "other.txt" in message and "'z'" in message
    assert not (tmp_path / "x").exists()


def test_bundled_shakespeare_with_char_tokenizer(shakespeare_char):
    meta = meta_of(shakespeare_char)
    text = CORPUS.read_text(encoding="utf-8")
    assert meta["tokenizer"] == "char" and meta["vocab_size"] == 65
    assert sum(meta["tokens"].values()) == len(text) == sum(meta["bytes"].values())
    train, val, test = texts_of(shakespeare_char)
    assert train + val + test == text
    assert 0.09 < len(val) / len(text) < 0.11 and 0.09 < len(test) / len(text) < 0.11
    assert np.memmap(shakespeare_char / "train.bin", dtype=meta["dtype"], mode="r").size > 850_000


def test_bundled_shakespeare_with_bpe_tokenizer(tmp_path):
    out = tmp_path / "bpe"
    assert prepare("--input", CORPUS, "--tokenizer", "bpe", "--vocab-size", 2048, "--out", out) == 0
    meta = meta_of(out)
    assert meta["vocab_size"] == 2048 and meta["documents"] == {"train": 1, "val": 1, "test": 1}
    assert "".join(texts_of(out)) == CORPUS.read_text()
    assert sum(meta["tokens"].values()) < 0.5 * CORPUS.stat().st_size


# --- inputs ---------------------------------------------------------------------------------------


def make_folder(root: Path) -> dict[str, str]:
    texts = {
        f"part{i}/doc{j}.txt": f"Document {i}.{j}\nwith its own text ✓\n"
        for i in range(3)
        for j in range(4)
    }
    for name, text in texts.items():
        write(root / name, text)
    write(root / ".git" / "config", "hidden, skipped")
    write(root / ".hidden.txt", "hidden, skipped")
    (root / "part0" / "empty.txt").write_text("")
    return texts


def test_folder_of_files(tmp_path):
    texts = make_folder(tmp_path / "corpus")
    out = tmp_path / "out"
    assert (
        prepare(
            "--input", tmp_path / "corpus", "--tokenizer", "bpe", "--vocab-size", 300, "--out", out
        )
        == 0
    )
    meta = meta_of(out)
    assert len(meta["sources"]) == len(texts) + 1  # the empty file is listed, and skipped
    assert all(".git" not in source and "hidden" not in source for source in meta["sources"])
    documents = {split: documents_of(out, split) for split in SPLITS}
    assert all(documents.values()) and all_documents(out) == sorted(texts.values())
    assert meta["documents"] == {split: len(found) for split, found in documents.items()}


PNG_START = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"  # NUL bytes come early in a binary file


def test_a_source_folder_is_read_for_its_text_only(tmp_path, capsys):
    texts = make_folder(tmp_path / "corpus")
    root = tmp_path / "corpus"
    (root / "part0" / "__pycache__").mkdir()
    (root / "part0" / "__pycache__" / "doc.cpython-311.pyc").write_bytes(b"\xa7\r\r\n" + bytes(12))
    (root / "part1" / "logo.png").write_bytes(PNG_START + bytes(100))
    write(root / "part1" / "run.log", "a log line\n")
    write(root / "build" / "generated.txt", "generated text\n")
    out = tmp_path / "out"
    argv = ["--input", root, "--exclude", "*.log", "--exclude", "build", "--out", out]
    assert prepare(*argv) == 0
    read = [Path(source).relative_to(root).as_posix() for source in meta_of(out)["sources"]]
    assert sorted(read) == sorted([*texts, "part0/empty.txt"])
    (note,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert "skipped 3 file(s) and 3 whole folder(s)" in note  # .git, __pycache__, build
    assert "2 hidden" in note and "1 __pycache__" in note and "1 binary" in note
    assert "2 matching --exclude" in note and "logo.png" in note


def test_a_folder_left_out_is_never_walked(tmp_path, monkeypatch):
    """--exclude site-packages must not list the thousands of files below it, nor .git's."""
    root = tmp_path / "corpus"
    make_folder(root)
    write(root / "venv" / "lib" / "site-packages" / "pkg" / "module.txt", "not read\n")
    (root / "part0" / "__pycache__" / "deep").mkdir(parents=True)
    listed = []
    real_scandir = os.scandir

    def scandir(path="."):
        listed.append(Path(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # what os.walk and Path.rglob list folders with
    corpus = FileCorpus([str(root)], exclude=["site-packages"])
    assert root in listed and root / "venv" / "lib" in listed
    left_out = [
        root / ".git",
        root / "venv" / "lib" / "site-packages",
        root / "part0" / "__pycache__",
    ]
    assert not [path for path in listed if any(path.is_relative_to(out) for out in left_out)]
    assert corpus.skipped == {
        "hidden": [root / ".git", root / ".hidden.txt"],
        "pycache": [root / "part0" / "__pycache__"],
        "excluded": [root / "venv" / "lib" / "site-packages"],
    }


def test_a_text_file_in_a_folder_that_is_not_utf8_is_still_an_error(tmp_path, capsys):
    make_folder(tmp_path / "corpus")
    (tmp_path / "corpus" / "latin1.txt").write_bytes("café\n".encode("latin-1"))
    assert prepare("--input", tmp_path / "corpus", "--out", tmp_path / "out") == 2
    assert "latin1.txt is not UTF-8 text" in error_line(capsys)


def test_char_documents_are_separated_by_end_of_text(tmp_path):
    first = write(tmp_path / "a.txt", "hear me speak.")
    second = write(tmp_path / "b.txt", "All:\nSpeak, speak.")
    out = tmp_path / "out"
    argv = ["--input", first, second, "--val-fraction", "0.5", "--test-fraction", "0"]
    assert prepare(*argv, "--out", out) == 0
    meta = meta_of(out)
    tokenizer = load_tokenizer(out / "tokenizer.json")
    assert tokenizer.kind == "char" and meta["eot_id"] == tokenizer.eot_id
    assert tokenizer.hf.id_to_token(meta["eot_id"]) == END_OF_TEXT
    assert meta["vocab_size"] == len(set(first.read_text() + second.read_text())) + 1
    documents = documents_of(out, "train") + documents_of(out, "val")
    assert sorted(documents) == sorted([first.read_text(), second.read_text()])


def test_glob_input(tmp_path):
    texts = make_folder(tmp_path / "corpus")
    out = tmp_path / "out"
    assert prepare("--input", f"{tmp_path}/corpus/**/doc1.txt", "--out", out) == 0
    assert meta_of(out)["sources"] == [str(tmp_path / f"corpus/part{i}/doc1.txt") for i in range(3)]
    assert meta_of(out)["documents"] == {"train": 1, "val": 1, "test": 1}  # one each
    assert all_documents(out) == sorted(texts[f"part{i}/doc1.txt"] for i in range(3))


ROWS = [f"row {i}: café ☕ {'x' * (i % 7)}\nsecond line" for i in range(40)]


def test_jsonl_through_datasets(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps({"id": i, "body": text}) for i, text in enumerate(ROWS)))
    out = tmp_path / "out"
    argv = ["--hf-dataset", "json", "--hf-data-files", data, "--text-column", "body"]
    assert prepare(*argv, "--tokenizer", "bpe", "--vocab-size", 300, "--out", out) == 0
    assert all_documents(out) == sorted(ROWS)
    assert 1 <= len(documents_of(out, "val")) < 15 and 1 <= len(documents_of(out, "test")) < 15
    assert meta_of(out)["sources"][0]["hf_dataset"] == "json"


def test_json_array_and_streaming_give_the_same_bytes(tmp_path):
    data = tmp_path / "rows.json"
    data.write_text(json.dumps([{"text": text} for text in ROWS]))
    plain, streamed = tmp_path / "plain", tmp_path / "streamed"
    argv = [
        "--hf-dataset",
        "json",
        "--hf-data-files",
        data,
        "--tokenizer",
        "bpe",
        "--vocab-size",
        300,
    ]
    assert prepare(*argv, "--out", plain) == 0
    assert prepare(*argv, "--streaming", "--out", streamed) == 0
    for name in ("tokenizer.json", "train.bin", "val.bin", "test.bin"):
        assert (plain / name).read_bytes() == (streamed / name).read_bytes()
    assert all_documents(streamed) == sorted(ROWS)


def test_parquet_through_datasets(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"text": ROWS + [None, ""], "n": list(range(42))}), data)
    out = tmp_path / "out"
    argv = ["--hf-dataset", "parquet", "--hf-data-files", data, "--tokenizer", "bpe"]
    assert prepare(*argv, "--vocab-size", 300, "--out", out) == 0
    meta = meta_of(out)
    assert sum(meta["documents"].values()) == len(ROWS)  # null, "" skipped
    assert all_documents(out) == sorted(ROWS)


# --- the held-out splits and determinism ----------------------------------------------------------


def prepare_documents(tmp_path: Path, out: Path, *argv: str | int) -> int:
    corpus = tmp_path / "corpus"
    if not corpus.exists():
        for i in range(200):
            write(corpus / f"{i:03d}.txt", f"document number {i}\n")
    return prepare(
        "--input", corpus, "--tokenizer", "bpe", "--vocab-size", 300, *argv, "--out", out
    )


def test_held_out_documents_are_disjoint_and_depend_on_seed_only(tmp_path):
    splits = {}
    for name, seed in [("a", 1), ("b", 1), ("c", 2)]:
        assert prepare_documents(tmp_path, tmp_path / name, "--seed", seed) == 0
        splits[name] = {split: set(documents_of(tmp_path / name, split)) for split in SPLITS}
    assert splits["a"] == splits["b"]
    assert splits["a"]["val"] != splits["c"]["val"] and splits["a"]["test"] != splits["c"]["test"]
    for split_sets in splits.values():
        train, val, test = split_sets.values()
        assert not (train & val or train & test or val & test)
        assert len(train | val | test) == 200
        assert 5 <= len(val) <= 40 and 5 <= len(test) <= 40  # about 0.1 of 200 documents each


def test_a_test_split_leaves_the_validation_documents_as_they_were(tmp_path):
    with_test, without = tmp_path / "with_test", tmp_path / "without"
    assert prepare_documents(tmp_path, with_test) == 0
    assert prepare_documents(tmp_path, without, "--test-fraction", "0") == 0
    assert (with_test / "val.bin").read_bytes() == (without / "val.bin").read_bytes()
    assert not (without / "test.bin").exists()
    meta = meta_of(without)
    assert set(meta["tokens"]) == set(meta["documents"]) == set(meta["bytes"]) == {"train", "val"}
    assert set(documents_of(with_test, "train")) < set(documents_of(without, "train"))


@pytest.mark.parametrize("fractions", [("0.01", "0.01"), ("0.98", "0.01"), ("0.01", "0.98")])
def test_three_documents_fill_the_three_splits(tmp_path, fractions):
    names = ["first", "second", "third"]
    inputs = [write(tmp_path / f"{name}.txt", f"{name}\n") for name in names]
    out = tmp_path / "out"
    val_fraction, test_fraction = fractions
    argv = ["--input", *inputs, "--tokenizer", "bpe", "--vocab-size", 300]
    argv += ["--val-fraction", val_fraction, "--test-fraction", test_fraction]
    assert prepare(*argv, "--out", out) == 0
    assert all_documents(out) == sorted(f"{name}\n" for name in names)
    assert meta_of(out)["documents"] == {"train": 1, "val": 1, "test": 1}


@pytest.mark.parametrize("val_fraction", ["0.01", "0.99"])
def test_two_documents_fill_train_and_val_without_a_test_split(tmp_path, val_fraction):
    one, two = write(tmp_path / "one.txt", "first\n"), write(tmp_path / "two.txt", "second\n")
    out = tmp_path / "out"
    argv = ["--input", one, two, "--tokenizer", "bpe", "--vocab-size", 300]
    argv += ["--val-fraction", val_fraction, "--test-fraction", "0"]
    assert prepare(*argv, "--out", out) == 0
    assert sorted(documents_of(out, "train") + documents_of(out, "val")) == ["first\n", "second\n"]
    assert meta_of(out)["documents"] == {"train": 1, "val": 1}


def test_two_documents_are_too_few_for_a_test_split(tmp_path, capsys):
    one, two = write(tmp_path / "one.txt", "first\n"), write(tmp_path / "two.txt", "second\n")
    assert prepare("--input", one, two, "--out", tmp_path / "out") == 2
    message = error_line(capsys)
    assert "split came out empty" in message and "--test-fraction 0.1 (0 makes no" in message
    assert not (tmp_path / "out").exists()


def test_single_document_holds_out_its_tail(tmp_path):
    text = "".join(f"line {i}\n" for i in range(1000))
    out = tmp_path / "out"
    source = write(tmp_path / "one.txt", text)
    argv = ["--input", source, "--val-fraction", "0.25", "--test-fraction", "0.15"]
    assert prepare(*argv, "--out", out) == 0
    train, val, test = texts_of(out)
    assert train + val + test == text
    assert train.endswith("\n") and val.startswith("line ") and test.startswith("line ")
    assert abs(len(val) / len(text) - 0.25) < 0.01 and abs(len(test) / len(text) - 0.15) < 0.01
    without_test = tmp_path / "without_test"
    assert prepare("--input", source, "--val-fraction", "0.25", "--test-fraction", "0",
                   "--out", without_test) == 0  # fmt: skip
    train, val = texts_of(without_test)[:2]
    assert train + val == text and abs(len(val) / len(text) - 0.25) < 0.01


def test_single_row_dataset_holds_out_its_tail(tmp_path):
    text = "".join(f"line {i}: ✓\n" for i in range(500))
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"text": text}) + "\n")
    out = tmp_path / "out"
    argv = ["--hf-dataset", "json", "--hf-data-files", data, "--tokenizer", "bpe"]
    assert prepare(*argv, "--vocab-size", 300, "--out", out) == 0
    (train,), (val,), (test,) = (documents_of(out, split) for split in SPLITS)
    assert train + val + test == text and val.startswith("line ") and test.startswith("line ")
    assert abs(len(val.encode()) / len(text.encode()) - 0.1) < 0.01
    assert abs(len(test.encode()) / len(text.encode()) - 0.1) < 0.01
    assert meta_of(out)["bytes"] == {"train": len(train.encode()), "val": len(val.encode()),
                                     "test": len(test.encode())}  # fmt: skip


def test_same_input_same_output_bytes(tmp_path):
    make_folder(tmp_path / "corpus")
    first, second = tmp_path / "first", tmp_path / "second"
    for out in (first, second):
        assert (
            prepare(
                "--input",
                tmp_path / "corpus",
                "--tokenizer",
                "bpe",
                "--vocab-size",
                320,
                "--out",
                out,
            )
            == 0
        )
    for name in ("tokenizer.json", "train.bin", "val.bin", "test.bin", "meta.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert len(meta_of(first)["content_hash"]) == 64


# --- the output folder ----------------------------------------------------------------------------


def test_existing_output_needs_overwrite(tmp_path, capsys):
    source, out = write(tmp_path / "a.txt", "hello\nworld\n"), tmp_path / "out"
    assert prepare("--input", source, "--out", out) == 0
    before = meta_of(out)
    assert prepare("--input", write(tmp_path / "b.txt", "other\ntext\n"), "--out", out) == 2
    assert "already exists" in error_line(capsys) and meta_of(out) == before
    assert prepare("--input", tmp_path / "b.txt", "--out", out, "--overwrite") == 0
    assert meta_of(out)["sources"] == [str(tmp_path / "b.txt")]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.txt", "b.txt", "out"]


def test_overwrite_refuses_a_folder_that_data_prep_did_not_write(tmp_path, capsys):
    precious = write(tmp_path / "home" / "thesis.tex", "years of work")
    assert prepare("--input", CORPUS, "--out", tmp_path / "home", "--overwrite") == 2
    assert "not a data_prep folder" in error_line(capsys) and precious.exists()


def test_failed_run_leaves_no_folder_and_keeps_the_old_one(tmp_path, capsys):
    out = tmp_path / "out"
    assert prepare("--input", write(tmp_path / "good.txt", "fine text\nhere\n"), "--out", out) == 0
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine text\n" * 10 + b"\xff")  # fails while encoding, after the tokenizer
    assert (
        prepare("--input", bad, "--tokenizer", out / "tokenizer.json", "--out", out, "--overwrite")
        == 2
    )
    assert "bad.txt" in error_line(capsys)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bad.txt", "good.txt", "out"]


# --- bad input: one line, exit code 2 -------------------------------------------------------------


def test_not_utf8_names_the_file_and_byte_offset(tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    prefix = ("é" * 40_000 + "\n").encode()  # 80,001 bytes: past the first 64 kB block
    bad.write_bytes(prefix + "café".encode("latin-1"))
    assert prepare("--input", bad, "--out", tmp_path / "out") == 2
    message = error_line(capsys)
    assert str(bad) in message and f"byte offset {len(prefix) + 3}" in message and "0xe9" in message


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--input", "no/such/file.txt"], "does not exist"),
        (["--input", "no/such/*.txt"], "matches no text files"),
        (["--input", "{empty}"], "corpus is empty"),
        (["--input", "{empty_folder}"], "holds no text files"),
        (["--input", "{binary_folder}"], "holds no text files (1 skipped"),
        (["--hf-dataset", "json", "--exclude", "*.log"], "only applies to --input"),
        (["--input", CORPUS, "--tokenizer", "bpe", "--vocab-size", "100"], "257"),
        (["--input", CORPUS, "--tokenizer", "bpe", "--vocab-size", str(2**32)], "uint32"),
        (["--input", CORPUS, "--tokenizer", "char", "--vocab-size", "20"], "65 distinct"),
        (["--input", CORPUS, "--tokenizer", "char", "--vocab-size", "0"], "char tokenizer"),
        (["--input", CORPUS, "--tokenizer", "no/tokenizer.json"], "does not exist"),
        (["--input", CORPUS, "--val-fraction", "1"], "between 0 and 1"),
        (["--input", CORPUS, "--test-fraction", "-0.1"], "at least 0 (no test split)"),
        (["--input", CORPUS, "--test-fraction", "1"], "at least 0 (no test split)"),
        (["--input", CORPUS, "--val-fraction", "0.5", "--test-fraction", "0.5"], "sum less"),
        (["--input", CORPUS, "--streaming"], "only apply to --hf-dataset"),
        (["--input", CORPUS, "--num-proc", "0"], "at least 1"),
        (["--input", CORPUS, "--vocab-size", "many"], "invalid int value"),
        (["--tokenizer", "char"], "--input --hf-dataset"),
        (["--hf-dataset", "someone/not-cached-anywhere"], "HF_DATASETS_OFFLINE"),
        (["--hf-dataset", "json", "--hf-data-files", "no/such.jsonl"], "does not exist"),
        (
            ["--hf-dataset", "json", "--hf-data-files", "{jsonl}", "--text-column", "body"],
            "no column 'body'",
        ),
        (
            ["--hf-dataset", "json", "--hf-data-files", "{jsonl}", "--hf-split", "test"],
            "Unknown split",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, argv, expected):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "binary_folder").mkdir()
    (tmp_path / "binary_folder" / "image.png").write_bytes(PNG_START)
    (tmp_path / "rows.jsonl").write_text('{"text": "hello"}\n')
    names = {
        "{empty}": tmp_path / "empty.txt",
        "{empty_folder}": tmp_path / "empty_folder",
        "{binary_folder}": tmp_path / "binary_folder",
        "{jsonl}": tmp_path / "rows.jsonl",
    }
    argv = [names.get(str(arg), arg) for arg in argv]
    out = tmp_path / "out"
    assert prepare(*argv, "--out", out) == 2
    assert expected in error_line(capsys)
    assert not out.exists()


def test_help_documents_every_flag():
    parser = build_parser()
    help_text = parser.format_help()
    flags = [flag for action in parser._actions for flag in action.option_strings]
    assert len(flags) >= 18
    assert all(flag in help_text for flag in flags)
    assert all(action.help for action in parser._actions)


def test_command_line_entry_point(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["--input", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    result = run_python("-m", "data_prep", "--input", str(tmp_path / "missing.txt"), "--out", "x")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: --input {tmp_path / 'missing.txt'} does not exist; check the path"
    ]


# --- row numbers of dataset rows ------------------------------------------------------------------

ROWS_BEFORE_THE_BAD_ONE = ["First Citizen:\n", "", None, "Before we proceed\n", None, ""]


def write_rows(path: Path, texts: list) -> Path:
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": texts}), path)
    else:
        path.write_text("\n".join(json.dumps({"text": text}) for text in texts) + "\n")
    return path


@pytest.mark.parametrize(("builder", "suffix"), [("json", ".jsonl"), ("parquet", ".parquet")])
@pytest.mark.parametrize("streaming", [[], ["--streaming"]])
def test_a_bad_row_is_named_by_its_row_in_the_source(tmp_path, capsys, builder, suffix, streaming):
    """Empty and null rows are skipped as documents but still counted: row 6 is the seventh row."""
    vocabulary = tmp_path / "vocabulary"
    assert (
        prepare(
            "--input", write(tmp_path / "a.txt", CORPUS.read_text()[:5000]), "--out", vocabulary
        )
        == 0
    )
    rows = write_rows(tmp_path / f"rows{suffix}", [*ROWS_BEFORE_THE_BAD_ONE, "Café\n", "fine\n"])
    argv = ["--hf-dataset", builder, "--hf-data-files", rows, *streaming, "--tokenizer", vocabulary]
    assert prepare(*argv, "--out", tmp_path / "out") == 2
    message = error_line(capsys)
    assert f"{builder} ({rows}) row 6 (0-based)" in message and "'é'" in message


def test_a_value_that_is_not_text_is_named_by_its_row(tmp_path, capsys):
    rows = write_rows(tmp_path / "rows.jsonl", ["First Citizen:\n", None, "", 7, "more\n"])
    argv = ["--hf-dataset", "json", "--hf-data-files", rows, "--out", tmp_path / "out"]
    assert prepare(*argv) == 2
    message = error_line(capsys)
    assert "holds int values" in message and "row 3 (0-based)" in message
