"""Bad input, across every command: the table of cases, each refused with one line and exit
code 2, and how a case is run and checked (tests/test_bad_inputs.py and the fault campaign,
``python -m bench.faults``, both run it).

Every case runs a command in a fresh process, as a user would, and checks that

* it exits with code 2 and prints nothing on stdout;
* stderr is exactly one line, ``error: ...``, naming the problem and a fix, and no traceback;
* no file changed in the folders it was given or asked to write (names and bytes, before and after).

Cases marked ``cheap`` must be refused before torch is imported: they run with a stand-in ``torch``
package first on the path that fails on import, so importing torch would end them with a traceback.

The launch cases run train.py in the environment that a real ``accelerate launch`` gives its first
process (captured by tests/launch_probe.py), so that each launch costs one short probe run;
tests/test_launch_configs.py launches train.py itself (there, ``--num_processes 2`` without
``--multi_gpu``: the one refusal whose line depends on the launcher).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench import ROOT, run_python

CORPUS = ROOT / "data" / "tinyshakespeare.txt"

Damage = Callable[[Path, Path, Path], None]  # (work folder, good data folder, good output folder)

CPU_CONFIG = "configs/shakespeare_char_cpu.yaml"
CORPUS_CHARS = 30_000  # of the bundled corpus: 58 distinct characters
VOCAB = 58
TINY = (
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=16",
    "model.block_size=16",
    "train.batch_size=4",
    "train.max_iters=2",
    "train.eval_iters=1",
    "train.warmup_iters=0",
    "train.wandb.mode=disabled",
    "train.report=false",
)
PREP = ("-m", "data_prep")
TRAIN = ("train.py", CPU_CONFIG, "data.dir={data}", "train.out_dir={work}/out", *TINY)
TRAIN_ON_DAMAGED_DATA = (*TRAIN, "data.dir={work}/data")
SAMPLE = ("sample.py", "--max-new-tokens", "5")
FSDP_TWO_PROCESSES = (
    "--use_fsdp", "--fsdp_version", "2", "--fsdp_cpu_ram_efficient_loading", "false",
    "--fsdp_sync_module_states", "false", "--num_processes", "2", "--mixed_precision", "no",
)  # fmt: skip
MULTI_CPU_CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: MULTI_CPU
num_machines: 1
machine_rank: 0
num_processes: 2
mixed_precision: "no"
use_cpu: true
"""  # configs/accelerate/cpu_ddp_2proc.yaml as it was: accelerate starts one process for it


@dataclass(frozen=True)
class Case:
    command: tuple[str, ...]  # python's arguments; {data}, {out}, {work} and {corpus} are filled in
    fragments: tuple[str, ...]  # the error line must hold each: the problem, and the fix
    damage: Damage | None = None  # builds the case's files in its work folder
    cheap: bool = False  # refused before torch is imported
    env: dict[str, str] = field(default_factory=dict)
    launch: tuple[str, ...] = ()  # run in the environment `accelerate launch LAUNCH` gives
    cpu_only: bool = False  # the case is bad input on a machine without a GPU only


# ----- ways to damage a folder ---------------------------------------------------------------------


def write_file(name: str, content: str | bytes) -> Damage:
    def damage(work: Path, data: Path, out: Path) -> None:
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    return damage


def symlink_loop(name: str) -> Damage:
    """``work/NAME`` a symbolic link to ``work/NAME.other``, which links back to it."""

    def damage(work: Path, data: Path, out: Path) -> None:
        (work / name).symlink_to(work / f"{name}.other")
        (work / f"{name}.other").symlink_to(work / name)

    return damage


def damaged_data(edit: Callable[[Path], None]) -> Damage:
    """A copy of the good data folder as work/data, then ``edit(work/data)``."""

    def damage(work: Path, data: Path, out: Path) -> None:
        shutil.copytree(data, work / "data")
        edit(work / "data")

    return damage


def damaged_out(edit: Callable[[Path], None]) -> Damage:
    """A copy of the good training output folder as work/out, then ``edit(work/out)``."""

    def damage(work: Path, data: Path, out: Path) -> None:
        shutil.copytree(out, work / "out")
        edit(work / "out")

    return damage


