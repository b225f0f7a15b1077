"""The classifier: encoder → pooling → linear head, built from one :class:`ModelConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .config import ModelConfig
from .encoder import ACTIVATIONS, Encoder
from .pooling import POOLINGS


@dataclass
class ClassifierOutput:
    """What a forward pass gives back.

    ``logits`` ``(batch, num_labels)``; ``pooled`` the sentence vectors
    ``(batch, d_model)``; ``attentions`` one ``(batch, heads, seq, seq)`` tensor
    per layer when asked for, else empty.
    """

    logits: torch.Tensor
    pooled: torch.Tensor
    attentions: list[torch.Tensor] = field(default_factory=list)


class TextClassifier(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.vocab_size <= 0 or config.num_labels < 2:
            raise ValueError(
                f"model config needs vocab_size > 0 and at least 2 labels; got vocab_size={config.vocab_size}, "
                f"labels={config.labels}"
            )
        self.config = config
        self.encoder = Encoder(config)
        self.pooling = POOLINGS[config.pooling](config.d_model, config.n_heads)
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.d_model, config.num_labels))
        self.apply(_init_weights)

    def forward(self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, need_weights: bool = False) -> ClassifierOutput:
        """input_ids ``(batch, seq)``; padding_mask ``(batch, seq)``, ``True`` at padding."""
        states, attentions = self.encoder(input_ids, padding_mask, token_type_ids, need_weights)
        pooled = self.pooling(states, padding_mask)
        return ClassifierOutput(self.head(pooled), pooled, attentions)


class MaskedLanguageModel(nn.Module):
    """Encoder + BERT's masked-LM head (dense → activation → LayerNorm → vocabulary), for pretraining.

    The output projection shares the token embedding matrix, as in BERT: the
    head adds only ``d_model² + vocab`` parameters, and what it learns stays in
    the embeddings a classifier later starts from.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.vocab_size <= 0:
            raise ValueError(f"model config needs vocab_size > 0; got {config.vocab_size}")
        self.config = config
        self.encoder = Encoder(config)
        self.transform = nn.Sequential(nn.Linear(config.d_model, config.d_model), ACTIVATIONS[config.activation](),
                                       nn.LayerNorm(config.d_model, eps=config.layer_norm_eps))
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.apply(_init_weights)

    def forward(self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """Vocabulary logits ``(n, vocab)`` at the masked ``positions`` (a boolean ``(batch, seq)``), else everywhere.

        Scoring only the ~15% masked tokens skips most of the largest matrix product.
        """
        states, _ = self.encoder(input_ids, padding_mask)
        if positions is not None:
            states = states[positions]
        hidden = self.transform(states)
        return hidden @ self.encoder.embeddings.tokens.weight.t().to(hidden.dtype) + self.bias.to(hidden.dtype)


def _init_weights(module: nn.Module) -> None:
    """BERT's initialisation: N(0, 0.02) for linear and embedding weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
