"""Token embeddings, positions and a stack of self-attention blocks.

The layout follows BERT where it matters for loading pretrained weights
(token + position + token-type embeddings, a LayerNorm, post-LN blocks with a
GELU feed-forward) and defaults to pre-LN, which trains more stably from
scratch at high learning rates.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from .attention import MultiHeadAttention
from .dropout import Dropout

if TYPE_CHECKING:
    from .config import ModelConfig


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


class NoPositions(nn.Module):
    """No absolute positions: word order reaches the model only through a convolution or a relative bias."""

    def __init__(self, max_positions: int, d_model: int) -> None:
        super().__init__()
        self.register_buffer("zero", torch.zeros(1, d_model), persistent=False)

    def forward(self, length: int) -> torch.Tensor:
        return self.zero


class RelativePositionBias(nn.Module):
    """A learned per-head score bias for each bucket of key-minus-query distance (T5, Raffel et al.).

    Distances below ``buckets // 4`` in each direction get a bucket each;
    longer ones share log-spaced buckets up to ``max_distance``, beyond which
    all distances are alike. Unlike a table of absolute positions, every
    bucket is trained on short texts too, so the bias carries over to
    sentences longer than most training ones. It depends on distances only,
    so appending padding changes no real token's bias.
    """

    max_distance = 128

    def __init__(self, buckets: int, n_heads: int) -> None:
        super().__init__()
        self.buckets = buckets
        self.table = nn.Embedding(buckets, n_heads)

    def bucket(self, relative: torch.Tensor) -> torch.Tensor:
        """Bucket index of each key-minus-query distance: one half of the buckets per direction."""
        half = self.buckets // 2
        exact = half // 2
        distance = relative.abs()
        spread = torch.log(distance.clamp(min=1).float() / exact) / math.log(self.max_distance / exact)
        far = (exact + (spread * (half - exact)).long()).clamp(max=half - 1)
        return (relative > 0).long() * half + torch.where(distance < exact, distance, far)

    def forward(self, length: int) -> torch.Tensor:
        """``(1, heads, length, length)`` biases for self-attention over ``length`` tokens."""
        position = torch.arange(length, device=self.table.weight.device)
        return self.table(self.bucket(position[None, :] - position[:, None])).permute(2, 0, 1)[None]


POSITION_ENCODINGS: dict[str, type[nn.Module]] = {
    "learned": LearnedPositions,
    "sinusoidal": SinusoidalPositions,
    "none": NoPositions,
}

NORM_PLACEMENTS = ("pre", "post")

# Feed-forward non-linearities by the names checkpoints use for them (``hidden_act`` in BERT configs).
ACTIVATIONS: dict[str, type[nn.Module] | functools.partial] = {
    "gelu": nn.GELU,
    "gelu_tanh": functools.partial(nn.GELU, approximate="tanh"),
    "relu": nn.ReLU,
}


class Embeddings(nn.Module):
    """Token (+ token type) + position embeddings, then LayerNorm and dropout."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.d_model
        self.tokens = nn.Embedding(config.vocab_size, d, padding_idx=config.pad_token_id)
        self.positions = POSITION_ENCODINGS[config.positions](config.max_positions, d)
        self.token_types = nn.Embedding(config.type_vocab_size, d) if config.type_vocab_size else None
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.dropout)
        self.max_positions = config.max_positions
        self.relative = RelativePositionBias(config.relative_buckets, config.n_heads) \
            if config.relative_buckets else None

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

    def attention_bias(self, length: int) -> torch.Tensor | None:
        """The relative position bias every block adds to its attention scores, if the model has one."""
        return self.relative(length) if self.relative is not None else None


class FeedForward(nn.Sequential):
    """Position-wise ``Linear → activation → Dropout → Linear``."""

    def __init__(self, d_model: int, d_ff: int, dropout: float, activation: str = "gelu") -> None:
        super().__init__(nn.Linear(d_model, d_ff), ACTIVATIONS[activation](), Dropout(dropout),
                         nn.Linear(d_ff, d_model))


