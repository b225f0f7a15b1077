"""The token cache (hits, misses, same batches as in memory, safe writes) and the streamed train split."""

import collections
import os
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer

from encoder_clf.data import corpus
from encoder_clf.data.config import DataConfig
from encoder_clf.data.splits import Split, bucket_batches, load_splits
from encoder_clf.data.tokenization import TokenizerConfig, train_tokenizer
from encoder_clf.errors import UsageError

from conftest import toy_rows, write_tsv

LONG = "the film was great and the cast was lovely and the plot was fine"  # past max_length: truncated


@pytest.fixture(autouse=True)
def hermetic_datasets(tmp_path_factory, monkeypatch):
    """Keep ``datasets``' cache out of the user's home and stay off the network (see tests/test_data.py)."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf-cache")))
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)


@pytest.fixture(scope="module")
def tokenizer():
    texts = [text for text, _ in toy_rows(200, 0)] + [LONG]
    return train_tokenizer(texts, TokenizerConfig(vocab_size=100, min_frequency=1, max_length=10))


@pytest.fixture(scope="module")
def split():
    rows = toy_rows(300, 3)
    texts = [LONG if i % 7 == 0 else text for i, (text, _) in enumerate(rows)]
    return Split(texts, np.array([label for _, label in rows]), "toy")


@pytest.fixture
def stream_dir(tmp_path):
    write_tsv(tmp_path / "train.tsv", toy_rows(500, 0))
    write_tsv(tmp_path / "validation.tsv", toy_rows(40, 1))
    return tmp_path


def assert_same(a: corpus.TokenizedSplit, b: corpus.TokenizedSplit) -> None:
    assert len(a) == len(b) and a.truncated == b.truncated
    np.testing.assert_array_equal(a.lengths, b.lengths)
    for index in bucket_batches(a.lengths, 32, shuffle=True, seed=1):
        for x, y in zip(a.batch(index), b.batch(index)):
            assert x.dtype == y.dtype and torch.equal(x, y)
    assert list(a.sequences) == list(b.sequences)


# --- the token cache ---------------------------------------------------------------------------------------------


def test_in_memory_split(tokenizer, split):
    tokenized = corpus.tokenize_split(tokenizer, split)
    assert tokenized.cache_file == "" and len(tokenized) == len(split)
    assert tokenized.truncated == sum(text == LONG for text in split.texts) > 0
    ids, mask, labels = tokenized.batch(np.array([0, 1, 2]))
    assert ids.dtype == labels.dtype == torch.long and mask.dtype == torch.bool
    assert ids.shape == mask.shape == (3, tokenized.lengths[:3].max())
    np.testing.assert_array_equal((~mask).sum(1).numpy(), tokenized.lengths[:3])
    np.testing.assert_array_equal(labels.numpy(), split.labels[:3])


@pytest.mark.parametrize("num_proc", [1, 2])
def test_cached_split_gives_the_same_batches_as_in_memory(tokenizer, split, tmp_path, num_proc):
    cached = corpus.tokenize_split(tokenizer, split, str(tmp_path), num_proc=num_proc)
    assert_same(corpus.tokenize_split(tokenizer, split), cached)
    assert [p.name for p in tmp_path.iterdir()] == [Path(cached.cache_file).name]  # one file, no shards or temp
    in_memory = corpus.tokenize_split(tokenizer, split).sequences
    assert cached.sequences[5] == in_memory[5] and cached.sequences[-1] == in_memory[-1]
    assert cached.sequences[10:20] == in_memory[10:20]


def test_second_run_maps_the_cache_without_tokenizing(tokenizer, split, tmp_path, monkeypatch):
    first = corpus.tokenize_split(tokenizer, split, str(tmp_path))
    stamp = os.stat(first.cache_file).st_mtime_ns

    def refuse(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(corpus, "_write_cache", refuse)
    monkeypatch.setattr(corpus, "encode", refuse)
    reloaded = Tokenizer.from_str(tokenizer.to_str())  # the same tokenizer as a later run loads it
    copy = Split(list(split.texts), split.labels[::-1].copy(), "elsewhere")  # labels are not part of the key
    second = corpus.tokenize_split(reloaded, copy, str(tmp_path))
    assert second.cache_file == first.cache_file and os.stat(first.cache_file).st_mtime_ns == stamp
    np.testing.assert_array_equal(second.labels, copy.labels)


def test_a_changed_tokenizer_or_text_gives_a_new_file(tokenizer, split, tmp_path):
    files = {corpus.tokenize_split(tokenizer, split, str(tmp_path)).cache_file}
    longer = Tokenizer.from_str(tokenizer.to_str())
    longer.enable_truncation(12)
    files.add(corpus.tokenize_split(longer, split, str(tmp_path)).cache_file)
    edited = Split(split.texts[:-1] + [split.texts[-1] + " again"], split.labels, "toy")
    files.add(corpus.tokenize_split(tokenizer, edited, str(tmp_path)).cache_file)
    # the same characters split differently between texts must not hash alike
    joined = Split(["ab", "c"] + split.texts[2:], split.labels, "toy")
    moved = Split(["a", "bc"] + split.texts[2:], split.labels, "toy")
    assert corpus.cache_file(str(tmp_path), tokenizer, joined.texts) != corpus.cache_file(
        str(tmp_path), tokenizer, moved.texts)
    assert len(files) == 3 and len(list(tmp_path.glob("tokens-*.arrow"))) == 3


def test_an_interrupted_write_leaves_no_cache_file(tokenizer, split, tmp_path, monkeypatch):
    def fail(batch, tokenizer):
        raise KeyboardInterrupt

    monkeypatch.setattr(corpus, "_encode_rows", fail)
    with pytest.raises(KeyboardInterrupt):
        corpus.tokenize_split(tokenizer, split, str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # no partial file that a later run would take for a cache hit
    monkeypatch.undo()
    assert_same(corpus.tokenize_split(tokenizer, split), corpus.tokenize_split(tokenizer, split, str(tmp_path)))


def test_num_proc_must_be_positive():
    with pytest.raises(UsageError, match="data.num_proc"):
        DataConfig(num_proc=0)


# --- streaming ---------------------------------------------------------------------------------------------------


def stream(path, tokenizer, labels, seed=0, epoch=0, **kwargs):
    return list(corpus.stream_batches(DataConfig(path=str(path)), tokenizer, labels, batch_size=16, seed=seed,
                                      epoch=epoch, **kwargs))


def rows_of(batches) -> collections.Counter:
    """Each example as (token ids, label), counted: the batches' content regardless of order."""
    return collections.Counter((tuple(ids[~mask].tolist()), int(label))
                               for batch in batches for ids, mask, label in zip(*batch))


