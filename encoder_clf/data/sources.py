"""Where labelled text comes from: a directory of split files, one file, or a Hugging Face Hub dataset.

:func:`find_splits` names the splits a data path holds, each a :class:`SplitSource`
that reads it whole (a memory-mapped ``datasets.Dataset``) or as a stream of
rows. Every entry point reads through it: training in memory, the token cache,
streaming, evaluation, features and pretraining. Files are read with
``datasets``; ``.csv``, ``.tsv``, ``.jsonl``/``.json`` and ``.parquet`` are
understood. A text file read whole is first checked to be UTF-8, so an encoding
error names the byte offset in the file rather than in a parser's chunk (a
stream is not checked up front: that would read it whole every epoch; its rows
report parse errors as they come).

Only an empty cell is a missing value: pandas' default list (``NA``, ``None``,
``null``, ``nan``, ...) would turn the class ``NA`` (North America) or the text
``None`` into a missing label or an empty row. A ``.tsv`` is read without
quoting (GLUE's files hold unmatched quotes as text) unless it is quoted the
way ``csv`` and pandas' ``to_csv(sep="\t")`` write it (:func:`tsv_quoting`). A ``.csv`` whose header
has no comma but semicolons (as spreadsheets write CSV where the comma is the decimal mark), tabs or bars is
split at those (:func:`csv_delimiter`).
"""

from __future__ import annotations

import codecs
import csv
import functools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

TABLE = {"keep_default_na": False, "na_values": [""]}  # only an empty cell is missing
READERS = {  # suffix -> (datasets builder, builder options)
    ".csv": ("csv", {**TABLE, "skipinitialspace": True}),  # "text, label" by hand: the label column is 'label'
    ".tsv": ("csv", {**TABLE, "delimiter": "\t", "quoting": csv.QUOTE_NONE}),  # unless quoted: tsv_quoting
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}
SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}


@dataclass(frozen=True)
class SplitSource:
    """One split of a data path: a local file, or a split of a Hub dataset (``repo``, ``subset``, ``split``)."""

    where: str  # the file, or ``name[split]`` on the Hub: what messages name
    file: Path | None = None
    hub: tuple[str, str | None, str] | None = None

    def read(self):
        """The whole split as a ``datasets.Dataset`` (memory-mapped Arrow)."""
        import datasets

        if self.file is not None:
            return _read_file(self.file)
        repo, subset, split = self.hub
        return _from_hub(lambda: datasets.load_dataset(repo, subset, split=split), self.where)

    def read_streamed(self):
        """The whole split read through its stream: for a Hub split, only its own files are downloaded."""
        import datasets

        if self.file is not None:
            return self.read()
        stream = self.stream()
        return datasets.Dataset.from_list(list(self.rows(stream)), features=stream.features)

    def stream(self):
        """The split as a ``datasets.IterableDataset``, read lazily."""
        import datasets

        if self.file is not None:
            return _read_file(self.file, streaming=True)
        repo, subset, split = self.hub
        return _from_hub(lambda: datasets.load_dataset(repo, subset, split=split, streaming=True), self.where)

    def rows(self, stream) -> Iterator[dict]:
        """The stream's rows in order, a parser's error turned into a :class:`UsageError` naming the split."""
        rows = iter(stream)
        while True:
            try:
                example = next(rows)
            except StopIteration:
                return
            except Exception as err:  # datasets wraps parser errors in its own types
                raise UsageError(f"{self.where}: could not be read ({_cause(err)}); check that the file is UTF-8 "
                                 "and well formed") from None
            yield example

    def column_names(self, stream) -> list[str]:
        """A stream's columns, from its features or else from its first row (CSV streams come without features)."""
        if stream.column_names is not None:
            return list(stream.column_names)
        first = next(self.rows(stream), None)
        if first is None:
            raise empty_split(self.where)
        return list(first)


def empty_split(where: str) -> UsageError:
    """The one message for a split without rows (after the row rules)."""
    return UsageError(f"{where}: the split is empty; add labelled rows")


def find_splits(path: str) -> dict[str, SplitSource]:
    """The splits of a data path, by the names in :data:`SPLIT_NAMES`; a single file is the train split."""
    if not path:
        raise UsageError("no data path given; pass --data PATH (a directory of splits, a file or a Hub name)")
    local = Path(path).expanduser()
    if local.is_dir():
        return {split: SplitSource(str(file), file=file) for split, file in split_files(local).items()}
    if local.is_file():
        return {"train": SplitSource(str(local), file=local)}
    if _looks_local(path):
        raise UsageError(f"data path {path} does not exist; pass an existing file, directory or Hub dataset name")
    import datasets

    repo, _, subset = path.partition(":")
    names = _from_hub(lambda: datasets.get_dataset_split_names(repo, subset or None), repr(path))
    found = {}
    for split, candidates in SPLIT_NAMES.items():
        name = next((n for n in candidates if n in names), None)
        if name is not None:
            found[split] = SplitSource(f"{path}[{name}]", hub=(repo, subset or None, name))
    return found


