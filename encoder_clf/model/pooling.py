"""Poolings: token states ``(batch, seq, d_model)`` → one sentence vector ``(batch, d_model)``.

Chosen by name from :data:`POOLINGS`; all take the same ``(states,
padding_mask)`` with ``padding_mask`` ``True`` at padding, and none lets a
padded position change the result.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import MultiHeadAttention


class Pooling(nn.Module):
    """Common constructor so every pooling is built the same way from the model config."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()


class ClsPooling(Pooling):
    """The first token's state (``[CLS]``), as BERT classifies."""

    def forward(self, states: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        return states[:, 0]


class MeanPooling(Pooling):
    """Average of the real tokens' states (sentence-transformers' default)."""

    def forward(self, states: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        if padding_mask is None:
            return states.mean(dim=1)
        keep = (~padding_mask)[..., None].to(states.dtype)
        return (states * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)


class MaxPooling(Pooling):
    """Element-wise maximum over the real tokens."""

    def forward(self, states: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        if padding_mask is not None:
            states = states.masked_fill(padding_mask[..., None], torch.finfo(states.dtype).min)
        return states.max(dim=1).values


class AttentionPooling(Pooling):
    """A learned query attends over the tokens (general attention with one query per sentence)."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__(d_model, n_heads)
        self.query = nn.Parameter(torch.randn(1, 1, d_model) * d_model ** -0.5)
        self.attention = MultiHeadAttention(d_model, n_heads, "dot")

    def forward(self, states: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        return self.pooled_and_weights(states, padding_mask, need_weights=False)[0]

    def pooled_and_weights(self, states: torch.Tensor, padding_mask: torch.Tensor | None,
                           need_weights: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Also return the weights ``(batch, heads, 1, seq)``: which tokens the sentence vector reads."""
        query = self.query.expand(states.shape[0], -1, -1).to(states.dtype)
        pooled, weights = self.attention(query, states, padding_mask, need_weights)
        return pooled[:, 0], weights


POOLINGS: dict[str, type[Pooling]] = {
    "cls": ClsPooling,
    "mean": MeanPooling,
    "max": MaxPooling,
    "attention": AttentionPooling,
}
