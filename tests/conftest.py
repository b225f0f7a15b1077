"""Shared fixtures: tiny configs, models and toy data built in memory, and the real SST-2 files when present."""

import random
from pathlib import Path

import pytest
import torch

from encoder_clf.model.classifier import TextClassifier
from encoder_clf.model.config import ModelConfig

SST2 = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "sst2"


def tiny_config(**overrides) -> ModelConfig:
    values = dict(d_model=16, n_heads=4, n_layers=2, d_ff=32, vocab_size=50, labels=["neg", "pos"],
                  dropout=0.0, attention_dropout=0.0, max_positions=32)
    values.update(overrides)
    return ModelConfig(**values)


@pytest.fixture
def tiny_model():
    def build(**overrides) -> TextClassifier:
        torch.manual_seed(0)
        return TextClassifier(tiny_config(**overrides)).eval()

    return build


@pytest.fixture(scope="session")
def sst2_dir() -> Path:
    if not (SST2 / "train.tsv").is_file():
        pytest.skip(f"SST-2 not found at {SST2}")
    return SST2


@pytest.fixture
def hermetic_datasets(tmp_path_factory, monkeypatch):
    """Keep the ``datasets`` cache of the many tiny files out of the user's home, and stay off the network.

    ``datasets`` sends a download-count request to the Hub on every ``load_dataset`` (local files included),
    which stalls for seconds on a machine without network access.
    """
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf-cache")))
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)


LONG = "the film was great and the cast was lovely and the plot was fine"  # past max_length 10: truncated


@pytest.fixture(scope="module")
def toy_tokenizer():
    """A small tokenizer of the toy rows' words, truncating at 10 tokens (``LONG`` is cut)."""
    from encoder_clf.data.tokenization import TokenizerConfig, train_tokenizer

    texts = [text for text, _ in toy_rows(200, 0)] + [LONG]
    return train_tokenizer(texts, TokenizerConfig(vocab_size=100, min_frequency=1, max_length=10))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train faster on one thread: a second one only adds synchronisation (and contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# A toy sentiment task that one keyword decides: tiny models must learn it in seconds.
TINY = ["model.d_model=16", "model.n_heads=2", "model.n_layers=1", "model.d_ff=32", "tokenizer.vocab_size=200",
        "tokenizer.min_frequency=1", "train.epochs=4", "train.batch_size=16", "train.lr=3e-3"]


def write_tsv(path, rows):
    path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")


def toy_rows(n, seed):
    rng = random.Random(seed)
    good, bad = ["great", "lovely", "fine", "superb"], ["awful", "dull", "poor", "bad"]
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = [rng.choice(good if label else bad)] + rng.sample(["the", "film", "was", "plot", "and", "cast"], 3)
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    for name, n, seed in [("train", 400, 0), ("validation", 60, 1), ("test", 60, 2)]:
        write_tsv(root / f"{name}.tsv", toy_rows(n, seed))
    return root
