"""Sentence features: an encoder's token states pooled into one vector per text.

Works for our trained classifiers, our pretrained encoders and imported
BERT-family checkpoints alike. Texts are batched by length (little padding)
and the vectors put back in input order; ``.npy`` and ``.parquet`` outputs are
written atomically.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn
from tqdm.auto import tqdm

from .data.batching import sorted_batches
from .data.tokenization import encode, pad_id
from .errors import UsageError
from .files import writing_out
from .model.classifier import TextClassifier
from .model.encoder import Encoder
from .model.pooling import POOLINGS
from .persistence.encoders import PretrainedEncoder, is_bert_checkpoint, load_encoder, resolve
from .persistence.model_dir import load_model, load_model_config
from .runtime import autocast, default_device, for_inference, resolve_precision

if TYPE_CHECKING:
    from .export import ExportedModel

FEATURE_POOLINGS = ("mean", "cls", "max")
OUTPUT_FORMATS = (".npy", ".parquet")


class UnitLength(nn.Module):
    """A pooling whose vectors are scaled to unit length, in float32 (a bf16 vector's norm is off by 1e-3): a
    model's own, when the model scales them."""

    def __init__(self, pooling: nn.Module) -> None:
        super().__init__()
        self.pooling = pooling

    def forward(self, states: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        return nn.functional.normalize(self.pooling(states, padding_mask).float(), dim=-1)


@dataclass
class FeatureEncoder:
    """An encoder ready to embed texts, with the pooling to use when none is asked for.

    ``trained_pooling`` is a classifier's own pooling module (its learned query
    for ``attention`` pooling), and ``normalized`` says whether the model
    scales its pooled vectors to unit length (a classifier's ``model.normalize``,
    a sentence-transformers checkpoint's ``Normalize`` module), so a
    classifier's default features are exactly the vectors its head was trained on.
    """

    encoder: Encoder
    tokenizer: Tokenizer
    pooling: str
    trained_pooling: nn.Module | None = None
    normalized: bool = False

    @property
    def dim(self) -> int:
        return self.encoder.embeddings.tokens.embedding_dim

    def pooling_module(self, name: str | None) -> nn.Module:
        """The pooling ``name`` (``None``: the model's own); the model's own scales to unit length if the model does."""
        name = name or self.pooling
        if self.trained_pooling is not None and name == self.pooling:
            module = self.trained_pooling
        elif name in FEATURE_POOLINGS:
            module = POOLINGS[name](self.dim, 1)
        else:
            raise UsageError(f"pooling {name!r} is not available here; choose one of {', '.join(FEATURE_POOLINGS)}")
        return UnitLength(module) if self.normalized and name == self.pooling else module

    @classmethod
    def of_classifier(cls, model: TextClassifier, tokenizer: Tokenizer) -> FeatureEncoder:
        """A classifier's encoder, with its own pooling: its default features are what its head reads."""
        return cls(model.encoder, tokenizer, model.config.pooling, model.pooling, model.config.normalize)

    @classmethod
    def of_pretrained(cls, pretrained: PretrainedEncoder) -> FeatureEncoder:
        """A pretrained encoder, with the pooling its authors recommend (mean when it is not one we offer) and
        their scaling to unit length, if any: its default features are what sentence-transformers gives."""
        pooling = pretrained.pooling if pretrained.pooling in FEATURE_POOLINGS else "mean"
        return cls(pretrained.encoder, pretrained.tokenizer, pooling, normalized=pretrained.normalize)

    def to(self, device: torch.device) -> FeatureEncoder:
        self.encoder.to(device)
        if self.trained_pooling is not None:
            self.trained_pooling.to(device)
        return self


def load_feature_encoder(source: str | Path) -> FeatureEncoder:
    """One of our model directories, a BERT-family checkpoint directory, or a Hub model id.

    A classifier's features are its encoder's (the n-gram logits beside its
    head are a bag of words, not a vector of the sentence).
    """
    directory = resolve(source)
    if not is_bert_checkpoint(directory) and load_model_config(directory).labels:
        return FeatureEncoder.of_classifier(*load_model(directory))
    return FeatureEncoder.of_pretrained(load_encoder(directory))


@torch.inference_mode()
def embed(source: str | Path | FeatureEncoder | ExportedModel, texts: list[str], pooling: str | None = None,
          normalize: bool = False, batch_size: int = 64, precision: str = "auto",
          progress: bool = False) -> np.ndarray:
    """Sentence vectors ``(len(texts), dim)`` float32, in the order of ``texts``.

    ``pooling`` ``None`` uses the model's own (a classifier's pooling, the
    checkpoint's recommended one); ``normalize`` scales each vector to unit L2
    norm, as cosine-similarity search expects. A model that scales its own
    vectors is scaled with its own pooling anyway: a classifier saved with
    ``model.normalize`` (the vectors its head reads, and its exported
    ``pooled`` output), and a checkpoint whose sentence-transformers pipeline
    ends in ``Normalize`` (what its ``encode()`` gives).
    """
    if batch_size <= 0:
        raise UsageError(f"batch size must be positive; got {batch_size}")
    from .export import ExportedModel, is_exported, load_exported  # export builds on this module

    if isinstance(source, ExportedModel):
        return _embed_exported(source, texts, pooling, normalize, batch_size)
    if not isinstance(source, FeatureEncoder) and is_exported(source):
        return _embed_exported(load_exported(source), texts, pooling, normalize, batch_size)
    model = source if isinstance(source, FeatureEncoder) else load_feature_encoder(source)
    device = default_device()
    model.to(device)
    precision = resolve_precision(precision, device)
    pool = model.pooling_module(pooling).to(device).eval()
    model.encoder.eval()
    sequences = encode(model.tokenizer, texts).ids
    pad = pad_id(model.tokenizer)
    out = np.zeros((len(sequences), model.dim), dtype=np.float32)
    batches = sorted_batches(sequences, pad, batch_size, limit=model.encoder.embeddings.max_positions)
    encoder = for_inference(model.encoder, precision)
    with autocast(precision, device):
        for index, ids, mask, _ in tqdm(batches, total=math.ceil(len(sequences) / batch_size), disable=not progress,
                                     unit="batch", desc="embed"):
            ids, mask = ids.to(device), mask.to(device)
            states, _ = encoder(ids, mask)
            vectors = pool(states, mask).float()
            if normalize:
                vectors = nn.functional.normalize(vectors, dim=-1)
            out[index] = vectors.cpu().numpy()
    return out


def _embed_exported(model, texts: list[str], pooling: str | None, normalize: bool, batch_size: int) -> np.ndarray:
    """:func:`embed` through an exported model's ``pooled`` output (its pooling is fixed at export)."""
    if pooling not in (None, model.pooling):
        raise UsageError(f"--pooling {pooling}: the exported model pools with {model.pooling}; drop --pooling, or "
                         "embed with the PyTorch model directory")
    vectors = model.run(encode(model.tokenizer, texts).ids, pad_id(model.tokenizer), batch_size)["pooled"]
    if normalize:
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors.astype(np.float32)


def write_features(vectors: np.ndarray, path: str | Path, texts: list[str] | None = None) -> Path:
    """Save as ``.npy`` (the matrix) or ``.parquet`` (``text`` and a fixed-size ``embedding`` list), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise UsageError(f"--out {path}: unsupported output type {suffix or '(none)'!r}; "
                         f"use {' or '.join(OUTPUT_FORMATS)}")
    partial = path.with_name(f".{path.name}.partial")
    try:
        with writing_out(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            if suffix == ".npy":
                with partial.open("wb") as handle:
                    np.save(handle, vectors)
            else:
                import pyarrow as pa
                import pyarrow.parquet as pq

                column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()),
                                                           vectors.shape[1])
                table = pa.table({"text": texts, "embedding": column} if texts is not None else {"embedding": column})
                pq.write_table(table, partial)
            os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
