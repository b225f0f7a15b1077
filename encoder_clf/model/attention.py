"""Multi-head attention with four scoring rules chosen by name.

Every rule is a small module with one signature, ``score(q, k) -> (batch,
heads, q_len, k_len)``, where a rule whose scores do not depend on the query
may return a ``q_len`` of 1 that :func:`attend` broadcasts to every query;
masking, the softmax, dropout and the product with V are written once,
in :func:`attend`. Masks follow one convention everywhere:
``key_padding_mask`` is ``True`` at padding, shape ``(batch, k_len)``. A query
whose keys are all padding gets zero weights (and a zero output) rather than
NaN.

The one exception is a positional rule (``positional = True``, the
tutorial-style ``concat_position``), which scores absolute value positions
from each query and the key paired with it: ``score(q, paired, positions)``.
The number of positions is its own argument because it cannot come from the
keys: in the tutorial's case one key and 32 values give 32 scores.
:func:`rule_scores` calls either kind, so the attention modules never ask which.

Self-attention is ``attn(x)``; general attention is ``attn(queries, keys)``
with keys = values from another sequence of any length.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..runtime import inspectable
from .dropout import dropout as drop


class DotScore(nn.Module):
    """Scaled dot product, ``q·kᵀ/√d`` (Vaswani et al.): the fast rule, fused through SDPA."""

    fused = True
    positional = False

    def __init__(self, n_heads: int, head_dim: int) -> None:
        super().__init__()
        self.scale = head_dim ** -0.5

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return torch.matmul(q, k.transpose(-2, -1)) * self.scale


class ConcatScore(nn.Module):
    """``w·[q_i; k_j] + b``: one linear layer over the concatenated query and key.

    A linear map of a concatenation is the sum of a query part and a key part,
    ``w_q·q_i + w_k·k_j + b``. The query part is constant along the keys and
    cancels in the softmax, so this rule ranks keys by their content alone (that
    is the rule, not a bug): every query gets the same weights. The scores are
    therefore returned as one ``(batch, heads, 1, k_len)`` row, which
    :func:`attend` softmaxes once and broadcasts, in ``O(k_len)`` memory instead
    of a ``(q_len, k_len)`` grid. The row is the grid's mean over the queries
    (``w_q`` applied to the mean query): every row of the grid differs from it
    by a constant, so the weights are the same, and the query path stays in the
    graph with the zero gradient the grid gives it (DistributedDataParallel
    needs every parameter used). ``concat_position`` is the form whose weights
    follow the query.
    """

    fused = False
    positional = False

    def __init__(self, n_heads: int, head_dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(2 * head_dim)
        self.weight = nn.Parameter(torch.empty(n_heads, 2 * head_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(n_heads))
        self.head_dim = head_dim

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """``(batch, heads, 1, k_len)``: the same scores for every query."""
        w_q, w_k = self.weight[:, : self.head_dim], self.weight[:, self.head_dim:]
        q_part = torch.einsum("bhd,hd->bh", q.mean(dim=2), w_q.to(q.dtype))
        k_part = torch.einsum("bhkd,hd->bhk", k, w_k.to(k.dtype))
        return (q_part + self.bias.to(q.dtype))[:, :, None, None] + k_part[:, :, None, :]


class AdditiveScore(nn.Module):
    """Bahdanau's ``vᵀ tanh(W_q q_i + W_k k_j)``.

    ``W[q; k]`` equals ``W_q q + W_k k``, so the two projections are added on the
    ``(q_len, k_len)`` grid. The ``tanh`` needs that grid at full width, so the
    queries are processed in chunks that keep each ``(batch, heads, chunk, k_len,
    head_dim)`` intermediate under ``max_elements`` values. When gradients are
    on, each chunk is checkpointed: backward recomputes its ``tanh`` instead of
    keeping every chunk's, so training memory is bounded by one chunk too.
    """

    fused = False
    positional = False
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
        scores = [self._scored_chunk(qp[:, :, i: i + chunk], kp, v) for i in range(0, q_len, chunk)]
        return torch.cat(scores, dim=2)

    @staticmethod
    def _scored_chunk(qp: torch.Tensor, kp: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``(batch, heads, chunk, k_len)`` scores of a chunk of projected queries against every projected key."""
        if torch.is_grad_enabled():
            return checkpoint(_additive_grid, qp, kp, v, use_reentrant=False)
        return _additive_grid(qp, kp, v)