def replace(name: str, content: str | bytes | Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        path = folder / name
        if callable(content):
            path.write_bytes(content(path.read_bytes()))
        else:
            path.write_bytes(content.encode() if isinstance(content, str) else content)

    return edit


def remove(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


def edit_meta(**changes) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        meta = json.loads((folder / "meta.json").read_text())
        (folder / "meta.json").write_text(json.dumps({**meta, **changes}))

    return edit


def another_tokenizer(text: str) -> Callable[[Path], None]:
    """Put the char tokenizer of ``text`` in place of the folder's tokenizer.json."""

    def edit(folder: Path) -> None:
        from gpt.data.tokenizer import train_char_tokenizer

        train_char_tokenizer([text]).save(folder / "tokenizer.json")

    return edit


class WritesAFileWhenUnpickled:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def planted_pickle(folder: Path) -> None:
    payload = {"token_embedding.weight": WritesAFileWhenUnpickled(str(folder / "pwned"))}
    (folder / "model.safetensors").write_bytes(pickle.dumps(payload))


# ----- the cases ----------------------------------------------------------------------------------

PREP_TEXT = (*PREP, "--input", "{corpus}", "--out", "{work}/prepared")

CASES = {
    # data_prep: options
    "prep: --vocab-size not a number": Case(
        (*PREP_TEXT, "--vocab-size", "many"), ("invalid int value: 'many'", "--help"), cheap=True
    ),
    "prep: --val-fraction not a number": Case(
        (*PREP_TEXT, "--val-fraction", "a tenth"), ("invalid float value", "--help"), cheap=True
    ),
    "prep: --val-fraction out of range": Case(
        (*PREP_TEXT, "--val-fraction", "1.5"), ("--val-fraction 1.5", "between 0 and 1"), cheap=True
    ),
    "prep: --num-proc 0": Case(
        (*PREP_TEXT, "--num-proc", "0"), ("--num-proc 0", "at least 1"), cheap=True
    ),
    "prep: BPE --vocab-size too small": Case(
        (*PREP_TEXT, "--tokenizer", "bpe", "--vocab-size", "100"),
        ("--vocab-size 100", "257"),
        cheap=True,
    ),
    "prep: an unknown option": Case(
        (*PREP_TEXT, "--frobnicate"), ("unrecognized arguments: --frobnicate", "--help"), cheap=True
    ),
    "prep: no --out": Case(
        (*PREP, "--input", "{corpus}"), ("required: --out", "--help"), cheap=True
    ),
    "prep: --input and --hf-dataset together": Case(
        (*PREP_TEXT, "--hf-dataset", "json"), ("not allowed with argument", "--help"), cheap=True
    ),
    "prep: --tokenizer a GPT-2 folder not downloaded yet": Case(
        (*PREP_TEXT, "--tokenizer", "{work}/models/gpt2"),
        ("models/gpt2 does not exist", "hf download gpt2", "--local-dir"),
        cheap=True,
    ),
    # data_prep: inputs
    "prep: a missing input file": Case(
        (*PREP, "--input", "{work}/missing.txt", "--out", "{work}/prepared"),
        ("missing.txt does not exist", "check the path"),
        cheap=True,
    ),
    "prep: input that is not UTF-8": Case(
        (*PREP, "--input", "{work}/latin1.txt", "--out", "{work}/prepared"),
        ("is not UTF-8 text", "convert the file to UTF-8"),
        damage=write_file("latin1.txt", b"fine text\n" * 50 + "café".encode("latin-1")),
        cheap=True,
    ),
    "prep: characters the given char tokenizer does not know": Case(
        (*PREP, "--input", "{work}/accents.txt", "--tokenizer", "{data}", "--out", "{work}/p"),
        ("accents.txt", "does not know: 'é'", "prepare the data with a tokenizer that covers"),
        damage=write_file("accents.txt", "First Citizen:\nCafé\n"),
        cheap=True,
    ),
    "prep: a missing --tokenizer file": Case(
        (*PREP_TEXT, "--tokenizer", "{work}/none/tokenizer.json"),
        ("tokenizer.json does not exist", "run data_prep"),
        cheap=True,
    ),
    "prep: a --tokenizer file that is not JSON": Case(
        (*PREP_TEXT, "--tokenizer", "{work}/tokenizer.json"),
        ("tokenizer.json is not a valid tokenizer.json", "data_prep"),
        damage=write_file("tokenizer.json", "not JSON {"),
        cheap=True,
    ),
    "prep: --out exists": Case(
        (*PREP, "--input", "{corpus}", "--out", "{data}"),
        ("already exists", "--overwrite"),
        cheap=True,
    ),
    "prep: --text-column the dataset lacks": Case(
        (
            *PREP,
            "--hf-dataset",
            "json",
            "--hf-data-files",
            "{work}/rows.jsonl",
            "--text-column",
            "body",
            "--out",
            "{work}/prepared",
        ),
        ("no column 'body'", "--text-column"),
        damage=write_file("rows.jsonl", '{"text": "hello"}\n{"text": "world"}\n'),
        cheap=True,
    ),
    "prep: --input a symbolic link loop": Case(
        (*PREP, "--input", "{work}/loop", "--out", "{work}/prepared"),
        ("loop is a symbolic link that leads nowhere", "check the path"),
        damage=symlink_loop("loop"),
        cheap=True,
    ),
    "prep: --input an empty file": Case(
        (*PREP, "--input", "{work}/empty.txt", "--out", "{work}/prepared"),
        ("the corpus is empty", "give it some text"),
        damage=write_file("empty.txt", ""),
        cheap=True,
    ),
    "prep: --input a folder without text files": Case(
        (*PREP, "--input", "{work}/pictures", "--out", "{work}/prepared"),
        ("holds no text files", "put text files in it"),
        damage=write_file("pictures/.hidden", "not a corpus"),
        cheap=True,
    ),
    "prep: --num-proc beyond any machine's cores": Case(
        (*PREP_TEXT, "--num-proc", "100000000"),
        ("--num-proc 100000000", "at most 256", "leave it out"),
        cheap=True,
    ),
    "prep: --val-fraction nan": Case(
        (*PREP_TEXT, "--val-fraction", "nan"), ("--val-fraction nan", "between 0 and 1"), cheap=True
    ),
    "prep: a negative --vocab-size": Case(
        (*PREP_TEXT, "--vocab-size", "-5"), ("--vocab-size -5", "or leave it out"), cheap=True
    ),
    "prep: --tokenizer a folder without tokenizer.json": Case(
        (*PREP_TEXT, "--tokenizer", "{work}/empty_folder"),
        ("holds no tokenizer.json", "give a data_prep folder"),
        damage=write_file("empty_folder/notes.txt", "no tokenizer here"),
        cheap=True,
    ),
    # train.py: the command line and the config
    "train: no config": Case(("train.py",), ("required: config", "--help"), cheap=True),
    "train: an unknown option": Case(
        ("train.py", "--fast", CPU_CONFIG), ("unrecognized arguments: --fast", "--help"), cheap=True
    ),
    "train: a missing config file": Case(
        ("train.py", "{work}/none.yaml"), ("none.yaml does not exist", "configs/*.yaml"), cheap=True
    ),
    "train: a config that is not YAML": Case(
        ("train.py", "{work}/broken.yaml"),
        ("broken.yaml is not valid YAML at line", "fix its syntax"),
        damage=write_file("broken.yaml", "model:\n  n_layer: [2\n"),
        cheap=True,
    ),
    "train: a config that is not UTF-8": Case(
        ("train.py", "{work}/latin1.yaml"),
        ("latin1.yaml is not UTF-8 text (byte 0xe9", "save it as UTF-8"),
        damage=write_file("latin1.yaml", "train:\n  out_dir: café\n".encode("latin-1")),
        cheap=True,
    ),
    "train: a config that gives a key twice": Case(
        ("train.py", "{work}/twice.yaml"),
        ("gives the key 'max_iters' twice (the second at line 3)", "remove one of them"),
        damage=write_file("twice.yaml", "train:\n  max_iters: 5\n  max_iters: 6\n"),
        cheap=True,
    ),
    "train: an empty train.out_dir": Case(
        (*TRAIN, "train.out_dir="), ("train.out_dir='' names no folder", "out/run"), cheap=True
    ),
    "train: a train.out_dir that is a file": Case(
        (*TRAIN, "train.out_dir={work}/a_file"),
        ("a_file is a file, not a folder", "choose another train.out_dir"),
        damage=write_file("a_file", "not a folder"),
    ),
    "train: a misspelt key": Case(
        (*TRAIN, "model.n_layers=2"),
        ("unknown config key 'model.n_layers'", "'model.n_layer'"),
        cheap=True,
    ),
    "train: a value of the wrong type": Case(
        (*TRAIN, "model.n_layer=two"), ("'model.n_layer'", "valid integer", "'two'"), cheap=True
    ),
    "train: a value out of range": Case(
        (*TRAIN, "train.learning_rate=-0.1"),
        ("'train.learning_rate'", "greater than 0"),
        cheap=True,
    ),
    "train: a value not among the choices": Case(
        (*TRAIN, "train.mixed_precision=fp8"),
        ("'train.mixed_precision'", "'no', 'bf16' or 'fp16'"),
        cheap=True,
    ),
    "train: train.tf32 not a boolean": Case(
        (*TRAIN, "train.tf32=sometimes"), ("'train.tf32'", "valid boolean"), cheap=True
    ),
    "train: heads that do not divide the width": Case(
        (*TRAIN, "model.n_embd=30", "model.n_head=4"), ("n_embd (30)", "divisible by"), cheap=True
    ),
    "train: an override without =": Case(
        (*TRAIN, "model.n_layer"), ("'model.n_layer'", "section.key=value"), cheap=True
    ),
    "train: a bad WANDB_MODE": Case(
        tuple(word for word in TRAIN if word != "train.wandb.mode=disabled"),  # W&B's own mode
        ("WANDB_MODE='loud'", "disabled, offline, online"),
        env={"WANDB_MODE": "loud"},
    ),
    "train: a NaN learning rate": Case(
        (*TRAIN, "train.learning_rate=nan"),
        (
            "'train.learning_rate'",
            "finite number",
        ),
        cheap=True,
    ),
    "train: an infinite learning rate": Case(
        (*TRAIN, "train.learning_rate=inf"),
        (
            "'train.learning_rate'",
            "finite number",
        ),
        cheap=True,
    ),
    "train: an infinite model.rope_base": Case(
        (*TRAIN, "model.rope=true", "model.rope_base=.inf"),
        (
            "'model.rope_base'",
            "finite number",
        ),
        cheap=True,
    ),
    "train: a NaN model.norm_eps": Case(
        (*TRAIN, "model.norm_eps=nan"),
        (
            "'model.norm_eps'",
            "finite number",
        ),
        cheap=True,
    ),
    "train: a zero model.norm_eps": Case(
        (*TRAIN, "model.norm_eps=0"),
        (
            "'model.norm_eps'",
            "greater than 0",
        ),
        cheap=True,
    ),
    "train: an infinite train.grad_clip": Case(
        (*TRAIN, "train.grad_clip=inf"),
        (
            "'train.grad_clip'",
            "finite number",
        ),
        cheap=True,
    ),
    "train: an infinite model.init_scale": Case(
        (*TRAIN, "model.init_scale=inf"),
        (
            "'model.init_scale'",
            "finite number",
        ),
        cheap=True,
    ),
    "train: an infinite distributed timeout": Case(
        (*TRAIN, "train.distributed_timeout_minutes=inf"),
        (
            "'train.distributed_timeout_minutes'",
            "finite number",
        ),
        cheap=True,
    ),
    "train: a distributed timeout of ages": Case(
        (*TRAIN, "train.distributed_timeout_minutes=1e30"),
        (
            "'train.distributed_timeout_minutes'",
            "less than or equal to 10080",
        ),
        cheap=True,
    ),
    "train: a seed too large for the RNGs": Case(
        (*TRAIN, "train.seed=100000000000000000000"),
        (
            "'train.seed'",
            "less than or equal to 4294967295",
        ),
        cheap=True,
    ),
    "train: a negative seed": Case(
        (*TRAIN, "train.seed=-1"),
        (
            "'train.seed'",
            "greater than or equal to 0",
        ),
        cheap=True,
    ),
    "train: a boolean for a number of layers": Case(
        (*TRAIN, "model.n_layer=true"),
        (
            "'model.n_layer'",
            "a boolean where a number",
        ),
        cheap=True,
    ),
    "train: a fractional number of layers": Case(
        (*TRAIN, "model.n_layer=1.5"),
        (
            "'model.n_layer'",
            "fractional part",
        ),
        cheap=True,
    ),
    "train: a zero model.mlp_width": Case(
        (*TRAIN, "model.mlp_width=0"),
        (
            "'model.mlp_width'",
            "greater than 0",
        ),
        cheap=True,
    ),
    "train: a zero model.head_dim": Case(
        (*TRAIN, "model.head_dim=0"),
        (
            "'model.head_dim'",
            "greater than 0",
        ),
        cheap=True,
    ),
    "train: model.n_kv_head not dividing n_head": Case(
        (*TRAIN, "model.n_kv_head=4"),
        ("model.n_kv_head (4) must divide model.n_head (2)",),
        cheap=True,
    ),
    "train: RoPE with an odd head width": Case(
        (*TRAIN, "model.rope=true", "model.head_dim=7"),
        (
            "rotates pairs",
            "must be even",
        ),
        cheap=True,
    ),
    "train: model.norm=batch in a GPT": Case(
        (*TRAIN, "model.norm=batch"),
        (
            "model.norm=batch is for the CNN",
            "model.norm=layer",
        ),
        cheap=True,
    ),
    "train: an unknown model.activation": Case(
        (*TRAIN, "model.activation=relu"),
        (
            "'model.activation'",
            "'swiglu'",
        ),
        cheap=True,
    ),
    "train: model.qk_norm not a boolean": Case(
        (*TRAIN, "model.qk_norm=maybe"),
        (
            "'model.qk_norm'",
            "valid boolean",
        ),
        cheap=True,
    ),
    "train: model.tie_embeddings not a boolean": Case(
        (*TRAIN, "model.tie_embeddings=2"),
        (
            "'model.tie_embeddings'",
            "valid boolean",
        ),
        cheap=True,
    ),
    "train: a GPT option for the MLP baseline": Case(
        (*TRAIN, "model.arch=mlp", "model.rope=true"),
        (
            "model.rope are options of model.arch=gpt",
            "remove them",
        ),
        cheap=True,
    ),
    "train: Muon's keys without Muon": Case(
        (*TRAIN, "train.muon_learning_rate=0.05"),
        (
            "train.muon_learning_rate are for train.optimizer=muon",
            "remove them",
        ),
        cheap=True,
    ),
    "train: a Muon momentum of 1": Case(
        (*TRAIN, "train.optimizer=muon", "train.muon_momentum=1"),
        (
            "'train.muon_momentum'",
            "less than 1",
        ),
        cheap=True,
    ),
    "train: an infinite Muon learning rate": Case(
        (*TRAIN, "train.optimizer=muon", "train.muon_learning_rate=inf"),
        (
            "'train.muon_learning_rate'",
            "finite number",
        ),
        cheap=True,
    ),
    "train: SGD's momentum with Muon": Case(
        (*TRAIN, "train.optimizer=muon", "train.momentum=0.9"),
        (
            "train.momentum is for train.optimizer=sgd",
            "remove it",
        ),
        cheap=True,
    ),
    "train: an empty train.resume": Case(
        (*TRAIN, "train.resume="),
        (
            "train.resume='' names nothing",
            "use auto, never",
        ),
        cheap=True,
    ),
    "train: min_lr above the learning rate": Case(
        (*TRAIN, "train.min_lr=0.1"),
        (
            "train.min_lr (0.1) must not exceed",
            "train.learning_rate",
        ),
        cheap=True,
    ),
    "train: warmup longer than the decay": Case(
        (*TRAIN, "train.warmup_iters=10", "train.lr_decay_iters=5"),
        (
            "train.warmup_iters (10) must not exceed",
            "lower one or raise the other",
        ),
        cheap=True,
    ),
    "train: L-BFGS without its settings": Case(
        (*TRAIN, "train.optimizer=lbfgs"),
        (
            "train.optimizer=lbfgs",
            "set train.full_batch=true",
        ),
        cheap=True,
    ),
    "train: a section given a value": Case(
        (*TRAIN, "model=3"),
        (
            "'model'",
            "valid dictionary",
        ),
        cheap=True,
    ),
    "train: a config path that is a folder": Case(
        ("train.py", "{work}/configs"),
        ("configs is a folder, not a file", "configs/*.yaml"),
        damage=write_file("configs/a.yaml", "train: {}\n"),
        cheap=True,
    ),
    "train: a config path that is a symbolic link loop": Case(
        ("train.py", "{work}/loop.yaml"),
        ("loop.yaml is a symbolic link that leads nowhere", "configs/*.yaml"),
        damage=symlink_loop("loop.yaml"),
        cheap=True,
    ),
    "train: a config that is a list": Case(
        ("train.py", "{work}/list.yaml"),
        ("list.yaml must hold a mapping", "data, model and train sections"),
        damage=write_file("list.yaml", "- 1\n- 2\n"),
        cheap=True,
    ),
    "train: more layers than the machine's memory holds": Case(
        (*TRAIN, "model.n_layer=1000000000"),
        ("parameters", "more than this machine's", "make model.n_layer"),
    ),
    "train: a width no machine can hold": Case(
        (*TRAIN, "model.n_embd=1000000000", "model.n_head=1"),
        ("larger than any machine can hold", "make model.n_embd"),
    ),
    "train: data.dir a file": Case(
        (*TRAIN, "data.dir={corpus}"), ("corpus.txt is a file, not a folder", "fix data.dir")
    ),
    "train: train.init_from a file": Case(
        (*TRAIN, "train.init_from={corpus}"),
        ("corpus.txt is a file, not a folder", "hf download"),
    ),
    # train.py: damaged data folders
    "data: the folder is missing": Case(
        (*TRAIN, "data.dir={work}/none"), ("none does not exist", "python -m data_prep")
    ),
    "data: meta.json is missing": Case(
        TRAIN_ON_DAMAGED_DATA,
        ("lacks meta.json", "run data_prep again"),
        damaged_data(remove("meta.json")),
    ),
    "data: meta.json is empty": Case(
        TRAIN_ON_DAMAGED_DATA,
        ("meta.json is damaged", "run data_prep again"),
        damaged_data(replace("meta.json", "")),
    ),
    "data: meta.json is not an object": Case(
        TRAIN_ON_DAMAGED_DATA,
        ("meta.json is damaged", "run data_prep again"),
        damaged_data(replace("meta.json", "[1, 2]")),
    ),
    "data: meta.json has an unknown dtype": Case(
        TRAIN_ON_DAMAGED_DATA,
        ("meta.json is damaged", "'float99'", "run data_prep again"),
        damaged_data(edit_meta(dtype="float99")),
    ),
    "data: meta.json has a vocab_size that is not a number": Case(
        TRAIN_ON_DAMAGED_DATA,
        ("meta.json is damaged", "'lots'", "run data_prep again"),
        damaged_data(edit_meta(vocab_size="lots")),
    ),
    "data: train.bin is shorter than a block": Case(
        TRAIN_ON_DAMAGED_DATA,
        ("holds 10 tokens", "smaller block_size"),
        damaged_data(replace("train.bin", lambda data: data[:20])),
    ),
    "data: train.bin is empty": Case(
        TRAIN_ON_DAMAGED_DATA,
        ("holds 0 tokens", "smaller block_size"),
        damaged_data(replace("train.bin", b"")),
    ),
    "data: train.bin is cut inside a token": Case(
        TRAIN_ON_DAMAGED_DATA,
        ("train.bin is not a whole number of uint16", "run data_prep again"),
        damaged_data(replace("train.bin", lambda data: data[:-1])),
    ),
    "data: tokenizer.json is missing": Case(
        TRAIN_ON_DAMAGED_DATA,
        ("lacks tokenizer.json", "run data_prep again"),
        damaged_data(remove("tokenizer.json")),
    ),
    "data: tokenizer.json is not JSON": Case(
        TRAIN_ON_DAMAGED_DATA,
        ("not a valid tokenizer.json", "use the one data_prep wrote"),
        damaged_data(replace("tokenizer.json", "not JSON {")),
    ),
    "data: tokenizer.json from another preparation": Case(
        TRAIN_ON_DAMAGED_DATA,
        ("tokenizer.json has 4 tokens", "meta.json", "run data_prep again"),
        damaged_data(another_tokenizer("abcd")),
    ),
    "train: model.vocab_size below the data's": Case(
        (*TRAIN, "model.vocab_size=10"), ("model.vocab_size=10", "remove the key or raise it")
    ),
    # train.py: launches that would not do what they say
    "launch: fp16 on a machine without a GPU": Case(
        (*TRAIN, "train.mixed_precision=fp16"), ("fp16", "bf16 or no"), cpu_only=True
    ),
    "launch: accelerate's FSDP on a machine without a GPU": Case(
        TRAIN, ("FSDP", "train.fsdp=true"), launch=FSDP_TWO_PROCESSES, cpu_only=True
    ),
    "launch: accelerate's FSDP with train.cpu=true": Case(
        (*TRAIN, "train.cpu=true"), ("FSDP", "train.fsdp=true"), launch=FSDP_TWO_PROCESSES
    ),
    "train: train.fsdp=true with fp16": Case(
        (*TRAIN, "train.fsdp=true", "train.mixed_precision=fp16"),
        ("train.fsdp=true", "train.mixed_precision=bf16 or no"),
        cheap=True,
    ),
    "launch: the launch's mixed precision differs from the config's": Case(
        TRAIN,
        ("mixed precision bf16", "train.mixed_precision=no", "train.mixed_precision=bf16"),
        launch=("--config_file", "configs/accelerate/multi_gpu.yaml", "--num_processes", "2"),
    ),
    "launch: a MULTI_CPU config without mpirun": Case(
        TRAIN,
        ("one process", "--multi_gpu --num_processes"),
        launch=("--config_file", "{launch_configs}/multi_cpu.yaml"),
    ),
    # sample.py: options
    "sample: --max-new-tokens not a number": Case(
        (*SAMPLE, "--checkpoint", "{out}", "--max-new-tokens", "abc"),
        ("invalid int value: 'abc'", "--help"),
        cheap=True,
    ),
    "sample: no --checkpoint": Case(SAMPLE, ("required: --checkpoint", "--help"), cheap=True),
    "sample: an unknown --device": Case(
        (*SAMPLE, "--checkpoint", "{out}", "--device", "tpu"),
        ("invalid choice: 'tpu'", "--help"),
        cheap=True,
    ),
    "sample: a negative temperature": Case(
        (*SAMPLE, "--checkpoint", "{out}", "--temperature", "-1"),
        ("temperature must be 0 or more", "use 0 for greedy"),
    ),
    "sample: a temperature that is not a number": Case(
        (*SAMPLE, "--checkpoint", "{out}", "--temperature", "nan"),
        ("temperature must be 0 or more and finite (got nan)", "use 0 for greedy"),
    ),
    "sample: more samples than one batch can hold": Case(
        (*SAMPLE, "--checkpoint", "{out}", "--num-samples", "200000"),
        ("num-samples must be from 1 to 1024 (got 200000)", "another --seed"),
    ),
    "sample: a missing checkpoint": Case(
        (*SAMPLE, "--checkpoint", "{work}/none"), ("does not exist", "training output folder")
    ),
    "sample: no new tokens": Case(
        (*SAMPLE, "--checkpoint", "{out}", "--max-new-tokens", "0"),
        ("max-new-tokens must be 1 or more (got 0)",),
    ),
    "sample: --top-k 0": Case(
        (*SAMPLE, "--checkpoint", "{out}", "--top-k", "0"),
        ("top-k must be 1 or more (got 0)", "leave it unset"),
    ),
    "sample: a prompt the tokenizer cannot encode": Case(
        (*SAMPLE, "--checkpoint", "{out}", "--prompt", "\u20ac"),
        ("does not know: '\u20ac'", "remove or replace them"),
    ),
    "sample: --checkpoint a file": Case(
        (*SAMPLE, "--checkpoint", "{corpus}"),
        ("corpus.txt is a file, not a folder", "pass a training output folder"),
    ),
    # sample.py: damaged output folders
    "out: truncated weights": Case(
        (*SAMPLE, "--checkpoint", "{work}/out"),
        ("not a complete weights file", "retrain"),
        damaged_out(replace("model.safetensors", lambda data: data[: len(data) // 2])),
    ),
    "out: garbage weights": Case(
        (*SAMPLE, "--checkpoint", "{work}/out"),
        ("not a complete weights file", "retrain"),
        damaged_out(replace("model.safetensors", bytes(range(256)) * 16)),
    ),
    "out: a pickle planted as the weights": Case(
        (*SAMPLE, "--checkpoint", "{work}/out"),
        ("not a complete weights file", "retrain"),
        damaged_out(planted_pickle),
    ),
    "out: tokenizer.json is missing": Case(
        (*SAMPLE, "--checkpoint", "{work}/out"),
        ("tokenizer.json is missing", "copy the"),
        damaged_out(remove("tokenizer.json")),
    ),
    "out: tokenizer.json is not JSON": Case(
        (*SAMPLE, "--checkpoint", "{work}/out"),
        ("not a valid tokenizer.json", "data_prep"),
        damaged_out(replace("tokenizer.json", "not JSON {")),
    ),
    "out: a tokenizer larger than the model's vocabulary": Case(
        (*SAMPLE, "--checkpoint", "{work}/out"),
        (
            "has 92 tokens",
            f"vocabulary of {VOCAB}",
            "tokenizer.json of the data the model was trained",
        ),
        damaged_out(another_tokenizer("\n" + "".join(map(chr, range(32, 123))))),
    ),
    # gpt.evaluate
    "evaluate: an unknown --split": Case(
        ("-m", "gpt.evaluate", "{out}", "--split", "dev"), ("invalid choice: 'dev'", "--help")
    ),
    "evaluate: --batch-size 0": Case(
        ("-m", "gpt.evaluate", "{out}", "--batch-size", "0"), ("--batch-size 0", "at least 1")
    ),
    "evaluate: OUT_DIR a file": Case(
        ("-m", "gpt.evaluate", "{corpus}"), ("is not a folder", "pass a training output folder")
    ),
    "evaluate: a folder without weights": Case(
        ("-m", "gpt.evaluate", "{work}/empty"),
        ("holds no model.safetensors", "pass a training output folder"),
        damage=write_file("empty/notes.txt", "no run here"),
    ),
    # gpt.export
    "export: an unknown format": Case(
        ("-m", "gpt.export", "{out}", "--to", "onnx", "{work}/hf"),
        ("invalid choice: 'onnx'", "--help"),
    ),
    "export: DIR a file": Case(
        ("-m", "gpt.export", "{out}", "--to", "hf", "{work}/a_file"),
        ("a_file is a file, not a folder", "choose another DIR"),
        damage=write_file("a_file", "not a folder"),
    ),
    "export: a missing run": Case(
        ("-m", "gpt.export", "{work}/none", "--to", "hf", "{work}/hf"),
        ("none does not exist", "pass a training output folder"),
    ),
    # gpt.report
    "report: a missing run folder": Case(
        ("-m", "gpt.report", "{work}/none"),
        ("none is not a folder", "pass training output folders"),
        cheap=True,
    ),
    "report: metrics.jsonl that is not UTF-8": Case(
        ("-m", "gpt.report", "{work}/run", "--out", "{work}/report"),
        ("metrics.jsonl is not UTF-8 text", "restore the run's metrics.jsonl"),
        damage=write_file("run/metrics.jsonl", b"\xff\xfe{"),
        cheap=True,
    ),
    # gpt.sweep
    "sweep: a missing sweep file": Case(
        ("-m", "gpt.sweep", "{work}/none.yaml"), ("none.yaml does not exist", "configs/experiments")
    ),
    "sweep: a sweep file that is not UTF-8": Case(
        ("-m", "gpt.sweep", "{work}/sweep.yaml"),
        ("sweep.yaml is not UTF-8 text", "save it as UTF-8"),
        damage=write_file("sweep.yaml", b"\xff\xfe runs"),
    ),
    "sweep: a sweep file without its keys": Case(
        ("-m", "gpt.sweep", "{work}/sweep.yaml", "--plan"),
        ("'description' is missing", "'base' is missing"),
        damage=write_file("sweep.yaml", "runs:\n  a: {}\n"),
    ),
}


# ----- running a case ------------------------------------------------------------------------------


def prepare_folders(root: Path) -> dict[str, Path]:
    """A good data folder, a good training output folder, and a torch that cannot be imported."""
    corpus = root / "corpus.txt"
    corpus.write_text(CORPUS.read_text(encoding="utf-8")[:CORPUS_CHARS], encoding="utf-8")
    data = root / "data"
    result = run(PREP + ("--input", str(corpus), "--out", str(data)), {})
    assert result.returncode == 0, result.stderr
    out = root / "out"
    write_trained_out_dir(data, out)
    no_torch = root / "no_torch" / "torch"
    no_torch.mkdir(parents=True)
    (no_torch / "__init__.py").write_text('raise ImportError("this case must not import torch")\n')
    launch_configs = root / "launch_configs"
    launch_configs.mkdir()
    (launch_configs / "multi_cpu.yaml").write_text(MULTI_CPU_CONFIG)
    return {
        "corpus": corpus,
        "data": data,
        "out": out,
        "no_torch": no_torch.parent,
        "launch_configs": launch_configs,
        "hf_cache": root / "hf_cache",
    }


def write_trained_out_dir(data: Path, out: Path) -> None:
    """What sampling reads of a training output folder: weights and tokenizer (a tiny GPT)."""

    from gpt.base.config import ModelConfig
    from gpt.data.tokenizer import load_tokenizer
    from gpt.models.gpt import build_model
    from gpt.run.weights import save_model

    tokenizer = load_tokenizer(data / "tokenizer.json")
    torch.manual_seed(0)
    assert tokenizer.vocab_size == VOCAB
    config = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=VOCAB)
    out.mkdir()
    save_model(out / "model.safetensors", build_model(config))
    tokenizer.save(out / "tokenizer.json")


LaunchEnvironment = Callable[[tuple[str, ...]], dict[str, str]]


def launch_environments(
    folders: dict[str, Path], new_folder: Callable[[], Path]
) -> LaunchEnvironment:
    """The environment that ``accelerate launch FLAGS`` gives its first process (cached); each
    probe launch writes it into a folder from ``new_folder()``."""
    captured: dict[tuple[str, ...], dict[str, str]] = {}

    def environment(flags: tuple[str, ...]) -> dict[str, str]:
        if flags not in captured:
            path = new_folder() / "environment.json"
            flags_filled = tuple(flag.format(**folders) for flag in flags)
            launch = ("-m", "accelerate.commands.launch", *flags_filled, "--main_process_port", "0")
            result = run((*launch, "tests/launch_probe.py", "--env", str(path)), {})
            assert result.returncode == 0, result.stderr
            captured[flags] = json.loads(path.read_text())
        return captured[flags]

    return environment


def run(args: tuple[str, ...], env: dict[str, str]) -> subprocess.CompletedProcess:
    """``python ARGS`` in the repository with ``env`` added to :func:`command_environment`."""
    return run_python(args, command_environment(env), timeout=120, check=False)


def command_environment(env: dict[str, str]) -> dict[str, str]:
    """This process's environment, one thread per command and a quiet W&B, then ``env``."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true", **env}


def snapshot(*folders: Path) -> dict[str, str]:
    """Every file below the folders: its path and the SHA-256 of its bytes."""
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in folders
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def refusal_problems(
    case: Case,
    folders: dict[str, Path],
    launch_environment: LaunchEnvironment,
    work: Path,
) -> list[str]:
    """Run ``case`` with ``work`` as its fresh work folder; what is wrong with how it was refused
    (nothing, if it was refused as it must be). tests/test_bad_inputs.py and bench/faults.py run the
    table this way."""
    work.mkdir()
    if case.damage is not None:
        case.damage(work, folders["data"], folders["out"])
    places = {**folders, "work": work}
    args = tuple(arg.format(**places) for arg in case.command)
    env = dict(launch_environment(case.launch)) if case.launch else {}
    env |= {**case.env, "HF_DATASETS_CACHE": str(folders["hf_cache"])}
    if case.cheap:
        env["PYTHONPATH"] = str(folders["no_torch"])
    watched = (work, folders["data"], folders["out"])
    before = snapshot(*watched)

    result = run(args, env)

    problems = []
    if result.returncode != 2:
        problems.append(f"exit code {result.returncode}, not 2")
    if "Traceback" in result.stderr:
        problems.append("a traceback")
    if result.stdout:
        problems.append("output on stdout")
    lines = result.stderr.splitlines()
    if len(lines) != 1 or not lines[0].startswith("error: "):
        problems.append(f"{len(lines)} lines on stderr, not one error: line")
    else:
        problems += [
            f"the line lacks {fragment!r}"
            for fragment in case.fragments
            if fragment not in lines[0]
        ]
    if snapshot(*watched) != before:
        problems.append("files changed")
    if problems:
        problems.append(f"stderr: {result.stderr[-3000:]}")
    return problems
