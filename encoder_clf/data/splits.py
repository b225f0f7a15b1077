"""Reading labelled text into splits, and cutting token ids into padded batches.

A data path is a directory of split files (``train``, ``validation``/``dev``,
``test``), a single file (validation carved out by a seeded stratified split),
or a Hugging Face Hub dataset name (``name`` or ``name:config``). Files are
read with ``datasets``; ``.csv``, ``.tsv``, ``.jsonl``/``.json`` and
``.parquet`` are understood. Labels may be strings or integers and become
named classes in a fixed order.

Text files are checked to be UTF-8 before parsing, so an encoding error names
the byte offset in the file rather than in a parser's chunk. Columns are
detected by name; when two candidates are both present the choice is left to
the user, since picking one silently could train on the wrong column.
"""

from __future__ import annotations

import codecs
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError
from .config import DataConfig

log = logging.getLogger(__name__)

READERS = {  # suffix -> (datasets builder, builder options)
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t", "quoting": 3}),  # quoting=3: csv.QUOTE_NONE, quotes are text
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}
SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}
TEXT_COLUMNS = ("text", "sentence", "content", "review", "document", "body")
LABEL_COLUMNS = ("label", "labels", "target", "class", "category", "y")
# How the user of each entry point names a column or a split, for the fix an error message suggests:
# train and pretrain take settings, evaluate and embed take flags.
SETTING_HINTS = {"text": "--set data.text_column=NAME", "label": "--set data.label_column=NAME",
                 "split": "--set data.split=NAME"}
FLAG_HINTS = {"text": "--text-column NAME", "label": "--label-column NAME", "split": "--split NAME"}


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


def load_splits(config: DataConfig, seed: int = 0) -> Splits:
    """Read train/validation(/test), detect columns and fix the class order."""
    if not config.path:
        raise UsageError("no data path given; pass --data PATH (a directory of splits, a file or a Hub name)")
    raw = _read_raw_splits(config.path)
    if "train" not in raw:
        found = ", ".join(raw) or "none"
        raise UsageError(f"{config.path}: no train split found (splits found: {found}); "
                         "name the file train.csv/.tsv/.jsonl/.parquet or pass a single file")
    train_texts, train_values, source, names_from_feature = _columns(raw["train"], config)
    if not train_texts:
        raise UsageError(f"{source}: the split is empty; add labelled rows")
    label_names, value_to_id = _classes(train_values, config.labels or names_from_feature, source)
    train = Split(train_texts, _to_ids(train_values, value_to_id, source), source)
    if "validation" in raw:
        validation = _split_from(raw["validation"], config, value_to_id)
    else:
        train, validation = _carve_validation(train, config.validation_fraction, seed)
    test = _split_from(raw["test"], config, value_to_id) if "test" in raw else None
    for split in (validation, test):
        if split is not None and len(split) == 0:
            raise UsageError(f"{split.source}: the split is empty; add labelled rows")
    return Splits(train, validation, test, label_names)


def read_split(path: str, split: str, label_names: list[str], text_column: str | None = None,
               label_column: str | None = None, hints: dict[str, str] = FLAG_HINTS) -> Split:
    """Read one named split for evaluation against a trained model's classes."""
    raw = _read_raw_splits(path)
    _require_split(raw, path, split, hints)
    config = DataConfig(path=path, text_column=text_column, label_column=label_column)
    texts, values, source, _ = _columns(raw[split], config, hints)
    if not texts:
        raise UsageError(f"{source}: the split is empty; add labelled rows")
    by_id = _integers_name_ids(sorted(set(values), key=lambda v: (isinstance(v, str), v)), label_names)
    value_to_id = {i: i for i in range(len(label_names))} if by_id else {n: i for i, n in enumerate(label_names)}
    return Split(texts, _to_ids(values, value_to_id, source), source)


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
    raw = _read_raw_splits(path)
    _require_split(raw, path, split, hints)
    column = _pick_column(raw[split], text_column, TEXT_COLUMNS, "text", hints)
    return [text if isinstance(text, str) else "" for text in raw[split].table[column]]


def _require_split(raw: dict, path: str, split: str, hints: dict[str, str]) -> None:
    if split not in raw:
        raise UsageError(f"{path}: no {split!r} split (splits found: {', '.join(raw)}); pick one with {hints['split']}")


@dataclass
class _RawSplit:
    table: object  # a datasets.Dataset
    source: str  # file path or hub name, for messages


def _read_raw_splits(path: str) -> dict[str, _RawSplit]:
    local = Path(path).expanduser()
    if local.is_dir():
        return {split: _RawSplit(_read_file(f), str(f)) for split, f in split_files(local).items()}
    if local.is_file():
        return {"train": _RawSplit(_read_file(local), str(local))}
    if _looks_local(path):
        raise UsageError(f"data path {path} does not exist; pass an existing file, directory or Hub dataset name")
    return _read_hub(path)