def test_stream_is_the_whole_split_in_seeded_length_bucketed_batches(stream_dir, tokenizer):
    classes = corpus.stream_splits(DataConfig(path=str(stream_dir)))
    assert classes.label_names == ["0", "1"] and len(classes.validation) == 40 and classes.test is None
    first = stream(stream_dir, tokenizer, classes.label_to_id, pool_batches=4, buffer_size=50)
    again = stream(stream_dir, tokenizer, classes.label_to_id, pool_batches=4, buffer_size=50)
    assert len(first) == len(again) and all(torch.equal(x, y) for a, b in zip(first, again) for x, y in zip(a, b))
    other = stream(stream_dir, tokenizer, classes.label_to_id, epoch=1, pool_batches=4, buffer_size=50)
    assert any(not torch.equal(a[2], b[2]) for a, b in zip(first, other))
    in_memory = corpus.tokenize_split(tokenizer, load_splits(DataConfig(path=str(stream_dir))).train)
    expected = collections.Counter(zip(map(tuple, in_memory.sequences), in_memory.labels.tolist()))
    assert rows_of(first) == rows_of(other) == expected
    assert all(len(labels) <= 16 for _, _, labels in first)


def test_stream_holds_at_most_a_pool_and_the_shuffle_buffer(monkeypatch, stream_dir, tokenizer):
    read = [0]

    def rows():
        read[0] = 0  # each pass over the stream (a peek at the columns too) starts again
        for text, label in toy_rows(700, 5):
            read[0] += 1
            yield {"sentence": text, "label": label}

    source = datasets.IterableDataset.from_generator(rows)
    monkeypatch.setattr(corpus, "_train_stream", lambda path: (source, "counted"))
    pool, buffer = 16 * 3, 40
    yielded, ahead = 0, []
    for _, _, labels in corpus.stream_batches(DataConfig(path=str(stream_dir)), tokenizer, {0: 0, 1: 1},
                                              batch_size=16, seed=0, epoch=0, pool_batches=3, buffer_size=buffer):
        yielded += len(labels)
        ahead.append(read[0] - yielded)
    assert yielded == read[0] == 700
    assert max(ahead) <= pool + buffer
    assert max(ahead) > pool  # the bound is reached: the test would see a reader running further ahead


