"""Dropout with cheaper masks on a CPU.

On a CPU, ``torch.nn.functional.dropout`` draws one Bernoulli number per
element (``bernoulli_``, then a division and a product: about 10 ns an
element on a 2-core EPYC), which made dropout 11% of a bf16 fine-tuning step
of all-MiniLM-L6-v2, as much as the optimizer. Here one 64-bit draw of the
same generator gives eight 8-bit slices, each compared with a threshold, so
the mask costs a small share of that (the draws run on one core: a from-scratch
bf16 step spent 6% of its time in them with 16-bit slices, half that now).
The mask holds 0 or ``1/(1-p)`` in the input's dtype, as ``F.dropout``'s noise
does, and the product keeps it for backward. The one difference: the drop rate
is ``p`` rounded to a multiple of 1/256 (0.1 becomes 0.1016; any ``p > 0``
drops at least 1/256), as FlashAttention keeps its drop rate in 8 bits, and the
scale follows the rounded rate, so the expectation is kept exactly. Elsewhere
(CUDA has a fused kernel) it is ``F.dropout``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

RESOLUTION = 256  # the drop rate is a multiple of 1 / RESOLUTION: one signed byte per element


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)``, with a mask from :func:`keep_mask` on a CPU."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training)
    return x * keep_mask(x.shape, p, x.dtype)


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, dtype: torch.dtype,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """A ``shape`` tensor of ``dtype``: 0 with probability ``p`` (rounded to 1/256), else ``1/(1-p)``.

    ``random_`` from the int64 minimum fills all 64 bits, so every byte of a draw is uniform over -128..127.
    """
    dropped = max(1, round(p * RESOLUTION)) if p > 0 else 0
    if dropped == RESOLUTION:
        return torch.zeros(shape, dtype=dtype)
    n = math.prod(shape)
    draws = torch.empty((n + 7) // 8, dtype=torch.int64).random_(-2 ** 63, None, generator=generator)
    keep = draws.view(torch.int8)[:n].view(shape) >= dropped - RESOLUTION // 2
    return keep.view(torch.uint8).to(dtype).mul_(RESOLUTION / (RESOLUTION - dropped))


class Dropout(nn.Dropout):
    """``nn.Dropout`` through :func:`dropout` (same arguments and state)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)
