"""A few-shot sample of a train split: k rows per class (at least k positives per label), drawn with a seed.

``data.per_class`` turns a labelled dataset into the setting that few-shot methods such as SetFit (Tunstall et
al., 2022) are measured in: k labelled rows per class, another sample for every seed, and the validation and test
splits left whole, so that every sample is scored on the same rows. :func:`per_class_rows` picks the rows;
:func:`encoder_clf.data.splits.load_splits` applies it to the train split, so any run can train on a sample.
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError


def per_class_rows(labels: np.ndarray, names: list[str], task: str, k: int, seed: int, where: str) -> np.ndarray:
    """The sorted indices of the rows to keep: exactly ``k`` of each class, or (multi-label) at least ``k``
    positives of each label and ``k`` rows without any; the same rows for the same seed.

    ``labels`` are the split's targets: class ids ``(n,)`` or 0/1 indicators ``(n, labels)``. A class (label) with
    fewer than ``k`` rows (positives), and a regression target, are refused.
    """
    if task == "regression":
        raise UsageError(f"data.per_class={k} keeps k rows of each class, and a regression target has no classes; "
                         "drop data.per_class")
    rng = np.random.default_rng(seed)
    if task == "multi_label":
        _check_counts(labels.sum(axis=0), names, k, "label", "positive rows", where)
        return _covering(labels.astype(bool), k, rng)
    _check_counts(np.bincount(labels, minlength=len(names)), names, k, "class", "rows", where)
    chosen = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c in range(len(names))]
    return np.sort(np.concatenate(chosen))


def _check_counts(counts: np.ndarray, names: list[str], k: int, kind: str, rows: str, where: str) -> None:
    """Refuse a ``k`` above the rarest class's rows (label's positives), naming that class, its count and the fix."""
    rarest = int(np.argmin(counts))
    if counts[rarest] < k:
        raise UsageError(f"data.per_class={k}: {kind} {names[rarest]!r} has only {int(counts[rarest])} {rows} in "
                         f"{where}; set data.per_class to at most {int(counts[rarest])} or add {rows} of that {kind}")


def _covering(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Rows such that every label has at least ``k`` positives, chosen greedily, and ``k`` rows without any label.

    The rule: labels are visited from the rarest (fewest positives in the split) to the most common; each one
    whose positives among the rows chosen so far fall short of ``k`` is topped up with its positive rows in one
    seeded random order of the split. A row drawn for one label counts for all of its labels, so common labels
    usually need no rows of their own and the sample stays close to ``k`` rows per label. Every label can be
    topped up: it has at least ``k`` positives (checked before). Rows without any label are a valid answer (a
    text that carries no tag or flag), so they count as one more class: ``k`` of them are drawn in the same
    order, or all of them where the split has fewer.
    """
    order = rng.permutation(len(labels))
    chosen = np.zeros(len(labels), dtype=bool)
    for label in np.argsort(labels.sum(axis=0), kind="stable"):
        missing = k - int(labels[chosen, label].sum())
        if missing > 0:
            candidates = order[labels[order, label] & ~chosen[order]]
            chosen[candidates[:missing]] = True
    chosen[order[~labels[order].any(axis=1)][:k]] = True
    return np.flatnonzero(chosen)
