"""Token ids of a split: in memory, and the token cache (hits, misses, same batches as in memory, safe writes)."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from encoder_clf.data import tokenized
from encoder_clf.data.batching import bucket_batches
from encoder_clf.data.config import DataConfig
from encoder_clf.data.splits import Split
from encoder_clf.data.tokenized import cache_file, tokenize_split
from encoder_clf.errors import UsageError

from conftest import LONG, toy_rows, write_tsv

pytestmark = pytest.mark.usefixtures("hermetic_datasets")


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


def assert_same(a: tokenized.TokenizedSplit, b: tokenized.TokenizedSplit) -> None:
    assert len(a) == len(b) and a.truncated == b.truncated
    np.testing.assert_array_equal(a.lengths, b.lengths)
    for index in bucket_batches(a.lengths, 32, shuffle=True, seed=1):
        for x, y in zip(a.batch(index), b.batch(index)):
            assert (x is None and y is None) or (x.dtype == y.dtype and torch.equal(x, y))
    assert list(a.sequences) == list(b.sequences)


def test_in_memory_split(toy_tokenizer, split):
    result = tokenize_split(toy_tokenizer, split)
    assert result.cache_file == "" and len(result) == len(split)
    assert result.truncated == sum(text == LONG for text in split.texts) > 0
    ids, mask, _, labels = result.batch(np.array([0, 1, 2]))
    assert ids.dtype == labels.dtype == torch.long and mask.dtype == torch.bool
    assert ids.shape == mask.shape == (3, result.lengths[:3].max())
    np.testing.assert_array_equal((~mask).sum(1).numpy(), result.lengths[:3])
    np.testing.assert_array_equal(labels.numpy(), split.labels[:3])


@pytest.mark.parametrize("num_proc", [1, 2])
def test_cached_split_gives_the_same_batches_as_in_memory(toy_tokenizer, split, tmp_path, num_proc):
    cached = tokenize_split(toy_tokenizer, split, str(tmp_path), num_proc=num_proc)
    assert_same(tokenize_split(toy_tokenizer, split), cached)
    assert [p.name for p in tmp_path.iterdir()] == [Path(cached.cache_file).name]  # one file, no shards or temp
    in_memory = tokenize_split(toy_tokenizer, split).sequences
    assert cached.sequences[5] == in_memory[5] and cached.sequences[-1] == in_memory[-1]
    assert cached.sequences[10:20] == in_memory[10:20]


def test_second_run_maps_the_cache_without_tokenizing(toy_tokenizer, split, tmp_path, monkeypatch):
    calls = {"_write_cache": 0, "_encode_rows": 0}
    for name in calls:  # counted where tokenize_split looks them up
        real = getattr(tokenized, name)
        monkeypatch.setattr(tokenized, name, lambda *a, _real=real, _name=name, **k: calls.update(
            {_name: calls[_name] + 1}) or _real(*a, **k))
    first = tokenize_split(toy_tokenizer, split, str(tmp_path))
    assert calls["_write_cache"] == 1 and calls["_encode_rows"] >= 1  # a positive control: the miss tokenized
    stamp, counted = os.stat(first.cache_file).st_mtime_ns, dict(calls)
    reloaded = Tokenizer.from_str(toy_tokenizer.to_str())  # the same tokenizer as a later run loads it
    copy = Split(list(split.texts), split.labels[::-1].copy(), "elsewhere")  # labels are not part of the key
    second = tokenize_split(reloaded, copy, str(tmp_path))
    assert calls == counted  # the hit tokenized nothing ...
    assert second.cache_file == first.cache_file and os.stat(first.cache_file).st_mtime_ns == stamp  # ... nor wrote
    np.testing.assert_array_equal(second.labels, copy.labels)


def test_a_changed_tokenizer_or_text_gives_a_new_file(toy_tokenizer, split, tmp_path):
    files = {tokenize_split(toy_tokenizer, split, str(tmp_path)).cache_file}
    longer = Tokenizer.from_str(toy_tokenizer.to_str())
    longer.enable_truncation(12)
    files.add(tokenize_split(longer, split, str(tmp_path)).cache_file)
    edited = Split(split.texts[:-1] + [split.texts[-1] + " again"], split.labels, "toy")
    files.add(tokenize_split(toy_tokenizer, edited, str(tmp_path)).cache_file)
    # the same characters split differently between texts must not hash alike
    joined = Split(["ab", "c"] + split.texts[2:], split.labels, "toy")
    moved = Split(["a", "bc"] + split.texts[2:], split.labels, "toy")
    assert cache_file(str(tmp_path), toy_tokenizer, joined.texts) != cache_file(
        str(tmp_path), toy_tokenizer, moved.texts)
    assert len(files) == 3 and len(list(tmp_path.glob("tokens-*.arrow"))) == 3


def test_an_interrupted_write_leaves_no_cache_file(toy_tokenizer, split, tmp_path, monkeypatch):
    def fail(batch, tokenizer):
        raise KeyboardInterrupt

    monkeypatch.setattr(tokenized, "_encode_rows", fail)
    with pytest.raises(KeyboardInterrupt):
        tokenize_split(toy_tokenizer, split, str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # no partial file that a later run would take for a cache hit
    monkeypatch.undo()
    assert_same(tokenize_split(toy_tokenizer, split), tokenize_split(toy_tokenizer, split, str(tmp_path)))


def test_a_write_removes_the_hour_old_work_folders_of_killed_runs_and_keeps_live_ones(toy_tokenizer, split,
                                                                                       tmp_path):
    abandoned, live = tmp_path / f".tokens-{'a' * 32}-k1ll3d_x", tmp_path / f".tokens-{'b' * 32}-wr1t1ng_"
    for folder in (abandoned, live):
        folder.mkdir()
        (folder / "ids.arrow").write_bytes(b"partial")
    hour_and_a_bit = os.path.getmtime(abandoned) - 3700
    for item in (abandoned / "ids.arrow", abandoned):
        os.utime(item, (hour_and_a_bit, hour_and_a_bit))
    other = tmp_path / ".tokens-not-ours"  # a name _write_cache never makes: left alone, however old
    other.mkdir()
    os.utime(other, (hour_and_a_bit, hour_and_a_bit))
    tokenize_split(toy_tokenizer, split, str(tmp_path))
    assert not abandoned.exists() and (live / "ids.arrow").read_bytes() == b"partial" and other.is_dir()


def test_num_proc_must_be_positive():
    with pytest.raises(UsageError, match="data.num_proc"):
        DataConfig(num_proc=0)
