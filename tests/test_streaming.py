"""The streamed train split: the same rows as in memory, seeded order, bounded memory, row rules and errors."""

import collections

import datasets
import numpy as np
import pandas as pd
import pytest
import torch

from encoder_clf.data import streaming
from encoder_clf.data.columns import Classes
from encoder_clf.data.config import DataConfig
from encoder_clf.data.sources import SplitSource
from encoder_clf.data.splits import load_splits
from encoder_clf.data.tokenized import tokenize_split
from encoder_clf.errors import UsageError

from conftest import toy_rows, write_tsv

pytestmark = pytest.mark.usefixtures("hermetic_datasets")


@pytest.fixture
def stream_dir(tmp_path):
    write_tsv(tmp_path / "train.tsv", toy_rows(500, 0))
    write_tsv(tmp_path / "validation.tsv", toy_rows(40, 1))
    return tmp_path


def stream(path, toy_tokenizer, classes, seed=0, epoch=0, **kwargs):
    return list(streaming.stream_batches(DataConfig(path=str(path)), toy_tokenizer, classes, batch_size=16, seed=seed,
                                         epoch=epoch, **kwargs))


def rows_of(batches) -> collections.Counter:
    """Each example as (token ids, label), counted: the batches' content regardless of order."""
    return collections.Counter((tuple(ids[~mask].tolist()), int(label))
                               for batch in batches for ids, mask, label in zip(batch.ids, batch.mask, batch.labels))


def test_stream_is_the_whole_split_in_seeded_length_bucketed_batches(stream_dir, toy_tokenizer):
    classes = streaming.stream_splits(DataConfig(path=str(stream_dir)))
    assert classes.label_names == ["0", "1"] and len(classes.validation) == 40 and classes.test is None
    first = stream(stream_dir, toy_tokenizer, classes.classes, pool_batches=4, buffer_size=50)
    again = stream(stream_dir, toy_tokenizer, classes.classes, pool_batches=4, buffer_size=50)
    assert len(first) == len(again) and all(torch.equal(a.ids, b.ids) and torch.equal(a.mask, b.mask)
                                            and a.types is None and torch.equal(a.labels, b.labels)
                                            for a, b in zip(first, again))
    other = stream(stream_dir, toy_tokenizer, classes.classes, epoch=1, pool_batches=4, buffer_size=50)
    assert any(not torch.equal(a.labels, b.labels) for a, b in zip(first, other))
    in_memory = tokenize_split(toy_tokenizer, load_splits(DataConfig(path=str(stream_dir))).train)
    expected = collections.Counter(zip(map(tuple, in_memory.sequences), in_memory.labels.tolist()))
    assert rows_of(first) == rows_of(other) == expected
    assert all(len(labels) <= 16 for _, _, _, labels in first)


def test_stream_holds_at_most_a_pool_and_the_shuffle_buffer(monkeypatch, stream_dir, toy_tokenizer):
    read = [0]

    def rows():
        read[0] = 0  # each pass over the stream (a peek at the columns too) starts again
        for text, label in toy_rows(700, 5):
            read[0] += 1
            yield {"sentence": text, "label": label}

    counted = datasets.IterableDataset.from_generator(rows)
    opened = []
    monkeypatch.setattr(SplitSource, "stream", lambda self: opened.append(self.where) or counted)
    pool, buffer = 16 * 3, 40
    yielded, ahead = 0, []
    classes = Classes(["0", "1"], {0: 0, 1: 1})
    for _, _, _, labels in streaming.stream_batches(DataConfig(path=str(stream_dir)), toy_tokenizer, classes,
                                                 batch_size=16, seed=0, epoch=0, pool_batches=3, buffer_size=buffer):
        yielded += len(labels)
        ahead.append(read[0] - yielded)
    assert opened == [str(stream_dir / "train.tsv")]  # the patch is where the stream is opened
    assert yielded == read[0] == 700
    assert max(ahead) <= pool + buffer
    assert max(ahead) > pool  # the bound is reached: the test would see a reader running further ahead


