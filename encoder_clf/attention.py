"""Multi-head attention with three scoring rules chosen by name.

Every rule is a small module with one signature, ``score(q, k) -> (batch,
heads, q_len, k_len)``; masking, the float32 softmax, dropout and the product
with V are written once, in :class:`MultiHeadAttention`. Masks follow one
convention everywhere: ``key_padding_mask`` is ``True`` at padding, shape
``(batch, k_len)``. A query whose keys are all padding gets zero weights (and a
zero output) rather than NaN.

Self-attention is ``attn(x)``; general attention is ``attn(queries, keys)``
with keys = values from another sequence of any length.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class DotScore(nn.Module):
    """Scaled dot product, ``q·kᵀ/√d`` (Vaswani et al.): the fast rule, fused through SDPA."""

    fused = True

    def __init__(self, n_heads: int, head_dim: int) -> None:
        super().__init__()
        self.scale = head_dim ** -0.5

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return torch.matmul(q, k.transpose(-2, -1)) * self.scale


class ConcatScore(nn.Module):
    """``w·[q_i; k_j] + b``: one linear layer over the concatenated query and key.

    A linear map of a concatenation is the sum of a query part and a key part,
    so the score is computed as ``w_q·q_i + w_k·k_j`` broadcast over the grid:
    the same numbers, without a ``(batch, heads, q_len, k_len, 2d)`` tensor.
    The query part is constant along the keys and cancels in the softmax, so
    this rule ranks keys by their content alone; that is the rule, not a bug.
    """

    fused = False

    def __init__(self, n_heads: int, head_dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(2 * head_dim)
        self.weight = nn.Parameter(torch.empty(n_heads, 2 * head_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(n_heads))
        self.head_dim = head_dim

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        w_q, w_k = self.weight[:, : self.head_dim], self.weight[:, self.head_dim:]
        q_part = torch.einsum("bhqd,hd->bhq", q, w_q.to(q.dtype))
        k_part = torch.einsum("bhkd,hd->bhk", k, w_k.to(k.dtype))
        return q_part[..., :, None] + k_part[..., None, :] + self.bias.to(q.dtype)[None, :, None, None]


class AdditiveScore(nn.Module):
    """Bahdanau's ``vᵀ tanh(W_q q_i + W_k k_j)``.

    ``W[q; k]`` equals ``W_q q + W_k k``, so the two projections are added on the
    ``(q_len, k_len)`` grid. The ``tanh`` needs that grid at full width, so the
    queries are processed in chunks that keep each 5-D intermediate under
    ``max_elements`` values, which bounds inference memory at long sequence
    lengths (training still keeps every chunk's ``tanh`` for the backward pass).
    """

    fused = False
    max_elements = 1 << 24

    def __init__(self, n_heads: int, head_dim: int) -> None:
        super().__init__()
        self.q_proj = nn.Parameter(torch.empty(n_heads, head_dim, head_dim))
        self.k_proj = nn.Parameter(torch.empty(n_heads, head_dim, head_dim))
        self.bias = nn.Parameter(torch.zeros(n_heads, head_dim))
        self.v = nn.Parameter(torch.empty(n_heads, head_dim))
        for p in (self.q_proj, self.k_proj):
            nn.init.uniform_(p, -head_dim ** -0.5, head_dim ** -0.5)
        nn.init.uniform_(self.v, -head_dim ** -0.5, head_dim ** -0.5)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        qp = torch.einsum("bhqd,hde->bhqe", q, self.q_proj.to(q.dtype)) + self.bias.to(q.dtype)[None, :, None]
        kp = torch.einsum("bhkd,hde->bhke", k, self.k_proj.to(k.dtype))
        batch, heads, q_len, dim = qp.shape
        k_len = kp.shape[2]
        chunk = max(1, self.max_elements // max(1, batch * heads * k_len * dim))
        v = self.v.to(q.dtype)
        scores = [
            torch.einsum("bhqke,he->bhqk", torch.tanh(qp[:, :, i: i + chunk, None, :] + kp[:, :, None, :, :]), v)
            for i in range(0, q_len, chunk)
        ]
        return torch.cat(scores, dim=2)


SCORE_RULES: dict[str, type[nn.Module]] = {
    "dot": DotScore,
    "concat": ConcatScore,
    "additive": AdditiveScore,
}


def attend(
    scores: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    dropout: float,
    training: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask, softmax in float32, dropout and the weighted sum of V, shared by all rules.

    scores: ``(batch, heads, q_len, k_len)``; v: ``(batch, heads, k_len, head_dim)``.
    Returns the output ``(batch, heads, q_len, head_dim)`` and the weights
    (before dropout), which are exactly zero on padded keys.
    """
    scores = scores.float()
    if key_padding_mask is not None:
        pad = key_padding_mask[:, None, None, :]
        scores = scores.masked_fill(pad, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)
    if key_padding_mask is not None:
        weights = weights.masked_fill(pad, 0.0)  # also zeroes a fully padded row instead of a uniform one
    dropped = F.dropout(weights, p=dropout, training=training) if dropout > 0 else weights
    batch, heads, q_len, k_len = weights.shape
    out = torch.bmm(dropped.to(v.dtype).reshape(batch * heads, q_len, k_len), v.reshape(batch * heads, k_len, -1))
    return out.reshape(batch, heads, q_len, -1), weights


class MultiHeadAttention(nn.Module):
    """Project, score with the named rule, attend, and merge the heads.

    ``forward(query, key=None, key_padding_mask=None, need_weights=False)``
    takes ``(batch, q_len, d_model)`` queries and ``(batch, k_len, d_model)``
    keys (= values; ``None`` means self-attention) and returns
    ``(output (batch, q_len, d_model), weights (batch, heads, q_len, k_len) or None)``.
    """

    def __init__(self, d_model: int, n_heads: int, rule: str = "dot", dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if rule not in SCORE_RULES:
            raise ValueError(f"unknown attention rule {rule!r}; choose one of {', '.join(SCORE_RULES)}")
        self.n_heads, self.head_dim, self.dropout = n_heads, d_model // n_heads, dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.score = SCORE_RULES[rule](n_heads, self.head_dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)  # (batch, heads, len, head_dim)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        key = query if key is None else key
        q, k, v = self._split(self.q_proj(query)), self._split(self.k_proj(key)), self._split(self.v_proj(key))
        dropout = self.dropout if self.training else 0.0
        if self.score.fused and not need_weights:
            out, weights = self._fused(q, k, v, key_padding_mask, dropout), None
        else:
            out, weights = attend(self.score(q, k), v, key_padding_mask, dropout, self.training)
        batch, _, q_len, _ = out.shape
        out = out.transpose(1, 2).reshape(batch, q_len, self.n_heads * self.head_dim)
        return self.out_proj(out), weights

    def _fused(self, q, k, v, key_padding_mask, dropout):
        """The dot rule through ``scaled_dot_product_attention`` (same numbers as :func:`attend`)."""
        if key_padding_mask is None:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        keep = ~key_padding_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout)
        empty = key_padding_mask.all(dim=-1)
        if empty.any():  # SDPA leaves NaN where every key is padding; the plain path gives zeros
            out = out.masked_fill(empty[:, None, None, None], 0.0)
        return out
