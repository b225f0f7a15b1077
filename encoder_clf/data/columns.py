"""Which columns hold the text and the label, how label values become class ids, and the rules every row obeys.

One owner for all the paths that read rows (a split in memory, a streamed
train split, a split scored against a trained model), so that each rule and
each message exists once:

- Columns are detected by name, in any case (``Text``, ``LABEL``); when two candidates are both present the
  choice is left to the user, since picking one silently could train on the wrong column.
  Two text columns named like a sentence pair (``sentence1``/``sentence2``, ...)
  make each example a pair; 0/1 columns and no label column make multi-label data.
  Without a text column by name, the one column of free text is the text (``comment_text``, ``tweet``:
  datasets name it many ways), and a column that tells every row apart (an ``id``) is never a label.
- A row without a label is refused, naming it (a multi-label row may have no
  labels). A row whose text is empty is dropped, with one warning counting
  them, or refused under ``data.strict``; a pair with an empty text is refused.
- Labels may be strings or integers (or a ``ClassLabel`` feature's ids); they
  become class ids in a fixed order (:class:`Classes`). A ``ClassLabel`` id of -1, its mark for no label,
  drops the row with one warning counting them; -1 on every row is a split whose labels are withheld.
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
# Sentence-pair datasets name their two texts like this (GLUE, SNLI, SICK, QA relevance sets, ...).
PAIR_COLUMNS = (("sentence1", "sentence2"), ("sentence_A", "sentence_B"), ("premise", "hypothesis"),
                ("question", "sentence"), ("question", "answer"), ("query", "passage"), ("text_a", "text_b"),
                ("text", "text_pair"), ("question1", "question2"), ("question", "passage"))
LABEL_COLUMNS = ("label", "labels", "target", "class", "category", "y", "score", "rating", "gold_label",
                 "is_duplicate")
# How the user of each entry point names a column or a split, for the fix an error message suggests:
# train and pretrain take settings, evaluate and embed take flags.
SETTING_HINTS = {"text": "--set data.text_column=NAME", "label": "--set data.label_column=NAME",
                 "split": "--set data.split=NAME", "texts": "--set data.text_columns=FIRST,SECOND",
                 "labels": "--set data.label_columns=NAME,NAME,..."}
FLAG_HINTS = {"text": "--text-column NAME", "label": "--label-column NAME", "split": "--split NAME",
              "texts": "--text-columns FIRST,SECOND", "labels": "--label-columns NAME,NAME,..."}


FREE_TEXT_SAMPLE = 1000  # rows read to tell a column of free text from an id or a label column


def named(columns: Sequence[str], candidates: Sequence[str]) -> list[str]:
    """The columns named like ``candidates``, in any case, in the candidates' order."""
    return [name for candidate in candidates for name in columns if name.lower() == candidate.lower()]


def free_text_columns(table, columns: Sequence[str]) -> list[str]:
    """Those of ``columns`` that hold free text in the first rows of ``table``: strings, most of several words
    (an id or a code is one), and most of them distinct (a label column repeats its few values)."""
    sample = table[:FREE_TEXT_SAMPLE]
    found = []
    for name in columns:
        texts = [value for value in sample[name] if isinstance(value, str) and value.strip()]
        if texts and 2 * sum(len(text.split()) > 1 for text in texts) >= len(sample[name]) \
                and 2 * len(set(texts)) >= len(texts):
            found.append(name)
    return found


def pick_column(columns: Sequence[str], requested: str | None, kind: str, where: str,
                hints: dict[str, str] = SETTING_HINTS, table=None) -> str:
    """The ``kind`` (``text`` or ``label``) column: the requested one, else the one candidate name present,
    else (a text, with the rows of ``table`` at hand) the one column of free text."""
    if requested is not None:
        if requested not in columns:
            raise UsageError(f"{where}: no {kind} column {requested!r}; columns found: {', '.join(columns)}; "
                             f"pass {hints[kind]}")
        return requested
    present = named(columns, TEXT_COLUMNS if kind == "text" else LABEL_COLUMNS)
    if len(present) > 1:
        raise UsageError(f"{where}: columns {present[0]!r} and {present[1]!r} could both be the {kind} column; "
                         f"pick one with {hints[kind]}")
    if present:
        return present[0]
    pair = f" (or {hints['texts']} for a sentence pair)" if kind == "text" and "texts" in hints else ""
    free = free_text_columns(table, [name for name in columns if not named([name], LABEL_COLUMNS)]) \
        if kind == "text" and table is not None else []
    if len(free) == 1:
        log.info("%s: text column %r (the one column of free text; name another with %s)", where, free[0],
                 hints["text"])
        return free[0]
    if free:
        raise UsageError(f"{where}: columns {free[0]!r} and {free[1]!r} both hold free text; pick the text with "
                         f"{hints['text']}{pair}")
    raise UsageError(f"{where}: no {kind} column found among {', '.join(columns)}; pass {hints[kind]}{pair}")