def test_unknown_label_in_the_stream_names_file_value_and_fix(stream_dir, tokenizer):
    write_tsv(stream_dir / "train.tsv", toy_rows(50, 0) + [("so so", "meh")] + toy_rows(50, 1))
    classes = corpus.stream_splits(DataConfig(path=str(stream_dir)))
    with pytest.raises(UsageError) as err:
        stream(stream_dir, tokenizer, classes.label_to_id)
    message = str(err.value)
    assert "\n" not in message
    for fragment in [str(stream_dir / "train.tsv"), "'meh'", "--set data.labels="]:
        assert fragment in message


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_stream_reads_jsonl_and_csv(tmp_path, tokenizer, suffix):
    train = pd.DataFrame(toy_rows(120, 0) + [("", 1)], columns=["text", "label"])  # the empty text is dropped
    validation = pd.DataFrame(toy_rows(20, 1), columns=["text", "label"])
    for name, frame in [("train", train), ("validation", validation)]:
        if suffix == ".csv":
            frame.to_csv(tmp_path / f"{name}{suffix}", index=False)
        else:
            frame.to_json(tmp_path / f"{name}{suffix}", orient="records", lines=True)
    config = DataConfig(path=str(tmp_path), labels=["neg", "pos"])  # integer labels 0..1 name these classes
    classes = corpus.stream_splits(config)
    assert classes.label_names == ["neg", "pos"]
    batches = list(corpus.stream_batches(config, tokenizer, classes.label_to_id, batch_size=8, seed=3, epoch=0))
    in_memory = load_splits(config)
    tokenized = corpus.tokenize_split(tokenizer, in_memory.train)
    assert rows_of(batches) == collections.Counter(zip(map(tuple, tokenized.sequences), tokenized.labels.tolist()))
    assert list(corpus.stream_texts(config)) == in_memory.train.texts  # empty text skipped, file order kept


def test_stream_needs_a_validation_file(tmp_path):
    write_tsv(tmp_path / "train.tsv", toy_rows(20, 0))
    with pytest.raises(UsageError, match="validation file"):
        corpus.stream_splits(DataConfig(path=str(tmp_path / "train.tsv"), labels=["0", "1"]))


def test_hub_names_are_streamed(monkeypatch, tokenizer):
    calls = []

    def load_dataset(repo, subset=None, split=None, streaming=False):
        calls.append((repo, subset, split, streaming))
        rows = toy_rows(30 if split == "train" else 10, 0)
        return datasets.IterableDataset.from_generator(lambda: ({"text": t, "label": y} for t, y in rows))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(datasets, "get_dataset_split_names", lambda repo, subset=None: ["train", "validation"])
    config = DataConfig(path="someone/reviews:small")
    classes = corpus.stream_splits(config)
    batches = list(corpus.stream_batches(config, tokenizer, classes.label_to_id, batch_size=8, seed=0, epoch=0))
    assert sum(len(labels) for _, _, labels in batches) == 30
    assert ("someone/reviews", "small", "train", True) in calls and all(call[3] for call in calls)
