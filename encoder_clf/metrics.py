"""Classification metrics from scikit-learn, and the files a run writes from them (JSON, report, PNGs).

Per-class scores use ``zero_division=0`` so a class the model never predicts
scores 0 without a warning, and the confusion matrix always has every class,
predicted or not.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
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


DPI = 120


def new_figure(width: float, height: float) -> Figure:
    """A figure with its own Agg canvas and constrained layout (labels never overlap or get cut)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``fig`` as PNG (parent folders created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def confusion_matrix_figure(metrics: dict, title: str) -> Figure:
    """The confusion matrix of :func:`encoder_clf.metrics.compute_metrics` output, counts in the cells."""
    from sklearn.metrics import ConfusionMatrixDisplay

    names = metrics["labels"]
    size = max(4.0, 0.8 * len(names) + 2)
    fig = new_figure(size, size)
    ax = fig.subplots()
    ConfusionMatrixDisplay(np.array(metrics["confusion_matrix"]), display_labels=names).plot(
        ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45 if len(names) > 4 else "horizontal")
    ax.set_title(f"{title}\naccuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}")
    return fig


def plot_confusion_matrix(metrics: dict, path: str | Path, title: str) -> Path:
    """Save :func:`confusion_matrix_figure` as a PNG."""
    return save(confusion_matrix_figure(metrics, title), path)


def read_log(path: str | Path) -> list[dict]:
    """The records of a run's ``log.jsonl`` (one per evaluation), in order."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def curves_figure(records: Sequence[dict], title: str = "Training curves") -> Figure:
    """Training loss, validation scores and learning rate against the optimizer step.

    ``records`` are ``log.jsonl`` lines (step, epoch, train_loss, lr,
    val_accuracy, val_macro_f1, ...); each evaluation is one marked point, so a
    one-epoch run still shows its single evaluation.
    """
    if not records:
        raise ValueError("no log records to plot; the run logged no evaluation")
    step = [r["step"] for r in records]
    fig = new_figure(12.0, 3.6)
    loss_ax, score_ax, lr_ax = fig.subplots(1, 3)
    loss_ax.plot(step, [r["train_loss"] for r in records], "o-", color="tab:red")
    loss_ax.set_title("training loss (mean since last evaluation)", fontsize=10)
    loss_ax.set_ylabel("cross-entropy")
    for key, name in (("val_accuracy", "accuracy"), ("val_macro_f1", "macro-F1")):
        score_ax.plot(step, [r[key] for r in records], "o-", label=name)
    best = max(range(len(records)), key=lambda i: records[i]["val_accuracy"])
    score_ax.axvline(step[best], color="grey", linestyle=":", label=f"best accuracy (step {step[best]})")
    score_ax.set_title("validation scores", fontsize=10)
    score_ax.set_ylabel("score")
    score_ax.legend(fontsize=8, loc="best")
    lr_ax.plot(step, [r["lr"] for r in records], "o-", color="tab:green")
    lr_ax.set_title("learning rate at evaluation", fontsize=10)
    lr_ax.set_ylabel("learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for ax in (loss_ax, score_ax, lr_ax):
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    n, epochs = len(records), records[-1]["epoch"]  # None for a streamed train split: its length is unknown
    span = "" if epochs is None else f", {epochs:g} epoch{'s' * (epochs != 1)}"
    fig.suptitle(f"{title} ({n} evaluation{'s' * (n != 1)}{span})", fontsize=11)
    return fig


def plot_training_curves(log_path: str | Path, path: str | Path) -> Path:
    """Save the curves of a run's ``log.jsonl`` as a PNG."""
    return save(curves_figure(read_log(log_path)), path)
