"""Token ids for corpora too large to tokenize into Python lists on every run, or to hold in memory at all.

Both ways end in the same batches, ``(ids (batch, seq), padding mask (batch, seq) True at padding,
labels (batch,))``, padded per batch by :func:`encoder_clf.data.splits.collate`:

* :func:`tokenize_split` tokenizes a split that is already read (``data.load_splits``). With
  ``DataConfig.cache_dir`` the ids go once into an Arrow file named by a hash of the tokenizer's JSON and of
  the texts; later runs with the same tokenizer and texts map that file instead of tokenizing again. Without
  it the same :class:`TokenizedSplit` holds Python lists.
* :func:`stream_batches` reads the train split as a ``datasets`` stream and never holds it whole: rows pass a
  seeded shuffle buffer, gather in a pool of ``batch_size * pool_batches``, are tokenized, cut into batches of
  similar length (as :func:`encoder_clf.data.splits.bucket_batches` does) and yielded in a seeded order. The class
  names cannot come from the train split without reading all of it, so :func:`stream_splits` takes them from
  ``DataConfig.labels``, else from the validation split, which is small and read in memory with the test split.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ..errors import UsageError
from .config import DataConfig
from .splits import (
    LABEL_COLUMNS,
    READERS,
    SPLIT_NAMES,
    TEXT_COLUMNS,
    Split,
    _classes,
    _columns,
    _looks_local,
    _pick_column,
    _RawSplit,
    _read_file,
    _split_from,
    _to_ids,
    bucket_batches,
    collate,
    split_files,
)
from .tokenization import encode, pad_id

log = logging.getLogger(__name__)

CACHE_FORMAT = b"encoder-clf token cache 1"  # part of every cache key: change it when the file's columns change


# --- tokenized splits, in memory or memory-mapped ----------------------------------------------------------------


class ArrowSequences(Sequence):
    """The ``ids`` column of a cache file as a read-only list of id lists, read from the memory map on demand."""

    def __init__(self, column: pa.ChunkedArray) -> None:
        self.column = column

    def __len__(self) -> int:
        return len(self.column)

    def __getitem__(self, item):
        if isinstance(item, slice):
            return self.column[item].to_pylist()
        return self.column[int(item)].as_py()

    def __iter__(self) -> Iterator[list[int]]:
        for chunk in self.column.chunks:  # one record batch (1000 rows) of the file at a time
            yield from chunk.to_pylist()

    def take(self, index: np.ndarray) -> list[np.ndarray]:
        """The rows at ``index`` as int64 arrays: one gather from the map, no Python ints."""
        rows = self.column.take(pa.array(np.asarray(index, dtype=np.int64))).combine_chunks()
        offsets = rows.offsets.to_numpy()
        return np.split(rows.flatten().to_numpy().astype(np.int64), offsets[1:-1] - offsets[0])


@dataclass
class TokenizedSplit:
    """A split's token ids with what a training loop reads each step: lengths for bucketing, batches by index.

    ``sequences`` is a list of id lists, or :class:`ArrowSequences` over the cache file; both are list-like
    (``len``, ``[i]``, iteration), so evaluation code that takes sequences takes either.
    """

    sequences: Sequence[list[int]]
    labels: np.ndarray  # (n,) class ids
    lengths: np.ndarray  # (n,) token counts, special tokens included
    truncated: int  # texts cut at the tokenizer's truncation length
    pad_id: int
    source: str
    cache_file: str = ""  # the Arrow file the ids are mapped from; "" = in memory

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ids ``(b, seq)``, padding mask ``(b, seq)`` (True at padding) and labels ``(b,)`` of the rows at index."""
        if isinstance(self.sequences, ArrowSequences):
            rows = self.sequences.take(index)
        else:
            rows = [self.sequences[i] for i in index]
        ids, mask = collate(rows, self.pad_id)
        return ids, mask, torch.as_tensor(self.labels[index], dtype=torch.long)