def test_unknown_label_in_the_stream_names_file_value_and_fix(stream_dir, toy_tokenizer):
    write_tsv(stream_dir / "train.tsv", toy_rows(50, 0) + [("so so", "meh")] + toy_rows(50, 1))
    classes = streaming.stream_splits(DataConfig(path=str(stream_dir)))
    with pytest.raises(UsageError) as err:
        stream(stream_dir, toy_tokenizer, classes.classes)
    message = str(err.value)
    assert "\n" not in message
    assert message == (f"{stream_dir / 'train.tsv'}: label 'meh' (row 51) is not one of the classes (0, 1), which "
                       "come from data.labels or else the validation split; pass --set data.labels=NAME,NAME,... "
                       "listing every class")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_stream_reads_jsonl_and_csv(tmp_path, toy_tokenizer, suffix):
    train = pd.DataFrame(toy_rows(120, 0) + [("", 1)], columns=["text", "label"])  # the empty text is dropped
    validation = pd.DataFrame(toy_rows(20, 1), columns=["text", "label"])
    for name, frame in [("train", train), ("validation", validation)]:
        if suffix == ".csv":
            frame.to_csv(tmp_path / f"{name}{suffix}", index=False)
        else:
            frame.to_json(tmp_path / f"{name}{suffix}", orient="records", lines=True)
    config = DataConfig(path=str(tmp_path), labels=["neg", "pos"])  # integer labels 0..1 name these classes
    classes = streaming.stream_splits(config)
    assert classes.label_names == ["neg", "pos"]
    batches = list(streaming.stream_batches(config, toy_tokenizer, classes.classes, batch_size=8, seed=3, epoch=0))
    in_memory = load_splits(config)
    ids = tokenize_split(toy_tokenizer, in_memory.train)
    assert rows_of(batches) == collections.Counter(zip(map(tuple, ids.sequences), ids.labels.tolist()))
    assert list(streaming.stream_texts(config)) == in_memory.train.texts  # empty text skipped, file order kept


def test_the_tokenizer_reads_the_text_column_the_stream_trains_on(tmp_path):
    """data.text_columns naming one column picks it for the tokenizer's texts too, not another column's."""
    for name, n, seed in [("train", 40, 0), ("validation", 10, 1)]:
        rows = [(f"headline number {i}", text, label) for i, (text, label) in enumerate(toy_rows(n, seed))]
        pd.DataFrame(rows, columns=["text", "title", "label"]).to_json(tmp_path / f"{name}.jsonl", orient="records",
                                                                      lines=True)
    config = DataConfig(path=str(tmp_path), text_columns=["title"])
    assert list(streaming.stream_texts(config)) == load_splits(config).train.texts == [t for t, _ in toy_rows(40, 0)]


def test_stream_needs_a_validation_file(tmp_path):
    write_tsv(tmp_path / "train.tsv", toy_rows(20, 0))
    with pytest.raises(UsageError, match="validation file"):
        streaming.stream_splits(DataConfig(path=str(tmp_path / "train.tsv"), labels=["0", "1"]))


def test_hub_names_are_streamed(monkeypatch, toy_tokenizer):
    calls = []

    def load_dataset(repo, subset=None, split=None, streaming=False):
        calls.append((repo, subset, split, streaming))
        rows = toy_rows(30 if split == "train" else 10, 0)
        return datasets.IterableDataset.from_generator(lambda: ({"text": t, "label": y} for t, y in rows))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(datasets, "get_dataset_split_names", lambda repo, subset=None: ["train", "validation"])
    config = DataConfig(path="someone/reviews:small")
    classes = streaming.stream_splits(config)
    batches = list(streaming.stream_batches(config, toy_tokenizer, classes.classes, batch_size=8, seed=0, epoch=0))
    assert sum(len(labels) for _, _, _, labels in batches) == 30
    assert ("someone/reviews", "small", "train", True) in calls and all(call[3] for call in calls)


@pytest.mark.parametrize("strict", [False, True])
def test_the_stream_applies_the_row_rules_of_a_split_in_memory(stream_dir, toy_tokenizer, strict):
    """The same rule, the same message, the same row number, whichever way the split is read."""
    write_tsv(stream_dir / "train.tsv", toy_rows(10, 0) + [("   ", 1)] + toy_rows(10, 1))
    config = DataConfig(path=str(stream_dir), strict=strict)
    classes = streaming.stream_splits(config).classes
    if not strict:
        batches = list(streaming.stream_batches(config, toy_tokenizer, classes, batch_size=8, seed=0, epoch=0))
        assert sum(len(labels) for _, _, _, labels in batches) == len(load_splits(config).train) == 20
        return
    with pytest.raises(UsageError) as streamed:
        list(streaming.stream_batches(config, toy_tokenizer, classes, batch_size=8, seed=0, epoch=0))
    with pytest.raises(UsageError) as in_memory:
        load_splits(config)
    assert str(streamed.value) == str(in_memory.value) == (
        f"{stream_dir / 'train.tsv'}: row 11 has empty text in column 'sentence'; fill it in or remove it, or "
        "drop --strict to skip such rows")


def test_shuffle_buffer_yields_every_item_once_holding_at_most_its_size():
    held, items = [], iter(range(1000))

    def counted():
        for item in items:
            held.append(item)
            yield item

    out = []
    for item in streaming.shuffle_buffer(counted(), 50, np.random.default_rng(0)):
        out.append(item)
        assert len(held) - len(out) <= 50
    assert sorted(out) == list(range(1000)) and out != list(range(1000))
    again = list(streaming.shuffle_buffer(range(1000), 50, np.random.default_rng(0)))
    assert again == out
