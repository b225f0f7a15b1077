"""Classification metrics from scikit-learn, and the files a run writes from them.

Per-class scores use ``zero_division=0`` so a class the model never predicts
scores 0 without a warning, and the confusion matrix always has every class,
predicted or not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score


def compute_metrics(y_true: np.ndarray, y_pred: np.ndarray, label_names: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix."""
    labels = list(range(len(label_names)))
    report = classification_report(y_true, y_pred, labels=labels, target_names=label_names,
                                   output_dict=True, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "n": int(len(y_true)),
        "per_class": {name: {k: float(v) for k, v in report[name].items()} for name in label_names},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "labels": list(label_names),
    }


def format_report(metrics: dict, title: str) -> str:
    """A plain-text report: headline scores, per-class table, confusion matrix."""
    names = metrics["labels"]
    width = max(12, *(len(n) for n in names))
    lines = [f"{title}: accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  (n={metrics['n']})",
             f"{'':>{width}}  precision  recall  f1-score  support"]
    for name in names:
        row = metrics["per_class"][name]
        lines.append(f"{name:>{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1-score']:8.4f}  "
                     f"{int(row['support']):7d}")
    lines.append(f"confusion matrix (rows: true, columns: predicted; order: {', '.join(names)})")
    lines.extend("  " + " ".join(f"{c:6d}" for c in row) for row in metrics["confusion_matrix"])
    return "\n".join(lines)


def plot_confusion_matrix(metrics: dict, path: str | Path, title: str) -> Path:
    """Save the confusion matrix as a labelled PNG (counts in the cells)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    names = metrics["labels"]
    size = max(4.0, 0.8 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(np.array(metrics["confusion_matrix"]), display_labels=names).plot(
        ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45 if len(names) > 4 else "horizontal")
    ax.set_title(f"{title}\naccuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