def tokenize_split(tokenizer, split: Split, cache_dir: str = "", num_proc: int = 1) -> TokenizedSplit:
    """Token ids of ``split``: memory-mapped from ``cache_dir`` (tokenized there first if new), else in lists.

    ``num_proc`` processes tokenize into a new cache file; in memory, the tokenizer's own threads do.
    """
    if not cache_dir:
        sequences, truncated = encode(tokenizer, split.texts)
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        return TokenizedSplit(sequences, split.labels, lengths, truncated, pad_id(tokenizer), split.source)
    import datasets

    file = cache_file(cache_dir, tokenizer, split.texts)
    if file.is_file():
        log.info("%s: token ids from %s", split.source, file)
    else:
        _write_cache(file, tokenizer, split.texts, num_proc)
    table = datasets.Dataset.from_file(str(file)).data  # memory-mapped, nothing read yet
    lengths = table.column("length").to_numpy().astype(np.int64)
    truncated = pc.sum(table.column("truncated")).as_py() or 0
    return TokenizedSplit(ArrowSequences(table.column("ids")), split.labels, lengths, truncated,
                          pad_id(tokenizer), split.source, str(file))


def cache_file(cache_dir: str, tokenizer, texts: Sequence[str]) -> Path:
    """``cache_dir/tokens-<hash>.arrow``: the hash covers the tokenizer's JSON (truncation too) and every text."""
    key = hashlib.blake2b(CACHE_FORMAT, digest_size=16)
    key.update(hashlib.blake2b(tokenizer.to_str().encode()).digest())
    key.update(_texts_digest(texts))
    return Path(cache_dir).expanduser() / f"tokens-{key.hexdigest()}.arrow"


def _texts_digest(texts: Sequence[str], chunk: int = 10_000) -> bytes:
    """A hash of the texts in order, each one's byte length hashed with it so no two lists hash alike by joining."""
    digest = hashlib.blake2b(len(texts).to_bytes(8, "little"))
    for start in range(0, len(texts), chunk):
        encoded = [text.encode("utf-8", "surrogatepass") for text in texts[start: start + chunk]]
        digest.update(np.array([len(b) for b in encoded], dtype=np.int64).tobytes())
        digest.update(b"".join(encoded))
    return digest.digest()


def _encode_rows(batch: dict, tokenizer) -> dict:
    """``datasets.map`` function: :func:`tokenization.encode` per row, keeping which rows were truncated."""
    encodings = tokenizer.encode_batch(batch["text"])
    return {"ids": [e.ids for e in encodings], "length": [len(e.ids) for e in encodings],
            "truncated": [bool(e.overflowing) for e in encodings]}


def _write_cache(file: Path, tokenizer, texts: Sequence[str], num_proc: int) -> None:
    """Tokenize into a private directory beside ``file``, then rename the finished file into place.

    A run killed halfway leaves only a ``.tokens-*`` directory, never a partial ``file``; two processes
    writing the same file (ranks of one run) each rename a complete one.
    """
    import datasets

    file.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{file.stem}-", dir=file.parent))
    try:
        datasets.disable_progress_bars()
        features = datasets.Features({"ids": datasets.Sequence(datasets.Value("int32")),
                                      "length": datasets.Value("int32"), "truncated": datasets.Value("bool")})
        mapped = datasets.Dataset.from_dict({"text": list(texts)}).map(
            _encode_rows, fn_kwargs={"tokenizer": tokenizer}, batched=True, remove_columns=["text"],
            num_proc=num_proc if num_proc > 1 else None, features=features,
            cache_file_name=str(work / "ids.arrow"), new_fingerprint=file.stem)
        shards = [Path(entry["filename"]) for entry in mapped.cache_files]
        del mapped
        if len(shards) > 1:  # one file per process: join them so the cache does not depend on num_proc
            _concatenate(shards, work / "joined.arrow")
            shards = [work / "joined.arrow"]
        os.replace(shards[0], file)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _concatenate(shards: list[Path], target: Path) -> None:
    """Append Arrow stream files (as ``datasets`` writes them) into one, schema and metadata from the first."""
    with pa.OSFile(str(target), "wb") as sink:
        writer = None
        for shard in shards:
            with pa.memory_map(str(shard)) as source:
                reader = pa.ipc.open_stream(source)
                writer = writer or pa.ipc.new_stream(sink, reader.schema)
                for batch in reader:
                    writer.write_batch(batch)
        writer.close()


# --- streaming the train split -------------------------------------------------------------------------------


@dataclass
class StreamingSplits:
    """What a streaming run holds in memory: the classes, the map from raw label values, the small splits."""

    label_names: list[str]
    label_to_id: dict  # raw label value (as in the files) -> class id; what stream_batches takes
    validation: Split
    test: Split | None
    train_source: str


