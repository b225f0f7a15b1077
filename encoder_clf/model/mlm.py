"""The masked-language model that pretraining trains: the encoder and BERT's MLM head."""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .encoder import ACTIVATIONS, Encoder, init_weights


class MaskedLanguageModel(nn.Module):
    """Encoder + BERT's masked-LM head (dense → activation → LayerNorm → vocabulary).

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
        self.apply(init_weights)

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
