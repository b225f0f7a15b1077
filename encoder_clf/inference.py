"""Batched forward passes for evaluation and prediction, in input order.

Texts are sorted by length into batches (little padding), run under the
chosen precision, and the results put back in the order they came in.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tokenizers import Tokenizer

from .data.batching import sorted_batches
from .data.splits import read_split
from .data.tokenization import encode, pad_id
from .errors import UsageError
from .metrics import compute_metrics
from .model.classifier import TextClassifier
from .persistence.model_dir import load_model
from .runtime import autocast, default_device, for_inference, resolve_precision


class Forwarded(NamedTuple):
    """Float32 outputs of :func:`forward_batches`, in input order."""

    logits: np.ndarray  # (n, num_labels)
    pooled: np.ndarray  # (n, d_model)
    parts: np.ndarray  # (parts, n, num_labels): each part of the head's own logits


@torch.inference_mode()
def forward_batches(model: TextClassifier, sequences: list[list[int]], pad: int, batch_size: int,
                    precision: str = "fp32") -> Forwarded:
    """The model's logits, pooled vectors and parts' logits for every sequence."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    n, labels = len(sequences), model.config.num_labels
    logits = np.zeros((n, labels), dtype=np.float32)
    pooled = np.zeros((n, model.config.d_model), dtype=np.float32)
    parts = np.zeros((len(model.head.names), n, labels), dtype=np.float32)
    runner = for_inference(model, precision)
    with autocast(precision, device):
        for index, ids, mask in sorted_batches(sequences, pad, batch_size):
            out = runner(ids.to(device), mask.to(device))
            logits[index] = out.logits.float().cpu().numpy()
            pooled[index] = out.pooled.float().cpu().numpy()
            parts[:, index] = out.parts.float().cpu().numpy()
    model.train(was_training)
    return Forwarded(logits, pooled, parts)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def score_sequences(model: TextClassifier, sequences: list[list[int]], labels: np.ndarray, pad: int,
                    batch_size: int = 256, precision: str = "fp32") -> dict:
    """Metrics of the model on already-encoded labelled sequences."""
    logits = forward_batches(model, sequences, pad, batch_size, precision).logits
    return compute_metrics(labels, logits.argmax(axis=1), model.config.labels)


def evaluate_texts(model: TextClassifier, tokenizer: Tokenizer, texts: list[str], labels: np.ndarray,
                   batch_size: int = 256, precision: str = "fp32") -> dict:
    """Metrics of the model on labelled texts (see :func:`encoder_clf.metrics.compute_metrics`)."""
    return score_sequences(model, encode(tokenizer, texts)[0], labels, pad_id(tokenizer), batch_size, precision)


def evaluate(model_dir: str | Path, data: str, split: str = "test", batch_size: int = 256,
             precision: str = "auto", text_column: str | None = None, label_column: str | None = None) -> dict:
    """Load a saved model and score it on one split of a dataset."""
    model, tokenizer = load_model(model_dir)
    labelled = read_split(data, split, model.config.labels, text_column, label_column)
    device = default_device()
    model.to(device)
    return evaluate_texts(model, tokenizer, labelled.texts, labelled.labels, batch_size,
                          resolve_precision(precision, device))


def predict(model_dir: str | Path, texts: list[str], batch_size: int = 256,
            precision: str = "auto") -> tuple[list[str], np.ndarray, list[str]]:
    """Predicted label per text, the class probabilities ``(n, num_labels)``, and the label names."""
    if not texts:
        raise UsageError("no text to classify; pass TEXT arguments, --file PATH, or lines on standard input")
    model, tokenizer = load_model(model_dir)
    device = default_device()
    model.to(device)
    sequences, _ = encode(tokenizer, texts)
    logits = forward_batches(model, sequences, pad_id(tokenizer), batch_size,
                             resolve_precision(precision, device)).logits
    probabilities = softmax(logits)
    names = model.config.labels
    return [names[i] for i in probabilities.argmax(axis=1)], probabilities, names