def stream_splits(config: DataConfig) -> StreamingSplits:
    """Read the validation (and test) split and fix the classes, leaving the train split unread.

    The classes are ``config.labels`` if given, else the validation split's labels in sorted order (as
    :func:`data.load_splits` orders the train split's). A train label outside them is found only when the
    stream reaches it, and stops it with a :class:`UsageError` that asks for ``data.labels``.
    """
    if not config.path:
        raise UsageError("no data path given; pass --data PATH (a directory of splits or a Hub name)")
    raw, train_source = _small_splits(config.path)
    if "validation" not in raw:
        raise UsageError(f"{config.path}: streaming reads the train split once per epoch and cannot carve a "
                         "validation split out of it; add a validation file beside the train file "
                         f"(validation{', validation'.join(READERS)}) or turn data.streaming off")
    texts, values, source, names_from_feature = _columns(raw["validation"], config)
    if not texts:
        raise UsageError(f"{source}: the split is empty; add labelled rows")
    label_names, label_to_id = _classes(values, config.labels or names_from_feature, source)
    validation = Split(texts, _to_ids(values, label_to_id, source), source)
    test = _split_from(raw["test"], config, label_to_id) if "test" in raw else None
    if test is not None and len(test) == 0:
        raise UsageError(f"{test.source}: the split is empty; add labelled rows")
    return StreamingSplits(label_names, label_to_id, validation, test, train_source)


