"""Shared fixtures: tiny configs and models built in memory, and the real SST-2 files when present."""

from pathlib import Path

import pytest
import torch

from encoder_clf.config import ModelConfig
from encoder_clf.model import TextClassifier

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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train faster on one thread: a second one only adds synchronisation (and contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
