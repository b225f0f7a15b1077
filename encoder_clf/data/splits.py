"""Labelled splits in memory: train, validation (read, or carved out of train) and test, in one class order.

A data path is a directory of split files (``train``, ``validation``/``dev``,
``test``), a single file (validation carved out by a seeded stratified split),
or a Hugging Face Hub dataset name (``name`` or ``name:config``), as
:mod:`.sources` finds them; columns, labels and the row rules are :mod:`.columns`',
the task and its targets :mod:`.targets`'.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import UsageError
from .columns import FLAG_HINTS, SETTING_HINTS, TEXT_COLUMNS, Columns, known_pair, labelled_rows, named, pick_column
from .config import DataConfig
from .sampling import per_class_rows
from .sources import SplitSource, empty_split, find_splits, train_split
from .targets import Target, detect_task, model_target, target_of

log = logging.getLogger(__name__)

# A class-name column with a missing value may be multi-label data whose texts can have no label.
MULTI_LABEL_HINT = "; if a text may have no label (multi-label data), --set data.task=multi_label"


@dataclass
class Split:
    """One split's examples and targets.

    ``texts`` holds one text per example, or a ``(first, second)`` tuple per sentence pair; ``labels`` the
    targets: class ids ``(n,)``, 0/1 indicators ``(n, labels)`` (multi-label) or values ``(n,)``
    (regression), as :mod:`.targets` makes them.
    """

    texts: list
    labels: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class Splits:
    train: Split
    validation: Split
    test: Split | None
    label_names: list[str]  # the classes or labels in order; a regression target's one name
    task: str = "single_label"
    text_pairs: bool = False


@dataclass
class Rows:
    """A split's rows that passed the row rules: texts, raw label values and the rows they came from."""

    where: str
    texts: list
    values: list
    rows: list[int]
    columns: Columns
    task: str

    def labelled(self, target: Target) -> Split:
        return Split(self.texts, target.encode(self.values, self.where, self.rows), self.where)


def read_rows(source: SplitSource, config: DataConfig, hints: dict[str, str] = SETTING_HINTS,
              streamed: bool = False, like: Rows | None = None, pairs: bool | None = None,
              task: str | None = None, scored: bool = True) -> Rows | None:
    """Read a split whole (``streamed``: through its stream) and apply the row rules; refuse it if nothing is left.

    ``like``: the train split's rows, whose columns and task this split must have. Otherwise the columns are
    detected (``pairs``: a model's inputs, if known) and the task is ``task`` or else detected. ``scored=False``:
    a split like ``like`` whose labels are withheld (:meth:`Columns.withheld`) gives None instead of an error.
    """
    table = source.read_streamed() if streamed else source.read()
    if like is not None:
        withheld = like.columns.withheld(table)
        if withheld and not scored:
            return None
        columns = like.columns.found_in(table, source.where, like.where, detected=not config.label_columns)
        task = like.task
    else:
        columns = Columns.of(table.column_names, table.features, config, source.where, hints, table, pairs)
        withheld = columns.label is not None and columns.withheld(table)
    if withheld:  # the columns are there (found_in refuses a missing one): every label is -1
        raise UsageError(f"{source.where}: every label in column {columns.label!r} is -1, the mark of a withheld label "
                         f"(as in GLUE's test splits): there is nothing to learn from or score; label the rows, or "
                         f"pick another split ({hints['split']})")
    raw = list(columns.rows(table))
    hint = ""
    if task is None:
        values = [columns.label_value(value) for _, value in raw]
        task = detect_task(columns, values, config.task, config.label_separator, source.where)
        if config.task is None and task == "single_label" and any(isinstance(v, str) for v in values):
            hint = MULTI_LABEL_HINT
    kept = list(labelled_rows(raw, source.where, columns, config.strict, empty_label_ok=task == "multi_label",
                              empty_label_hint=hint))
    if not kept:
        raise empty_split(source.where)
    rows, texts, values = (list(column) for column in zip(*kept))
    return Rows(source.where, texts, values, rows, columns, task)


def load_splits(config: DataConfig, seed: int = 0) -> Splits:
    """Read train/validation(/test), detect columns and the task, and fix the label order (``data.labels``, else
    sorted)."""
    sources = find_splits(config.path)
    train = read_rows(train_split(sources, config.path), config)
    target = target_of(train.task, train.columns, train.values, config.labels, config.label_separator, train.where)
    if train.task == "single_label":
        target.classes.at_least_two(train.where, train.columns.target)
    labelled = train.labelled(target)
    if "validation" in sources:
        validation = read_rows(sources["validation"], config, like=train).labelled(target)
    else:
        labelled, validation = carve_validation(labelled, config.validation_fraction, seed)
        log.info("%s: no validation split given; %d of its %d rows (data.validation_fraction=%g, seed %d, stratified "
                 "by class where possible) are held out for validation", train.where, len(validation),
                 len(labelled) + len(validation), config.validation_fraction, seed)
    test = test_split(sources["test"], config, train, target) if "test" in sources else None
    if config.per_class:
        labelled = sampled(labelled, target.names, train.task, config.per_class, seed)
    if train.task == "multi_label":
        _warn_unseen_labels(labelled, target.names)
    return Splits(labelled, validation, test, target.names, train.task, len(train.columns.texts) == 2)