def stream_batches(config: DataConfig, tokenizer, label_to_id: dict, batch_size: int, seed: int, epoch: int,
                   pool_batches: int = 50,
                   buffer_size: int = 10_000) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One epoch of the train split as ``(ids (b, seq), padding mask (b, seq), labels (b,))`` batches.

    Rows pass a shuffle buffer of ``buffer_size`` rows, then gather in pools of ``batch_size * pool_batches``;
    each pool is tokenized, sorted by length, cut into batches and yielded in a shuffled order. At most one
    pool and the buffer are held (plus the reader's own chunk of the file). The same ``seed`` and ``epoch``
    give the same batches; another epoch gives another order. The number of batches is known only at the end.
    """
    stream, source = _train_stream(config.path)
    text_column, label_column, class_names = _stream_columns(stream, source, config)
    shuffled = stream.shuffle(seed=_derived_seed(seed, epoch), buffer_size=buffer_size)
    rows = _labelled_rows(shuffled, source, text_column, label_column, class_names, label_to_id, config.strict)
    pad, pool_size = pad_id(tokenizer), batch_size * pool_batches
    for number in itertools.count():
        pool = list(itertools.islice(rows, pool_size))
        if not pool:
            return
        texts, labels = zip(*pool)
        sequences, _ = encode(tokenizer, texts)
        labels = np.array(labels, dtype=np.int64)
        lengths = np.array([len(s) for s in sequences])
        for index in bucket_batches(lengths, batch_size, shuffle=True, seed=_derived_seed(seed, epoch, number),
                                    bucket_batches=pool_batches):
            ids, mask = collate([sequences[i] for i in index], pad)
            yield ids, mask, torch.as_tensor(labels[index])
        del pool, texts, sequences, labels  # released before the next pool is read


def stream_texts(config: DataConfig) -> Iterator[str]:
    """The train split's non-empty texts in file order, read as a stream: for ``train_tokenizer``."""
    stream, source = _train_stream(config.path)
    column = _pick_column(_RawSplit(SimpleNamespace(column_names=_column_names(stream, source)), source),
                          config.text_column, TEXT_COLUMNS, "text")
    for example in _examples(stream, source):
        text = example[column]
        if isinstance(text, str) and text.strip():
            yield text


def _derived_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def _small_splits(path: str) -> tuple[dict[str, _RawSplit], str]:
    """The validation and test splits read in memory, and the train split's name for messages."""
    import datasets

    local = Path(path).expanduser()
    if local.is_dir():
        files = split_files(local)
        if "train" not in files:
            raise UsageError(f"{local}: no train split found (splits found: {', '.join(files)}); "
                             f"name the file train{', train'.join(READERS)}")
        small = {split: _RawSplit(_read_file(files[split]), str(files[split]))
                 for split in ("validation", "test") if split in files}
        return small, str(files["train"])
    if local.is_file():
        return {}, str(local)
    if _looks_local(path):
        raise UsageError(f"data path {path} does not exist; pass an existing directory or Hub dataset name")
    repo, _, subset = path.partition(":")
    try:
        names = datasets.get_dataset_split_names(repo, subset or None)
    except Exception as err:
        raise UsageError(f"{path!r} is not a local path and could not be found on the Hugging Face Hub "
                         f"({type(err).__name__}); check the name or pass a local directory") from None
    small = {}
    for split in ("validation", "test"):
        found = next((name for name in SPLIT_NAMES[split] if name in names), None)
        if found is not None:  # streamed too, so the train files are not downloaded for it
            part = datasets.load_dataset(repo, subset or None, split=found, streaming=True)
            table = datasets.Dataset.from_list(list(part), features=part.features)
            small[split] = _RawSplit(table, f"{path}[{found}]")
    return small, f"{path}[train]"


def _train_stream(path: str):
    """The train split as a ``datasets.IterableDataset`` (file types as in ``data.READERS``), and its name."""
    import datasets

    datasets.disable_progress_bars()
    local = Path(path).expanduser()
    if local.is_dir() or local.is_file():
        file = split_files(local).get("train") if local.is_dir() else local
        if file is None:
            raise UsageError(f"{local}: no train split found; name the file train{', train'.join(READERS)}")
        return _read_file(file, streaming=True), str(file)
    if _looks_local(path):
        raise UsageError(f"data path {path} does not exist; pass an existing directory or Hub dataset name")
    repo, _, subset = path.partition(":")
    try:
        stream = datasets.load_dataset(repo, subset or None, split="train", streaming=True)
    except Exception as err:
        raise UsageError(f"{path!r} is not a local path and its train split could not be streamed from the "
                         f"Hugging Face Hub ({type(err).__name__}); check the name or pass a local directory") from None
    return stream, f"{path}[train]"


def _examples(stream, source: str) -> Iterator[dict]:
    """The stream's rows, a parser's error turned into a :class:`UsageError` naming the file."""
    rows = iter(stream)
    while True:
        try:
            example = next(rows)
        except StopIteration:
            return
        except Exception as err:  # datasets wraps parser errors in its own types
            cause = err.__cause__ or err
            first = str(cause).splitlines()[0] if str(cause) else ""
            raise UsageError(f"{source}: could not be read ({type(cause).__name__}: {first}); check that the file "
                             "is UTF-8 and well formed") from None
        yield example


def _column_names(stream, source: str) -> list[str]:
    """Column names, from the stream's features or else from its first row (CSV streams come without features)."""
    if stream.column_names is not None:
        return list(stream.column_names)
    first = next(_examples(stream, source), None)
    if first is None:
        raise UsageError(f"{source}: the split is empty; add labelled rows")
    return list(first)


def _stream_columns(stream, source: str, config: DataConfig) -> tuple[str, str, list[str] | None]:
    """Text and label columns by the rules of ``data.load_splits``, and the label's ClassLabel names if any."""
    raw = _RawSplit(SimpleNamespace(column_names=_column_names(stream, source)), source)
    text_column = _pick_column(raw, config.text_column, TEXT_COLUMNS, "text")
    label_column = _pick_column(raw, config.label_column, LABEL_COLUMNS, "label")
    class_names = getattr((stream.features or {}).get(label_column), "names", None)
    return text_column, label_column, class_names


def _labelled_rows(stream, source: str, text_column: str, label_column: str, class_names: list[str] | None,
                   label_to_id: dict, strict: bool) -> Iterator[tuple[str, int]]:
    """``(text, class id)`` per row; empty texts skipped (or refused when strict) as ``data.load_splits`` does."""
    lookup = {**label_to_id, **{str(k): v for k, v in label_to_id.items()}}
    dropped = 0
    for example in _examples(stream, source):
        text, value = example[text_column], example[label_column]
        if class_names and value is not None and 0 <= value < len(class_names):
            value = class_names[value]
        if value is None or (isinstance(value, float) and np.isnan(value)):
            raise UsageError(f"{source}: a row has no value in label column {label_column!r}; "
                             "fill it in or remove the row")
        if not (isinstance(text, str) and text.strip()):
            if strict:
                raise UsageError(f"{source}: a row has empty text in column {text_column!r}; fill it in or "
                                 "remove it, or drop --strict to skip such rows")
            dropped += 1
            continue
        key = value if value in lookup else str(value)
        if key not in lookup:
            known = ", ".join(str(k) for k in label_to_id)
            raise UsageError(f"{source}: label {value!r} is not one of the classes ({known}), which come from "
                             "data.labels or else the validation split; pass --set data.labels=NAME,NAME,... "
                             "listing every class")
        yield text, lookup[key]
    if dropped:
        log.warning("%s: dropped %d row(s) with empty text in column %r", source, dropped, text_column)