def known_pair(columns: Sequence[str], table=None) -> tuple[str, str] | None:
    """The columns of the first pair of :data:`PAIR_COLUMNS` that ``columns`` hold (in any case), else None.

    With the rows of ``table`` at hand, both must hold text: BoolQ's ``question``/``answer`` is a question and a
    yes/no label, not a pair."""
    sample = None
    for first, second in PAIR_COLUMNS:
        found = named(columns, [first]), named(columns, [second])
        if not all(found):
            continue
        if table is not None:
            sample = sample or table[:FREE_TEXT_SAMPLE]  # read only where names match, once
            if not all(_holds_text(sample[names[0]]) for names in found):
                continue
        return found[0][0], found[1][0]
    return None


def _holds_text(values: Sequence) -> bool:
    """Whether most of a column's values (missing ones aside) are strings."""
    present = [value for value in values if value is not None]
    return 2 * sum(isinstance(value, str) for value in present) >= len(present) > 0


def pick_texts(columns: Sequence[str], requested: list[str] | None, single: str | None, where: str,
               hints: dict[str, str] = SETTING_HINTS, pairs: bool | None = None, table=None) -> tuple[str, ...]:
    """The text column, or the two of a sentence pair: as requested, else a known pair of names, else one text.

    ``pairs`` True or False asks for two texts or one (a trained model's inputs); None detects. ``table``: the
    rows, where they are at hand, to find a text column that no usual name gives (:func:`pick_column`).
    """
    if requested:
        if len(requested) > 2:
            raise UsageError(f"data.text_columns names {len(requested)} columns ({', '.join(requested)}); "
                             "name one text column, or the two of a sentence pair")
        for name in requested:
            pick_column(columns, name, "text", where, {**hints, "text": hints["texts"]})
        found = tuple(requested)
    elif single is not None or pairs is False:
        found = (pick_column(columns, single, "text", where, hints, table),)
    else:
        found = known_pair(columns, table)
        if found is None and pairs:
            raise UsageError(f"{where}: the model takes sentence pairs, and no pair of text columns was found among "
                             f"{', '.join(columns)}; pass {hints['texts']}")
        found = found or (pick_column(columns, None, "text", where, hints, table),)
    if pairs is not None and pairs != (len(found) == 2):
        raise UsageError(f"{where}: the model takes {'two texts' if pairs else 'one text'} per example, and "
                         f"{'one' if pairs else 'two'} text column{'s' * (not pairs)} ({', '.join(found)}) "
                         f"{'was' if pairs else 'were'} given; pass {hints['texts' if pairs else 'text']}")
    return found


