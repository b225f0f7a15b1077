"""The scikit-learn estimators: the estimator contract, composition, persistence, and a real-data pipeline.

scikit-learn's own checks run where they need no data; the data-dependent ones
that make sense for text are re-stated on toy texts (see encoder_clf/sklearn.py
for the list and for the checks skipped).
"""

import pickle

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.utils import estimator_checks
from sklearn.utils.validation import check_is_fitted

from encoder_clf.errors import UsageError
from encoder_clf.sklearn import EncoderClassifier, SentenceEncoder

from conftest import toy_rows

TINY = dict(d_model=16, n_heads=2, n_layers=1, d_ff=32, vocab_size=200, min_frequency=1, epochs=6, batch_size=16,
            lr=5e-3, precision="fp32", random_state=0)


pytestmark = pytest.mark.usefixtures("one_thread")


def toy(n, seed, names=("neg", "pos")):
    rows = toy_rows(n, seed)
    return [t for t, _ in rows], np.array([names[y] for _, y in rows])


@pytest.fixture(scope="module")
def data():
    return toy(240, 0), toy(80, 1)


@pytest.fixture(scope="module")
def fitted(data):
    (X, y), _ = data
    return EncoderClassifier(**TINY).fit(X, y)


def test_fit_predict_proba_and_score(fitted, data):
    _, (X_test, y_test) = data
    assert list(fitted.classes_) == ["neg", "pos"]
    proba = fitted.predict_proba(X_test)
    assert proba.shape == (len(X_test), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert list(fitted.predict(X_test)) == list(fitted.classes_[proba.argmax(axis=1)])
    assert fitted.score(X_test, y_test) > 0.9  # one keyword decides the label
    assert [r["epoch"] for r in fitted.history_] == [float(e) for e in range(1, TINY["epochs"] + 1)]
    assert set(fitted.validation_scores_) >= {"accuracy", "macro_f1"}


def test_parameters_map_onto_the_run_config():
    estimator = EncoderClassifier(d_model=32, n_heads=2, attention="additive", vocab_size=300, max_length=64,
                                  epochs=2, lr=5e-4, class_weight="balanced", settings=["train.schedule=cosine"])
    config = estimator.run_config(seed=7)
    assert (config.model.d_model, config.model.n_heads, config.model.attention) == (32, 2, "additive")
    assert (config.tokenizer.vocab_size, config.tokenizer.max_length) == (300, 64)
    assert (config.train.epochs, config.train.lr, config.train.seed, config.train.schedule) == (2, 5e-4, 7, "cosine")
    assert config.data.class_weights == "balanced"
    with pytest.raises(UsageError, match="unknown key 'train.nope'"):
        EncoderClassifier(settings=["train.nope=1"]).run_config()
    with pytest.raises(UsageError, match="model.attention must be one of"):
        EncoderClassifier(attention="cosine").run_config()


def test_integer_labels_come_back_as_integers(data):
    """check_classifiers_classes: classes_ and predictions keep the label type."""
    (X, _), (X_test, _) = data
    _, y = toy(240, 0, names=(3, 7))
    estimator = EncoderClassifier(**TINY).fit(X, y)
    assert estimator.classes_.tolist() == [3, 7]
    predicted = estimator.predict(X_test)
    assert predicted.dtype.kind == "i" and set(predicted.tolist()) <= {3, 7}


@pytest.mark.parametrize("X, y, message", [
    (["a film"] * 4, ["pos"] * 4, "at least 2 classes"),  # check_classifiers_one_label
    ([], [], "0 samples"),  # check_estimators_empty_data_messages
    ([1.5, 2.5], ["a", "b"], r"X\[0\] is float 1.5, not a string"),
    (np.array([["a", "b"], ["c", "d"]]), ["a", "b"], r"1-D sequence of texts .* shape \(2, 2\)"),
    (["a", "b", "c"], [0.5, 1.5, 2.5], "Unknown label type"),  # check_classifiers_regression_target
])
def test_bad_input_is_refused(X, y, message):
    with pytest.raises(ValueError, match=message):
        EncoderClassifier(**TINY).fit(X, y)


# Every scikit-learn estimator check runs on both estimators, upstream's new ones included. The checks feed
# numbers (random floats, ints, NaN, sparse matrices) where these estimators take texts, so the checks that fit,
# transform or predict on such X cannot pass; each is listed with why, and the test fails if one of them starts
# passing (xfail_strict: it would then belong in the suite). What they check is re-stated below on texts, test
# by test. check_array_api_input skips itself (array-API input is numbers); conftest.ALLOWED_SKIPS says so.
NUMBERS_FOR_TEXT = "feeds numeric X; X is one text per sample (re-stated on texts: {})"
CONTRACT, ORDER = "test_fit_contract_on_text", "test_predictions_do_not_depend_on_order_or_batch"
EXPECTED_FAILED = {
    "check_fit_score_takes_y": NUMBERS_FOR_TEXT.format("test_fit_predict_proba_and_score"),
    "check_estimators_overwrite_params": NUMBERS_FOR_TEXT.format(CONTRACT),
    "check_dont_overwrite_parameters": NUMBERS_FOR_TEXT.format(CONTRACT),
    "check_estimators_fit_returns_self": NUMBERS_FOR_TEXT.format(CONTRACT),
    "check_fit_idempotent": NUMBERS_FOR_TEXT.format(CONTRACT),
    "check_fit_check_is_fitted": NUMBERS_FOR_TEXT.format(CONTRACT),
    "check_estimators_pickle": NUMBERS_FOR_TEXT.format("test_pickle_keeps_weights_as_safetensors_bytes"),
    "check_classifiers_classes": NUMBERS_FOR_TEXT.format("test_integer_labels_come_back_as_integers"),
    "check_classifier_data_not_an_array": NUMBERS_FOR_TEXT.format(ORDER),  # lists, arrays, Series, frames
    "check_transformer_data_not_an_array": NUMBERS_FOR_TEXT.format("test_sentence_encoder_from_a_directory_..."),
    "check_methods_sample_order_invariance": NUMBERS_FOR_TEXT.format(ORDER),
    "check_methods_subset_invariance": NUMBERS_FOR_TEXT.format(ORDER),
    "check_pipeline_consistency": NUMBERS_FOR_TEXT.format("test_cross_val_score_on_texts"),
    "check_transformer_general": NUMBERS_FOR_TEXT.format("test_sentence_encoder_from_a_directory_..."),
    "check_classifiers_train": "fits numeric blobs and checks a decision threshold on them",
    "check_supervised_y_2d": "feeds numeric X; multi-output targets are not supported",
    "check_class_weight_classifiers": "fits numeric blobs with class_weight as a dict; it is 'balanced' or None",
    "check_readonly_memmap_input": "feeds numeric read-only memmaps; texts are Python strings",
    "check_n_features_in_after_fitting": "a text has no feature count (no n_features_in_)",
    "check_n_features_in": "a text has no feature count (no n_features_in_)",
    "check_positive_only_tag_during_fit": "feeds negative numbers: meaningless for texts",
    "check_estimators_dtypes": "numeric dtypes (float32, int64, ...) of X; texts have none",
    "check_dtype_object": "numeric values in an object array; refused as 'not a string'",
    "check_estimators_nan_inf": "NaN and inf in X; refused as 'not a string'",
    "check_estimators_empty_data_messages": "X of shape (n, 0): refused as not 1-D texts (0 samples is re-stated "
                                            "in test_bad_input_is_refused)",
    "check_estimator_sparse_array": "the check cannot build its 1-d sparse array for one_d_array input (scipy: "
                                    "'Cannot convert a 1d sparse array to lil format'); sparse input is refused",
    "check_f_contiguous_array_estimator": "a Fortran-ordered numeric array; texts have no memory layout",
    "check_fit2d_1sample": "numeric 2-D shapes", "check_fit2d_1feature": "numeric 2-D shapes",
    "check_fit2d_predict1d": "numeric 2-D shapes", "check_dict_unchanged": "numeric 2-D shapes",
}


def expected_failed(estimator) -> dict[str, str]:
    """The classifier refuses complex y before it reads X; the transformer (y unused to check) reads X first."""
    if isinstance(estimator, SentenceEncoder):
        return {**EXPECTED_FAILED, "check_complex_data": "complex numbers for X; refused as 'not a string'"}
    return EXPECTED_FAILED


def estimators_for_checks():
    """A fixed seed and a pinned tokenizer make fits repeatable (non_deterministic=False), as the tag says; no
    check gets as far as reading the tokenizer file, since every one that fits feeds numbers."""
    pinned = dict(TINY, settings=["tokenizer.path=never-read-by-these-checks.json"])
    return [EncoderClassifier(**pinned), SentenceEncoder(model=EncoderClassifier(**pinned))]


@estimator_checks.parametrize_with_checks(estimators_for_checks(),
                                          expected_failed_checks=expected_failed)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_fit_contract_on_text(fitted, data, tmp_path):
    """check_fit_check_is_fitted, check_estimators_fit_returns_self, check_estimators_overwrite_params,
    check_dont_overwrite_parameters and check_fit_idempotent, with texts for X.

    Idempotence needs a pinned tokenizer: the tokenizers trainers may break ties differently on each run.
    """
    (X, y), (X_test, _) = data
    fitted.tokenizer_.save(str(tmp_path / "tokenizer.json"))
    estimator = EncoderClassifier(**TINY, settings=[f"tokenizer.path={tmp_path / 'tokenizer.json'}"])
    with pytest.raises(NotFittedError):
        check_is_fitted(estimator)
    params = estimator.get_params()
    before_hash, before_keys = joblib.hash(params), set(vars(estimator))
    assert estimator.fit(X, y) is estimator
    check_is_fitted(estimator)
    assert joblib.hash(estimator.get_params()) == before_hash
    added = set(vars(estimator)) - before_keys
    assert added and all(k.endswith("_") and not k.startswith("_") for k in added), added
    assert estimator.tokenizer_.get_vocab() == fitted.tokenizer_.get_vocab()  # settings reach the run config
    first = estimator.predict_proba(X_test)
    np.testing.assert_array_equal(estimator.fit(X, y).predict_proba(X_test), first)


def test_predictions_do_not_depend_on_order_or_batch(fitted, data):
    """check_methods_sample_order_invariance and check_methods_subset_invariance (fp32: bf16 rounds per batch)."""
    _, (X_test, _) = data
    proba = fitted.predict_proba(X_test)
    order = np.random.default_rng(0).permutation(len(X_test))
    np.testing.assert_allclose(fitted.predict_proba([X_test[i] for i in order]), proba[order], atol=1e-5)
    np.testing.assert_allclose(fitted.predict_proba(X_test[:7]), proba[:7], atol=1e-5)
    series = pd.Series(X_test)  # and the containers users pass: Series, one-column frames and arrays
    np.testing.assert_allclose(fitted.predict_proba(series), proba, atol=1e-6)
    np.testing.assert_allclose(fitted.predict_proba(series.to_frame()), proba, atol=1e-6)
    np.testing.assert_allclose(fitted.predict_proba(np.array(X_test)[:, None]), proba, atol=1e-6)


def test_pickle_keeps_weights_as_safetensors_bytes(fitted, data):
    """check_estimators_pickle, without pickling torch modules."""
    _, (X_test, _) = data
    payload = pickle.dumps(fitted)
    assert b"TextClassifier" not in payload and b"torch.nn" not in payload
    restored = pickle.loads(payload)
    np.testing.assert_array_equal(restored.predict_proba(X_test), fitted.predict_proba(X_test))
    assert restored.get_params() == fitted.get_params()
    fresh = clone(fitted)
    assert fresh.get_params() == fitted.get_params() and not hasattr(fresh, "model_")


def test_save_and_load(fitted, data, tmp_path):
    _, (X_test, _) = data
    directory = fitted.save(tmp_path / "estimator")
    assert sorted(p.name for p in directory.iterdir()) == [
        "config.json", "estimator.json", "model.safetensors", "tokenizer.json"]
    loaded = EncoderClassifier.load(directory)
    assert loaded.get_params() == fitted.get_params()
    assert loaded.classes_.tolist() == fitted.classes_.tolist()
    np.testing.assert_array_equal(loaded.predict_proba(X_test), fitted.predict_proba(X_test))
    (directory / "estimator.json").unlink()  # a plain model directory, as `encoder-clf train` writes
    plain = EncoderClassifier.load(directory)
    assert plain.classes_.tolist() == ["neg", "pos"] and plain.d_model == 16 and plain.n_heads == 2
    np.testing.assert_array_equal(plain.predict(X_test), fitted.predict(X_test))


def test_grid_search_picks_one_of_two_values(data):
    (X, y), (X_test, y_test) = data
    search = GridSearchCV(EncoderClassifier(**TINY), {"d_model": [8, 16]}, cv=2).fit(X, y)
    assert len(search.cv_results_["params"]) == 2
    assert search.best_params_["d_model"] in (8, 16)
    assert search.best_estimator_.model_.config.d_model == search.best_params_["d_model"]
    assert search.score(X_test, y_test) > 0.8


def test_cross_val_score_on_texts(data):
    (X, y), _ = data
    scores = cross_val_score(EncoderClassifier(**TINY), X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.8, scores


def test_sentence_encoder_from_a_directory_gives_the_heads_inputs(data, tmp_path):
    """With pooling=None the features are the vectors the head reads: without n-gram logits beside it, the head
    on them is predict_proba."""
    (X, y), (X_test, _) = data
    fitted = EncoderClassifier(**TINY, settings=["model.ngram_buckets=0"]).fit(X, y)
    directory = fitted.save(tmp_path / "model")
    encoder = SentenceEncoder(model=str(directory), pooling=None, precision="fp32").fit(X)  # y not needed
    features = encoder.transform(X_test)
    assert features.shape == (len(X_test), 16) and features.dtype == np.float32
    with torch.no_grad():
        logits = fitted.model_.head.parts["encoder"](torch.from_numpy(features))
    np.testing.assert_allclose(torch.softmax(logits, -1).numpy(), fitted.predict_proba(X_test), atol=1e-5)
    assert list(encoder.get_feature_names_out()) == [f"sentenceencoder{i}" for i in range(16)]
    frame = encoder.set_output(transform="pandas").transform(X_test[:3])
    assert list(frame.columns) == list(encoder.get_feature_names_out()) and frame.shape == (3, 16)
    restored = pickle.loads(pickle.dumps(encoder))  # keeps the directory name, reloads from it
    np.testing.assert_allclose(restored.transform(X_test[:5]), features[:5], atol=1e-6)


def test_sentence_encoder_refusals(data):
    (X, y), _ = data
    with pytest.raises(ValueError, match="pass y"):
        SentenceEncoder(model=EncoderClassifier(**TINY)).fit(X)
    with pytest.raises(ValueError, match="model must be a model directory"):
        SentenceEncoder(model=42).fit(X)
    with pytest.raises(UsageError, match="pooling 'sum' is not available"):
        SentenceEncoder(model=EncoderClassifier(**TINY), pooling="sum").fit(X, y)


@pytest.fixture(scope="module")
def sst2_sample(sst2_dir):
    """2,000 seeded training rows of 10 words or more, and the first 300 validation rows."""
    def rows(name, min_words):
        lines = (sst2_dir / name).read_text(encoding="utf-8").splitlines()[1:]
        pairs = [line.split("\t") for line in lines]
        return [(text, int(label)) for text, label in pairs if len(text.split()) >= min_words]

    train = rows("train.tsv", 10)
    chosen = np.random.default_rng(0).choice(len(train), 2000, replace=False)
    validation = rows("validation.tsv", 0)[:300]
    return ([train[i][0] for i in chosen], [train[i][1] for i in chosen],
            [t for t, _ in validation], [y for _, y in validation])


def test_sentence_encoder_and_logistic_regression_beat_chance_on_sst2(sst2_sample):
    X, y, X_val, y_val = sst2_sample
    # 8 epochs: at 4 the features scored 0.63-0.67 over three seeds, too near the 0.6 this asserts
    classifier = EncoderClassifier(d_model=32, n_heads=2, n_layers=1, d_ff=64, vocab_size=2000, epochs=8,
                                   batch_size=32, lr=3e-3, precision="fp32", random_state=0)
    pipeline = Pipeline([("encode", SentenceEncoder(model=classifier, pooling=None)),
                         ("classify", LogisticRegression(max_iter=1000))])
    pipeline.fit(X, y)
    majority = max(np.mean(y_val), 1 - np.mean(y_val))
    assert pipeline.score(X_val, y_val) > majority + 0.1
    assert pipeline.get_params()["encode__model__d_model"] == 32  # nested parameters reach the classifier
    payload = pickle.dumps(pipeline)  # the trained encoder travels as safetensors bytes
    assert b"torch.nn" not in payload
    np.testing.assert_array_equal(pickle.loads(payload).predict(X_val), pipeline.predict(X_val))
