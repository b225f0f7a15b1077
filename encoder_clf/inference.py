"""Batched forward passes for evaluation and prediction, in input order, for every task.

Texts (or sentence pairs) are sorted by length into batches (little padding),
run under the chosen precision, and the results put back in the order they
came in; the model's task (:mod:`encoder_clf.model.tasks`) turns them into
predictions and :mod:`encoder_clf.metrics` scores them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tokenizers import Tokenizer

from .data.batching import sorted_batches
from .data.config import RunData, run_data
from .data.splits import read_split, validation_rows
from .data.tokenization import encode, pad_id
from .errors import UsageError
from .export import ExportedModel, is_exported, load_exported
from .metrics import compute_metrics
from .model.classifier import TextClassifier
from .model.config import ModelConfig
from .persistence.model_dir import load_model, load_model_config
from .runtime import autocast, default_device, for_inference, resolve_precision

log = logging.getLogger(__name__)


class Forwarded(NamedTuple):
    """Float32 outputs of :func:`forward_batches`, in input order."""

    logits: np.ndarray  # (n, outputs): what the model's task turns into predictions
    pooled: np.ndarray  # (n, d_model)
    parts: np.ndarray  # (parts, n, outputs): each part of the head's own outputs


@torch.inference_mode()
def forward_batches(model: TextClassifier, sequences: list[list[int]], pad: int, batch_size: int,
                    precision: str = "fp32", segments: np.ndarray | None = None) -> Forwarded:
    """The model's outputs, pooled vectors and parts' outputs for every sequence (``segments``: of pairs)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    n, outputs = len(sequences), model.config.num_outputs
    logits = np.zeros((n, outputs), dtype=np.float32)
    pooled = np.zeros((n, model.config.d_model), dtype=np.float32)
    parts = np.zeros((len(model.head.names), n, outputs), dtype=np.float32)
    runner = for_inference(model, precision)
    with autocast(precision, device):
        for index, ids, mask, types in sorted_batches(sequences, pad, batch_size, segments,
                                                      model.config.max_positions):
            out = runner(ids.to(device), mask.to(device), None if types is None else types.to(device))
            logits[index] = out.logits.float().cpu().numpy()
            pooled[index] = out.pooled.float().cpu().numpy()
            parts[:, index] = out.parts.float().cpu().numpy()
    model.train(was_training)
    return Forwarded(logits, pooled, parts)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def forward_texts(model: TextClassifier | ExportedModel, tokenizer: Tokenizer, texts: Sequence[str | tuple[str, str]],
                  batch_size: int = 256, precision: str = "fp32") -> np.ndarray:
    """The model's outputs ``(n, outputs)`` for texts, or ``(first, second)`` pairs for a pair model.

    An exported model runs in ONNX Runtime at the precision it was exported in (``precision`` is for PyTorch).
    """
    pairs = bool(texts) and isinstance(texts[0], tuple)
    if pairs != model.config.text_pairs:
        raise UsageError("the model takes sentence pairs: pass two texts per example (--pair A B, or tab-separated "
                         "lines)" if model.config.text_pairs else
                         "the model takes one text per example, and pairs were given; pass single texts")
    if pairs and any(not (a.strip() and b.strip()) for a, b in texts):
        row = next(i for i, (a, b) in enumerate(texts, 1) if not (a.strip() and b.strip()))
        raise UsageError(f"pair {row} has an empty text; a pair needs both texts")
    encoded = encode(tokenizer, texts)
    if isinstance(model, ExportedModel):
        return model.run(encoded.ids, pad_id(tokenizer), batch_size, encoded.segments)["logits"]
    return forward_batches(model, encoded.ids, pad_id(tokenizer), batch_size, precision, encoded.segments).logits


def load_classifier(model_dir: str | Path, flag: str = "") -> tuple[TextClassifier | ExportedModel, Tokenizer]:
    """A saved model directory in PyTorch on the default device, or an exported one in ONNX Runtime.

    ``flag`` names the option that gave the directory (``--teacher``) in the errors, where it is not ``--model``.
    """
    name = f"{flag} {model_dir}".lstrip()
    if is_exported(model_dir):
        model = load_exported(model_dir)
        if model.task is None:
            raise UsageError(f"{name} is an exported encoder: it embeds texts (encoder-clf embed) and has no "
                             "labels to predict; export a trained classifier's model directory")
        return model, model.tokenizer
    require_classifier(model_dir, flag)
    model, tokenizer = load_model(model_dir)
    return model.to(default_device()), tokenizer


def require_classifier(model_dir: str | Path, flag: str = "") -> None:
    """Refuse a pretrained encoder (``pretrain``'s model/), which has no labels to predict, in one line: built as a
    classifier, it fails deep inside with a traceback. A run directory, or none at all, is refused as a model path."""
    name = f"{flag} {model_dir}".lstrip()
    try:
        labels = load_model_config(model_dir).labels
    except UsageError as err:
        raise UsageError(f"{flag} {err}".lstrip()) from None
    if not labels:
        raise UsageError(f"{name} is a pretrained encoder, without a classifier head: it embeds texts "
                         f"(encoder-clf embed) and has no labels to predict; fine-tune it first (encoder-clf train "
                         f"--init {model_dir} --data PATH)")


def model_config(model_dir: str | Path) -> ModelConfig:
    """The :class:`ModelConfig` of a saved or an exported model directory, without loading its weights."""
    if is_exported(model_dir):
        return load_exported(model_dir).config
    return load_model_config(model_dir)


