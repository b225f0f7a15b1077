"""A multi-label model's decision thresholds, one per label, tuned on held-out rows.

A label is predicted when its probability reaches its threshold. 0.5 suits a
label seen half the time; a rare label's probabilities rarely reach it, so it
would almost never be predicted. Each label's threshold is the one that
maximises its F1 on the validation split (which maximises macro-F1, the mean
of the labels' F1), found exactly by sorting the probabilities; it sits
halfway between the two probabilities it separates. A label with no positive
validation row keeps 0.5.
"""

from __future__ import annotations

import numpy as np

from ..model.classifier import TextClassifier


def tune_thresholds(probabilities: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The threshold of each label ``(labels,)`` that maximises its F1 on ``probabilities`` ``(n, labels)``."""
    thresholds = np.full(probabilities.shape[1], 0.5, dtype=np.float32)
    for label in range(probabilities.shape[1]):
        truth = targets[:, label] > 0.5
        if not truth.any():
            continue
        order = np.argsort(-probabilities[:, label], kind="stable")
        scores, hits = probabilities[order, label], truth[order]
        # Predicting the top k rows: F1 = 2 TP / (k + positives); a cut may only fall between distinct scores.
        f1 = 2 * np.cumsum(hits) / (np.arange(1, len(hits) + 1) + truth.sum())
        cuttable = np.append(scores[:-1] > scores[1:], True)
        best = int(np.flatnonzero(cuttable)[np.argmax(f1[cuttable])])
        thresholds[label] = scores[best] if best == len(scores) - 1 else (scores[best] + scores[best + 1]) / 2
    return thresholds


def fit_thresholds(model: TextClassifier, logits: np.ndarray, targets: np.ndarray) -> None:
    """Set a multi-label model's ``task.thresholds`` to those tuned on held-out ``logits`` ``(n, labels)``."""
    import torch

    probabilities = model.task.scores(torch.from_numpy(logits)).numpy()
    model.task.thresholds.copy_(torch.from_numpy(tune_thresholds(probabilities, targets)))
