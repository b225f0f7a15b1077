"""Shared fixtures: tiny configs, models and toy data built in memory, the real SST-2 files, and the suite's rules.

The suite runs on the CPU (CUDA hidden before torch loads): its determinism checks and the torchrun tests assume
it. Under CI (``CI=true``, which .ci/run sets) a skipped test fails the run, since every skip here is a check that
did not happen (a dataset or a peer library missing); locally skips are listed (``-rs``).
"""

import json
import os
import random
from pathlib import Path

os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: the suite means the same on a GPU machine

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file

from encoder_clf.model.classifier import TextClassifier
from encoder_clf.model.config import ModelConfig

pytest_plugins = ["pytester"]

# Skips that may happen under CI, each with why it hides nothing: scikit-learn's checks skip what this machine
# does not ask for.
ALLOWED_SKIPS = {
    "SCIPY_ARRAY_API is not set: not checking array_api input":
        "array-API input is numeric arrays, which a text estimator does not take",
}


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ")


def pytest_sessionfinish(session, exitstatus):
    """Under CI, fail a run that skipped a test (but for ALLOWED_SKIPS), naming each skip and its reason."""
    if os.environ.get("CI", "").lower() not in ("true", "1"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = [r for r in reporter.stats.get("skipped", []) if _skip_reason(r) not in ALLOWED_SKIPS] if reporter \
        else []
    if skipped:
        reporter.write_line(f"CI: {len(skipped)} skipped test(s), which fails the run:", red=True)
        for report in skipped:
            reporter.write_line(f"  {report.nodeid}: {_skip_reason(report)}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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


# The only values a resumed run may report differently: how long things took and how much memory they used.
TIMING = {"train_time_s", "train_examples_per_s", "peak_rss_mb", "elapsed_s", "examples_per_s"}


def without_timing(value):
    """``value`` with every TIMING key removed, at any depth; every other key stays."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def keys(value) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys(v)}
    return {k for v in value for k in keys(v)} if isinstance(value, list) else set()


def run_files(run: Path) -> dict:
    """What a finished run wrote: every file, JSON parsed, the model's tensors."""
    files = {str(f.relative_to(run)): f for f in sorted(run.rglob("*")) if f.is_file()}
    return {"names": sorted(files), "metrics": json.loads((run / "metrics.json").read_text()),
            "log": [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()],
            "weights": load_file(run / "model" / "model.safetensors"),
            "bytes": {name: f.read_bytes() for name, f in files.items()
                      if name not in ("metrics.json", "log.jsonl", "model/model.safetensors")}}


def assert_same_files(a: Path, b: Path) -> None:
    """Every file the two runs wrote is the same, timings aside: the whole metrics.json and log.jsonl (any key a
    new version adds is compared too), the model's tensors bit for bit, and every other file byte for byte."""
    first, second = run_files(a), run_files(b)
    assert first["names"] == second["names"]
    assert without_timing(first["metrics"]) == without_timing(second["metrics"])
    assert without_timing(first["log"]) == without_timing(second["log"])
    assert keys(first["metrics"]) | keys(first["log"]) >= TIMING  # the exclusions name keys that exist
    assert first["weights"].keys() == second["weights"].keys()
    assert all(torch.equal(first["weights"][k], second["weights"][k]) for k in first["weights"])
    assert first["bytes"] == second["bytes"]  # report.txt, run_config.json, the plots, config and tokenizer
