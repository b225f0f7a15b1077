"""Training on real data: a 2,000-row SST-2 sample must learn well above chance."""

import json
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from encoder_clf.inference import evaluate
from encoder_clf.metrics import read_log, records_of
from encoder_clf.persistence.model_dir import load_model
from encoder_clf.settings import with_overrides
from encoder_clf.training.config import RunConfig
from encoder_clf.training.run import train
from encoder_clf.training.stacking import stacking_weights

from conftest import TINY, without_timing


@pytest.fixture(scope="module")
def sst2_sample(sst2_dir, tmp_path_factory):
    """2,000 random training rows of 10 words or more (seeded) and the full validation split, as TSV.

    Most SST-2 training rows are short sub-phrases; a sample of whole-sentence-like rows
    carries enough signal for 2,000 rows to clear 70% on the (whole-sentence) validation set.
    """
    root = tmp_path_factory.mktemp("sst2_sample")
    lines = (sst2_dir / "train.tsv").read_text(encoding="utf-8").splitlines()
    long_rows = [i for i in range(1, len(lines)) if len(lines[i].split("\t")[0].split()) >= 10]
    rows = np.random.default_rng(0).choice(long_rows, size=2000, replace=False)
    (root / "train.tsv").write_text("\n".join([lines[0]] + [lines[i] for i in rows]) + "\n", encoding="utf-8")
    (root / "validation.tsv").write_text((sst2_dir / "validation.tsv").read_text(encoding="utf-8"), encoding="utf-8")
    return root


@pytest.mark.slow
def test_short_run_on_sst2_sample_beats_70_percent(sst2_sample, tmp_path):
    config = with_overrides(RunConfig(), [
        f"data.path={sst2_sample}", "tokenizer.vocab_size=4000", "model.d_model=128", "model.d_ff=256",
        "model.n_layers=1", "model.dropout=0.2", "train.epochs=8", "train.batch_size=32", "train.lr=2e-3",
    ])
    metrics = train(config, tmp_path / "run", progress=False).metrics
    assert metrics["validation"]["accuracy"] > 0.70, metrics["validation"]["accuracy"]
    log = records_of(read_log(tmp_path / "run" / "log.jsonl"), "evaluation")
    assert log[-1]["train_loss"] < log[0]["train_loss"]


@pytest.mark.slow
def test_same_seed_gives_identical_runs(sst2_sample, tmp_path):
    """Same data, settings and seed → the same tokenizer, weights and metrics, the tokenizer trained anew each time
    (tokenizers' WordPiece trainer alone gave another vocabulary at almost every run)."""
    config = with_overrides(RunConfig(), [
        f"data.path={sst2_sample}", "tokenizer.vocab_size=2000", "model.d_model=32", "model.d_ff=64",
        "model.n_layers=1", "train.epochs=1", "train.precision=fp32"])
    runs = [train(config, tmp_path / name, progress=False).metrics for name in "abc"]
    assert runs[0]["validation"] == runs[1]["validation"] == runs[2]["validation"]
    for file in ("tokenizer.json", "model.safetensors"):
        assert len({(tmp_path / name / "model" / file).read_bytes() for name in "abc"}) == 1, file


def test_stacking_recovers_the_weights_that_drew_the_labels():
    generator = torch.Generator().manual_seed(0)
    parts = torch.randn(3, 20_000, 3, generator=generator)  # three parts' logits over three classes
    true = torch.tensor([0.5, 2.0, 0.0], dtype=torch.float64)
    probabilities = torch.einsum("p,pnc->nc", true.float(), parts).softmax(dim=1)
    labels = torch.multinomial(probabilities, 1, generator=generator).squeeze(1)
    torch.testing.assert_close(torch.tensor(stacking_weights(parts, labels), dtype=torch.float64), true, atol=0.05,
                               rtol=0)


def test_stacking_keeps_weights_finite_when_one_part_separates_the_rows():
    parts = torch.randn(2, 40, 2, generator=torch.Generator().manual_seed(0))
    labels = parts[0].argmax(dim=1)
    weights = torch.tensor(stacking_weights(parts, labels))
    assert weights.isfinite().all() and weights[0] > 1.0 > abs(weights[1])
    assert torch.equal(torch.einsum("p,pnc->nc", weights.float(), parts).argmax(dim=1), labels)


