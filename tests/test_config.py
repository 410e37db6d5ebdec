"""The config: every bundled file validates, overrides apply, and bad input is one line, exit 2."""

import re
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig

from gpt.base.cli import run_cli
from gpt.base.config import Config, fit_warmup_to_run, load_config
from gpt.base.errors import UserError
from gpt.train_cli import _main as train_main
from gpt.training.schedule import learning_rate

from .conftest import ROOT, run_python

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
ACCELERATE_CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))


def test_the_bundled_configs_exist():
    names = {path.name for path in CONFIGS}
    assert {
        "shakespeare_char.yaml",
        "shakespeare_char_cpu.yaml",
        "shakespeare_bpe.yaml",
        "mlp_baseline.yaml",
        "cnn_baseline.yaml",
        "gpt2_124m.yaml",
        "shakespeare_char_modern.yaml",
        "llama_124m.yaml",
    } <= names
    assert {p.name for p in ACCELERATE_CONFIGS} >= {
        "multi_gpu.yaml",
        "multi_node.yaml",
        "cpu_ddp_2proc.yaml",
    }


DURATION = re.compile(r"\d+(?:\.\d+)?\s*(?:h|hours?|min|minutes?|s|seconds?)\b")


def test_the_demo_configs_header_gives_the_readmes_time_or_none():
    """One measured figure: the demo config's header points to the README's Results, and any
    time it states is one that the README's `make demo` row states too."""
    text = (ROOT / "configs" / "shakespeare_char_cpu.yaml").read_text()
    header = " ".join(line for line in text.splitlines() if line.startswith("#"))
    (demo_row,) = [
        line
        for line in (ROOT / "README.md").read_text().splitlines()
        if line.startswith("| `make demo`")
    ]
    assert "README.md's Results" in header
    assert set(DURATION.findall(header)) <= set(DURATION.findall(demo_row))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads_and_validates(path: Path):
    config = load_config(path)
    written = yaml.safe_load(path.read_text())
    for section, values in written.items():
        for key, value in values.items():
            if isinstance(value, dict):
                continue
            assert getattr(getattr(config, section), key) == value, f"{section}.{key}"


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_every_accelerate_config_is_valid_for_accelerate(path: Path):
    cluster = ClusterConfig.from_yaml_file(str(path))
    assert cluster.num_processes >= 2


def test_overrides_are_typed_and_nested():
    config = load_config(
        ROOT / "configs" / "shakespeare_char_cpu.yaml",
        [
            "model.n_layer=2",
            "train.learning_rate=1e-2",
            "train.compile=true",
            "train.wandb.mode=disabled",
            "train.wandb.run_name=123",
            "data.dir=elsewhere",
        ],
    )
    assert config.model.n_layer == 2
    assert config.train.learning_rate == pytest.approx(1e-2)
    assert config.train.compile is True
    assert config.train.wandb.mode == "disabled"
    assert config.train.wandb.run_name == "123"
    assert config.data.dir == "elsewhere"


def test_defaults_without_a_file():
    config = load_config(None)
    assert isinstance(config, Config)
    assert config.model.init == "xavier"
    assert config.train.decay_iters == config.train.max_iters


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_a_warmup_longer_than_a_short_run_is_shortened_with_a_note(path: Path):
    """Every shipped config's smoke run (``train.max_iters=20``) warms up for a tenth of it."""
    train = load_config(path, ["train.max_iters=20"]).train
    fitted, note = fit_warmup_to_run(train)
    assert fitted.warmup_iters == 2 and f"warmup_iters={train.warmup_iters}" in note
    assert fitted.model_copy(update={"warmup_iters": train.warmup_iters}) == train
    assert learning_rate(19, fitted) < learning_rate(2, fitted) <= fitted.learning_rate  # decays
    assert fit_warmup_to_run(fitted) == (fitted, None)  # a fitting warmup is left alone


@pytest.mark.parametrize("value", ["no", "'no'", "bf16"])
def test_mixed_precision_no_is_read_as_the_word_not_as_yaml_false(value):
    """YAML reads an unquoted ``no`` as the boolean false; the key means the word."""
    config = load_config(
        ROOT / "configs" / "shakespeare_char_cpu.yaml", [f"train.mixed_precision={value}"]
    )
    assert config.train.mixed_precision == value.strip("'")
    assert "mixed_precision: 'no'" in Config().to_yaml()  # and is written back quoted


