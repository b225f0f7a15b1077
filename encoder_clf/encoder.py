"""Token embeddings, positions and a stack of self-attention blocks.

The layout follows BERT where it matters for loading pretrained weights
(token + position + token-type embeddings, a LayerNorm, post-LN blocks with a
GELU feed-forward) and defaults to pre-LN, which trains more stably from
scratch at high learning rates.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .attention import MultiHeadAttention


class LearnedPositions(nn.Module):
    """One trained vector per position, as in BERT."""

    def __init__(self, max_positions: int, d_model: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(max_positions, d_model)

    def forward(self, length: int) -> torch.Tensor:
        return self.embedding.weight[:length]


class SinusoidalPositions(nn.Module):
    """Fixed sines and cosines (Vaswani et al.): no parameters, nothing to overfit."""

    def __init__(self, max_positions: int, d_model: int) -> None:
        super().__init__()
        position = torch.arange(max_positions, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        table = torch.zeros(max_positions, d_model)
        table[:, 0::2] = torch.sin(position * freq)
        table[:, 1::2] = torch.cos(position * freq[: d_model // 2])
        self.register_buffer("table", table, persistent=False)

    def forward(self, length: int) -> torch.Tensor:
        return self.table[:length]


POSITION_ENCODINGS: dict[str, type[nn.Module]] = {
    "learned": LearnedPositions,
    "sinusoidal": SinusoidalPositions,
}

NORM_PLACEMENTS = ("pre", "post")


class Embeddings(nn.Module):
    """Token (+ token type) + position embeddings, then LayerNorm and dropout."""

    def __init__(self, vocab_size: int, d_model: int, max_positions: int, positions: str,
                 type_vocab_size: int, pad_token_id: int, dropout: float, eps: float) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, d_model, padding_idx=pad_token_id)
        self.positions = POSITION_ENCODINGS[positions](max_positions, d_model)
        self.token_types = nn.Embedding(type_vocab_size, d_model) if type_vocab_size else None
        self.norm = nn.LayerNorm(d_model, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.max_positions = max_positions

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        length = input_ids.shape[1]
        if length > self.max_positions:
            raise ValueError(f"sequence length {length} exceeds max_positions {self.max_positions}; "
                             "truncate the input (tokenizer max_length) or raise model.max_positions")
        x = self.tokens(input_ids) + self.positions(length)[None]
        if self.token_types is not None:
            types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
            x = x + self.token_types(types)
        return self.dropout(self.norm(x))


class FeedForward(nn.Sequential):
    """Position-wise ``Linear → GELU → Dropout → Linear``."""

    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__(nn.Linear(d_model, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model))


class Block(nn.Module):
    """Attention and feed-forward sublayers, each with a residual and a LayerNorm.

    ``norm="pre"`` normalises each sublayer's input (stable from scratch);
    ``norm="post"`` normalises after the residual sum (BERT's layout).
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, rule: str, norm: str,
                 dropout: float, attention_dropout: float, eps: float) -> None:
        super().__init__()
        self.attention = MultiHeadAttention(d_model, n_heads, rule, attention_dropout)
        self.feed_forward = FeedForward(d_model, d_ff, dropout)
        self.attention_norm = nn.LayerNorm(d_model, eps=eps)
        self.feed_forward_norm = nn.LayerNorm(d_model, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = norm == "pre"

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.pre_norm:
            attended, weights = self.attention(self.attention_norm(x), None, padding_mask, need_weights)
            x = x + self.dropout(attended)
            x = x + self.dropout(self.feed_forward(self.feed_forward_norm(x)))
        else:
            attended, weights = self.attention(x, None, padding_mask, need_weights)
            x = self.attention_norm(x + self.dropout(attended))
            x = self.feed_forward_norm(x + self.dropout(self.feed_forward(x)))
        return x, weights


class Encoder(nn.Module):
    """Embeddings and ``n_layers`` blocks: token ids ``(batch, seq)`` → states ``(batch, seq, d_model)``."""

    def __init__(self, vocab_size: int, d_model: int, n_heads: int, n_layers: int, d_ff: int,
                 rule: str = "dot", norm: str = "pre", positions: str = "learned", max_positions: int = 512,
                 dropout: float = 0.1, attention_dropout: float = 0.1, eps: float = 1e-5,
                 type_vocab_size: int = 0, pad_token_id: int = 0) -> None:
        super().__init__()
        self.embeddings = Embeddings(vocab_size, d_model, max_positions, positions, type_vocab_size,
                                     pad_token_id, dropout, eps)
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, d_ff, rule, norm, dropout, attention_dropout, eps) for _ in range(n_layers)
        )
        self.final_norm = nn.LayerNorm(d_model, eps=eps) if norm == "pre" else nn.Identity()

    def forward(self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return the final states and, if asked, one ``(batch, heads, seq, seq)`` weight tensor per layer."""
        x = self.embeddings(input_ids, token_type_ids)
        attentions = []
        for block in self.blocks:
            x, weights = block(x, padding_mask, need_weights)
            if need_weights:
                attentions.append(weights)
        return self.final_norm(x), attentions
