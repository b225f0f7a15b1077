"""Token ids of a split, in Python lists or memory-mapped from a token cache, and what identifies them.

:func:`tokenize_split` tokenizes a split that is already read. With
``DataConfig.cache_dir`` the ids go once into an Arrow file named by a hash of
the tokenizer's JSON and of the texts; later runs with the same tokenizer and
texts map that file instead of tokenizing again. Without it the same
:class:`TokenizedSplit` holds Python lists. :func:`data_key` and
:func:`stream_key` identify the data a run trains on, so that a resumed run
refuses data that changed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ..errors import UsageError
from ..files import remove_abandoned
from .batching import Batch, collate, token_types
from .splits import Split
from .tokenization import cut_length, encode, pad_id

log = logging.getLogger(__name__)

CACHE_FORMAT = b"encoder-clf token cache 2"  # part of every cache key: change it when the file's columns change


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
    labels: np.ndarray  # the split's targets: (n,) class ids, (n, labels) indicators or (n,) values
    lengths: np.ndarray  # (n,) token counts, special tokens included
    truncated: int  # texts cut at the tokenizer's truncation length
    pad_id: int
    source: str
    cache_file: str = ""  # the Arrow file the ids are mapped from; "" = in memory
    segments: np.ndarray | None = None  # (n,) tokens of a pair's first text ([CLS] a [SEP]); None: single texts
    max_width: int | None = None  # the tokenizer's cut: batches are padded at most this wide (batching.batch_width)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: np.ndarray) -> Batch:
        """ids and padding mask ``(b, seq)`` (True at padding), token types (pairs) and targets of the rows at index."""
        if isinstance(self.sequences, ArrowSequences):
            rows = self.sequences.take(index)
        else:
            rows = [self.sequences[i] for i in index]
        ids, mask = collate(rows, self.pad_id, self.max_width)
        types = token_types(None if self.segments is None else self.segments[index], mask)
        return Batch(ids, mask, types, torch.as_tensor(self.labels[index]))


def tokenize_split(tokenizer, split: Split, cache_dir: str = "", num_proc: int = 1) -> TokenizedSplit:
    """Token ids of ``split``: memory-mapped from ``cache_dir`` (tokenized there first if new), else in lists.

    ``num_proc`` processes tokenize into a new cache file; in memory, the tokenizer's own threads do.
    """
    if not cache_dir:
        sequences, truncated, segments = encode(tokenizer, split.texts)
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        return TokenizedSplit(sequences, split.labels, lengths, truncated, pad_id(tokenizer), split.source,
                              segments=segments, max_width=cut_length(tokenizer))
    import datasets

    file = cache_file(cache_dir, tokenizer, split.texts)
    if file.is_file():
        log.info("%s: token ids from %s", split.source, file)
    else:
        _write_cache(file, tokenizer, split.texts, num_proc)
    table = datasets.Dataset.from_file(str(file)).data  # memory-mapped, nothing read yet
    lengths = table.column("length").to_numpy().astype(np.int64)
    truncated = pc.sum(table.column("truncated")).as_py() or 0
    pairs = bool(split.texts) and isinstance(split.texts[0], tuple)
    segments = table.column("segment").to_numpy().astype(np.int64) if pairs else None
    return TokenizedSplit(ArrowSequences(table.column("ids")), split.labels, lengths, truncated,
                          pad_id(tokenizer), split.source, str(file), segments, cut_length(tokenizer))


def cache_file(cache_dir: str, tokenizer, texts: Sequence[str]) -> Path:
    """``cache_dir/tokens-<hash>.arrow``: the hash covers the tokenizer's JSON (truncation too) and every text."""
    key = hashlib.blake2b(CACHE_FORMAT, digest_size=16)
    key.update(hashlib.blake2b(tokenizer.to_str().encode()).digest())
    key.update(texts_digest(texts))
    return Path(cache_dir).expanduser() / f"tokens-{key.hexdigest()}.arrow"


