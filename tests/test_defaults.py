"""Defaults that carry over across dataset sizes: the n-gram part's linear fit, the run's length rules, the
non-negative mix of the head's parts, the validation carve-out and the run's report of all of them."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from sklearn.feature_extraction.text import TfidfTransformer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from encoder_clf.data.splits import Split
from encoder_clf.data.tokenization import fitted_max_length, word_starts
from encoder_clf.data.tokenized import tokenize_split
from encoder_clf.model.ngrams import NgramLogits
from encoder_clf.persistence.checkpoints import Progress
from encoder_clf.settings import with_overrides
from encoder_clf.training import linear
from encoder_clf.training.batches import TrainBatches
from encoder_clf.training.config import FINETUNE_PRESET, RunConfig, TrainConfig
from encoder_clf.training.distributed import SOLO
from encoder_clf.training.linear import LOSS_SHORTLIST, SCALINGS, STRENGTHS, fit_ngrams, log_count_ratios, term_matrix
from encoder_clf.training.loop import LOSS_TOLERANCE, Plan, decide
from encoder_clf.training.run import train
from encoder_clf.training.stacking import stacking_weights

from conftest import TINY, toy_rows, write_tsv


def _tokens(tokenizer, rows):
    return tokenize_split(tokenizer, Split([text for text, _ in rows], np.array([y for _, y in rows]), "toy"))


def test_tfidf_weights_are_scikit_learns_sublinear_tfidf_of_the_ngram_counts(toy_tokenizer):
    tokens = _tokens(toy_tokenizer, toy_rows(50, 0) + [("the film the film the film was great", 1)])
    part = NgramLogits(toy_tokenizer.get_vocab_size(), 64, 3)
    counts = term_matrix(part, tokens, batch_size=16, weighted=False)
    transformer = TfidfTransformer(sublinear_tf=True).fit(counts)
    part.idf.copy_(torch.from_numpy(transformer.idf_))
    expected = transformer.transform(counts).toarray()
    np.testing.assert_allclose(term_matrix(part, tokens, batch_size=16).toarray(), expected, atol=1e-6)
    # the forward pass sums exactly these features' rows of the table
    torch.nn.init.normal_(part.table.weight)
    batch = tokens.batch(np.arange(len(tokens)))
    logits = part(batch.ids, batch.mask).detach().double().numpy()
    np.testing.assert_allclose(logits, expected @ part.table.weight.detach().double().numpy(), atol=1e-5)


def test_word_terms_are_a_tfidf_of_the_tokens_words_and_word_pairs_as_spelt(toy_tokenizer):
    """The hashed word terms against scikit-learn's TF-IDF of the same n-grams written out as strings."""
    rows = toy_rows(80, 0) + [("the filmmakers made the film great great", 1)]
    tokens = _tokens(toy_tokenizer, rows)
    part = NgramLogits(toy_tokenizer.get_vocab_size(), 1_000_000, 2)
    part.set_word_starts(torch.from_numpy(word_starts(toy_tokenizer)))

    def spelt(text: str) -> list[str]:
        pieces = toy_tokenizer.encode(text).tokens
        words = []
        for piece in pieces:
            if piece.startswith("##"):
                words[-1] += piece[2:]
            else:
                words.append(piece)
        assert len(words) < len(pieces) or "filmmakers" not in text  # the long word is cut into pieces
        return pieces + [f"w:{w}" for w in words] + [f"w:{a} {b}" for a, b in zip(words, words[1:])]

    reference = TfidfVectorizer(analyzer=spelt, sublinear_tf=True)
    expected = reference.fit_transform([text for text, _ in rows]).toarray()
    counts = term_matrix(part, tokens, batch_size=16, weighted=False)
    part.idf.copy_(torch.from_numpy(TfidfTransformer(sublinear_tf=True).fit(counts).idf_))
    ours = term_matrix(part, tokens, batch_size=16)
    ours = ours[:, np.unique(ours.indices)].toarray()
    assert ours.shape == expected.shape  # one row of the table per distinct n-gram: no two share a bucket
    np.testing.assert_allclose(np.sort(ours, axis=1), np.sort(expected, axis=1), atol=1e-6)


