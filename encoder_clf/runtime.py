"""Where and in which precision the model runs: the device, bf16 autocast where the hardware has it.

Shared by training, inference and features, so ``--precision auto`` means the
same everywhere: ``bf16`` where matrix products run natively in bf16 (AVX512-BF16
or AMX on CPU, Ampere and newer on CUDA), else ``fp32``.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import platform

import torch

from .errors import UsageError

PRECISIONS = ("auto", "bf16", "fp32")


def inspectable(tensor: torch.Tensor) -> bool:
    """Whether a forward pass may branch on ``tensor``'s values (a shortcut such as skipping an all-False mask):
    on a CPU only, since on an accelerator the check would wait for the device, and never while tracing (ONNX
    export, TorchScript) or compiling, since the recorded graph has to serve every input."""
    return tensor.device.type == "cpu" and not (
        torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling())


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
    The buffers the module names in ``float32_state`` stay float32: values that
    turn outputs into decisions (mixing weights, thresholds, a target's scale)
    were fitted on float32 outputs, and rounded they would decide otherwise.
    """
    if precision != "bf16":
        return module
    copied = copy.deepcopy(module).to(torch.bfloat16)
    for name in getattr(module, "float32_state", ()):
        owner, _, buffer = name.rpartition(".")
        try:
            value = module.get_buffer(name)
        except AttributeError:  # this module has no such part (a model without n-grams, of another task)
            continue
        copied.get_submodule(owner).register_buffer(buffer, value.clone())
    return copied


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
KEPT_BLOCKS = 1 << 30  # blocks up to 1 GiB come from the heap and stay there when freed


@functools.cache
def reuse_freed_blocks() -> bool:
    """Have glibc's malloc keep freed blocks of up to 1 GiB for reuse, rather than unmap each one over 32 MiB.

    glibc serves a block above its mmap threshold (32 MiB at most) with a fresh mapping and unmaps it when it is
    freed, so a tensor that large, made at every training step, is page-faulted in at every step:
    all-MiniLM-L6-v2's 47 MB word-embedding gradient took 16 ms a step that way on a 2-core EPYC, against 1 ms
    reused (10% of a bf16 fine-tuning step). With this, the heap grows over the first few steps until a freed
    block fits the next one, and then no page is faulted in again. The process keeps the freed memory, as
    PyTorch's CUDA caching allocator keeps GPU memory. Linux with glibc only (elsewhere nothing changes);
    whether it took is returned.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    return bool(libc.mallopt(M_MMAP_THRESHOLD, KEPT_BLOCKS) and libc.mallopt(M_TRIM_THRESHOLD, KEPT_BLOCKS))