@dataclass(frozen=True)
class Columns:
    """The text column(s) of a split and where its labels are: one label column, or one 0/1 column per label.

    ``class_names`` are the label column's ``ClassLabel`` names, if it has them.
    """

    texts: tuple[str, ...]
    label: str | None
    indicators: tuple[str, ...] = ()
    class_names: list[str] | None = None

    @classmethod
    def of(cls, columns: Sequence[str], features, config, where: str, hints: dict[str, str] = SETTING_HINTS,
           table=None, pairs: bool | None = None) -> Columns:
        """Detect the columns (``config`` is a :class:`~encoder_clf.data.config.DataConfig`).

        Without a label column by name, a ``table`` whose other columns (two or more) all hold only 0 and 1
        is multi-label data with one indicator column per label, in the file's order; a table with one
        column besides its text has its labels there (``sentiment``, ``intent``: any name). A column that
        tells every row apart (an ``id``) is set aside first: it is never a label.
        """
        texts = pick_texts(columns, config.text_columns, config.text_column, where, hints, pairs, table)
        if config.label_columns:
            for name in config.label_columns:
                pick_column(columns, name, "label", where, {**hints, "label": hints["labels"]})
            return cls(texts, None, tuple(config.label_columns))
        if config.label_column is None and table is not None and not named(columns, LABEL_COLUMNS):
            others = {name: table[name] for name in columns if name not in texts}
            zero_one = [name for name, column in others.items() if _zero_one(column)]
            rest = [name for name, column in others.items() if not _identifies_rows(column) or _mostly_zero_one(column)]
            if len(rest) < len(others):
                log.info("%s: set aside as ids (another value on every row), not labels: %s", where,
                         ", ".join(repr(name) for name in others if name not in rest))
            if len(rest) == 1:
                return cls(texts, rest[0], (), _class_names(features, rest[0]))
            if len(rest) >= 2 and zero_one == rest:
                return cls(texts, None, tuple(rest))
            if len(rest) >= 2 and zero_one:
                other = next(name for name in rest if name not in zero_one)
                values = list(table[other])  # a stray word makes a file's column text, its 0 and 1 included
                row, value = next(((i, v) for i, v in enumerate(values, 1) if str(v).strip() not in ("0", "1")),
                                  (1, values[0] if values else None))
                held = f"columns {', '.join(map(repr, zero_one))} hold" if len(zero_one) > 1 else \
                    f"column {zero_one[0]!r} holds"
                raise UsageError(f"{where}: {held} only 0 and 1 and column {other!r} does not (row {row}: {value!r}); "
                                 f"for one 0/1 column per label, fix that row or name them with {hints['labels']}; "
                                 f"for one label column, pass {hints['label']}")
        label = pick_column(columns, config.label_column, "label", where, hints)
        return cls(texts, label, (), _class_names(features, label))

    def withheld(self, table) -> bool:
        """Whether a split's ``table`` has no labels to score: no label column, or -1 on every row (``datasets``'
        mark for a withheld label, as in the Hub's GLUE test splits)."""
        names = [self.label] if self.label else list(self.indicators)
        if any(name not in table.column_names for name in names):
            return True
        return bool(self.label) and len(table) > 0 and all(_is_minus_one(value) for value in table[self.label])

    def found_in(self, table, where: str, first: str, detected: bool = False) -> Columns:
        """These columns (found in the split ``first``) in another split's ``table``, or a one-line error naming
        the missing one. ``detected``: the indicators were detected in ``first``, and a further 0/1 column here
        would be a label that split never has."""
        columns = table.column_names
        for name in (*self.texts, *([self.label] if self.label else []), *self.indicators):
            if name not in columns:
                role = ("text column" if name in self.texts else "label column")
                raise UsageError(f"{where}: no column {name!r}, which {first} has as a {role}; columns found: "
                                 f"{', '.join(columns)}; add the column or rename it")
        if detected and self.indicators:
            extra = [name for name in columns if name not in (*self.texts, *self.indicators) and _zero_one(table[name])]
            if extra:
                raise UsageError(f"{where}: 0/1 column {extra[0]!r} is not a label column of {first} (its labels: "
                                 f"{', '.join(self.indicators)}); add the column to {first}, or remove it here")
        return self

    @property
    def target(self) -> str:
        """How messages name where the labels are."""
        return repr(self.label) if self.label else f"{', '.join(self.indicators)} (one 0/1 column per label)"

    def rows(self, table) -> Iterable[tuple[tuple, Any]]:
        """``(texts, raw label value)`` of each row of a table; indicator labels as a tuple of the columns' values."""
        texts = zip(*(table[name] for name in self.texts))
        values = table[self.label] if self.label else zip(*(table[name] for name in self.indicators))
        return zip(texts, values)

    def label_value(self, value: Any) -> Any:
        """A raw label as the user names it: a ``ClassLabel`` id becomes its name, in a list of them too (a
        multi-label column of ``ClassLabel`` ids, as the Hub's GoEmotions has); a whole number stored as a float
        (``1.0``: pandas writes an integer column that had a missing value so) becomes that integer, as
        scikit-learn's ``type_of_target`` reads it: classes, unless ``data.task=regression``."""
        if isinstance(value, list):
            return [self.label_value(item) for item in value]
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        if self.class_names and isinstance(value, (int, np.integer)) and 0 <= value < len(self.class_names):
            return self.class_names[value]
        return value


def _class_names(features, label: str) -> list[str] | None:
    """The label column's ``ClassLabel`` names, if it has them (or its lists' items do)."""
    feature = (features or {}).get(label)
    names = getattr(feature, "names", None) or getattr(getattr(feature, "feature", None), "names", None)
    return list(names) if names else None


def _identifies_rows(values: Sequence) -> bool:
    """Whether a column names each row apart (an ``id``, a ``url``), unlike labels: distinct names or whole numbers,
    one per row (a float target such as 3.7 may well be distinct on every row)."""
    if any(isinstance(v, (list, dict)) for v in values):  # lists of label names (multi-label), not ids
        return False
    fractional = any(isinstance(v, float) and not v.is_integer() for v in values)
    return len(values) > 1 and not fractional and len(set(values)) == len(values)


