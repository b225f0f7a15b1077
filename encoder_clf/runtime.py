"""Where and in which precision the model runs: the device, bf16 autocast where the hardware has it.

Shared by training, inference and features, so ``--precision auto`` means the
same everywhere: ``bf16`` where matrix products run natively in bf16 (AVX512-BF16
or AMX on CPU, Ampere and newer on CUDA), else ``fp32``.
"""

from __future__ import annotations

import contextlib
import copy

import torch

from .errors import UsageError

PRECISIONS = ("auto", "bf16", "fp32")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 matrix products run natively (AVX512-BF16/AMX on CPU, Ampere+ on CUDA)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turn ``auto`` into ``bf16`` where the hardware has native bf16, else ``fp32``."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return precision


def autocast(precision: str, device: torch.device):
    """bf16 autocast for ``bf16``; a no-op context for ``fp32``."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def for_inference(module: torch.nn.Module, precision: str) -> torch.nn.Module:
    """The module itself for fp32; for bf16, a copy with bf16 weights.

    Autocast casts each weight to bf16 on every call when gradients are off; a
    bf16 copy pays that once. Autocast still runs LayerNorm and softmax in fp32.
    """
    return copy.deepcopy(module).to(torch.bfloat16) if precision == "bf16" else module
