"""Which columns hold the text and the label, how label values become class ids, and the rules every row obeys.

One owner for all the paths that read rows (a split in memory, a streamed
train split, a split scored against a trained model), so that each rule and
each message exists once:

- Columns are detected by name; when two candidates are both present the choice
  is left to the user, since picking one silently could train on the wrong column.
- A row without a label is refused, naming it. A row whose text is empty is
  dropped, with one warning counting them, or refused under ``data.strict``.
- Labels may be strings or integers (or a ``ClassLabel`` feature's ids); they
  become class ids in a fixed order (:class:`Classes`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UsageError

log = logging.getLogger(__name__)

TEXT_COLUMNS = ("text", "sentence", "content", "review", "document", "body")
LABEL_COLUMNS = ("label", "labels", "target", "class", "category", "y")
# How the user of each entry point names a column or a split, for the fix an error message suggests:
# train and pretrain take settings, evaluate and embed take flags.
SETTING_HINTS = {"text": "--set data.text_column=NAME", "label": "--set data.label_column=NAME",
                 "split": "--set data.split=NAME"}
FLAG_HINTS = {"text": "--text-column NAME", "label": "--label-column NAME", "split": "--split NAME"}


def pick_column(columns: Sequence[str], requested: str | None, kind: str, where: str,
                hints: dict[str, str] = SETTING_HINTS) -> str:
    """The ``kind`` (``text`` or ``label``) column: the requested one, else the one candidate name present."""
    if requested is not None:
        if requested not in columns:
            raise UsageError(f"{where}: no {kind} column {requested!r}; columns found: {', '.join(columns)}; "
                             f"pass {hints[kind]}")
        return requested
    present = [name for name in (TEXT_COLUMNS if kind == "text" else LABEL_COLUMNS) if name in columns]
    if len(present) > 1:
        raise UsageError(f"{where}: columns {present[0]!r} and {present[1]!r} could both be the {kind} column; "
                         f"pick one with {hints[kind]}")
    if present:
        return present[0]
    raise UsageError(f"{where}: no {kind} column found among {', '.join(columns)}; pass {hints[kind]}")


@dataclass(frozen=True)
class Columns:
    """The text and label columns of a split, and the label's ``ClassLabel`` names if it has them."""

    text: str
    label: str
    class_names: list[str] | None = None

    @classmethod
    def of(cls, columns: Sequence[str], features, text: str | None, label: str | None, where: str,
           hints: dict[str, str] = SETTING_HINTS) -> Columns:
        text_column = pick_column(columns, text, "text", where, hints)
        label_column = pick_column(columns, label, "label", where, hints)
        names = getattr((features or {}).get(label_column), "names", None)
        return cls(text_column, label_column, list(names) if names else None)

    def label_value(self, value: Any) -> Any:
        """A raw label as the user names it: a ``ClassLabel`` id becomes its name."""
        if self.class_names and isinstance(value, (int, np.integer)) and 0 <= value < len(self.class_names):
            return self.class_names[value]
        return value


def labelled_rows(pairs: Iterable[tuple[Any, Any]], where: str, columns: Columns,
                  strict: bool) -> Iterator[tuple[int, str, Any]]:
    """``(row, text, label value)`` of every row that has text, in order; the row rules of the module docstring.

    ``pairs`` are the raw ``(text, label)`` of each row, in file order; rows are counted from 1.
    """
    dropped = 0
    for row, (text, value) in enumerate(pairs, 1):
        value = columns.label_value(value)
        if value is None or (isinstance(value, float) and np.isnan(value)):
            raise UsageError(f"{where}: row {row} has no value in label column {columns.label!r}; "
                             "fill it in or remove the row")
        if not (isinstance(text, str) and text.strip()):
            if strict:
                raise UsageError(f"{where}: row {row} has empty text in column {columns.text!r}; fill it in or "
                                 "remove it, or drop --strict to skip such rows")
            dropped += 1
            continue
        yield row, text, value
    if dropped:
        log.warning("%s: dropped %d row(s) with empty text in column %r", where, dropped, columns.text)


@dataclass(frozen=True)
class Classes:
    """The class names in order, and which class id each raw label value (or its text) stands for.

    ``unknown`` says why a value outside them is refused and how to fix it, which depends on where the
    classes came from (the train split, or ``data.labels`` and the validation split of a stream).
    """

    names: list[str]
    by_value: dict
    unknown: str = "never occurs in training (known labels: {known}); fix the label or add training rows for it"

    @classmethod
    def from_values(cls, values: Sequence, requested: list[str] | None, where: str, **kwargs) -> Classes:
        """Classes of the label values seen: sorted, or in the order ``requested`` gives (``data.labels``).

        ``requested`` may instead name integer labels 0..K-1.
        """
        seen = sorted(set(values), key=lambda v: (isinstance(v, str), v))
        if requested is None:
            return cls([str(v) for v in seen], {v: i for i, v in enumerate(seen)}, **kwargs)
        if len(set(requested)) != len(requested):
            raise UsageError(f"data.labels has a repeated name: {requested}")
        if _integers_name_ids(seen, requested):
            return cls(list(requested), {i: i for i in range(len(requested))}, **kwargs)
        as_text = {str(v): v for v in seen}
        missing = [v for v in as_text if v not in requested]
        if missing:
            raise UsageError(f"{where}: label {missing[0]!r} is not in data.labels ({', '.join(requested)}); "
                             "add it to data.labels")
        return cls(list(requested), {value: requested.index(text) for text, value in as_text.items()}, **kwargs)

    @classmethod
    def of_model(cls, names: list[str], values: Sequence) -> Classes:
        """A trained model's classes, for a split labelled by their names or by integer ids 0..K-1."""
        seen = sorted(set(values), key=lambda v: (isinstance(v, str), v))
        if _integers_name_ids(seen, names):
            return cls(list(names), {i: i for i in range(len(names))})
        return cls(list(names), {name: i for i, name in enumerate(names)})

    @functools.cached_property
    def _by_text(self) -> dict[str, int]:
        """The same map keyed by each value's text: a CSV label ``"1"`` finds the class of the integer 1."""
        return {str(k): v for k, v in self.by_value.items()}

    def id(self, value: Any, where: str, row: int | None = None) -> int:
        """The class id of a raw label value, or a one-line error naming it (and its row, when known)."""
        if value in self.by_value:
            return self.by_value[value]
        if str(value) in self._by_text:
            return self._by_text[str(value)]
        known = ", ".join(str(k) for k in self.by_value)
        at = f" (row {row})" if row is not None else ""
        raise UsageError(f"{where}: label {value!r}{at} {self.unknown.format(known=known)}")

    def ids(self, values: Sequence, where: str, rows: Sequence[int]) -> np.ndarray:
        """The class ids of label values read from ``rows`` of ``where``."""
        return np.array([self.id(value, where, row) for row, value in zip(rows, values)], dtype=np.int64)


def _integers_name_ids(seen: list, names: list[str]) -> bool:
    """Whether integer labels 0..K-1 are ids into ``names`` rather than values listed in it."""
    integer = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in seen)
    return (integer and bool(seen) and not {str(v) for v in seen} <= set(names)
            and min(seen) >= 0 and max(seen) < len(names))