def test_run_fits_the_part_weights_on_validation_and_saves_them(toy_data, tmp_path, one_thread):
    settings = [f"data.path={toy_data}", *TINY, "model.ngram_buckets=256", "train.precision=fp32"]
    metrics = train(with_overrides(RunConfig(), settings), tmp_path / "run", progress=False).metrics
    model, _ = load_model(tmp_path / "run" / "model")
    weights = model.head.weights.tolist()
    assert metrics["part_weights"] == {"encoder": weights[0], "ngrams": weights[1]}
    assert weights != [0.5, 0.5]
    for split in ("validation", "test"):  # the saved model is the one that was scored
        assert evaluate(tmp_path / "run" / "model", str(toy_data), split, precision="fp32") == metrics[split]
    # files written whole and renamed into place are as readable as those written in place (not tempfile's 0600)
    mode = lambda path: stat.S_IMODE(path.stat().st_mode)  # noqa: E731
    run = tmp_path / "run"
    plain = mode(run / "run_config.json")
    assert {name: mode(run / name) for name in ("metrics.json", "report.txt", "model/model.safetensors")} == \
        dict.fromkeys(("metrics.json", "report.txt", "model/model.safetensors"), plain)
    assert mode(run / "model") == mode(run)  # the run folder: a plain mkdir


def test_token_dropout_spares_special_tokens_and_padding():
    import torch

    from encoder_clf.training.batches import drop_tokens

    ids = torch.tensor([[2, 10, 11, 12, 13, 3], [2, 20, 21, 3, 0, 0]])
    mask = ids == 0
    dropped = drop_tokens(ids, mask, p=0.999, unk=1, rng=torch.Generator().manual_seed(0))
    assert dropped.tolist() == [[2, 1, 1, 1, 1, 3], [2, 1, 1, 3, 0, 0]]
    assert torch.equal(drop_tokens(ids, mask, p=0.0, unk=1, rng=torch.Generator()), ids)


def test_weight_averaging_keeps_the_moving_average(monkeypatch):
    """With ema_decay, the best model is the moving average of the weights after each step, at the best step."""
    from torch.optim.swa_utils import AveragedModel

    from encoder_clf.data.splits import Split, Splits
    from encoder_clf.training.run import train_on_splits

    from conftest import toy_rows

    after_step, real_update = [], AveragedModel.update_parameters

    def recording(self, model):  # called once after every optimizer step, with the weights just stepped
        after_step.append({name: p.detach().clone() for name, p in model.named_parameters()})
        return real_update(self, model)

    monkeypatch.setattr(AveragedModel, "update_parameters", recording)
    rows = toy_rows(300, 0)
    split = Split([t for t, _ in rows], np.array([y for _, y in rows]), "toy")
    config = with_overrides(RunConfig(), TINY + ["train.precision=fp32", "train.ema_decay=0.9"])
    result = train_on_splits(config, Splits(split, split, None, ["0", "1"]), progress=False)
    best = result.metrics["best_step"]
    assert result.metrics["validation"]["accuracy"] > 0.9 and len(after_step) == result.metrics["steps"] > best > 1
    average = dict(after_step[0])  # the first update copies the weights
    for weights in after_step[1:best]:
        average = {name: average[name].lerp(w, 1 - 0.9) for name, w in weights.items()}
    saved = dict(result.model.named_parameters())
    assert saved.keys() == average.keys()
    assert not all(torch.equal(average[k], after_step[best - 1][k]) for k in average)  # not the last weights
    for name, tensor in saved.items():
        torch.testing.assert_close(tensor.detach(), average[name], rtol=1e-5, atol=1e-6, msg=name)


def test_token_cache_gives_the_in_memory_run_and_is_reused(toy_data, tmp_path, one_thread):
    settings = [f"data.path={toy_data}", *TINY, "train.epochs=2", "train.precision=fp32"]
    plain = train(with_overrides(RunConfig(), settings), tmp_path / "plain", progress=False).metrics
    pinned = settings + [f"tokenizer.path={tmp_path / 'plain' / 'model'}", f"data.cache_dir={tmp_path / 'cache'}",
                         "data.num_proc=2"]
    cached = train(with_overrides(RunConfig(), pinned), tmp_path / "cached", progress=False).metrics
    files = sorted((tmp_path / "cache").glob("tokens-*.arrow"))
    assert len(files) == 3  # train, validation, test
    assert cached["validation"] == plain["validation"] and cached["test"] == plain["test"]

    written = {file: file.stat().st_mtime_ns for file in files}
    again = train(with_overrides(RunConfig(), pinned), tmp_path / "again", progress=False).metrics
    assert again["validation"] == plain["validation"]
    assert sorted((tmp_path / "cache").glob("tokens-*.arrow")) == files  # the same files, none written again
    assert {file: file.stat().st_mtime_ns for file in files} == written
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(f.name for f in files)


