"""Model FLOPs utilisation (MFU): achieved FLOP/s over what the device's matrix units can do.

MFU = flops_per_token x tokens_per_second / peak_flops. The peak depends on which units do the
matrix products, and so on the precision:

* bf16 or fp16 mixed precision: the tensor cores at their dense bf16/fp16 rate;
* fp32 with TF32 on (:func:`use_tf32`, the trainer's default on a GPU): the tensor cores at their
  TF32 rate, half the bf16 one;
* fp32 without TF32: the plain fp32 units (CUDA cores), far slower on recent GPUs.

The peaks of known GPUs come from their data sheets (dense, without sparsity): :func:`gpu_peak_flops`
is a pure function of the device name, precision and TF32 setting. The peak of anything else (a
CPU, an unknown GPU) is measured with a large matrix product, the best case for that device.

The TF32 settings are torch's ``fp32_precision`` API, new in torch 2.9 (with ``torch.optim.Muon``,
the reason for the floor in pyproject.toml); an older torch gets one line saying so.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch

from gpt.base.errors import UserError

TORCH_FLOOR = "2.9"  # the fp32_precision API and torch.optim.Muon; pyproject.toml asks for it


@dataclass(frozen=True)
class GpuPeaks:
    """A GPU's dense peak FLOP/s per kind of matrix product, from the vendor's data sheet."""

    half: float  # bf16/fp16 on tensor cores
    tf32: float | None  # TF32 on tensor cores; None before Ampere, which has no TF32
    fp32: float  # plain fp32, without tensor cores


# Matched in order against torch.cuda.get_device_name(), so a longer name comes before its prefix.
_GPU_PEAKS = {
    "H200": GpuPeaks(half=989e12, tf32=494.5e12, fp32=67e12),  # SXM
    "H100 PCIe": GpuPeaks(half=756e12, tf32=378e12, fp32=51e12),
    "H100": GpuPeaks(half=989e12, tf32=494.5e12, fp32=67e12),  # SXM
    "A100": GpuPeaks(half=312e12, tf32=156e12, fp32=19.5e12),
    "L40S": GpuPeaks(half=362e12, tf32=183e12, fp32=91.6e12),
    "A10G": GpuPeaks(half=125e12, tf32=62.5e12, fp32=31.2e12),
    "L4": GpuPeaks(half=121e12, tf32=60e12, fp32=30.3e12),
    "RTX 4090": GpuPeaks(half=165e12, tf32=82.6e12, fp32=82.6e12),
    "RTX 3090": GpuPeaks(half=71e12, tf32=35.6e12, fp32=35.6e12),
    "V100": GpuPeaks(half=125e12, tf32=None, fp32=15.7e12),  # fp16; no bf16 units
    "T4": GpuPeaks(half=65e12, tf32=None, fp32=8.1e12),  # fp16; no bf16 units
}


def gpu_peak_flops(device_name: str, mixed_precision: str, tf32: bool) -> float | None:
    """The data-sheet peak for training in ``mixed_precision`` (no, bf16, fp16) on the named GPU,
    with fp32 matrix products on TF32 tensor cores if ``tf32``; None for a GPU not in the table."""
    for model, peaks in _GPU_PEAKS.items():
        if model in device_name:
            if mixed_precision in ("bf16", "fp16"):
                return peaks.half
            return peaks.tf32 if tf32 and peaks.tf32 is not None else peaks.fp32
    return None


def peak_flops(device: torch.device, mixed_precision: str = "no") -> float:
    """The device's peak FLOP/s for the training precision and the TF32 setting now in force."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak_flops(name, mixed_precision, tf32_enabled())
        if peak is not None:
            return peak
    return measure_matmul_flops(device)


def use_tf32(enabled: bool) -> None:
    """Let fp32 matrix products and convolutions on CUDA run on TF32 tensor cores, or not.

    TF32 keeps fp32's range with a 10-bit mantissa: on Ampere and later GPUs it makes fp32 matrix
    products several times faster, at a precision that training does not notice. The settings are
    process-wide and can be made without a GPU.
    """
    _require_fp32_precision_api()
    precision = "tf32" if enabled else "ieee"
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision


def tf32_enabled() -> bool:
    """Whether fp32 matrix products on CUDA run as TF32 (``none`` inherits the global setting)."""
    _require_fp32_precision_api()
    precision = torch.backends.cuda.matmul.fp32_precision
    if precision == "none":
        precision = torch.backends.fp32_precision
    return precision == "tf32"


def _require_fp32_precision_api() -> None:
    """One line instead of an AttributeError on a torch older than the API (before 2.9)."""
    if not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        raise UserError(
            f"torch {torch.__version__} is too old: this project needs torch>={TORCH_FLOOR} (its "
            f"fp32_precision TF32 settings and torch.optim.Muon); run "
            f"`pip install 'torch>={TORCH_FLOOR}'` (or `make setup`)"
        )


@functools.cache  # the machine does not change within a process: measured once, not per trainer
def measure_matmul_flops(device: torch.device, size: int = 1024, seconds: float = 0.3) -> float:
    """FLOP/s of repeated ``size x size`` float32 matrix products on ``device``, best of a few runs."""
    generator = torch.Generator(device).manual_seed(0)  # leaves the global RNG (dropout) alone
    a = torch.randn(size, size, device=device, generator=generator)
    b = torch.randn(size, size, device=device, generator=generator)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0.0:
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - start))
    return best
