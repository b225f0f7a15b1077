"""The classifier: encoder → pooling → linear head, with optional n-gram logits beside it, from one ModelConfig."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from .config import ModelConfig
from .encoder import ACTIVATIONS, Encoder
from .pooling import POOLINGS


def bigram_buckets(first: torch.Tensor, second: torch.Tensor, vocab_size: int, buckets: int) -> torch.Tensor:
    """Hash each token pair to one of ``buckets`` rows, spread like a random hash.

    The pair's exact index ``first · vocab_size + second`` goes through a Lehmer
    step (a bijection modulo the prime 2³¹−1) before the final modulo: a plain
    ``(first · m + second) % buckets`` keeps only ``m % buckets`` of the
    multiplier, and with m = 1,000,003 and a million buckets that is 3, which
    folded every bigram into ~4·vocab_size rows and cost the n-gram model about
    a point of SST-2 accuracy.
    """
    prime = 2_147_483_647
    return (first * vocab_size + second) % prime * 48_271 % prime % buckets


@dataclass
class ClassifierOutput:
    """What a forward pass gives back.

    ``logits`` ``(batch, num_labels)``; ``pooled`` the sentence vectors
    ``(batch, d_model)``; ``attentions`` one ``(batch, heads, seq, seq)`` tensor
    per layer when asked for, else empty. ``parts`` holds each predictor's own
    logits when the model has more than one (the encoder's head and the n-gram
    model): training scores each against the labels on its own, and
    ``logits`` is their sum weighted by ``ModelConfig.part_weights`` (their
    mean until the weights are fitted, see :func:`encoder_clf.train.loop.stacking_weights`).
    """

    logits: torch.Tensor
    pooled: torch.Tensor
    attentions: list[torch.Tensor] = field(default_factory=list)
    parts: tuple[torch.Tensor, ...] = ()


class NgramLogits(nn.Module):
    """Class logits from a bag of the text's token unigrams and hashed bigrams: a linear model beside the encoder.

    The encoder learns composition from a small dataset slowly, while a linear
    model over n-grams (fastText's hashed bigrams) gives each telling phrase a
    weight of its own; their errors differ, so the mean of the two beats either
    (Wide & Deep, Cheng et al., 2016). The sum over the n-grams is divided by
    the square root of their number, as a TF-IDF vector is normalised; padding
    is left out.
    """

    def __init__(self, vocab_size: int, buckets: int, num_labels: int) -> None:
        super().__init__()
        self.vocab_size, self.buckets = vocab_size, buckets
        self.weight = nn.Embedding(vocab_size + buckets, num_labels)

    def forward(self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        real = torch.ones_like(input_ids, dtype=torch.bool) if padding_mask is None else ~padding_mask
        bigrams = self.vocab_size + bigram_buckets(input_ids[:, :-1], input_ids[:, 1:], self.vocab_size, self.buckets)
        index = torch.cat([input_ids, bigrams], dim=1)
        keep = torch.cat([real, real[:, :-1] & real[:, 1:]], dim=1).float()
        scale = keep / keep.sum(dim=1, keepdim=True).clamp(min=1).sqrt()
        return torch.einsum("bn,bnc->bc", scale, self.weight(index).float())


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
        self.ngrams = NgramLogits(config.vocab_size, config.ngram_buckets, config.num_labels) \
            if config.ngram_buckets else None
        self.apply(_init_weights)
        if self.ngrams is not None:
            nn.init.zeros_(self.ngrams.weight.weight)  # the encoder's logits alone, at first
            self.register_buffer("part_weights", torch.tensor(config.part_weights or [0.5, 0.5]), persistent=False)

    def weigh_parts(self, weights: list[float]) -> None:
        """Set each part's weight in the logits (in the config too, so that a saved model keeps them)."""
        self.config = replace(self.config, part_weights=list(weights))
        self.part_weights.copy_(torch.tensor(weights))

    def forward(self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, need_weights: bool = False) -> ClassifierOutput:
        """input_ids ``(batch, seq)``; padding_mask ``(batch, seq)``, ``True`` at padding."""
        states, attentions = self.encoder(input_ids, padding_mask, token_type_ids, need_weights)
        return self.classify(states, input_ids, padding_mask, attentions)

    def classify(self, states: torch.Tensor, input_ids: torch.Tensor, padding_mask: torch.Tensor | None,
                 attentions: list[torch.Tensor] | None = None) -> ClassifierOutput:
        """Pool the encoder's ``states`` and score them, with the n-gram model's logits if there is one."""
        pooled = self.pooling(states, padding_mask)
        logits = self.head(pooled)
        if self.ngrams is None:
            return ClassifierOutput(logits, pooled, attentions or [])
        parts = (logits, self.ngrams(input_ids, padding_mask).to(logits.dtype))
        combined = torch.einsum("p,pbc->bc", self.part_weights.to(logits.dtype), torch.stack(parts))
        return ClassifierOutput(combined, pooled, attentions or [], parts)


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