def split_files(directory: Path) -> dict[str, Path]:
    """The file of each split found in a directory, by the names in ``SPLIT_NAMES`` (first in name order)."""
    files = {}
    for split, names in SPLIT_NAMES.items():
        matches = [f for f in sorted(directory.iterdir()) if f.stem.lower() in names and f.suffix.lower() in READERS]
        if matches:
            files[split] = matches[0]
    if not files:
        raise UsageError(f"{directory}: no split files found; expected train/validation/test files ending in "
                         f"{', '.join(READERS)}")
    return files


def _looks_local(path: str) -> bool:
    """A missing path that cannot be a Hub name (``name``, ``owner/name``, optional ``:config``)."""
    name = path.split(":", 1)[0]
    return (name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name.replace("/", "")
            or Path(name).suffix.lower() in READERS or Path(name).suffix.lower() == ".txt")


def _read_file(file: Path, streaming: bool = False):
    """One split file as a ``datasets.Dataset``, or with ``streaming`` an ``IterableDataset`` read lazily.

    A stream is not scanned for bad UTF-8 up front (that would read it whole each epoch): its rows report
    parse errors as they come (``corpus._examples``).
    """
    import datasets

    suffix = file.suffix.lower()
    if suffix not in READERS:
        raise UsageError(f"{file}: unsupported file type {suffix or '(none)'!r}; use one of {', '.join(READERS)}")
    builder, options = READERS[suffix]
    if suffix != ".parquet" and not streaming:
        _check_utf8(file)
    datasets.disable_progress_bars()
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False  # a local file: no usage ping (it stalls offline)
    try:
        return datasets.load_dataset(builder, data_files=str(file), split="train", streaming=streaming, **options)
    except Exception as err:  # datasets wraps parser errors in its own types
        if _is_empty(file):
            raise UsageError(f"{file}: the split is empty; add labelled rows") from None
        cause = err.__cause__ or err
        raise UsageError(f"{file}: could not be read as {suffix[1:]} ({type(cause).__name__}: "
                         f"{str(cause).splitlines()[0] if str(cause) else ''}); check the file's format") from None


