"""The train split read as a stream, never held whole: for corpora that do not fit in memory.

Rows are read in file order through the same row rules as a split in memory
(:func:`~encoder_clf.data.columns.labelled_rows`), pass a seeded shuffle
buffer, gather in pools of ``batch_size * pool_batches``, are tokenized, cut
into batches of similar length (as :func:`~encoder_clf.data.batching.bucket_batches`
does) and yielded in a seeded order. The class names cannot come from the
train split without reading all of it, so :func:`stream_splits` takes them
from ``DataConfig.labels``, else from the validation split, which is small and
read in memory with the test split.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from ..errors import UsageError
from .batching import Batch, bucket_batches, collate
from .columns import Classes, Columns, labelled_rows, pick_texts
from .config import DataConfig
from .sources import READERS, find_splits, train_split
from .splits import Split, read_rows, test_split
from .targets import SingleLabelTarget
from .tokenization import cut_length, encode, pad_id

T = TypeVar("T")


@dataclass
class StreamingSplits:
    """What a streaming run holds in memory: the classes, the small splits, and the train split's name."""

    classes: Classes
    validation: Split
    test: Split | None
    train_source: str

    task = "single_label"  # the only task a stream trains (stream_splits refuses the others)
    text_pairs = False

    @property
    def label_names(self) -> list[str]:
        return self.classes.names


def stream_splits(config: DataConfig) -> StreamingSplits:
    """Read the validation (and test) split and fix the classes, leaving the train split unread.

    The classes are ``config.labels`` if given, else the validation split's labels in sorted order (as
    :func:`~encoder_clf.data.splits.load_splits` orders the train split's). A train label outside them is
    found only when the stream reaches it, and stops it with a one-line error that asks for ``data.labels``.
    """
    sources = find_splits(config.path)
    train = train_split(sources, config.path)
    if "validation" not in sources:
        raise UsageError(f"{config.path}: streaming reads the train split once per epoch and cannot carve a "
                         "validation split out of it; add a validation file beside the train file "
                         f"(validation{', validation'.join(READERS)}) or turn data.streaming off")
    validation = read_rows(sources["validation"], config, streamed=True)
    if validation.task != "single_label" or len(validation.columns.texts) > 1:
        shape = "sentence pairs" if len(validation.columns.texts) > 1 else f"{validation.task} data"
        raise UsageError(f"{config.path}: data.streaming reads one text and one class per row; {shape} train in "
                         "memory: turn data.streaming off (data.cache_dir keeps the token ids on disk instead)")
    unknown = ("is not one of the classes ({known}), which come from data.labels or else the validation split; "
               "pass --set data.labels=NAME,NAME,... listing every class")
    classes = Classes.from_values(validation.values, config.labels or validation.columns.class_names, validation.where,
                                  unknown=unknown).at_least_two(validation.where, validation.columns.target)
    target = SingleLabelTarget(classes)
    test = test_split(sources["test"], config, validation, target, streamed=True) if "test" in sources else None
    return StreamingSplits(classes, validation.labelled(target), test, train.where)


def stream_batches(config: DataConfig, tokenizer, classes: Classes, batch_size: int, seed: int, epoch: int,
                   pool_batches: int = 50, buffer_size: int = 10_000) -> Iterator[Batch]:
    """One epoch of the train split as batches of ids and padding mask ``(b, seq)`` and class ids ``(b,)``.

    At most one pool and the shuffle buffer are held (plus the reader's own chunk of the file). The same
    ``seed`` and ``epoch`` give the same batches; another epoch gives another order. The number of batches
    is known only at the end.
    """
    source = train_split(find_splits(config.path), config.path)
    stream = source.stream()
    columns = Columns.of(source.column_names(stream), stream.features, config, source.where)
    rows = labelled_rows((((row[columns.texts[0]],), row[columns.label]) for row in source.rows(stream)),
                         source.where, columns, config.strict)
    examples = ((text, classes.id(value, source.where, row)) for row, text, value in rows)
    shuffled = shuffle_buffer(examples, buffer_size, np.random.default_rng(derived_seed(seed, epoch)))
    pad, pool_size = pad_id(tokenizer), batch_size * pool_batches
    for number in itertools.count():
        pool = list(itertools.islice(shuffled, pool_size))
        if not pool:
            return
        texts, labels = zip(*pool)
        sequences = encode(tokenizer, texts).ids
        labels = np.array(labels, dtype=np.int64)
        lengths = np.array([len(s) for s in sequences])
        for index in bucket_batches(lengths, batch_size, shuffle=True, seed=derived_seed(seed, epoch, number),
                                    bucket_batches=pool_batches):
            ids, mask = collate([sequences[i] for i in index], pad, cut_length(tokenizer))
            yield Batch(ids, mask, None, torch.as_tensor(labels[index]))
        del pool, texts, sequences, labels  # released before the next pool is read


def stream_texts(config: DataConfig) -> Iterator[str]:
    """The train split's non-empty texts in file order, read as a stream: for ``train_tokenizer``.

    The text column is the one :func:`stream_batches` reads (``data.text_columns`` naming one counts), so that the
    tokenizer learns the words the model is trained on.
    """
    source = train_split(find_splits(config.path), config.path)
    stream = source.stream()
    column = pick_texts(source.column_names(stream), config.text_columns, config.text_column, source.where)[0]
    for example in source.rows(stream):
        text = example[column]
        if isinstance(text, str) and text.strip():
            yield text


def shuffle_buffer(items: Iterable[T], size: int, rng: np.random.Generator) -> Iterator[T]:
    """``items`` in a random order while holding at most ``size`` of them: each new item takes a random slot.

    The slot's previous item is yielded; at the end, the rest of the buffer in a random order.
    """
    buffer: list[T] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        slot = int(rng.integers(size))
        yield buffer[slot]
        buffer[slot] = item
    for slot in rng.permutation(len(buffer)):
        yield buffer[slot]


def derived_seed(*parts: int) -> int:
    """One seed from several numbers (a run's seed, an epoch, a pool), independent of the others'."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])
