"""Labelled splits in memory: train, validation (read, or carved out of train) and test, in one class order.

A data path is a directory of split files (``train``, ``validation``/``dev``,
``test``), a single file (validation carved out by a seeded stratified split),
or a Hugging Face Hub dataset name (``name`` or ``name:config``), as
:mod:`.sources` finds them; columns, labels and the row rules are :mod:`.columns`'.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError
from .columns import FLAG_HINTS, SETTING_HINTS, Classes, Columns, labelled_rows, pick_column
from .config import DataConfig
from .sources import SplitSource, empty_split, find_splits, train_split


@dataclass
class Split:
    """One split's texts and integer class ids (indices into the label names)."""

    texts: list[str]
    labels: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class Splits:
    train: Split
    validation: Split
    test: Split | None
    label_names: list[str]


@dataclass
class Rows:
    """A split's rows that passed the row rules: texts, raw label values and the rows they came from."""

    where: str
    texts: list[str]
    values: list
    rows: list[int]
    class_names: list[str] | None  # the label column's ClassLabel names, if it has them

    def labelled(self, classes: Classes) -> Split:
        return Split(self.texts, classes.ids(self.values, self.where, self.rows), self.where)


def read_rows(source: SplitSource, config: DataConfig, hints: dict[str, str] = SETTING_HINTS,
              streamed: bool = False) -> Rows:
    """Read a split whole (``streamed``: through its stream) and apply the row rules; refuse it if nothing is left."""
    table = source.read_streamed() if streamed else source.read()
    columns = Columns.of(table.column_names, table.features, config.text_column, config.label_column, source.where,
                         hints)
    kept = list(labelled_rows(zip(table[columns.text], table[columns.label]), source.where, columns, config.strict))
    if not kept:
        raise empty_split(source.where)
    rows, texts, values = (list(column) for column in zip(*kept))
    return Rows(source.where, texts, values, rows, columns.class_names)


def load_splits(config: DataConfig, seed: int = 0) -> Splits:
    """Read train/validation(/test), detect columns and fix the class order (``data.labels``, else sorted)."""
    sources = find_splits(config.path)
    train = read_rows(train_split(sources, config.path), config)
    classes = Classes.from_values(train.values, config.labels or train.class_names, train.where)
    labelled = train.labelled(classes)
    if "validation" in sources:
        validation = read_rows(sources["validation"], config).labelled(classes)
    else:
        labelled, validation = carve_validation(labelled, config.validation_fraction, seed)
    test = read_rows(sources["test"], config).labelled(classes) if "test" in sources else None
    return Splits(labelled, validation, test, classes.names)


def read_split(path: str, split: str, label_names: list[str], text_column: str | None = None,
               label_column: str | None = None, hints: dict[str, str] = FLAG_HINTS) -> Split:
    """Read one named split for evaluation against a trained model's classes."""
    source = _named_split(find_splits(path), path, split, hints)
    rows = read_rows(source, DataConfig(path=path, text_column=text_column, label_column=label_column), hints)
    return rows.labelled(Classes.of_model(label_names, rows.values))


def read_texts(path: str, split: str = "train", text_column: str | None = None,
               hints: dict[str, str] = SETTING_HINTS) -> list[str]:
    """Every text of one split, in file order (empty ones as ``""``): for features and pretraining.

    Besides the labelled formats, a plain ``.txt`` file gives one text per line.
    """
    file = Path(path).expanduser()
    if file.is_file() and file.suffix.lower() == ".txt":
        try:
            return file.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as err:
            raise UsageError(f"{file} is not UTF-8 (byte {err.start}); re-encode it as UTF-8") from None
    source = _named_split(find_splits(path), path, split, hints)
    table = source.read()
    column = pick_column(table.column_names, text_column, "text", source.where, hints)
    return [text if isinstance(text, str) else "" for text in table[column]]


def _named_split(sources: dict[str, SplitSource], path: str, split: str, hints: dict[str, str]) -> SplitSource:
    if split not in sources:
        raise UsageError(f"{path}: no {split!r} split (splits found: {', '.join(sources)}); "
                         f"pick one with {hints['split']}")
    return sources[split]


def carve_validation(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """A seeded hold-out of ``fraction`` of the rows, stratified when every class can appear on both sides."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(train))
    stratify = train.labels if min(Counter(train.labels.tolist()).values()) >= 2 else None
    try:
        train_idx, val_idx = train_test_split(index, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError:  # more classes than hold-out rows: stratifying is impossible, a plain split may not be
        try:
            train_idx, val_idx = train_test_split(index, test_size=fraction, random_state=seed)
        except ValueError as err:
            raise UsageError(f"{train.source}: cannot carve out a validation split ({err}); "
                             "add rows or provide a validation file") from None
    pick = lambda idx, tag: Split([train.texts[i] for i in idx], train.labels[idx], f"{train.source} ({tag})")  # noqa: E731
    return pick(np.sort(train_idx), "train part"), pick(np.sort(val_idx), "validation part")
