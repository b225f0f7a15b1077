"""The classifier: encoder → pooling → head, built from one :class:`ModelConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..runtime import inspectable
from .config import ModelConfig
from .encoder import Encoder, init_weights
from .heads import EnsembleHead
from .pooling import POOLINGS
from .tasks import TASKS


@dataclass
class ClassifierOutput:
    """What a forward pass gives back.

    ``logits`` ``(batch, outputs)`` (what :attr:`TextClassifier.task` turns into
    predictions); ``pooled`` the sentence vectors
    ``(batch, d_model)``; ``parts`` each part's own logits ``(parts, batch,
    outputs)`` (the encoder's head, then the n-gram logits if the model has
    them), which training scores against the labels one by one; ``attentions``
    one ``(batch, heads, seq, seq)`` tensor per layer when asked for, else empty.
    """

    logits: torch.Tensor
    pooled: torch.Tensor
    parts: torch.Tensor
    attentions: list[torch.Tensor] = field(default_factory=list)


class TextClassifier(nn.Module):
    """Token ids in, task outputs out: self-attention blocks, a pooling, and a head of one or two parts.

    The encoder turns ``(batch, seq)`` ids into ``(batch, seq, d_model)``
    states; the pooling named by ``config.pooling`` makes one sentence vector of
    them (scaled to unit length with ``config.normalize``); the head scores it
    linearly and, with ``config.ngram_buckets``, adds a bag of n-grams read
    from the ids, mixed by weights fitted on validation
    (see :mod:`encoder_clf.model.heads`). ``task`` (:mod:`encoder_clf.model.tasks`)
    holds the loss and turns outputs into predictions. ``padding_mask`` is
    ``True`` at padding, and padding changes no output; ``token_type_ids`` mark
    the second text of a pair.
    """

    # Values that turn outputs into decisions: a bf16 copy for inference keeps them float32 (runtime.for_inference).
    float32_state = ("head.weights", "task.thresholds", "task.mean", "task.std")

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        needed = {"single_label": "at least 2 labels", "multi_label": "at least 1 label",
                  "regression": "1 label (the target's name)"}[config.task]
        counts = {"single_label": config.num_labels >= 2, "multi_label": config.num_labels >= 1,
                  "regression": config.num_labels == 1}
        if config.vocab_size <= 0 or not counts[config.task]:
            raise ValueError(f"a {config.task} model needs vocab_size > 0 and {needed}; "
                             f"got vocab_size={config.vocab_size}, labels={config.labels}")
        self.config = config
        self.task = TASKS[config.task](config.num_labels)
        self.encoder = Encoder(config)
        self.pooling = POOLINGS[config.pooling](config.d_model, config.n_heads)
        self.head = EnsembleHead(config)
        self.apply(init_weights)
        if "ngrams" in self.head.parts:
            nn.init.zeros_(self.head.parts["ngrams"].table.weight)  # the encoder's logits alone, at first

    def forward(self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, need_weights: bool = False) -> ClassifierOutput:
        """input_ids ``(batch, seq)``; padding_mask ``(batch, seq)``, ``True`` at padding."""
        if padding_mask is not None and inspectable(padding_mask) and not padding_mask.any():
            padding_mask = None  # a batch without padding skips every masked fill (length-bucketed batches often are)
        states, attentions = self.encoder(input_ids, padding_mask, token_type_ids, need_weights)
        return self.classify(states, input_ids, padding_mask, attentions, token_type_ids)

    def classify(self, states: torch.Tensor, input_ids: torch.Tensor, padding_mask: torch.Tensor | None,
                 attentions: list[torch.Tensor] | None = None,
                 token_type_ids: torch.Tensor | None = None) -> ClassifierOutput:
        """Pool the encoder's ``states`` ``(batch, seq, d_model)`` and score them with every part of the head."""
        pooled = self.pooling(states, padding_mask)
        if self.config.normalize:
            pooled = nn.functional.normalize(pooled, dim=-1)
        logits, parts = self.head(pooled, input_ids, padding_mask, token_type_ids)
        return ClassifierOutput(logits, pooled, parts, attentions or [])