def _reference_margin(scaling: str, strength: float, features, labels: np.ndarray, held_out) -> np.ndarray:
    """scikit-learn's binary fit with either scaling, and its margins on ``held_out``: plain TF-IDF, or NB-LR (the
    features scaled by the classes' log-count ratios, Wang and Manning 2012)."""
    if scaling == "nb":
        present = (features > 0).astype(float)
        positive, negative = 1 + present[labels == 1].sum(axis=0).A1, 1 + present[labels == 0].sum(axis=0).A1
        ratios = np.log(positive / positive.sum()) - np.log(negative / negative.sum())
        features, held_out = features.multiply(ratios).tocsr(), held_out.multiply(ratios).tocsr()
    return LogisticRegression(C=strength, fit_intercept=False, solver="liblinear").fit(
        features, labels).decision_function(held_out)


def test_log_count_ratios_are_the_smoothed_ratios_of_nbsvm():
    import scipy.sparse as sp

    present = sp.csr_matrix(np.array([[1, 0, 1], [1, 1, 0], [0, 0, 1]], dtype=float))
    positive = np.array([True, True, False])
    inside, outside = np.array([3, 2, 2]), np.array([1, 1, 2])  # 1 + how many rows of each side hold the feature
    expected = np.log(inside / 7) - np.log(outside / 4)
    np.testing.assert_allclose(log_count_ratios(present, positive[None])[0], expected)


@pytest.mark.parametrize("scaling", SCALINGS)
def test_the_fit_is_scikit_learns_logistic_regression_at_the_c_chosen_on_validation(scaling, toy_tokenizer, tiny_model,
                                                                                     monkeypatch):
    monkeypatch.setattr(linear, "SCALINGS", (scaling,))  # one scaling at a time
    train_rows, validation_rows = toy_rows(200, 0), toy_rows(60, 1)
    train_tokens, validation = _tokens(toy_tokenizer, train_rows), _tokens(toy_tokenizer, validation_rows)
    model = tiny_model(vocab_size=toy_tokenizer.get_vocab_size(), ngram_buckets=64)
    fit = fit_ngrams(model, train_tokens, validation, "accuracy")
    part = model.head.parts["ngrams"]
    assert fit.C in STRENGTHS and float(part.strength) == fit.C and fit.validation > 0.9 and fit.scaling == scaling
    seen = np.unique(term_matrix(part, train_tokens).indices)
    features, held_out = term_matrix(part, train_tokens)[:, seen], term_matrix(part, validation)[:, seen]
    batch = validation.batch(np.arange(len(validation)))
    logits = part(batch.ids, batch.mask).detach().double().numpy()
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0],
                               _reference_margin(scaling, fit.C, features, train_tokens.labels, held_out), atol=1e-4)
    unseen = part.idf == 0  # n-grams the train split never holds are left out, as a vocabulary's TF-IDF leaves them
    assert unseen.any() and not part.table.weight[unseen].any()


def test_nb_features_fit_each_class_against_the_rest(toy_tokenizer, tiny_model, monkeypatch):
    """Three classes: each class's logits are its own one-against-the-rest NB-LR margins."""
    monkeypatch.setattr(linear, "SCALINGS", ("nb",))
    rng = np.random.default_rng(0)
    rows = [(text, int(rng.integers(3)) if label else 2) for text, label in toy_rows(240, 0)]
    train_tokens, validation = _tokens(toy_tokenizer, rows[:180]), _tokens(toy_tokenizer, rows[180:])
    model = tiny_model(vocab_size=toy_tokenizer.get_vocab_size(), ngram_buckets=64, labels=["a", "b", "c"])
    fit = fit_ngrams(model, train_tokens, validation, "accuracy")
    part = model.head.parts["ngrams"]
    seen = np.unique(term_matrix(part, train_tokens).indices)
    features, held_out = term_matrix(part, train_tokens)[:, seen], term_matrix(part, validation)[:, seen]
    batch = validation.batch(np.arange(len(validation)))
    logits = part(batch.ids, batch.mask).detach().double().numpy()
    for label in range(3):
        y = (train_tokens.labels == label).astype(int)
        np.testing.assert_allclose(logits[:, label], _reference_margin("nb", fit.C, features, y, held_out), atol=1e-4)


