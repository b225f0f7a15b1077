"""What a split's labels are (the task) and how they become training targets.

The task is read from the train split's labels, as ``transformers``' examples
do, and can be named instead with ``data.task``:

- ``multi_label``: one 0/1 column per label; or one column holding several
  names per row: a list (``.jsonl``, ``.parquet``) or a string joined by
  ``data.label_separator`` (``admiration,joy``). A row may have no labels.
- ``regression``: a column of floats.
- ``single_label``: anything else (names or integer ids), one class per row.

Each task has a :class:`Target` that turns raw label values into the array the
model trains on: class ids ``(n,)``, 0/1 indicators ``(n, labels)``, or the
values ``(n,)``. Label names keep the order the user gives (``data.labels``,
the indicator columns' order), else sorted; a name that never occurs in the
train split is refused where it first appears.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UsageError
from .columns import Classes, Columns

log = logging.getLogger(__name__)

TASKS = ("single_label", "multi_label", "regression")
OTHER_SEPARATORS = ("|", ";")  # how else several labels are joined in one cell


def _number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def detect_task(columns: Columns, values: Sequence, requested: str | None, separator: str, where: str) -> str:
    """The task of a split whose label values are ``values`` (one per row), or ``requested`` if the data allows it."""
    several = next(((row, v) for row, v in enumerate(values, 1) if isinstance(v, (list, tuple))), None)
    floats = next(((row, v) for row, v in enumerate(values, 1) if isinstance(v, (float, np.floating))
                   and not (math.isnan(v) or float(v).is_integer())), None)
    text = next(((row, v) for row, v in enumerate(values, 1) if isinstance(v, str)), None)
    joined = next(((row, v) for row, v in enumerate(values, 1) if isinstance(v, str) and separator in v), None)
    numeric = all(_number(v) or v is None for v in values)
    if text and requested is None and not joined:
        parsed = [_parses(v) for v in values if isinstance(v, str)]
        fractional = any(_parses(v) and not float(v).is_integer() for v in values if isinstance(v, str))
        if fractional and sum(parsed) > len(parsed) / 2 and not all(parsed):  # a number column with a typo
            bad = next((r, v) for r, v in enumerate(values, 1) if isinstance(v, str) and not _parses(v))
            raise UsageError(f"{where}: label column {columns.target} holds numbers and text (row {bad[0]}: "
                             f"{bad[1]!r}); fix the row, or set data.task=single_label if the values are "
                             "class names")
    if columns.indicators or several:
        found = "multi_label"
    elif numeric and any(isinstance(v, (float, np.floating)) for v in values):
        found = "regression"
    elif joined:
        found = "multi_label"
    else:
        found = "single_label"
    if requested is None:
        _say_how(found, columns, values, separator, where, joined is not None and not several)
    if requested is None or requested == found:
        return found

    def contradiction(reason: str, at: tuple[int, Any]) -> UsageError:
        return UsageError(f"{where}: data.task={requested} contradicts label column {columns.target}, which "
                          f"{reason} (row {at[0]}: {at[1]!r}); drop data.task to detect the task, or fix the column")

    if requested == "regression" and (columns.indicators or several):
        raise contradiction("holds several labels per row", several or (1, values[0]))
    if requested == "regression" and text and not all(_parses(v) for v in values if isinstance(v, str)):
        raise contradiction("holds text, not numbers", next((r, v) for r, v in enumerate(values, 1)
                                                              if isinstance(v, str) and not _parses(v)))
    if requested == "single_label" and (columns.indicators or several):
        raise contradiction("holds several labels per row", several or (1, values[0]))
    if requested in ("single_label", "multi_label") and floats:
        raise contradiction("holds fractional numbers (a regression target)", floats)
    return requested


def _say_how(task: str, columns: Columns, values: Sequence, separator: str, where: str, split: bool) -> None:
    """One line where the detected task could be a misreading, with the setting that reads it otherwise."""
    if split:
        log.info("%s: labels in column %s are split at %r into several per row (data.label_separator); set "
                 "data.task=single_label if %r is part of class names", where, columns.target, separator, separator)
    elif task == "single_label" and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values) \
            and len(set(values)) > 2:
        log.info("%s: the integers in label column %s are taken as %d classes; set data.task=regression if they "
                 "are scores", where, columns.target, len(set(values)))
    elif task == "single_label":
        joined = next((v for v in values if isinstance(v, str) and any(c in v for c in OTHER_SEPARATORS)), None)
        if joined is not None:
            mark = next(c for c in OTHER_SEPARATORS if c in joined)
            log.info("%s: label %r holds %r; if rows have several labels joined by it, set data.label_separator=%s",
                     where, joined, mark, mark)


def _parses(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class SingleLabelTarget:
    """Class ids ``(n,)`` from label names or integer ids (:class:`~encoder_clf.data.columns.Classes`)."""

    classes: Classes
    task = "single_label"

    @property
    def names(self) -> list[str]:
        return self.classes.names

    def encode(self, values: Sequence, where: str, rows: Sequence[int]) -> np.ndarray:
        return self.classes.ids(values, where, rows)


@dataclass(frozen=True)
class MultiLabelTarget:
    """0/1 indicators ``(n, labels)`` from lists or joined names (by ``classes``), or from 0/1 columns as they are."""

    classes: Classes
    separator: str
    columns: tuple[str, ...] = ()  # the indicator columns, when the labels come as one 0/1 column each
    task = "multi_label"

    @property
    def names(self) -> list[str]:
        return self.classes.names

    def encode(self, values: Sequence, where: str, rows: Sequence[int]) -> np.ndarray:
        out = np.zeros((len(values), len(self.names)), dtype=np.float32)
        for i, (row, value) in enumerate(zip(rows, values)):
            if self.columns:  # each column's label by name: a split may order its columns as it likes
                for column, flag in zip(self.columns, value):
                    if str(flag).strip() not in ("0", "1", "True", "False", "0.0", "1.0"):
                        raise UsageError(f"{where}: row {row} of label column {column!r} holds {flag!r}; a column "
                                         "of one label holds only 0 or 1: fix the value, or leave the column out "
                                         "of data.label_columns")
                    out[i, self.classes.by_value[column]] = float(str(flag).strip() in ("1", "True", "1.0"))
            else:
                for name in label_names(value, self.separator):
                    out[i, self.classes.id(name, where, row)] = 1.0
        return out


@dataclass(frozen=True)
class RegressionTarget:
    """The target's values ``(n,)`` as float32; each must be a finite number."""

    name: str
    task = "regression"

    @property
    def names(self) -> list[str]:
        return [self.name]

    def encode(self, values: Sequence, where: str, rows: Sequence[int]) -> np.ndarray:
        out = np.zeros(len(values), dtype=np.float32)
        for i, (row, value) in enumerate(zip(rows, values)):
            number = float(value) if _number(value) or (isinstance(value, str) and _parses(value)) else None
            if number is None or not math.isfinite(number):
                raise UsageError(f"{where}: row {row} of label column {self.name!r} is {value!r}, not a finite "
                                 "number; a regression target needs one per row: fix or remove the row")
            out[i] = number
        return out