def _additive_grid(qp: torch.Tensor, kp: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    hidden = torch.tanh(qp[:, :, :, None, :] + kp[:, :, None, :, :])  # (batch, heads, chunk, k_len, head_dim)
    return torch.einsum("bhqke,he->bhqk", hidden, v)


class ConcatPositionScore(nn.Module):
    """``w_j·[q_i; k̃_i] + b_j``: a linear map of the concatenated query and key to one score per position.

    The rule of the widely copied tutorial ``Attn`` class (``Linear(query_size
    + key_size, max_len)``, softmax, ``bmm`` with V). Each position ``j`` has
    its own row ``w_j``, so unlike ``concat`` the query term does not cancel in
    the softmax and the weights follow the query; the price is that scores
    address absolute positions, ``max_len`` at most. ``k̃_i`` is the key paired
    with query ``i`` (:func:`paired_keys`). Only the first ``positions`` rows
    are computed: the softmax over them is the softmax over all ``max_len``
    with the positions beyond the sequence masked.
    """

    fused = False
    positional = True

    def __init__(self, n_heads: int, head_dim: int, max_len: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(2 * head_dim)
        self.weight = nn.Parameter(torch.empty(n_heads, max_len, 2 * head_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(n_heads, max_len))
        self.head_dim, self.max_len = head_dim, max_len

    def forward(self, q: torch.Tensor, paired: torch.Tensor, positions: int) -> torch.Tensor:
        """``(batch, heads, q_len, positions)`` from ``q`` and ``paired`` ``(batch, heads, q_len or 1, head_dim)``."""
        if positions > self.max_len:
            raise ValueError(f"concat_position scores at most {self.max_len} positions and the sequence has "
                             f"{positions}; truncate it (tokenizer.max_length) or raise model.max_positions")
        weight = self.weight[:, :positions].to(q.dtype)
        q_part = torch.einsum("bhqd,hpd->bhqp", q, weight[..., : self.head_dim])
        k_part = torch.einsum("bhqd,hpd->bhqp", paired, weight[..., self.head_dim:])  # one row for a summary
        return q_part + k_part + self.bias[:, :positions].to(q.dtype)[None, :, None]


SCORE_RULES: dict[str, type[nn.Module]] = {
    "dot": DotScore,
    "concat": ConcatScore,
    "concat_position": ConcatPositionScore,
    "additive": AdditiveScore,
}


def make_rule(name: str, n_heads: int, head_dim: int, max_len: int) -> nn.Module:
    """The named rule; a positional one scores sequences of at most ``max_len`` positions."""
    if name not in SCORE_RULES:
        raise ValueError(f"unknown attention rule {name!r}; choose one of {', '.join(SCORE_RULES)}")
    rule = SCORE_RULES[name]
    return rule(n_heads, head_dim, max_len) if rule.positional else rule(n_heads, head_dim)


def paired_keys(k: torch.Tensor, key_padding_mask: torch.Tensor | None, aligned: bool) -> torch.Tensor:
    """The key a positional rule concatenates with each query: ``(batch, heads, q_len or 1, head_dim)``.

    Self-attention (``aligned``) pairs query ``i`` with key ``i``. In general
    attention queries and keys do not line up, so every query gets one summary,
    the mean of the real keys (the tutorial's single key is its own mean):
    appending padding changes nothing, and a row of padding gives zeros, not NaN.
    """
    if aligned:
        return k
    if key_padding_mask is None:
        return k.mean(dim=2, keepdim=True)
    real = (~key_padding_mask)[:, None, :, None].to(k.dtype)
    return (k * real).sum(dim=2, keepdim=True) / real.sum(dim=2, keepdim=True).clamp(min=1.0)


def rule_scores(rule: nn.Module, q: torch.Tensor, k: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                aligned: bool = False, positions: int | None = None) -> torch.Tensor:
    """Any rule's scores: ``rule(q, k)``, or a positional rule's over ``positions`` values (default one per key)."""
    if not rule.positional:
        return rule(q, k)
    return rule(q, paired_keys(k, key_padding_mask, aligned), k.shape[2] if positions is None else positions)


def zero_empty_rows(key_padding_mask: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``tensors`` ``(batch, ...)`` with the rows of a sequence whose keys are all padding set to 0.

    Training and inference batches never hold such a row (every text has at least its special tokens), so on a
    CPU the fills (two grid-sized passes and their backward per layer) run only when one is there; elsewhere, and
    while tracing, they always run (:func:`~encoder_clf.runtime.inspectable`).
    """
    empty = key_padding_mask.all(dim=-1)
    if inspectable(empty) and not empty.any():
        return tensors
    empty = empty.view(-1, *[1] * (tensors[0].dim() - 1))
    return tuple(t.masked_fill(empty, 0.0) for t in tensors)


BF16_ROW = 32  # bf16 values in one AVX-512 register: PyTorch's CPU softmax vectorises each row in such chunks


def softmax_rows(scores: torch.Tensor) -> torch.Tensor:
    """The softmax over the last dimension, in ``scores``' dtype.

    PyTorch's CPU softmax for bf16 takes each row in chunks of 32 and the rest of the row one value at a time,
    with a scalar ``exp``; a row of 27 keys is all rest (on a 2-core EPYC, 4x the time of the same grid cast to
    float32, softmaxed and cast back). So on a CPU a bf16 row whose length is not a multiple of 32 goes through
    float32: 1.5% of a fine-tuning step on GoEmotions' short texts, 0.7% on MRPC's pairs. A row of 64 or 256
    keys stays in bf16, where the casts would cost more than they save.
    """
    if scores.dtype == torch.bfloat16 and scores.device.type == "cpu" and scores.shape[-1] % BF16_ROW:
        return torch.softmax(scores.float(), dim=-1).to(scores.dtype)
    return torch.softmax(scores, dim=-1)


def attend(
    scores: torch.Tensor,
    v: torch.Tensor,
    q_len: int,
    key_padding_mask: torch.Tensor | None,
    dropout: float,
    training: bool,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask, softmax, dropout and the weighted sum of V, shared by all rules.

    scores: ``(batch, heads, q_len, k_len)``, or ``(batch, heads, 1, k_len)``
    from a rule whose scores are the same for every query: that row is
    softmaxed once and broadcast to the ``q_len`` queries (dropout, which must
    differ per query, is the one step that widens it to the full grid).
    v: ``(batch, heads, k_len, head_dim)``. bias: added to the scores before
    the mask, broadcastable to ``(batch, heads, q_len, k_len)`` (a relative
    position bias). Returns the output ``(batch, heads,
    q_len, head_dim)`` and the weights ``(batch, heads, q_len, k_len)`` (before
    dropout; broadcast views when ``scores`` was one row), which are exactly
    zero on padded keys.

    The softmax keeps the scores' dtype (:func:`softmax_rows`): it computes in float32 inside, and under bf16
    autocast the product with V reads bf16 weights either way, so a float32 copy of the grid (and its casts
    back, forward and backward) bought nothing (5% of a bf16 training step) where the rows are a multiple of 32
    long. The attention modules hand weights out as float32.

    Of the grid-sized tensors, backward keeps only the softmax output and what
    dropout and the product with V need: the mask is written in place into the
    scores, which no backward needs, and a fully padded row is zeroed in the
    small output rather than in the weights.
    """
    scores = scores if bias is None else scores + bias.to(scores.dtype)
    if key_padding_mask is not None:
        scores.masked_fill_(key_padding_mask[:, None, None, :], torch.finfo(scores.dtype).min)
    weights = softmax_rows(scores)  # exactly 0 on padded keys, unless the whole row is padding
    batch, heads, _, k_len = weights.shape
    dropped = drop(weights.expand(batch, heads, q_len, k_len), dropout, training)
    out = torch.matmul(dropped.to(v.dtype), v)
    if key_padding_mask is not None:  # a row whose keys are all padding softmaxes to uniform weights: zero it
        out, weights = zero_empty_rows(key_padding_mask, out, weights)
    return out.expand(batch, heads, q_len, -1), weights.expand(batch, heads, q_len, k_len)


def stack_projections(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every attention's separate ``q_proj``, ``k_proj`` and ``v_proj`` tensors stacked into its
    ``in_proj``: the layout of BERT checkpoints and of our model directories before format 3."""
    stacked = dict(state)
    for name in state:
        if (match := re.fullmatch(r"(.*)q_proj\.(weight|bias)", name)) is None:
            continue
        prefix, leaf = match.groups()
        parts = [f"{prefix}{part}_proj.{leaf}" for part in "qkv"]
        if all(part in state for part in parts):
            stacked[f"{prefix}in_proj.{leaf}"] = torch.cat([stacked.pop(part) for part in parts])
    return stacked


class MultiHeadAttention(nn.Module):
    """Project, score with the named rule, attend, and merge the heads.

    ``forward(query, key=None, key_padding_mask=None, need_weights=False)``
    takes ``(batch, q_len, d_model)`` queries and ``(batch, k_len, d_model)``
    keys (= values; ``None`` means self-attention) and returns
    ``(output (batch, q_len, d_model), weights (batch, heads, q_len, k_len) or None)``.
    ``bias`` (broadcastable to ``(batch, heads, q_len, k_len)``) is added to
    the scores of every rule before the softmax. ``max_len`` bounds the keys a
    positional rule scores. ``combine`` is the tutorial's combine step, for
    any rule: the output projection becomes ``Linear(2·d_model → d_model)`` on
    the query (as the layer received it) concatenated with the merged heads.
    """

    def __init__(self, d_model: int, n_heads: int, rule: str = "dot", dropout: float = 0.0, bias: bool = True,
                 max_len: int = 512, combine: bool = False) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads, self.head_dim, self.dropout, self.combine = n_heads, d_model // n_heads, dropout, combine
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=bias)  # the Q, K and V projections, stacked
        self.out_proj = nn.Linear(2 * d_model if combine else d_model, d_model, bias=bias)
        self.score = make_rule(rule, n_heads, self.head_dim, max_len)

    def _projected(self, query: torch.Tensor, key: torch.Tensor,
                   aligned: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q, K and V ``(batch, heads, len, head_dim)``. Self-attention makes them in one product with the stacked
        weight: a wider matrix product, and under autocast one cast of the input instead of three (3-4% of a bf16
        training step in the throughput shape). The weight is stored stacked so that no step concatenates it."""
        if aligned:
            q, k, v = self.in_proj(query).chunk(3, dim=-1)
            return self._split(q), self._split(k), self._split(v)
        weight, bias, d = self.in_proj.weight, self.in_proj.bias, self.in_proj.in_features
        q = F.linear(query, weight[:d], None if bias is None else bias[:d])
        k, v = F.linear(key, weight[d:], None if bias is None else bias[d:]).chunk(2, dim=-1)
        return self._split(q), self._split(k), self._split(v)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)  # (batch, heads, len, head_dim)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        aligned = key is None
        key = query if aligned else key
        q, k, v = self._projected(query, key, aligned)
        dropout = self.dropout if self.training else 0.0
        # With dropout on a CPU, SDPA takes its unfused path with Bernoulli masks: the plain path's masks cost less
        if self.score.fused and not need_weights and not (dropout > 0 and q.device.type == "cpu"):
            out, weights = self._fused(q, k, v, key_padding_mask, dropout, bias), None
        else:
            scores = rule_scores(self.score, q, k, key_padding_mask, aligned)
            out, weights = attend(scores, v, q.shape[2], key_padding_mask, dropout, self.training, bias)
        batch, _, q_len, _ = out.shape
        out = out.transpose(1, 2).reshape(batch, q_len, self.n_heads * self.head_dim)
        if self.combine:
            out = torch.cat([query, out], dim=-1)
        return self.out_proj(out), weights.float() if need_weights else None

    def _fused(self, q, k, v, key_padding_mask, dropout, bias):
        """The dot rule through ``scaled_dot_product_attention`` (same numbers as :func:`attend`).

        A bias becomes SDPA's float mask, with padded keys at the dtype's minimum.
        """
        mask = None if bias is None else bias.to(q.dtype)
        if key_padding_mask is not None:
            padded = key_padding_mask[:, None, None, :]
            mask = ~padded if mask is None else mask.masked_fill(padded, torch.finfo(q.dtype).min)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        if key_padding_mask is None:
            return out
        return zero_empty_rows(key_padding_mask, out)[0]  # SDPA leaves NaN there; the plain path gives zeros


class SingleHeadAttention(nn.Module):
    """One head over raw vectors, without projections: the form of the tutorial ``Attn`` class, for any rule.

    ``forward(query, key, value, key_padding_mask=None)`` takes ``(batch,
    q_len, query_size)`` queries, ``(batch, k_len, query_size)`` keys and
    ``(batch, v_len, value_size)`` values and returns ``(output (batch, q_len,
    output_size), weights (batch, q_len, v_len))``; the weights keep the query
    axis, so the tutorial's ``(1, 32)`` is ``(1, 1, 32)`` here. A positional
    rule scores the ``v_len`` value positions from each query and the mean key
    (the tutorial's K has one position, its V 32); any other rule needs
    ``k_len = v_len``. ``key_padding_mask`` ``(batch, v_len)`` marks padded
    values, and padded keys too when keys and values are one sequence. With
    ``combine`` (the tutorial's ``attn_combine``) ``Linear(query_size +
    value_size → output_size)`` maps the query concatenated with the attended
    values; without it the attended values are the output.
    """

    def __init__(self, query_size: int, value_size: int, output_size: int, rule: str = "concat_position",
                 max_len: int = 512, combine: bool = True) -> None:
        super().__init__()
        if not combine and output_size != value_size:
            raise ValueError(f"without combine the output is the attended values, {value_size} wide; "
                             f"pass output_size={value_size} or combine=True")
        self.score = make_rule(rule, 1, query_size, max_len)
        self.combine = nn.Linear(query_size + value_size, output_size) if combine else None

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v = query[:, None], key[:, None], value[:, None]  # (batch, 1 head, len, size)
        keys_mask = key_padding_mask if key.shape[1] == value.shape[1] else None
        scores = rule_scores(self.score, q, k, keys_mask, positions=value.shape[1])
        out, weights = attend(scores, v, query.shape[1], key_padding_mask, 0.0, self.training)
        out, weights = out[:, 0], weights[:, 0].float()
        if self.combine is not None:
            out = self.combine(torch.cat([query, out], dim=-1))
        return out, weights