def test_c_is_shortlisted_by_the_scaled_validation_loss_and_picked_by_the_metric(toy_tokenizer, tiny_model):
    """Each fit's validation logits (each scaling of the features at every C) are judged at their best scale (the mix
    rescales the part): the fits whose log loss, times one factor (with stacking's small penalty on it), is within
    1% of the lowest are shortlisted, and of those the best accuracy wins, ties going to the lower loss.
    Recomputed from scikit-learn's fits."""
    from scipy.optimize import minimize_scalar

    rng = np.random.default_rng(0)
    noisy = lambda rows: [(text, 1 - label if rng.random() < 0.1 else label) for text, label in rows]  # noqa: E731
    train_tokens = _tokens(toy_tokenizer, noisy(toy_rows(200, 0)))
    validation = _tokens(toy_tokenizer, noisy(toy_rows(60, 1)))
    model = tiny_model(vocab_size=toy_tokenizer.get_vocab_size(), ngram_buckets=64)
    fit = fit_ngrams(model, train_tokens, validation, "accuracy")
    part, y = model.head.parts["ngrams"], validation.labels
    seen = np.unique(term_matrix(part, train_tokens).indices)
    features, held_out = term_matrix(part, train_tokens)[:, seen], term_matrix(part, validation)[:, seen]

    def log_loss(scale: float, margin: np.ndarray) -> float:
        return float(np.mean(np.logaddexp(0, -(2 * y - 1) * scale * margin)))

    fits, losses, accuracies = [], [], []
    for scaling in SCALINGS:
        for strength in STRENGTHS:
            margin = _reference_margin(scaling, strength, features, train_tokens.labels, held_out)
            best = minimize_scalar(lambda scale, m=margin: log_loss(scale, m) + 1e-3 * scale ** 2, bounds=(0, 1e3),
                                   method="bounded")
            fits.append((scaling, strength))
            losses.append(log_loss(best.x, margin))
            accuracies.append(np.mean((margin > 0) == y))
    shortlist = [i for i, loss in enumerate(losses) if loss <= min(losses) * (1 + LOSS_SHORTLIST)]
    chosen = max(shortlist, key=lambda i: (accuracies[i], -losses[i]))
    assert fits[chosen] == (fit.scaling, fit.C) and fit.validation == pytest.approx(accuracies[chosen])
    assert fit.loss == pytest.approx(losses[chosen], rel=1e-3)
    # what accuracy alone would pick (its first best) is not what the loss lets through
    assert fits[int(np.argmax(accuracies))] != fits[chosen]


def test_the_fits_side_by_side_give_the_table_of_one_at_a_time(toy_tokenizer, tiny_model):
    """The grid's fits run in threads, as many as torch's: several labels, both scalings and every C on one thread
    and on three choose the same fit and fill the same table, bit for bit."""
    rng = np.random.default_rng(0)
    rows = [(text, [label, int(rng.integers(2)), 1 - label]) for text, label in toy_rows(240, 0)]
    train_tokens = _tokens(toy_tokenizer, rows[:180])
    validation = _tokens(toy_tokenizer, rows[180:])
    tables, fits = [], []
    threads = torch.get_num_threads()
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            model = tiny_model(vocab_size=toy_tokenizer.get_vocab_size(), ngram_buckets=64, labels=["a", "b", "c"],
                               task="multi_label")
            fits.append(fit_ngrams(model, train_tokens, validation, "macro_f1"))
            tables.append(model.head.parts["ngrams"].table.weight.detach().clone())
    finally:
        torch.set_num_threads(threads)
    assert (fits[0].C, fits[0].scaling, fits[0].validation) == (fits[1].C, fits[1].scaling, fits[1].validation)
    assert tables[0].any() and torch.equal(tables[0], tables[1])


def _plan(per_epoch: int, **settings) -> Plan:
    return Plan.of(TrainBatches(lambda epoch: iter(()), per_epoch, "key", "toy"), TrainConfig(**settings), SOLO)