Target = SingleLabelTarget | MultiLabelTarget | RegressionTarget


def label_names(value: Any, separator: str) -> list[str]:
    """The label names of one multi-label value: a list's items, or a joined string's parts ("" and None: none)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [part.strip() for part in str(value).split(separator) if part.strip()]


def target_of(task: str, columns: Columns, values: Sequence, requested: list[str] | None, separator: str,
              where: str) -> Target:
    """The target of a train split's label values; ``requested`` fixes the label order (``data.labels``)."""
    if task == "regression":
        return RegressionTarget(columns.label)
    if task == "multi_label":
        if columns.indicators:
            return MultiLabelTarget(Classes(list(columns.indicators), {n: i for i, n in enumerate(columns.indicators)}),
                                    separator, columns.indicators)
        names = [name for value in values for name in label_names(value, separator)]
        if not names:
            raise UsageError(f"{where}: no row has a label in column {columns.target}; add labelled rows")
        return MultiLabelTarget(Classes.from_values(names, requested or columns.class_names, where), separator)
    return SingleLabelTarget(Classes.from_values(values, requested or columns.class_names, where))


def model_target(task: str, names: list[str], columns: Columns, values: Sequence, separator: str,
                 where: str = "") -> Target:
    """The target of a split scored against a trained model of ``task`` with label ``names``.

    0/1 label columns are matched to the model's labels by name, and must be one per label.
    """
    if task == "regression":
        return RegressionTarget(columns.label or names[0])
    if task == "multi_label":
        if columns.indicators:
            unknown = [column for column in columns.indicators if column not in names]
            missing = [name for name in names if name not in columns.indicators]
            if unknown or missing:
                problem = f"{unknown[0]!r} is not one of them" if unknown else f"none is {missing[0]!r}"
                raise UsageError(f"{where}: label columns {', '.join(columns.indicators)}: the model's labels are "
                                 f"{', '.join(names)} and {problem}; pass one 0/1 column per model label, named "
                                 "after it")
            return MultiLabelTarget(Classes(list(names), {n: i for i, n in enumerate(names)}), separator,
                                    tuple(columns.indicators))
        seen = [name for value in values for name in label_names(value, separator)]
        return MultiLabelTarget(Classes.of_model(names, seen), separator)
    return SingleLabelTarget(Classes.of_model(names, values))


def balance(labels: np.ndarray, names: list[str], task: str) -> dict:
    """What a split's targets look like, for the run's report: rows per class, positives per label (and rows with
    none), or the target's mean, spread and range."""
    if task == "regression":
        return {"mean": float(labels.mean()), "std": float(labels.std()), "min": float(labels.min()),
                "max": float(labels.max())}
    if task == "multi_label":
        return {**dict(zip(names, labels.sum(axis=0).astype(int).tolist())),
                "(no label)": int((labels.sum(axis=1) == 0).sum())}
    return dict(zip(names, np.bincount(labels, minlength=len(names)).tolist()))


def describe_balance(counts: dict, rows: int, task: str) -> str:
    """:func:`balance` in a line: ``Business 25%, Sports 25%, …`` (the largest first; a regression target's
    mean ± std and range)."""
    if task == "regression":
        return f"mean {counts['mean']:.3g} ± {counts['std']:.3g}, range {counts['min']:.3g} to {counts['max']:.3g}"
    share = lambda count: f"{100 * count / max(rows, 1):.1f}%"  # noqa: E731
    ranked = sorted(((n, c) for n, c in counts.items() if n != "(no label)"), key=lambda item: -item[1])
    shown = ", ".join(f"{name} {share(count)}" for name, count in ranked[:8])
    shown += f", … ({len(ranked) - 8} more)" if len(ranked) > 8 else ""
    return shown + (f"; no label {share(counts['(no label)'])}" if "(no label)" in counts else "")
