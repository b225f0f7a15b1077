"""The model's config: the architecture of the encoder and its classification head.

The defaults are the SST-2 preset measured in ``docs/BENCHMARKS.md``; a user's
value for any field wins (``--set model.KEY=VALUE``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..settings import require, require_choice
from .attention import SCORE_RULES
from .encoder import ACTIVATIONS, NORM_PLACEMENTS, POSITION_ENCODINGS
from .ngrams import TERMS, WEIGHTINGS
from .pooling import POOLINGS
from .tasks import TASKS

# Architecture additions beyond a plain transformer encoder, each with the value a BERT import is built with
# (the one that turns it off) and a model directory saved before the key existed was built with (today's
# default may differ: the preset changes as it is re-measured).
ADDITIONS_OFF = {"conv_kernel": 0, "relative_buckets": 0, "ngram_buckets": 0, "ngram_weighting": "sqrt",
                 "ngram_terms": "pieces", "attention_combine": False}


@dataclass
class ModelConfig:
    """Architecture of the encoder and its classification head.

    ``vocab_size`` and ``labels`` are filled in from the tokenizer and the
    training data when they are left at their empty defaults; so are ``task``
    and ``text_pairs``, which the data decides. A regression model's one
    ``label`` names the target.
    """

    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 1024
    attention: str = "dot"
    attention_combine: bool = False  # the attention output projection reads [its input; the attended values]
    norm: str = "pre"
    positions: str = "learned"
    pooling: str = "max"
    normalize: bool = False  # the pooled vector scaled to unit length before the head (the few-shot preset sets it)
    max_positions: int = 512
    dropout: float = 0.3  # on the embeddings and each sublayer's output
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0  # inside the feed-forward, after the activation (off, as in BERT: it slows steps)
    activation: str = "gelu"
    relative_buckets: int = 0  # buckets of a learned relative-position bias in every block's attention (T5); 0 = none
    conv_kernel: int = 5  # a depthwise convolution of this odd width before each block's attention; 0 = none
    ngram_buckets: int = 1_000_000  # hashed bigram buckets of a linear bag-of-n-grams beside the head; 0 = none
    ngram_weighting: str = "tfidf"  # of the n-grams in that bag: tfidf (sublinear tf, idf, unit length) or sqrt
    ngram_terms: str = "words"  # that bag's n-grams: tokens, words and word pairs (words) or token 1-2-grams (pieces)
    layer_norm_eps: float = 1e-5
    type_vocab_size: int = 0
    vocab_size: int = 0
    pad_token_id: int = 0
    labels: list[str] = field(default_factory=list)
    task: str = "single_label"  # single_label, multi_label or regression (see model/tasks.py)
    text_pairs: bool = False  # each example is two texts, encoded as [CLS] a [SEP] b [SEP] with token types

    RETIRED: ClassVar[dict[str, str]] = {
        "part_weights": "the weights that mix the head's parts are learned (fitted on the validation split) and "
                        "saved in model.safetensors as head.weights"}

    def __post_init__(self) -> None:
        for name in ("d_model", "n_heads", "n_layers", "d_ff", "max_positions"):
            require(getattr(self, name) > 0, f"model.{name} must be positive; got {getattr(self, name)}")
        require(
            self.d_model % self.n_heads == 0,
            f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads}); "
            "pick e.g. n_heads=4 or 8",
        )
        require(self.conv_kernel == 0 or (self.conv_kernel > 0 and self.conv_kernel % 2 == 1),
                 f"model.conv_kernel must be 0 (no convolution) or an odd width such as 3 or 5; got {self.conv_kernel}")
        require(self.relative_buckets == 0 or (self.relative_buckets >= 4 and self.relative_buckets % 2 == 0),
                 f"model.relative_buckets must be 0 (no relative bias) or an even number >= 4 such as 32; "
                 f"got {self.relative_buckets}")
        require(self.ngram_buckets >= 0, f"model.ngram_buckets must be >= 0 (0 = no n-gram logits); "
                                          f"got {self.ngram_buckets}")
        require_choice("model.ngram_weighting", self.ngram_weighting, WEIGHTINGS)
        require_choice("model.ngram_terms", self.ngram_terms, TERMS)
        require_choice("model.attention", self.attention, SCORE_RULES)
        require_choice("model.norm", self.norm, NORM_PLACEMENTS)
        require_choice("model.positions", self.positions, POSITION_ENCODINGS)
        require_choice("model.pooling", self.pooling, POOLINGS)
        require_choice("model.activation", self.activation, ACTIVATIONS)
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            value = getattr(self, name)
            require(0.0 <= value < 1.0, f"model.{name} must be in [0, 1); got {value}")
        require_choice("model.task", self.task, TASKS)
        require(self.vocab_size >= 0, f"model.vocab_size must be >= 0; got {self.vocab_size}")

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def num_outputs(self) -> int:
        """The head's outputs: one per label, or one value for regression."""
        return 1 if self.task == "regression" else self.num_labels
