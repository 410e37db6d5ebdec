"""MFU's peak follows the precision in use; the trainer turns TF32 on or off as configured."""

import pytest
import torch

from gpt.base.cli import run_cli
from gpt.training.throughput import gpu_peak_flops, peak_flops, tf32_enabled, use_tf32
from tests.conftest import run_python
from tests.test_trainer import train_args


@pytest.fixture
def restore_tf32():
    """The TF32 settings are process-wide: put them back after a test changes them."""
    matmul, conv = (
        torch.backends.cuda.matmul.fp32_precision,
        torch.backends.cudnn.conv.fp32_precision,
    )
    yield
    torch.backends.cuda.matmul.fp32_precision = matmul
    torch.backends.cudnn.conv.fp32_precision = conv


@pytest.mark.parametrize(
    ("name", "precision", "tf32", "peak"),
    [
        ("NVIDIA H200", "bf16", True, 989e12),
        ("NVIDIA H200", "fp16", False, 989e12),  # mixed precision: TF32 plays no part
        ("NVIDIA H200", "no", True, 494.5e12),  # TF32 tensor cores: half the bf16 rate
        ("NVIDIA H200", "no", False, 67e12),  # plain fp32 units
        ("NVIDIA H100 80GB HBM3", "no", False, 67e12),
        ("NVIDIA H100 PCIe", "bf16", True, 756e12),  # not the SXM part's figures
        ("NVIDIA A100-SXM4-80GB", "no", True, 156e12),
        ("NVIDIA A100-SXM4-80GB", "no", False, 19.5e12),
        ("NVIDIA L40S", "bf16", True, 362e12),  # not the L4's
        ("NVIDIA L4", "bf16", True, 121e12),
        ("Tesla V100-SXM2-16GB", "no", True, 15.7e12),  # no TF32 before Ampere
        ("Tesla T4", "fp16", True, 65e12),
    ],
)
def test_the_peak_follows_the_precision_in_use(name, precision, tf32, peak):
    assert gpu_peak_flops(name, precision, tf32) == peak


def test_an_unknown_gpu_has_no_data_sheet_peak():
    assert gpu_peak_flops("AMD Instinct MI300X", "bf16", True) is None


def test_the_cpu_peak_is_measured():
    assert peak_flops(torch.device("cpu")) > 1e8


@pytest.mark.usefixtures("restore_tf32")
def test_tf32_is_switched_on_and_off_for_matmuls_and_convolutions():
    use_tf32(True)
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    assert tf32_enabled()
    use_tf32(False)
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert not tf32_enabled()


@pytest.mark.usefixtures("restore_tf32")
def test_tf32_can_come_from_the_global_setting():
    torch.backends.cuda.matmul.fp32_precision = "none"  # inherit
    torch.backends.fp32_precision = "tf32"
    try:
        assert tf32_enabled()
    finally:
        torch.backends.fp32_precision = "none"


@pytest.mark.parametrize(("setting", "expected"), [("true", "tf32"), ("false", "ieee")])
def test_the_trainer_sets_tf32_as_configured(shakespeare_char, tmp_path, setting, expected):
    """A real trainer, built from the command line's config, in a fresh process."""
    _, config, *overrides = train_args(shakespeare_char, tmp_path / "out", f"train.tf32={setting}")
    script = (
        "import sys, torch\n"
        "from gpt.base.config import load_config\n"
        "from gpt.training.trainer import Trainer\n"
        "Trainer(load_config(sys.argv[1], sys.argv[2:]))\n"
        "print(torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)\n"
    )
    result = run_python("-c", script, config, *overrides, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [expected, expected]


class MatmulBeforeTorch29:
    """``torch.backends.cuda.matmul`` as torch 2.8 and earlier have it: no ``fp32_precision``."""

    def __getattr__(self, name):
        raise AttributeError("Unknown attribute " + name)

    def __setattr__(self, name, value):
        raise AttributeError("Unknown attribute " + name)


@pytest.mark.parametrize("call", [lambda: use_tf32(True), tf32_enabled])
def test_a_torch_without_the_fp32_precision_api_gets_one_line_naming_the_floor(
    call, monkeypatch, capsys
):
    monkeypatch.setattr(torch.backends.cuda, "matmul", MatmulBeforeTorch29())
    assert run_cli(lambda argv: call(), []) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        f"error: torch {torch.__version__} is too old: this project needs torch>=2.9 (its "
        "fp32_precision TF32 settings and torch.optim.Muon); run `pip install 'torch>=2.9'` "
        "(or `make setup`)"
    )
