"""The classification head: the encoder's linear head, and optionally n-gram logits beside it, mixed by weights.

Every part maps a text to class logits and is trained on its own loss. Parts
trained apart end up with different confidence, so their mix is not fixed:
one weight per part, a buffer in the state dict (a learned value, saved in
``model.safetensors`` with the others), fitted on held-out rows by
:func:`encoder_clf.training.stacking.fit_mixing_weights` at each evaluation. A
head with one part has the weight 1.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .config import ModelConfig
from .dropout import Dropout
from .ngrams import NgramLogits


class LinearHead(nn.Module):
    """Dropout, then a linear map of the sentence vector ``(batch, d_model)`` to ``(batch, outputs)`` logits."""

    def __init__(self, d_model: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.dropout = Dropout(dropout)
        self.linear = nn.Linear(d_model, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(pooled))


class HeadOutput(NamedTuple):
    logits: torch.Tensor  # (batch, outputs): the parts mixed by the weights
    parts: torch.Tensor  # (parts, batch, outputs): each part's own logits, in the order of EnsembleHead.names


class EnsembleHead(nn.Module):
    """The parts that score a text, and one mixing weight each (``weights``, in the state dict).

    ``parts["encoder"]`` reads the pooled sentence vector; ``parts["ngrams"]``,
    there when ``model.ngram_buckets`` is set, reads the token ids (and a pair's token types).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        parts: dict[str, nn.Module] = {"encoder": LinearHead(config.d_model, config.num_outputs, config.dropout)}
        if config.ngram_buckets:
            parts["ngrams"] = NgramLogits(config.vocab_size, config.ngram_buckets, config.num_outputs,
                                          config.text_pairs, config.ngram_weighting, config.ngram_terms)
        self.parts = nn.ModuleDict(parts)
        self.register_buffer("weights", torch.full((len(parts),), 1.0 / len(parts)))

    @property
    def names(self) -> list[str]:
        return list(self.parts)

    def forward(self, pooled: torch.Tensor, input_ids: torch.Tensor, padding_mask: torch.Tensor | None,
                token_type_ids: torch.Tensor | None = None) -> HeadOutput:
        scored = [self.parts["encoder"](pooled)]
        if "ngrams" in self.parts:
            scored.append(self.parts["ngrams"](input_ids, padding_mask, token_type_ids).to(scored[0].dtype))
        parts = torch.stack(scored)
        return HeadOutput(self.mix(parts), parts)

    def mix(self, parts: torch.Tensor) -> torch.Tensor:
        """The weighted sum of the parts' logits ``(parts, batch, outputs)`` → ``(batch, outputs)``, in float32.

        Elementwise, so that autocast leaves it in float32: evaluation fits the weights on the parts it gathered
        and mixes them again here, and a bf16 sum would round the model's own outputs away from those scores.
        """
        return (self.weights.float()[:, None, None] * parts.float()).sum(dim=0)