def _is_minus_one(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and value == -1


def _mostly_zero_one(values: Sequence) -> bool:
    """Whether most of a column's values are 0 or 1, as text or numbers: an indicator with a stray value, not an id
    (which a few rows of ``0``, ``1``, ``yes`` would otherwise look like)."""
    return 2 * sum(str(value).strip() in ("0", "1") for value in values) > len(values)


def _zero_one(values: Sequence) -> bool:
    """Whether a column holds only 0 and 1 (integers or booleans): a label's indicator."""
    return all(isinstance(v, (bool, int, np.integer)) and v in (0, 1) for v in values)


def labelled_rows(rows: Iterable[tuple[tuple, Any]], where: str, columns: Columns, strict: bool,
                  empty_label_ok: bool = False,
                  empty_label_hint: str = "") -> Iterator[tuple[int, str | tuple[str, str], Any]]:
    """``(row, text, label value)`` of every row that has text, in order; the row rules of the module docstring.

    ``rows`` are the raw ``(texts, label)`` of each row, in file order; rows are counted from 1. A pair's
    text is the tuple of its two; either one empty refuses the row (half a pair is no example).
    ``empty_label_ok``: a missing label is a valid row (a multi-label text with no labels); otherwise the error
    ends with ``empty_label_hint``, where the caller knows another reading of the column.
    """
    dropped = unlabelled = 0
    for row, (texts, value) in enumerate(rows, 1):
        if columns.class_names and _is_minus_one(value):  # a ClassLabel's "no label" (SNLI's pairs without a gold one)
            unlabelled += 1
            continue
        value = columns.label_value(value)
        if not empty_label_ok and (value is None or (isinstance(value, float) and np.isnan(value))):
            raise UsageError(f"{where}: row {row} has no value in label column {columns.label!r}; "
                             f"fill it in or remove the row{empty_label_hint}")
        _check_texts(texts, columns.texts, where, row)
        empty = [name for name, text in zip(columns.texts, texts) if not (isinstance(text, str) and text.strip())]
        if empty and len(texts) == 2:
            which = "first" if empty[0] == columns.texts[0] else "second"
            raise UsageError(f"{where}: row {row} has empty text in column {empty[0]!r}, the {which} text of the "
                             "pair; fill it in or remove the row")
        if empty:
            if strict:
                raise UsageError(f"{where}: row {row} has empty text in column {columns.texts[0]!r}; fill it in or "
                                 "remove it, or drop --strict to skip such rows")
            dropped += 1
            continue
        yield row, (texts if len(texts) == 2 else texts[0]), value
    if dropped:
        log.warning("%s: dropped %d row(s) with empty text in column %r", where, dropped, columns.texts[0])
    if unlabelled:
        log.warning("%s: dropped %d row(s) whose label is -1, a ClassLabel's mark for no label", where, unlabelled)


def _check_texts(texts: tuple, names: tuple[str, ...], where: str, row: int) -> None:
    """Refuse a text that is a number, list or mapping (a missing one is None or NaN): the wrong column, or a
    JSON file written by columns, whose rows would all be dropped as empty."""
    for name, text in zip(names, texts):
        if text is None or isinstance(text, str) or (isinstance(text, float) and np.isnan(text)):
            continue
        if isinstance(text, (dict, list)):
            raise UsageError(f"{where}: row {row}: column {name!r} holds a {type(text).__name__}, not text; write "
                             "one JSON object per row (pandas: to_json(path, orient='records', lines=True))")
        raise UsageError(f"{where}: row {row}: text column {name!r} holds {text!r}, not text; if another column "
                         "holds the texts, name it with data.text_column")


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

    def at_least_two(self, where: str, column: str) -> Classes:
        """These classes, or a one-line error if there is one: a classifier of one class has nothing to learn."""
        if len(self.names) < 2:
            raise UsageError(f"{where}: label column {column} holds one class ({self.names[0]!r}); a classifier "
                             "needs at least 2: add rows of the others")
        return self

    @classmethod
    def of_model(cls, names: list[str], values: Sequence) -> Classes:
        """A trained model's classes, for a split labelled by their names or by integer ids 0..K-1."""
        seen = sorted(set(values), key=lambda v: (isinstance(v, str), v))
        if _integers_name_ids(seen, names):
            shown = ", ".join(f"{i} = {name}" for i, name in enumerate(names[:6])) + ", …" * (len(names) > 6)
            log.warning("integer labels read as the model's classes in order (%s); if the ids mean other classes, "
                        "label the rows with the class names", shown)
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
