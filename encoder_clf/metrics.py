"""Each task's metrics from scikit-learn (and SciPy's correlations), and the files a run writes from them.

Per-class scores use ``zero_division=0`` so a class the model never predicts
scores 0 without a warning, and the confusion matrix always has every class,
predicted or not. Per-text multi-label scores (samples-F1, Jaccard) give a text
with no labels, rightly predicted with none, 1. A run writes them as
``metrics.json``, ``report.txt`` and a figure of the task: the confusion
matrix, each label's F1 (multi-label), or predicted against true values
(regression).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    hamming_loss,
    jaccard_score,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
)


def compute_metrics(y_true: np.ndarray, y_pred: np.ndarray, label_names: list[str],
                    task: str = "single_label") -> dict:
    """The task's metrics of predictions ``y_pred`` against ``y_true`` (class ids, 0/1 indicators or values)."""
    return METRICS_OF[task](np.asarray(y_true), np.asarray(y_pred), list(label_names))


def single_label_metrics(y_true: np.ndarray, y_pred: np.ndarray, label_names: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix; for two classes also
    ``f1``, the F1 of the second (positive) class."""
    labels = list(range(len(label_names)))
    report = classification_report(y_true, y_pred, labels=labels, target_names=label_names,
                                   output_dict=True, zero_division=0)
    binary = {"f1": float(f1_score(y_true, y_pred, labels=[1], average="macro", zero_division=0))} \
        if len(label_names) == 2 else {}
    return {
        "task": "single_label",
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        **binary,
        "n": int(len(y_true)),
        "per_class": {name: {k: float(v) for k, v in report[name].items()} for name in label_names},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "labels": list(label_names),
    }


def multi_label_metrics(y_true: np.ndarray, y_pred: np.ndarray, label_names: list[str]) -> dict:
    """Micro-, macro- and samples-F1, subset accuracy, Jaccard (per text), Hamming loss, and per label
    precision/recall/F1/support, of 0/1 indicator matrices ``(n, labels)``."""
    y_true, y_pred = y_true.astype(int), y_pred.astype(int)
    # per text, a row with no labels and none predicted is exactly right: it scores 1, as subset accuracy has it
    f1 = {average: float(f1_score(y_true, y_pred, average=average, zero_division=1 if average == "samples" else 0))
          for average in ("micro", "macro", "samples")}
    precision, recall, per_f1, support = precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    return {
        "task": "multi_label",
        "micro_f1": f1["micro"], "macro_f1": f1["macro"], "samples_f1": f1["samples"],
        "subset_accuracy": float(accuracy_score(y_true, y_pred)),
        "jaccard": float(jaccard_score(y_true, y_pred, average="samples", zero_division=1)),
        "hamming_loss": float(hamming_loss(y_true, y_pred)),
        "n": int(len(y_true)),
        "per_label": {name: {"precision": float(p), "recall": float(r), "f1-score": float(f), "support": int(n)}
                      for name, p, r, f, n in zip(label_names, precision, recall, per_f1, support)},
        "labels": list(label_names),
    }


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, label_names: list[str]) -> dict:
    """Pearson and Spearman correlation, mean squared and mean absolute error (0 correlation for constant output)."""
    from scipy.stats import pearsonr, spearmanr

    constant = np.ptp(y_pred) == 0 or np.ptp(y_true) == 0
    return {
        "task": "regression",
        "pearson": 0.0 if constant else float(pearsonr(y_true, y_pred)[0]),
        "spearman": 0.0 if constant else float(spearmanr(y_true, y_pred)[0]),
        "mse": float(mean_squared_error(y_true, y_pred)),
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "n": int(len(y_true)),
        "labels": list(label_names),
    }


METRICS_OF = {"single_label": single_label_metrics, "multi_label": multi_label_metrics,
              "regression": regression_metrics}
# The scores each task can select the best model on (higher is better); the first is the default.
SELECTION_METRICS = {"single_label": ("accuracy", "macro_f1", "f1"),
                     "multi_label": ("macro_f1", "micro_f1", "samples_f1", "subset_accuracy", "jaccard"),
                     "regression": ("pearson", "spearman")}
# What each evaluation line of a run shows, by task.
HEADLINE = {"single_label": ("accuracy", "macro_f1"), "multi_label": ("macro_f1", "micro_f1"),
            "regression": ("pearson", "spearman")}
NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "micro_f1": "micro-F1", "samples_f1": "samples-F1",
         "f1": "F1", "subset_accuracy": "subset accuracy", "jaccard": "Jaccard", "hamming_loss": "Hamming loss",
         "pearson": "Pearson", "spearman": "Spearman", "mse": "MSE", "mae": "MAE"}


def headline(metrics: dict) -> str:
    """The task's headline scores in one line: ``accuracy 0.8800  macro-F1 0.8700``."""
    keys = {"single_label": ("accuracy", "macro_f1", "f1"), "multi_label": ("macro_f1", "micro_f1", "samples_f1",
            "subset_accuracy", "jaccard", "hamming_loss"), "regression": ("pearson", "spearman", "mse", "mae")}
    return "  ".join(f"{NAMES[k]} {metrics[k]:.4f}" for k in keys[metrics.get("task", "single_label")] if k in metrics)


TERMINAL_WIDTH = 120  # a console's confusion matrix wider than this is named, not printed


def format_report(metrics: dict, title: str, matrix_elsewhere: str | None = None) -> str:
    """A plain-text report: headline scores, then the per-class (per-label) table and confusion matrix.

    With ``matrix_elsewhere`` (where the matrix can be read, for a console), a matrix wider than
    :data:`TERMINAL_WIDTH` is left out for one line saying so: 34 classes wrap into an unreadable block.
    """
    task = metrics.get("task", "single_label")
    lines = [f"{title}: {headline(metrics)}  (n={metrics['n']})"]
    if task == "regression":
        return lines[0]
    names = metrics["labels"]
    width = max(12, *(len(n) for n in names))
    rows = metrics["per_class" if task == "single_label" else "per_label"]
    thresholds = metrics.get("thresholds")
    lines.append(f"{'':>{width}}  precision  recall  f1-score  support" + ("  threshold" if thresholds else ""))
    for name in names:
        row = rows[name]
        lines.append(f"{name:>{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1-score']:8.4f}  "
                     f"{int(row['support']):7d}" + (f"  {thresholds[name]:9.3f}" if thresholds else ""))
    if task == "single_label":
        matrix = metrics["confusion_matrix"]
        cell = max(6, len(str(max(max(row) for row in matrix))))
        if matrix_elsewhere and 2 + (cell + 1) * len(names) > TERMINAL_WIDTH:
            lines.append(f"confusion matrix: {len(names)} classes, too wide to print here ({matrix_elsewhere})")
        else:
            lines.append(f"confusion matrix (rows: true, columns: predicted; order: {', '.join(names)})")
            lines.extend("  " + " ".join(f"{c:{cell}d}" for c in row) for row in matrix)
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


def label_f1_figure(metrics: dict, title: str) -> Figure:
    """Each label's F1, precision and recall (multi-label metrics), labels by support, the threshold on the axis."""
    rows, thresholds = metrics["per_label"], metrics.get("thresholds", {})
    names = sorted(metrics["labels"], key=lambda n: -rows[n]["support"])
    fig = new_figure(max(6.0, 0.35 * len(names) + 2), 4.2)
    ax = fig.subplots()
    x = np.arange(len(names))
    for offset, key, name in ((-0.27, "precision", "precision"), (0.0, "f1-score", "F1"), (0.27, "recall", "recall")):
        ax.bar(x + offset, [rows[n][key] for n in names], width=0.27, label=name)
    ax.set_xticks(x, [f"{n} ({thresholds[n]:.2f})" if n in thresholds else n for n in names], rotation=60,
                  ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.legend(fontsize=8)
    ax.set_title(f"{title}: per label, most frequent first (threshold in brackets)\n"
                 f"macro-F1 {metrics['macro_f1']:.3f}, micro-F1 {metrics['micro_f1']:.3f}", fontsize=10)
    return fig


def scatter_figure(y_true: np.ndarray, y_pred: np.ndarray, metrics: dict, title: str) -> Figure:
    """Predicted against true values, with the diagonal of perfect predictions (regression)."""
    fig = new_figure(5.0, 5.0)
    ax = fig.subplots()
    ax.scatter(y_true, y_pred, s=6, alpha=0.4)
    low, high = float(min(y_true.min(), y_pred.min())), float(max(y_true.max(), y_pred.max()))
    ax.plot([low, high], [low, high], color="grey", linestyle=":", label="predicted = true")
    ax.set_xlabel(f"true {metrics['labels'][0]}")
    ax.set_ylabel(f"predicted {metrics['labels'][0]}")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"{title}\nPearson {metrics['pearson']:.3f}, Spearman {metrics['spearman']:.3f}, "
                 f"MAE {metrics['mae']:.3f}", fontsize=10)
    return fig


def task_figure(metrics: dict, title: str, y_true: np.ndarray, y_pred: np.ndarray) -> tuple[str, Figure]:
    """The file name and figure a run draws of its final split: what fits the task."""
    task = metrics.get("task", "single_label")
    if task == "regression":
        return "scatter.png", scatter_figure(y_true, y_pred, metrics, f"Predicted vs true ({title})")
    if task == "multi_label":
        return "per_label_f1.png", label_f1_figure(metrics, title)
    return "confusion_matrix.png", confusion_matrix_figure(metrics, f"Confusion matrix ({title})")


def read_log(path: str | Path) -> list[dict]:
    """The records of a run's ``log.jsonl`` (step records and evaluations), in order."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def records_of(records: Sequence[dict], kind: str) -> list[dict]:
    """The ``kind`` records (``step`` or ``evaluation``); a log older than the ``kind`` field holds evaluations."""
    return [r for r in records if r.get("kind", "evaluation") == kind]


def smoothed(values: Sequence[float], weight: float = 0.9) -> np.ndarray:
    """An exponential moving average with its start-up bias removed (as TensorBoard smooths a curve)."""
    out, average = np.empty(len(values)), 0.0
    for i, value in enumerate(values):
        average = weight * average + (1 - weight) * value
        out[i] = average / (1 - weight ** (i + 1))
    return out


def curves_figure(records: Sequence[dict], title: str = "Training curves") -> Figure:
    """Training loss, validation scores and learning rate against the optimizer step (and the epoch, on top).

    ``records`` are ``log.jsonl`` lines. The loss and the learning rate are
    drawn from the step records: the mean loss of each record, faint, under
    its smoothed curve. The task's ``val_*`` scores (or pretraining's held-out
    loss) are drawn per evaluation, one marked point each, so that a one-epoch
    run still shows its single evaluation; the best is marked by the first
    score. A log without step records draws the loss and rate at evaluations.
    """
    evaluations, steps = records_of(records, "evaluation"), records_of(records, "step")
    if not evaluations and not steps:
        raise ValueError("no log records to plot; the run logged no step and no evaluation")
    fig = new_figure(12.0, 3.8)
    loss_ax, score_ax, lr_ax = fig.subplots(1, 3)
    trace = steps or evaluations
    x = [r["step"] for r in trace]
    at = [r["step"] for r in evaluations]
    if steps:
        losses = [r["train_loss"] for r in steps]
        loss_ax.plot(x, losses, color="tab:red", alpha=0.25, linewidth=1, label="training, per record")
        loss_ax.plot(x, smoothed(losses), color="tab:red", label="training, smoothed")
        loss_ax.set_title(f"loss ({len(steps)} step records)", fontsize=10)
    else:
        loss_ax.plot(x, [r["train_loss"] for r in trace], "o-", color="tab:red", label="training")
        loss_ax.set_title("loss (training: mean since last evaluation)", fontsize=10)
    if evaluations and "val_loss" in evaluations[0]:
        loss_ax.plot(at, [r["val_loss"] for r in evaluations], "o", color="tab:blue", label="validation")
    loss_ax.legend(fontsize=8, loc="best")
    loss_ax.set_ylabel("loss")
    scores = [key for key in (evaluations[0] if evaluations else {})
              if key.startswith(("val_", "heldout_")) and key != "val_loss"]
    for key in scores:
        name = key.split("_", 1)[1] if key.startswith("val_") else key.replace("_", " ")
        score_ax.plot(at, [r[key] for r in evaluations], "o-", label=NAMES.get(name, name))
    if scores:
        first = scores[0]
        pick = min if first.endswith("loss") else max
        best = pick(range(len(evaluations)), key=lambda i: evaluations[i][first])
        name = first[4:] if first.startswith("val_") else first.replace("_", " ")
        score_ax.axvline(at[best], color="grey", linestyle=":", label=f"best {NAMES.get(name, name)} (step {at[best]})")
        score_ax.legend(fontsize=8, loc="best")
    score_ax.set_title("validation" if not scores or scores[0].startswith("val_") else "held-out", fontsize=10)
    score_ax.set_ylabel("score" if scores and scores[0].startswith("val_") else "loss")
    lr_ax.plot(x, [r["lr"] for r in trace], "-" if steps else "o-", color="tab:green")
    lr_ax.set_title("learning rate", fontsize=10)
    lr_ax.set_ylabel("learning rate")
    lr_ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.0e}" if value else "0"))
    per_step = next((r["epoch"] / r["step"] for r in trace if r.get("epoch") and r["step"]), None)
    last = max(r["step"] for r in records)
    for ax in (loss_ax, score_ax, lr_ax):
        ax.set_xlabel("optimizer step")
        ax.set_xlim(0, last * 1.03 or 1)  # one step axis for the three panels
        ax.grid(alpha=0.3)
        if per_step:  # epochs on top; a streamed train split has none (its length is unknown)
            top = ax.secondary_xaxis("top", functions=(lambda s, r=per_step: s * r, lambda e, r=per_step: e / r))
            top.set_xlabel("epoch", fontsize=8)
            top.tick_params(labelsize=8)
    n, epochs = len(evaluations), records[-1].get("epoch")  # the run's last record: its final evaluation
    span = "" if epochs is None else f", {epochs:g} epoch{'s' * (epochs != 1)}"
    fig.suptitle(f"{title} ({n} evaluation{'s' * (n != 1)}{span})", fontsize=11)
    return fig


def plot_training_curves(log_path: str | Path, path: str | Path) -> Path:
    """Save the curves of a run's ``log.jsonl`` as a PNG."""
    return save(curves_figure(read_log(log_path)), path)