def train_split(sources: dict[str, SplitSource], path: str) -> SplitSource:
    """The train split, or a one-line error naming the splits that were found."""
    if "train" not in sources:
        found = ", ".join(sources) or "none"
        raise UsageError(f"{path}: no train split found (splits found: {found}); name the file "
                         f"train{', train'.join(READERS)}, or pass a single file")
    return sources["train"]


def split_files(directory: Path) -> dict[str, Path]:
    """The file of each split found in a directory, by the names in ``SPLIT_NAMES``; two for one split are refused
    (``dev.csv`` beside ``validation.csv``: picking one by name would train or select on the wrong rows)."""
    files = {}
    for split, names in SPLIT_NAMES.items():
        matches = [f for f in sorted(directory.iterdir()) if f.stem.lower() in names and f.suffix.lower() in READERS]
        if len(matches) > 1:
            raise UsageError(f"{directory}: {matches[0].name} and {matches[1].name} could both be the {split} split; "
                             "keep one of them there")
        if matches:
            files[split] = matches[0]
    if not files:
        raise UsageError(f"{directory}: no split files found; expected train/validation/test files ending in "
                         f"{', '.join(READERS)}")
    return files


def _looks_local(path: str) -> bool:
    """A missing path that cannot be a Hub name (``name``, ``owner/name``, optional ``:config``), or an
    ``owner/name`` whose ``owner`` is a local directory: a mistyped local path, not a Hub dataset."""
    name = path.split(":", 1)[0]
    return (name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name.replace("/", "")
            or Path(name).suffix.lower() in READERS or Path(name).suffix.lower() == ".txt"
            or ("/" in name and Path(name).parent.is_dir()))


def _cause(err: Exception) -> str:
    cause = err.__cause__ or err
    return f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"


def _from_hub(call, where: str):
    try:
        return call()
    except UsageError:
        raise
    except Exception as err:  # network, auth and missing-dataset errors all end the same way for the user
        raise UsageError(f"{where} is not a local path and could not be read from the Hugging Face Hub "
                         f"({type(err).__name__}); check the name or pass a local directory") from None


def _read_file(file: Path, streaming: bool = False):
    """One split file as a ``datasets.Dataset``, or with ``streaming`` an ``IterableDataset`` read lazily."""
    import datasets

    suffix = file.suffix.lower()
    if suffix not in READERS:
        raise UsageError(f"{file}: unsupported file type {suffix or '(none)'!r}; use one of {', '.join(READERS)}")
    builder, options = READERS[suffix]
    if suffix != ".parquet" and not streaming:
        _check_utf8(file)
    if suffix == ".tsv":
        options = {**options, "quoting": tsv_quoting(file)}
    if suffix == ".csv" and (delimiter := csv_delimiter(file)) != ",":
        options = {**options, "delimiter": delimiter}
    datasets.disable_progress_bars()
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False  # a local file: no usage ping (it stalls offline)
    quiet = logging.getLogger("datasets")  # its reader logs a failure before raising it: the one line is ours
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        return datasets.load_dataset(builder, data_files=str(file), split="train", streaming=streaming, **options)
    except Exception as err:  # datasets wraps parser errors in its own types
        if _is_empty(file):
            raise empty_split(str(file)) from None
        raise UsageError(f"{file}: could not be read as {suffix[1:]} ({_cause(err)}); "
                         "check the file's format") from None
    finally:
        quiet.setLevel(level)


CSV_DELIMITERS = (";", "\t", "|")  # what a .csv is split at when its header has no comma


def csv_delimiter(file: Path) -> str:
    """What a ``.csv`` file's fields are separated by: a comma, unless its header line has none and holds one of
    :data:`CSV_DELIMITERS` (the first found in that order)."""
    with file.open(encoding="utf-8", errors="replace") as handle:
        header = handle.readline()
    if "," in header:
        return ","
    return next((delimiter for delimiter in CSV_DELIMITERS if delimiter in header), ",")


def tsv_quoting(file: Path) -> int:
    """How a ``.tsv`` quotes: ``csv.QUOTE_MINIMAL`` if it is quoted as ``csv`` writes it, else ``csv.QUOTE_NONE``.

    Quoted means: some field starts with a quote, and the whole file parses under strict CSV quoting
    (a quoted field ends at its closing quote; ``""`` inside is one quote) into rows as wide as the header.
    A file with quotes as plain text fails that (``"Yes," he said`` has text after its closing quote).
    """
    stat = file.stat()
    return _tsv_quoting(file.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _tsv_quoting(file: Path, size: int, mtime: int) -> int:
    """:func:`tsv_quoting`, once per version of a file (a stream opens its file every epoch)."""
    with file.open(newline="", encoding="utf-8", errors="replace") as handle:
        if not any(line.startswith('"') or '\t"' in line for line in handle):
            return csv.QUOTE_NONE
        handle.seek(0)
        rows = csv.reader(handle, delimiter="\t", strict=True)
        try:
            width = len(next(rows, []))
            if all(len(row) == width for row in rows):
                return csv.QUOTE_MINIMAL
        except csv.Error:
            pass
    return csv.QUOTE_NONE


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