def test_streaming_trains_for_max_steps_without_holding_the_train_split(toy_data, tmp_path, monkeypatch, one_thread):
    from encoder_clf.data.sources import SplitSource

    read, real = [], SplitSource.read
    monkeypatch.setattr(SplitSource, "read", lambda self: read.append(Path(self.where).name) or real(self))
    settings = [f"data.path={toy_data}", *TINY, "data.streaming=true", "train.max_steps=60", "train.eval_every=20",
                "train.precision=fp32"]
    metrics = train(with_overrides(RunConfig(), settings), tmp_path / "run", progress=False).metrics
    log = records_of(read_log(tmp_path / "run" / "log.jsonl"), "evaluation")
    assert [r["step"] for r in log] == [20, 40, 60] and all(r["epoch"] is None for r in log)
    assert metrics["steps"] == 60 and metrics["validation"]["accuracy"] > 0.9  # 400 rows: 2.4 passes
    assert (tmp_path / "run" / "curves.png").is_file()
    assert "train.tsv" not in read  # never read whole ...
    assert "validation.tsv" in read  # ... by the reader every split goes through (the patch is in the right place)


@pytest.mark.parametrize("setting, message", [
    ("train.epochs=1", "data.streaming reads the train split as a stream of unknown length; set train.max_steps"),
    ("data.class_weights=balanced", "data.class_weights=balanced needs the train labels counted up front"),
])
def test_streaming_refuses_what_a_stream_cannot_give(toy_data, tmp_path, setting, message):
    from encoder_clf.errors import UsageError

    steps = [] if setting == "train.epochs=1" else ["train.max_steps=10"]
    config = with_overrides(RunConfig(), [f"data.path={toy_data}", "data.streaming=true", setting, *steps])
    with pytest.raises(UsageError, match=message):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_streaming_flag_of_the_cli(toy_data, tmp_path, one_thread):
    from encoder_clf.cli import main

    args = ["train", "--data", str(toy_data), "--out", str(tmp_path / "run"), "--quiet", "--streaming",
            *[x for s in [*TINY, "train.max_steps=30", "train.precision=fp32"] for x in ("--set", s)]]
    assert main(args) == 0
    config = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert config["data"]["streaming"] is True and config["train"]["max_steps"] == 30


def test_step_records_follow_log_every_and_hold_the_mean_loss_since_the_last(toy_data, tmp_path):
    """Every train.log_every steps a record: the mean loss of those steps, the rate, the gradient norm; the
    evaluations and the training are the same whatever the interval."""
    settings = [f"data.path={toy_data}", *TINY, "model.dropout=0", "model.attention_dropout=0",
                "train.precision=fp32"]
    logs, tokenizer = {}, []
    for every in (1, 3):
        metrics = train(with_overrides(RunConfig(), [*settings, f"train.log_every={every}", *tokenizer]),
                        tmp_path / str(every), progress=False).metrics
        tokenizer = [f"tokenizer.path={tmp_path / '1' / 'model'}"]  # the trainer may break ties differently
        logs[every] = read_log(tmp_path / str(every) / "log.jsonl")
    total = metrics["steps"]
    assert total == 100 and metrics["plan"]["log_every"] == 3  # 400 rows in batches of 16, 4 epochs
    steps = {every: records_of(log, "step") for every, log in logs.items()}
    assert [r["step"] for r in steps[1]] == list(range(1, total + 1))
    assert [r["step"] for r in steps[3]] == list(range(3, total + 1, 3))
    each = [r["train_loss"] for r in steps[1]]  # equal batches: the mean of the steps is the mean of the examples
    for record in steps[3]:
        assert record["train_loss"] == pytest.approx(np.mean(each[record["step"] - 3: record["step"]]), rel=1e-9)
        assert record["grad_norm"] > 0 and record["lr"] == steps[1][record["step"] - 1]["lr"]
        assert record["epoch"] == pytest.approx(record["step"] / 25, abs=1e-3)
    assert without_timing(records_of(logs[1], "evaluation")) == without_timing(records_of(logs[3], "evaluation"))
    kinds = [(r["kind"], r["step"]) for r in logs[3]]
    assert kinds.index(("evaluation", 75)) == kinds.index(("step", 75)) + 1  # a step's record, then its evaluation