def run_precision(model: TextClassifier | ExportedModel, precision: str) -> str:
    """The precision a model runs in: ``precision`` resolved on its device; an exported model's own (fp32 graph)."""
    return "fp32" if isinstance(model, ExportedModel) else resolve_precision(precision, default_device())


def scored(model: TextClassifier | ExportedModel, logits: np.ndarray, targets: np.ndarray) -> dict:
    """The model's task metrics for its ``logits`` on rows with ``targets``; a multi-label model's thresholds too."""
    config = model.config
    predicted = model.task.predict(torch.from_numpy(logits)).numpy()
    metrics = compute_metrics(targets, predicted, config.labels, config.task)
    if config.task == "multi_label":
        metrics["thresholds"] = dict(zip(config.labels, model.task.thresholds.tolist()))
    return metrics


def evaluate_texts(model: TextClassifier | ExportedModel, tokenizer: Tokenizer, texts: list, labels: np.ndarray,
                   batch_size: int = 256, precision: str = "fp32") -> dict:
    """Metrics of the model on labelled texts (see :func:`encoder_clf.metrics.compute_metrics`)."""
    return scored(model, forward_texts(model, tokenizer, texts, batch_size, precision), labels)


def evaluate(model_dir: str | Path, data: str, split: str = "test", batch_size: int = 256,
             precision: str = "auto", text_column: str | None = None, label_column: str | None = None,
             text_columns: list[str] | None = None, label_columns: list[str] | None = None,
             label_separator: str | None = None) -> dict:
    """Load a saved (or exported) model and score it on one split of a dataset.

    Columns are read with the settings of the model's run (its ``run_config.json``, when the model sits in a run
    directory), then the ones given here; what neither names is detected. A single file is scored whole (``split``
    names a split of a directory or a Hub dataset), except the run's own file, whose validation rows are held
    out again as the run held them.
    """
    model, tokenizer = load_classifier(model_dir)
    config = model.config
    run = run_data(model_dir)
    columns = RunData.reading(run, data, text_column=text_column, label_column=label_column,
                              text_columns=text_columns, label_columns=label_columns, label_separator=label_separator)
    own = run is not None and run.found and _same_file(data, run.config.path)
    if own and split == "validation":
        labelled = validation_rows(columns, run.seed, config.labels, config.task, config.text_pairs)
    else:  # a single file other than the run's own is scored whole, whatever the split's name
        whole = not own and Path(data).expanduser().is_file()
        if whole and split == "validation" and run is not None and run.config.path:
            log.warning("%s is not the file the run was given (%s, read from here), so it is scored whole; to score "
                        "the rows the run held out for validation, pass that file from the directory the run started "
                        "in", data, run.config.path)
        labelled = read_split(data, "train" if whole else split, config.labels, config.task, config.text_pairs,
                              columns)
    return evaluate_texts(model, tokenizer, labelled.texts, labelled.labels, batch_size,
                          run_precision(model, precision))


def _same_file(first: str, second: str) -> bool:
    return Path(first).expanduser().resolve() == Path(second).expanduser().resolve()


class Predictions(NamedTuple):
    """What :func:`predict` gives back, one entry per text.

    ``labels``: the class name (single-label), the list of labels at or above their thresholds (multi-label),
    or the predicted value (regression). ``scores``: class probabilities ``(n, labels)``, each label's
    probability ``(n, labels)``, or the values ``(n,)``. ``names``: the label names in order.
    """

    labels: list
    scores: np.ndarray
    names: list[str]


def predict(model_dir: str | Path, texts: list, batch_size: int = 256, precision: str = "auto") -> Predictions:
    """Predictions for texts (or ``(first, second)`` pairs) of a saved or exported model, whatever its task."""
    if not texts:
        raise UsageError("no text to classify; pass TEXT arguments, --file PATH, or lines on standard input")
    blank = next((i for i, text in enumerate(texts, 1) if isinstance(text, str) and not text.strip()), None)
    if blank is not None:
        raise UsageError(f"text {blank} is empty; every text needs a word")
    model, tokenizer = load_classifier(model_dir)
    logits = torch.from_numpy(forward_texts(model, tokenizer, texts, batch_size, run_precision(model, precision)))
    return predictions(model, logits)


def predictions(model: TextClassifier | ExportedModel, logits: torch.Tensor) -> Predictions:
    """:class:`Predictions` of a model's outputs ``(n, outputs)``."""
    names, task = model.config.labels, model.config.task
    scores, predicted = model.task.scores(logits).numpy(), model.task.predict(logits).numpy()
    if task == "regression":
        labels = [float(value) for value in predicted]
    elif task == "multi_label":
        labels = [[name for name, on in zip(names, row) if on] for row in predicted]
    else:
        labels = [names[i] for i in predicted]
    return Predictions(labels, scores, names)


def records(predictions: Predictions, task: str, top_k: int | None = None) -> list[dict]:
    """One JSON-ready result per example: ``label`` and ``probabilities`` (single-label), ``labels`` and their
    ``scores`` (multi-label: those predicted, or the ``top_k`` best), or ``value`` (regression); ``top_k`` keeps
    the best k scores."""
    results = []
    for label, score in zip(predictions.labels, predictions.scores):
        if task == "regression":
            results.append({"value": round(label, 6)})
            continue
        ranked = sorted(zip(predictions.names, (round(float(p), 6) for p in score)), key=lambda item: -item[1])
        listed = dict(ranked[:top_k] if top_k else ranked)
        if task == "multi_label":
            results.append({"labels": label, "scores": listed if top_k else
                            {name: p for name, p in ranked if name in label}})
        else:
            results.append({"label": label, "probabilities": listed})
    return results