def test_split(source: SplitSource, config: DataConfig, like: Rows, target: Target,
               streamed: bool = False) -> Split | None:
    """The test split's examples, read as ``like`` was, or None with a warning where its labels are withheld: a run
    is still judged on validation, as with no test file."""
    rows = read_rows(source, config, streamed=streamed, like=like, scored=False)
    if rows is None:
        log.warning("%s: no labels to score (no label column, or -1 on every row: withheld, as in GLUE's test "
                    "splits); the run reports validation only", source.where)
        return None
    return rows.labelled(target)


def _warn_unseen_labels(train: Split, names: list[str]) -> None:
    """Warn of the labels that no training row has (a 0/1 column of zeros, a name only ``data.labels`` gives):
    the model cannot learn them, and they weigh on macro-F1 as zeros wherever they occur."""
    unseen = [name for name, count in zip(names, train.labels.sum(axis=0)) if count == 0]
    if unseen:
        log.warning("%s: no training row has label(s) %s: the model cannot learn them; add rows that have them, "
                    "or leave them out", train.source, ", ".join(map(repr, unseen)))


def sampled(train: Split, names: list[str], task: str, k: int, seed: int) -> Split:
    """The train split cut to ``k`` rows per class (``data.per_class``; see :mod:`.sampling`), as the run states it."""
    rows = per_class_rows(train.labels, names, task, k, seed, train.source)
    what = f"{k} per class" if task == "single_label" else f"at least {k} positives per label"
    log.info("train: %s sampled with seed %d: %d of %d rows", what, seed, len(rows), len(train))
    return Split([train.texts[i] for i in rows], train.labels[rows], train.source)


def read_split(path: str, split: str, label_names: list[str], task: str = "single_label", text_pairs: bool = False,
               config: DataConfig | None = None, hints: dict[str, str] = FLAG_HINTS) -> Split:
    """Read one named split for evaluation against a trained model's task, label names and inputs.

    ``config`` names the columns (and the label separator); a multi-label model trained on one 0/1 column
    per label finds its labels' columns by name.
    """
    config = config or DataConfig(path=path)
    source = _named_split(find_splits(path), path, split, hints)
    if task == "multi_label" and not (config.label_column or config.label_columns):
        names = source.read().column_names
        if all(label in names for label in label_names):
            config = replace(config, label_columns=list(label_names))
    rows = read_rows(source, config, hints, pairs=text_pairs, task=task)
    return rows.labelled(model_target(task, label_names, rows.columns, rows.values, config.label_separator,
                                      rows.where))


def validation_rows(config: DataConfig, seed: int, label_names: list[str], task: str, text_pairs: bool) -> Split:
    """A trained model's validation rows in ``config.path``: its validation split, else the rows that a run with
    ``seed`` held out of its train split (:func:`carve_validation`, carved again the same way)."""
    if "validation" in find_splits(config.path):
        return read_split(config.path, "validation", label_names, task, text_pairs, config)
    splits = load_splits(config, seed)
    if list(splits.label_names) != list(label_names):
        raise UsageError(f"{config.path}: its labels ({', '.join(splits.label_names)}) are not the model's "
                         f"({', '.join(label_names)}); pass the data the model was trained on")
    return splits.validation


def text_lines(text: str) -> list[str]:
    """A text file's lines (read with universal newlines, so every line ends in ``\n``): split there alone, not at
    the form feeds, U+2028 and other characters ``str.splitlines`` also breaks at, which sit inside one text."""
    lines = text.split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def read_texts(path: str, split: str = "train", text_column: str | None = None,
               hints: dict[str, str] = SETTING_HINTS) -> list[str]:
    """Every text of one split, in file order (empty ones as ``""``): for features and pretraining.

    Besides the labelled formats, a plain ``.txt`` file gives one text per line.
    """
    file = Path(path).expanduser()
    if file.is_file() and file.suffix.lower() == ".txt":
        try:
            return text_lines(file.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise UsageError(f"{file} is not UTF-8 (byte {err.start}); re-encode it as UTF-8") from None
    source = _named_split(find_splits(path), path, split, hints)
    table = source.read()
    names = table.column_names
    pair = known_pair(names)
    if text_column is None and pair and not named(names, TEXT_COLUMNS):
        raise UsageError(f"{source.where}: its rows are sentence pairs ({', '.join(pair)}), and one text per row "
                         f"is read here; pass {hints['text'].replace('NAME', pair[0])} (or {pair[1]})")
    column = pick_column(names, text_column, "text", source.where, hints, table)
    return [text if isinstance(text, str) else "" for text in table[column]]


def _named_split(sources: dict[str, SplitSource], path: str, split: str, hints: dict[str, str]) -> SplitSource:
    if split not in sources:
        raise UsageError(f"{path}: no {split!r} split (splits found: {', '.join(sources)}); "
                         f"pick one with {hints['split']}")
    return sources[split]


def carve_validation(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """A seeded hold-out of ``fraction`` of the rows, stratified by class when every class can appear on both sides
    (multi-label and regression targets are split at random)."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(train))
    classes = train.labels.ndim == 1 and np.issubdtype(train.labels.dtype, np.integer)
    stratify = train.labels if classes and min(Counter(train.labels.tolist()).values()) >= 2 else None
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