def _check_utf8(file: Path, chunk_size: int = 1 << 24) -> None:
    """Refuse a file that is not UTF-8, naming the byte offset and line of the first bad byte."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line = 0, 1
    with file.open("rb") as handle:
        while True:
            chunk = handle.read(chunk_size)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:  # err.object: bytes held back from the last chunk, then this one
                held = len(err.object) - len(chunk)
                bad = offset - held + err.start
                line += chunk[: max(0, err.start - held)].count(b"\n")
                raise UsageError(f"{file}: not UTF-8 at byte {bad} (line {line}, byte 0x{err.object[err.start]:02x}); "
                                 "re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8") from None
            if not chunk:
                return
            offset += len(chunk)
            line += chunk.count(b"\n")


def _is_empty(file: Path) -> bool:
    """No rows (beyond a header): datasets refuses such files with an obscure message."""
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(file).metadata.num_rows == 0
        except Exception:  # not parquet at all: the reader's own message says more
            return False
    with file.open("rb") as handle:
        lines = [line.strip() for line in handle if line.strip()]
    if suffix == ".json":
        return b"".join(lines) in (b"", b"[]", b"{}")
    return len(lines) <= (0 if suffix == ".jsonl" else 1)


def _read_hub(name: str) -> dict[str, _RawSplit]:
    import datasets

    repo, _, subset = name.partition(":")
    try:
        loaded = datasets.load_dataset(repo, subset or None)
    except Exception as err:
        raise UsageError(f"{name!r} is not a local path and could not be loaded from the Hugging Face Hub "
                         f"({type(err).__name__}); check the name or pass a local directory") from None
    raw = {}
    for split, names in SPLIT_NAMES.items():
        for candidate in names:
            if candidate in loaded:
                raw[split] = _RawSplit(loaded[candidate], f"{name}[{candidate}]")
                break
    return raw


def _pick_column(raw: _RawSplit, requested: str | None, candidates: tuple[str, ...], kind: str,
                 hints: dict[str, str] = SETTING_HINTS) -> str:
    columns = list(raw.table.column_names)
    if requested is not None:
        if requested not in columns:
            raise UsageError(f"{raw.source}: no {kind} column {requested!r}; columns found: {', '.join(columns)}; "
                             f"pass {hints[kind]}")
        return requested
    present = [name for name in candidates if name in columns]
    if len(present) > 1:
        raise UsageError(f"{raw.source}: columns {present[0]!r} and {present[1]!r} could both be the {kind} column; "
                         f"pick one with {hints[kind]}")
    if present:
        return present[0]
    raise UsageError(f"{raw.source}: no {kind} column found among {', '.join(columns)}; pass {hints[kind]}")


def _columns(raw: _RawSplit, config: DataConfig,
             hints: dict[str, str] = SETTING_HINTS) -> tuple[list[str], list, str, list[str] | None]:
    """Texts and label values, with rows of empty text dropped (and counted in a warning).

    Integer labels of a ``ClassLabel`` column become their names; those names
    (in the dataset's order) are returned too, else ``None``.
    """
    text_column = _pick_column(raw, config.text_column, TEXT_COLUMNS, "text", hints)
    label_column = _pick_column(raw, config.label_column, LABEL_COLUMNS, "label", hints)
    texts, values = raw.table[text_column], raw.table[label_column]
    class_names = getattr(raw.table.features.get(label_column), "names", None)
    if class_names:
        values = [class_names[v] if v is not None and 0 <= v < len(class_names) else None for v in values]
    keep, empty = [], []
    for row, (text, value) in enumerate(zip(texts, values)):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            raise UsageError(f"{raw.source}: row {row + 1} has no value in label column {label_column!r}; "
                             "fill it in or remove the row")
        (keep if isinstance(text, str) and text.strip() else empty).append(row)
    dropped = len(empty)
    if dropped and config.strict:
        raise UsageError(f"{raw.source}: {dropped} row(s) with empty text in column {text_column!r} (first: row "
                         f"{empty[0] + 1}); fill them in or remove them, or drop --strict to skip them")
    if dropped:
        log.warning("%s: dropped %d row(s) with empty text in column %r", raw.source, dropped, text_column)
    return [texts[i] for i in keep], [values[i] for i in keep], raw.source, class_names


def _integers_name_ids(seen: list, names: list[str]) -> bool:
    """Whether integer labels 0..K-1 are ids into ``names`` rather than values listed in it."""
    integer = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in seen)
    return (integer and bool(seen) and not {str(v) for v in seen} <= set(names)
            and min(seen) >= 0 and max(seen) < len(names))


def _classes(values: list, requested: list[str] | None, source: str) -> tuple[list[str], dict]:
    """Class names in order, and a map from each raw label value to its class id."""
    seen = sorted(set(values), key=lambda v: (isinstance(v, str), v))
    if requested is None:
        return [str(v) for v in seen], {v: i for i, v in enumerate(seen)}
    if len(set(requested)) != len(requested):
        raise UsageError(f"data.labels has a repeated name: {requested}")
    if _integers_name_ids(seen, requested):
        return list(requested), {i: i for i in range(len(requested))}
    as_text = {str(v): v for v in seen}
    missing = [v for v in as_text if v not in requested]
    if missing:
        raise UsageError(f"{source}: label {missing[0]!r} is not in data.labels ({', '.join(requested)}); "
                         "add it to data.labels")
    return list(requested), {value: requested.index(text) for text, value in as_text.items()}


def _to_ids(values: list, value_to_id: dict, source: str) -> np.ndarray:
    lookup = {**value_to_id, **{str(k): v for k, v in value_to_id.items()}}
    ids = np.empty(len(values), dtype=np.int64)
    for row, value in enumerate(values):
        key = value if value in lookup else str(value)
        if key not in lookup:
            known = ", ".join(str(k) for k in value_to_id)
            raise UsageError(f"{source}: label {value!r} (row {row + 1}) never occurs in training "
                             f"(known labels: {known}); fix the label or add training rows for it")
        ids[row] = lookup[key]
    return ids


def _split_from(raw: _RawSplit, config: DataConfig, value_to_id: dict) -> Split:
    texts, values, source, _ = _columns(raw, config)
    return Split(texts, _to_ids(values, value_to_id, source), source)


def _carve_validation(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    from sklearn.model_selection import train_test_split

    counts = Counter(train.labels.tolist())
    stratify = train.labels if min(counts.values()) >= 2 else None
    index = np.arange(len(train))
    try:
        train_idx, val_idx = train_test_split(index, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError as err:
        raise UsageError(f"{train.source}: cannot carve out a validation split ({err}); "
                         "add rows or provide a validation file") from None
    pick = lambda idx, tag: Split([train.texts[i] for i in idx], train.labels[idx], f"{train.source} ({tag})")  # noqa: E731
    return pick(np.sort(train_idx), "train part"), pick(np.sort(val_idx), "validation part")


def bucket_batches(lengths: np.ndarray, batch_size: int, shuffle: bool, seed: int = 0,
                   bucket_batches: int = 50) -> list[np.ndarray]:
    """Index batches of similar length, so padding stays small.

    Training order: shuffle, sort within pools of ``bucket_batches`` batches by
    length, cut into batches, shuffle the batches. Evaluation order: sorted by
    length (callers restore the input order from the indices).
    """
    if not shuffle:
        order = np.argsort(lengths, kind="stable")
        return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    pool = batch_size * bucket_batches
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start: start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i: i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest sequence: ids ``(batch, seq)`` and the padding mask (``True`` at padding)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    lengths = torch.as_tensor([len(s) for s in sequences])
    return ids, torch.arange(width)[None, :] >= lengths[:, None]


def sorted_batches(sequences: list[list[int]], pad_id: int,
                   batch_size: int) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """Evaluation batches by length: ``(indices into sequences, ids, padding mask)``, padded per batch.

    Callers write each batch's results at ``indices`` to get them back in input order.
    """
    lengths = np.array([len(s) for s in sequences])
    for index in bucket_batches(lengths, batch_size, shuffle=False):
        yield (index, *collate([sequences[i] for i in index], pad_id))
