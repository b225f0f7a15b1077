"""Metrics agree with scikit-learn, cover every class without warnings, and render as text and PNG."""

import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score

from encoder_clf.metrics import compute_metrics, format_report, plot_confusion_matrix

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def names(k: int) -> list[str]:
    return [f"class_{i}" for i in range(k)]


def random_labels(k: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, k, size=n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, k, size=n))  # better than chance, not perfect
    return y_true, y_pred


@pytest.mark.parametrize(("k", "n", "seed"), [(2, 50, 0), (3, 200, 1), (5, 37, 2), (10, 500, 3)])
def test_agrees_with_sklearn(k, n, seed):
    y_true, y_pred = random_labels(k, n, seed)
    metrics = compute_metrics(y_true, y_pred, names(k))
    labels = list(range(k))
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert metrics["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, labels=labels, average="macro",
                                                         zero_division=0))
    assert metrics["n"] == n
    assert metrics["labels"] == names(k)
    per_class = {"precision": precision_score, "recall": recall_score, "f1-score": f1_score}
    for score, fn in per_class.items():
        expected = fn(y_true, y_pred, labels=labels, average=None, zero_division=0)
        assert [metrics["per_class"][name][score] for name in names(k)] == pytest.approx(expected.tolist())
    assert [metrics["per_class"][name]["support"] for name in names(k)] == np.bincount(y_true, minlength=k).tolist()
    assert metrics["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=labels).tolist()


@pytest.mark.parametrize(
    ("y_true", "y_pred"),
    [([0, 1, 2, 2, 1, 0], [0, 1, 1, 1, 1, 0]),  # class 2 occurs but is never predicted
     ([0, 0, 1, 1], [0, 0, 1, 1]),  # class 2 neither occurs nor is predicted
     ([2, 2, 2], [0, 0, 0])],  # nothing right
    ids=["never-predicted", "absent", "all-wrong"],
)
def test_missing_classes_give_no_warnings_and_a_full_matrix(y_true, y_pred):
    k = 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = compute_metrics(np.array(y_true), np.array(y_pred), names(k))
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (k, k)
    assert matrix.sum(axis=1).tolist() == np.bincount(y_true, minlength=k).tolist()
    assert matrix.sum(axis=0).tolist() == np.bincount(y_pred, minlength=k).tolist()
    assert set(metrics["per_class"]) == set(names(k))
    never_predicted = [name for i, name in enumerate(names(k)) if i not in y_pred]
    for name in never_predicted:
        assert metrics["per_class"][name]["precision"] == 0.0


def test_per_text_multi_label_scores_count_a_rightly_empty_row_as_right():
    """A text with no labels is a valid multi-label row: predicting none for it is exactly right (as subset
    accuracy says), while predicting a label for it, or none for a labelled text, scores 0 for that text."""
    y_true = np.array([[1, 0], [0, 0], [0, 1], [0, 0]])
    right = compute_metrics(y_true, y_true.copy(), ["a", "b"], "multi_label")
    assert (right["subset_accuracy"], right["samples_f1"], right["jaccard"]) == (1.0, 1.0, 1.0)
    wrong = y_true.copy()
    wrong[1] = [1, 0]  # a label predicted for the text that has none
    wrong[2] = [0, 0]  # none predicted for a labelled text
    metrics = compute_metrics(y_true, wrong, ["a", "b"], "multi_label")
    assert metrics["samples_f1"] == pytest.approx(0.5) and metrics["jaccard"] == pytest.approx(0.5)
    assert metrics["subset_accuracy"] == pytest.approx(0.5)


def test_metrics_are_plain_python_values():
    y_true, y_pred = random_labels(3, 30, 0)
    metrics = compute_metrics(y_true, y_pred, names(3))
    assert isinstance(metrics["accuracy"], float) and isinstance(metrics["macro_f1"], float)
    assert all(isinstance(c, int) for row in metrics["confusion_matrix"] for c in row)


@pytest.mark.parametrize("label_names", [["neg", "pos"], ["World", "Sports", "Business", "Sci/Tech"],
                                         ["a", "a label name longer than twelve characters", "c"]])
def test_format_report_names_every_class(label_names):
    k = len(label_names)
    y_true, y_pred = random_labels(k, 40, k)
    metrics = compute_metrics(y_true, y_pred, label_names)
    report = format_report(metrics, "validation")
    assert report.startswith("validation:")
    assert f"{metrics['accuracy']:.4f}" in report and f"n={len(y_true)}" in report
    for name in label_names:
        assert any(line.strip().startswith(name) for line in report.splitlines()), name
    assert ", ".join(label_names) in report  # the confusion matrix order
    matrix_rows = report.splitlines()[-k:]
    assert [[int(c) for c in row.split()] for row in matrix_rows] == metrics["confusion_matrix"]


def test_a_console_report_names_a_confusion_matrix_too_wide_to_print():
    y_true, y_pred = random_labels(17, 200, 0)  # 17 columns of 6 digits and a space: 121 characters
    metrics = compute_metrics(y_true, y_pred, names(17))
    console = format_report(metrics, "validation", "see runs/x/report.txt")
    assert console.splitlines()[-1] == "confusion matrix: 17 classes, too wide to print here (see runs/x/report.txt)"
    full = format_report(metrics, "validation")  # a file's report keeps every row
    assert [[int(c) for c in row.split()] for row in full.splitlines()[-17:]] == metrics["confusion_matrix"]
    narrow = compute_metrics(*random_labels(16, 200, 0), names(16))
    assert format_report(narrow, "validation", "see runs/x/report.txt") == format_report(narrow, "validation")


@pytest.mark.parametrize("k", [2, 7])  # few classes, and enough to rotate the tick labels
def test_plot_confusion_matrix_writes_a_png(tmp_path, k):
    y_true, y_pred = random_labels(k, 60, k)
    metrics = compute_metrics(y_true, y_pred, names(k))
    path = plot_confusion_matrix(metrics, tmp_path / "confusion_matrix.png", "test split")
    assert path == tmp_path / "confusion_matrix.png"
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 1000