@pytest.mark.parametrize(("per_epoch", "epochs"), [(1053, 2), (57, 36), (10, 50)])
def test_a_run_left_to_the_defaults_takes_at_least_min_steps_in_2_to_50_epochs(per_epoch, epochs):
    plan = _plan(per_epoch)  # SST-2's 67k rows, a 3.6k-row set, 640 rows (batches of 64)
    assert (plan.epochs, plan.total_steps, plan.eval_every) == (epochs, epochs * per_epoch, per_epoch)
    assert plan.rule.startswith("by the data's size")


@pytest.mark.parametrize(("rows", "epochs"), [(67_349, 2), (43_410, 2), (5_749, 5), (3_667, 5), (16, 5)])
def test_fine_tuning_takes_at_least_1000_steps_in_2_to_5_epochs(rows, epochs):
    """The fine-tuning preset's length (batches of 32): SST-2, GoEmotions, STS-B, MRPC, a few-shot sample."""
    cfg = with_overrides(RunConfig(), FINETUNE_PRESET).train
    per_epoch = -(-rows // cfg.batch_size)
    plan = Plan.of(TrainBatches(lambda epoch: iter(()), per_epoch, "key", "toy"), cfg, SOLO)
    assert (plan.epochs, plan.total_steps) == (epochs, epochs * per_epoch)
    assert plan.rule == "by the data's size: at least train.min_steps=1000 steps in 2 to train.max_epochs=5 epochs"
    assert with_overrides(RunConfig(), [*FINETUNE_PRESET, "train.epochs=3"]).train.epochs == 3


def test_a_run_records_about_100_steps_unless_told():
    assert _plan(1053).log_every == 21  # 2,106 steps
    assert _plan(57).log_every == 21 and _plan(10, max_steps=50).log_every == 1
    assert _plan(1053, log_every=5).log_every == 5


def test_early_stopping_waits_while_the_validation_loss_still_falls():
    """The best model is the best by the metric; patience counts evaluations that improve neither it nor the loss
    (a fall smaller than LOSS_TOLERANCE of the loss is none)."""
    at, cfg = Progress(), TrainConfig(patience=2, metric="accuracy")
    trace = [(0.80, 0.50), (0.80, 0.45), (0.79, 0.44), (0.80, 0.44 * (1 - LOSS_TOLERANCE / 2)), (0.80, 0.46),
             (0.81, 0.47), (0.81, 0.47), (0.80, 0.48)]
    stale, best = [], []
    for step, (accuracy, loss) in enumerate(trace, 1):
        at.step = step
        decide(at, {"accuracy": accuracy, "loss": loss}, cfg, late=False)
        stale.append(at.stale)
        best.append(at.best_step)
        if at.stop_reason != "completed":
            break
    assert stale == [0, 0, 0, 1, 2] and best == [1, 1, 1, 1, 1]
    assert at.stop_reason == "early stopping: neither validation accuracy nor loss improved in 2 evaluations"
    at, cfg = Progress(), TrainConfig(patience=2, metric="accuracy")  # a better metric counts though the loss rose
    for step, (accuracy, loss) in enumerate([(0.7, 0.5), (0.8, 0.6), (0.8, 0.6), (0.9, 0.7)], 1):
        at.step = step
        decide(at, {"accuracy": accuracy, "loss": loss}, cfg, late=False)
    assert (at.stale, at.best_step, at.stop_reason) == (0, 4, "completed")


def test_settings_given_win_over_the_size_rule():
    assert (_plan(57, epochs=3).epochs, _plan(57, epochs=3).rule) == (3, "train.epochs=3")
    by_steps = _plan(57, max_steps=300)
    assert (by_steps.epochs, by_steps.total_steps, by_steps.rule) == (6, 300, "train.max_steps=300")
    assert _plan(57, min_steps=570, max_epochs=50).epochs == 10
    assert _plan(10, max_epochs=8).epochs == 8


def test_stacking_never_gives_a_part_a_negative_weight():
    generator = torch.Generator().manual_seed(0)
    informative = torch.randn(60, 2, generator=generator)
    labels = informative.argmax(dim=1)
    for seed in range(1, 11):  # unconstrained, a noise part's fitted weight is negative about half the time
        noise = torch.randn(60, 2, generator=torch.Generator().manual_seed(seed))
        weights = stacking_weights(torch.stack([informative, noise]), labels)
        assert min(weights) >= 0 and weights[0] > 10 * weights[1]



@pytest.mark.parametrize("seed", range(5))
def test_the_fitted_mix_is_never_worse_than_the_better_part_on_the_rows_it_is_fitted_on(seed):
    """Two noisy views of the labels, one much louder and no better: the mix's loss is at most that of either part
    alone at its own best scale (the mix can give the other part a weight of about zero), and it beats both."""
    generator = torch.Generator().manual_seed(seed)
    truth = torch.randn(200, 3, generator=generator)
    labels = truth.argmax(dim=1)
    parts = torch.stack([30 * (truth + torch.randn(200, 3, generator=generator)),
                         truth + torch.randn(200, 3, generator=generator)])
    weights = torch.tensor(stacking_weights(parts, labels), dtype=torch.float64)
    mixed = torch.nn.functional.cross_entropy(torch.einsum("p,pnc->nc", weights, parts.double()), labels)
    scales = torch.logspace(-3, 1, 400, dtype=torch.float64)
    alone = [min(torch.nn.functional.cross_entropy(scale * part.double(), labels) for scale in scales)
             for part in parts]
    assert mixed <= min(alone) + 1e-3
    assert mixed < min(alone) - 0.01  # two independent views: the mix has something to add

def test_a_directory_of_train_and_test_gets_a_stratified_validation_carve_out_and_says_so(tmp_path, caplog):
    from encoder_clf.data.config import DataConfig
    from encoder_clf.data.splits import load_splits

    write_tsv(tmp_path / "train.tsv", toy_rows(200, 0))
    write_tsv(tmp_path / "test.tsv", toy_rows(40, 1))
    with caplog.at_level(logging.INFO):
        splits = load_splits(DataConfig(path=str(tmp_path)), seed=3)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (180, 20, 40)
    assert np.bincount(splits.validation.labels).min() >= 8  # stratified: both classes about half
    assert f"{tmp_path / 'train.tsv'}: no validation split given; 20 of its 200 rows (data.validation_fraction=0.1, " \
           "seed 3, stratified by class where possible) are held out for validation" in caplog.messages


def test_the_run_reports_its_size_rule_balance_parts_and_fit_and_holds_the_fitted_part(toy_data, tmp_path, one_thread,
                                                                                     caplog):
    settings = [f"data.path={toy_data}", *TINY, "train.epochs=null", "train.min_steps=60", "model.ngram_buckets=256",
                "train.precision=fp32"]
    config = with_overrides(RunConfig(), settings)
    assert config.train.epochs is None
    with caplog.at_level(logging.INFO):
        result = train(config, tmp_path / "run", progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["plan"] == {"epochs": 3, "steps_per_epoch": 25, "steps": 75, "eval_every": 25, "log_every": 1,
                               "patience": 5,
                               "rule": "by the data's size: at least train.min_steps=60 steps in 2 to "
                                       "train.max_epochs=50 epochs"}
    assert metrics["data"]["train"]["balance"] == dict(zip(["0", "1"], np.bincount(
        [y for _, y in toy_rows(400, 0)]).tolist()))
    by_part = metrics["validation_accuracy_by_part"]
    assert set(by_part) == {"encoder", "ngrams", "mixed"} and by_part["mixed"] == metrics["validation"]["accuracy"]
    assert metrics["ngram_fit"]["C"] in STRENGTHS and min(metrics["part_weights"].values()) >= 0
    assert json.loads((tmp_path / "run" / "run_config.json").read_text())["train"]["epochs"] is None
    assert any(message.startswith("plan: 3 epoch(s) of 25 steps = 75 steps") for message in caplog.messages)
    assert any(message.startswith("train: 400 rows (") for message in caplog.messages)
    assert any(message.startswith("n-gram part: a linear fit on ") and " and scaling n" in message
               for message in caplog.messages)
    # the n-gram part was fitted before the encoder's steps, then held: training left its table as fitted
    part = result.model.head.parts["ngrams"]
    trained = part.table.weight.detach().clone()
    fit_ngrams(result.model, *(tokenize_split(result.tokenizer, split) for split in _splits(toy_data)), "accuracy")
    torch.testing.assert_close(part.table.weight.detach(), trained, rtol=0, atol=0)


def test_max_length_follows_the_training_texts_lengths(toy_tokenizer):
    """99% of the texts whole, rounded up to a multiple of 32, between 128 and the ceiling; pairs as pairs."""
    short = [text for text, _ in toy_rows(300, 0)]
    assert fitted_max_length(toy_tokenizer, short, 512).max_length == 128
    words = ["the", "film", "was", "great", "plot", "cast"]
    long = [" ".join(words[i % 6] for i in range(n)) for n in range(1, 201)]  # n words: n + 2 tokens, 3 … 202
    fitted = fitted_max_length(toy_tokenizer, long, 512)
    needed = int(np.ceil(np.quantile(np.arange(3, 203), 0.99)))  # 201
    assert fitted.max_length == 224
    assert fitted.rule == (f"by the data: 99% of 200 training texts fit in {needed} tokens; rounded up to a multiple "
                           "of 32, at least 128")
    assert fitted_max_length(toy_tokenizer, long, 150) == (150, f"by the data: 99% of 200 training texts fit in "
                                                                f"{needed} tokens; the model's limit is 150")
    assert fitted_max_length(toy_tokenizer, long, 64).max_length == 64  # a model of fewer positions than the floor
    pairs = list(zip(long, long))  # [CLS] a [SEP] a [SEP]: 2n + 3 tokens, up to 403
    assert fitted_max_length(toy_tokenizer, pairs, 512).max_length == 416
    assert toy_tokenizer.truncation["max_length"] == 10  # measured on a copy: the tokenizer given is left as it was


def test_a_run_states_and_saves_the_fitted_max_length_and_a_length_given_wins(toy_data, tmp_path, one_thread, caplog):
    long = "the film was " + " ".join(["great"] * 150)
    write_tsv(tmp_path / "train.tsv", toy_rows(100, 0) + [(long, 1)] * 3)
    settings = [f"data.path={tmp_path / 'train.tsv'}", *TINY, "train.epochs=1", "model.ngram_buckets=0"]
    with caplog.at_level(logging.INFO):
        result = train(with_overrides(RunConfig(), settings), tmp_path / "fitted", progress=False)
    assert result.config.tokenizer.max_length == 160 and result.tokenizer.truncation["max_length"] == 160
    assert json.loads((tmp_path / "fitted" / "run_config.json").read_text())["tokenizer"]["max_length"] == 160
    assert any(message.startswith("tokenizer: max_length 160 (by the data: 99% of ") for message in caplog.messages)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        given = train(with_overrides(RunConfig(), settings + ["tokenizer.max_length=16"]), None, progress=False)
    assert given.config.tokenizer.max_length == 16 and given.tokenizer.truncation["max_length"] == 16
    assert not any(message.startswith("tokenizer: max_length") for message in caplog.messages)


def test_a_model_of_150_positions_trains_and_predicts_on_texts_longer_than_them(tmp_path, one_thread):
    """The fitted length stops at the positions (150, no multiple of 32): no batch is padded past them."""
    from encoder_clf.inference import predict

    long = "the film was " + " ".join(["great"] * 200)
    write_tsv(tmp_path / "train.tsv", toy_rows(60, 0) + [(long, 1), (long.replace("great", "awful"), 0)] * 4)
    settings = [f"data.path={tmp_path / 'train.tsv'}", *TINY, "train.epochs=1", "model.max_positions=150"]
    result = train(with_overrides(RunConfig(), settings), tmp_path / "run", progress=False)
    assert result.config.tokenizer.max_length == 150
    assert len(predict(tmp_path / "run" / "model", [long, "a dull film", long + " " + long]).labels) == 3


def _splits(data):
    from encoder_clf.data.config import DataConfig
    from encoder_clf.data.splits import load_splits

    splits = load_splits(DataConfig(path=str(data)))
    return splits.train, splits.validation
