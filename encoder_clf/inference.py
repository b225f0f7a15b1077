"""Batched forward passes for evaluation and prediction, in input order.

Texts are sorted by length into batches (little padding), run under the
chosen precision, and the results put back in the order they came in.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tokenizers import Tokenizer

from .data.splits import read_split, sorted_batches
from .data.tokenization import encode, pad_id
from .errors import UsageError
from .metrics import compute_metrics
from .model.classifier import TextClassifier
from .persistence.model_dir import load_model

PRECISIONS = ("auto", "bf16", "fp32")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 matrix products run natively (AVX512-BF16/AMX on CPU, Ampere+ on CUDA)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turn ``auto`` into ``bf16`` where the hardware has native bf16, else ``fp32``."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return precision


def autocast(precision: str, device: torch.device):
    """bf16 autocast for ``bf16``; a no-op context for ``fp32``."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def for_inference(module: torch.nn.Module, precision: str) -> torch.nn.Module:
    """The module itself for fp32; for bf16, a copy with bf16 weights.

    Autocast casts each weight to bf16 on every call when gradients are off; a
    bf16 copy pays that once. Autocast still runs LayerNorm and softmax in fp32.
    """
    return copy.deepcopy(module).to(torch.bfloat16) if precision == "bf16" else module


class Forwarded(NamedTuple):
    """Float32 outputs of :func:`forward_batches`, in input order."""

    logits: np.ndarray  # (n, num_labels)
    pooled: np.ndarray  # (n, d_model)
    parts: np.ndarray  # (parts, n, num_labels): each predictor's own logits; (0, n, num_labels) with one predictor


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
    parts = np.zeros((0 if model.ngrams is None else 2, n, labels), dtype=np.float32)
    runner = for_inference(model, precision)
    with autocast(precision, device):
        for index, ids, mask in sorted_batches(sequences, pad, batch_size):
            out = runner(ids.to(device), mask.to(device))
            logits[index] = out.logits.float().cpu().numpy()
            pooled[index] = out.pooled.float().cpu().numpy()
            for k, part in enumerate(out.parts):
                parts[k, index] = part.float().cpu().numpy()
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