def texts_digest(texts: Sequence, chunk: int = 10_000) -> bytes:
    """A hash of the texts in order, each one's byte length hashed with it so no two lists hash alike by joining.

    A pair hashes as its two texts, after a marker that sets it apart from two single texts.
    """
    digest = hashlib.blake2b(len(texts).to_bytes(8, "little"))
    pairs = bool(texts) and isinstance(texts[0], tuple)
    if pairs:
        digest.update(b"pairs")
    for start in range(0, len(texts), chunk):
        part = texts[start: start + chunk]
        flat = [text for pair in part for text in pair] if pairs else part
        encoded = [text.encode("utf-8", "surrogatepass") for text in flat]
        digest.update(np.array([len(b) for b in encoded], dtype=np.int64).tobytes())
        digest.update(b"".join(encoded))
    return digest.digest()


def _encode_rows(batch: dict, tokenizer) -> dict:
    """``datasets.map`` function: :func:`tokenization.encode` per row, keeping which rows were truncated."""
    texts = list(zip(batch["text"], batch["second"])) if "second" in batch else batch["text"]
    encodings = tokenizer.encode_batch(texts)
    return {"ids": [e.ids for e in encodings], "length": [len(e.ids) for e in encodings],
            "truncated": [bool(e.overflowing) for e in encodings], "segment": [e.type_ids.count(0) for e in encodings]}


WORK_DIRECTORY = re.compile(r"\.tokens-[0-9a-f]{32}-\w{8}")  # _write_cache's temporary folders


def _write_cache(file: Path, tokenizer, texts: Sequence[str], num_proc: int) -> None:
    """Tokenize into a private directory beside ``file``, then rename the finished file into place.

    A run killed halfway leaves only a ``.tokens-*`` directory, never a partial ``file``, and a later write
    removes it once it is an hour old; two processes writing the same file (ranks of one run) each rename a
    complete one.
    """
    import datasets

    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned(file.parent, WORK_DIRECTORY)
        work = Path(tempfile.mkdtemp(prefix=f".{file.stem}-", dir=file.parent))
    except OSError as err:  # a file where the directory should be, or no permission to write there
        raise UsageError(f"data.cache_dir {file.parent}: cannot write the token cache there ({err.strerror}); "
                         "pass a directory you can write to") from None
    try:
        datasets.disable_progress_bars()
        features = datasets.Features({"ids": datasets.Sequence(datasets.Value("int32")),
                                      "length": datasets.Value("int32"), "truncated": datasets.Value("bool"),
                                      "segment": datasets.Value("int32")})
        pairs = bool(texts) and isinstance(texts[0], tuple)
        columns = {"text": [a for a, _ in texts], "second": [b for _, b in texts]} if pairs else {"text": list(texts)}
        mapped = datasets.Dataset.from_dict(columns).map(
            _encode_rows, fn_kwargs={"tokenizer": tokenizer}, batched=True, remove_columns=list(columns),
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


def data_key(tokens: dict[str, TokenizedSplit], label_names: list[str]) -> str:
    """What a resumed run must find again: the train and validation ids and labels, and the class names."""
    digest = hashlib.sha256(json.dumps(label_names).encode())
    cached = all(tokens[name].cache_file for name in ("train", "validation"))
    for name in ("train", "validation"):
        _add_split(digest, tokens[name], by_file=cached)
    return digest.hexdigest()


def stream_key(source: str, validation: TokenizedSplit) -> str:
    """A streamed train file is known by its path, size and modification time (reading it would defeat streaming)."""
    file = Path(source)
    stat = file.stat() if file.is_file() else None
    identity = [source, stat.st_size, stat.st_mtime_ns] if stat else [source]
    digest = hashlib.sha256(json.dumps(identity).encode())
    _add_split(digest, validation, by_file=False)
    return digest.hexdigest()


def _add_split(digest, split: TokenizedSplit, by_file: bool) -> None:
    """Hash a split's ids (a cache file's name, which hashes its tokenizer and texts, stands for them), its pairs'
    segments and its targets."""
    if by_file:
        digest.update(Path(split.cache_file).name.encode())
    else:
        digest.update(np.array([len(s) for s in split.sequences], dtype=np.int64).tobytes())
        digest.update(np.fromiter(itertools.chain.from_iterable(split.sequences), dtype=np.int64).tobytes())
        if split.segments is not None:
            digest.update(np.asarray(split.segments, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(split.labels).tobytes())
