"""Model FLOPs utilisation (MFU): achieved FLOP/s over what the device's matrix units can do.

MFU = flops_per_token x tokens_per_second / peak_flops. The peak of a known GPU comes from its data
sheet (dense, without sparsity); the peak of anything else (a CPU, say) is measured here with a large
matrix multiplication, the best case for that device.
"""

from __future__ import annotations

import time

import torch

# Dense bf16/fp16 tensor-core peaks in FLOP/s, from the vendors' data sheets.
_GPU_PEAK_BF16 = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,
    "T4": 65e12,
}


def peak_flops(device: torch.device, mixed_precision: str = "no") -> float:
    """The device's peak FLOP/s for the training dtype: data sheet for GPUs, measured otherwise."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for model, peak in _GPU_PEAK_BF16.items():
            if model in name:
                # fp32 matmuls run as TF32 on tensor cores at half the bf16 rate.
                return peak if mixed_precision in ("bf16", "fp16") else peak / 2
    return measure_matmul_flops(device)


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