class LocalConv(nn.Module):
    """Depthwise convolution over each token's neighbours, the activation, then a pointwise projection.

    It hands every token its n-gram context directly, as in Conformer and
    ConvBERT: attention alone learns locality slowly from a small dataset (the
    SST-2 ablation is in docs/BENCHMARKS.md). Padded positions are zeroed
    first, so they add nothing and appending padding changes no real token.
    """

    def __init__(self, d_model: int, kernel: int, activation: str = "gelu") -> None:
        super().__init__()
        self.depthwise = nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2, groups=d_model)
        self.activation = ACTIVATIONS[activation]()
        self.pointwise = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)
        if torch.onnx.is_in_onnx_export():
            return self.pointwise(self.activation(self._shifted(x)))
        return self.pointwise(self.activation(self.depthwise(x.transpose(1, 2)).transpose(1, 2)))

    def _shifted(self, x: torch.Tensor) -> torch.Tensor:
        """The depthwise convolution as a sum of shifted copies, in the ``(batch, len, d_model)`` layout: in ONNX
        Runtime, its Conv and the two transposes around it took a fifth of a small model's time."""
        kernel, length = self.depthwise.kernel_size[0], x.shape[1]
        padded = F.pad(x, (0, 0, kernel // 2, kernel // 2))
        weight = self.depthwise.weight[:, 0, :]  # (d_model, kernel)
        out = self.depthwise.bias
        for j in range(kernel):
            out = out + padded[:, j: j + length] * weight[:, j]
        return out


class Block(nn.Module):
    """An optional local convolution, then attention and feed-forward sublayers, each with a residual and a LayerNorm.

    ``norm="pre"`` normalises each sublayer's input (stable from scratch);
    ``norm="post"`` normalises after the residual sum (BERT's layout).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, eps = config.d_model, config.layer_norm_eps
        self.attention = MultiHeadAttention(d, config.n_heads, config.attention, config.attention_dropout,
                                            max_len=config.max_positions, combine=config.attention_combine)
        self.feed_forward = FeedForward(d, config.d_ff, config.activation_dropout, config.activation)
        self.attention_norm = nn.LayerNorm(d, eps=eps)
        self.feed_forward_norm = nn.LayerNorm(d, eps=eps)
        self.dropout = Dropout(config.dropout)
        self.pre_norm = config.norm == "pre"
        self.conv = LocalConv(d, config.conv_kernel, config.activation) if config.conv_kernel else None
        self.conv_norm = nn.LayerNorm(d, eps=eps) if config.conv_kernel else None

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None, need_weights: bool = False,
                bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.conv is not None:
            x = self._add(x, self.conv(self._input(x, self.conv_norm), padding_mask), self.conv_norm)
        attended, weights = self.attention(self._input(x, self.attention_norm), None, padding_mask, need_weights, bias)
        x = self._add(x, attended, self.attention_norm)
        x = self._add(x, self.feed_forward(self._input(x, self.feed_forward_norm)), self.feed_forward_norm)
        return x, weights

    def _input(self, x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        """What a sublayer reads: normalised before it (pre-LN) or the residual stream as is (post-LN)."""
        return norm(x) if self.pre_norm else x

    def _add(self, x: torch.Tensor, out: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        """The residual sum of a sublayer's output, normalised after it in post-LN."""
        out = x + self.dropout(out)
        return out if self.pre_norm else norm(out)


class Encoder(nn.Module):
    """Embeddings and ``n_layers`` blocks: token ids ``(batch, seq)`` → states ``(batch, seq, d_model)``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embeddings = Embeddings(config)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps) if config.norm == "pre" \
            else nn.Identity()

    def forward(self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return the final states and, if asked, one ``(batch, heads, seq, seq)`` weight tensor per layer."""
        x = self.embeddings(input_ids, token_type_ids)
        bias = self.embeddings.attention_bias(input_ids.shape[1])
        attentions = []
        for block in self.blocks:
            x, weights = block(x, padding_mask, need_weights, bias)
            if need_weights:
                attentions.append(weights)
        return self.final_norm(x), attentions


def init_weights(module: nn.Module) -> None:
    """BERT's initialisation, for ``model.apply``: N(0, 0.02) linear and embedding weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