def test_resolved_config_round_trips_through_yaml(tmp_path):
    config = load_config(ROOT / "configs" / "gpt2_124m.yaml", ["train.seed=7"])
    file = tmp_path / "config.yaml"
    file.write_text(config.to_yaml())
    assert load_config(file) == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.n_layr=4"], "unknown config key 'model.n_layr' (did you mean 'model.n_layer'?)"),
        (["trian.max_iters=4"], "unknown config key 'trian' (did you mean 'train'?)"),
        (["train.wandb.mdoe=offline"], "did you mean 'train.wandb.mode'?"),
        (["model.n_layer=four"], "config key 'model.n_layer': input should be a valid integer"),
        (["train.compile=maybe"], "config key 'train.compile'"),
        (
            ["train.learning_rate=-0.1"],
            "config key 'train.learning_rate': input should be greater than 0",
        ),
        (["model.dropout=1.0"], "config key 'model.dropout': input should be less than 1"),
        (["model.dropout=-0.1"], "config key 'model.dropout'"),
        (
            ["model.n_embd=100", "model.n_head=6"],
            "model.n_embd (100) must be divisible by model.n_head (6)",
        ),
        (["model.arch=rnn"], "config key 'model.arch'"),
        (["data.train_fraction=0"], "config key 'data.train_fraction': input should be greater"),
        (["data.train_fraction=1.5"], "config key 'data.train_fraction': input should be less"),
        (["train.mixed_precision=fp8"], "config key 'train.mixed_precision'"),
        (["train.min_lr=1.0"], "train.min_lr (1.0) must not exceed train.learning_rate"),
        (
            ["train.warmup_iters=50", "train.lr_decay_iters=40"],
            "train.warmup_iters (50) must not exceed train.lr_decay_iters (40)",
        ),
        (["model.init=he"], "config key 'model.init'"),
        (["model.init_scale=0"], "config key 'model.init_scale': input should be greater than 0"),
        (["model.norm=group"], "config key 'model.norm'"),
        (["model.norm=batch"], "model.norm=batch is for the CNN baseline only (model.arch=gpt)"),
        (["model.arch=mlp", "model.norm=batch"], "CNN baseline only (model.arch=mlp)"),
        (["train.optimizer=rmsprop"], "config key 'train.optimizer'"),
        (["train.momentum=0.9"], "train.momentum is for train.optimizer=sgd (not adamw"),
        (["train.optimizer=sgd", "train.momentum=1"], "config key 'train.momentum'"),
        (
            ["train.full_batch=true", "train.gradient_accumulation_steps=2"],
            "set train.gradient_accumulation_steps=1",
        ),
        (
            ["train.optimizer=lbfgs", "train.mixed_precision=fp16"],
            "set train.full_batch=true, train.weight_decay=0, train.grad_clip=0, "
            "train.mixed_precision=no or bf16",
        ),
        (["model.n_layer"], "is not of the form section.key=value"),
        (["model.n_layer.deep=1"], "model.n_layer is a value, not a section"),
    ],
)
def test_invalid_input_is_one_clear_line_and_exit_code_2(overrides, message, capsys):
    argv = [str(ROOT / "configs" / "shakespeare_char_cpu.yaml"), *overrides]
    assert run_cli(train_main, argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_a_missing_config_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_a_file_that_is_not_yaml_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML at line"):
        load_config(bad)


def test_a_missing_data_folder_stops_before_any_work(tmp_path):
    result = run_python(
        "train.py",
        str(ROOT / "configs" / "shakespeare_char_cpu.yaml"),
        f"data.dir={tmp_path / 'missing'}",
        f"train.out_dir={tmp_path / 'out'}",
    )
    assert result.returncode == 2
    assert "data folder" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_command_line_exits_2_without_a_traceback():
    result = run_python("train.py", str(ROOT / "configs" / "mlp_baseline.yaml"), "model.n_lyer=2")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: unknown config key 'model.n_lyer' (did you mean 'model.n_layer'?)"
    )


class Writes(list):
    """A stderr that keeps each write apart, as an unbuffered one passes each to the system."""

    def write(self, text: str) -> int:
        self.append(text)
        return len(text)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize(
    "failure", [UserError("a bad input"), PermissionError(13, "Permission denied", "x.txt")]
)
def test_the_error_line_is_one_write(failure, monkeypatch):
    """torchrun starts its processes with unbuffered output: two that fail together must not
    interleave the pieces of their lines on the stderr they share."""
    writes = Writes()
    monkeypatch.setattr("sys.stderr", writes)

    def fail(argv: list[str]) -> None:
        raise failure

    assert run_cli(fail, []) == 2
    assert len(writes) == 1 and writes[0].startswith("error: ") and writes[0].endswith("\n")
    assert writes[0].count("\n") == 1
