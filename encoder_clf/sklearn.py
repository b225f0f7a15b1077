"""scikit-learn estimators: :class:`EncoderClassifier` (texts → labels) and :class:`SentenceEncoder` (texts → vectors).

One thin layer over the workflows, as skorch adapts torch: ``fit`` turns the
estimator's plain parameters into a :class:`~encoder_clf.training.config.RunConfig`
and calls :func:`~encoder_clf.training.run.train_on_splits`, which trains in
memory and returns the model; ``predict_proba`` and ``transform`` call
:func:`~encoder_clf.inference.forward_batches` and :func:`encoder_clf.features.embed`.
``X`` is a 1-D list, array or Series of strings (a one-column 2-D array or
DataFrame also works), so both estimators compose with ``Pipeline``, ``cross_val_score`` and ``GridSearchCV``.

Persistence: ``save(dir)`` writes a model directory (``config.json``,
``model.safetensors``, ``tokenizer.json``) plus ``estimator.json`` (parameters,
classes, history), and ``EncoderClassifier.load(dir)`` reads it back, or any
``model/`` folder that ``encoder-clf train`` wrote. Pickling (what ``joblib``,
``GridSearchCV`` workers and sklearn users rely on) also works: the weights
travel as safetensors bytes with the JSON config and ``tokenizer.json`` text,
never as pickled torch modules.

Every scikit-learn estimator check runs on both estimators (``tests/test_sklearn.py``,
``parametrize_with_checks``). Their tags say what they take: 1-D input, or a
one-column 2-D array or frame, of strings; so the checks that feed numbers
(random floats, NaN, sparse matrices, dtypes, numeric 2-D shapes) are expected
to fail, each listed there with its reason, and the data-dependent ones that
matter for text (fit contract, pickling, classes, order and subset invariance,
containers) are re-stated on texts. ``check_fit_idempotent`` holds with a fixed
``random_state`` and a pinned tokenizer (``settings=["tokenizer.path=..."]``),
because the tokenizers trainers may break frequency ties differently from run to
run (see the README), which the ``non_deterministic`` tag reports.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, clone
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_consistent_length, check_is_fitted

from . import features
from .data.config import DataConfig
from .data.splits import Split, Splits, carve_validation
from .data.tokenization import TokenizerConfig, pad_id
from .data.tokenization import encode as tokenize
from .errors import UsageError
from .inference import forward_batches, softmax
from .model.config import ModelConfig
from .persistence.model_dir import load_model, model_files, model_from_files, save_model
from .runtime import default_device, resolve_precision
from .settings import with_overrides
from .training.config import RunConfig, TrainConfig
from .training.run import train_on_splits

ESTIMATOR_FILE = "estimator.json"
FORMAT = "encoder-clf-sklearn/1"
# Which constructor parameters fill which RunConfig field; the defaults are the library's (the SST-2 preset).
MODEL_PARAMS = ("d_model", "n_heads", "n_layers", "d_ff", "attention", "pooling", "dropout")
TRAIN_PARAMS = ("epochs", "batch_size", "lr", "weight_decay", "patience", "precision")


def _texts(X) -> list[str]:
    """One string per sample from a list, 1-D array, Series, or one-column 2-D array/DataFrame."""
    if hasattr(X, "toarray") or hasattr(X, "tocsr"):  # a scipy sparse matrix or array
        raise TypeError("sparse input is not supported: X must be a 1-D sequence of texts (one string per sample)")
    if hasattr(X, "to_numpy"):
        X = X.to_numpy()
    array = np.asarray(X, dtype=object)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"X must be a 1-D sequence of texts (one string per sample); got shape {array.shape}")
    for i, text in enumerate(array):
        if not isinstance(text, str):
            raise ValueError(f"X[{i}] is {type(text).__name__} {text!r}, not a string; pass one text per sample")
    return [str(text) for text in array]


def _require_y(estimator, y, why: str = "pass the labels of X") -> None:
    if y is None:  # scikit-learn's own wording, which its estimator checks look for
        raise ValueError(f"{type(estimator).__name__} requires y to be passed, but the target y is None; {why}")


def _text_tags(tags):
    """Texts in: 1-D, or a one-column 2-D array or frame (two_d_array), of strings."""
    tags.input_tags.one_d_array = True
    tags.input_tags.two_d_array = True
    tags.input_tags.string = True
    return tags


@contextlib.contextmanager
def _training_log(verbose: bool):
    """With ``verbose``, the loop's evaluation lines on stderr (unless logging already shows them)."""
    logger = logging.getLogger("encoder_clf")
    shown = not verbose or logger.hasHandlers()
    handler = logging.StreamHandler()
    if not shown:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        if not shown:
            logger.removeHandler(handler)
            logger.setLevel(logging.NOTSET)


class EncoderClassifier(ClassifierMixin, BaseEstimator):
    """A self-attention text classifier trained from scratch, with scikit-learn's interface.

    Parameters map onto the run config: ``d_model`` … ``dropout`` onto
    ``model.*``, ``tokenizer`` (the tokenizer model: wordpiece, bpe, unigram),
    ``vocab_size``, ``min_frequency``, ``max_length`` onto ``tokenizer.*``,
    ``epochs`` … ``precision`` onto ``train.*``, ``class_weight`` onto
    ``data.class_weights`` and ``random_state`` onto ``train.seed`` (``None``:
    a fresh seed per fit). ``settings`` takes any other ``section.key=value``
    as ``--set`` does, applied last. ``fit`` holds out ``validation_fraction``
    of the data (seeded, stratified) to pick the best epoch; 0 evaluates on the
    training data itself. After ``fit``: ``classes_``, ``model_``,
    ``tokenizer_``, ``history_`` (the ``log.jsonl`` records) and
    ``validation_scores_`` (metrics on the held-out part).
    """

    def __init__(self, d_model: int = ModelConfig.d_model, n_heads: int = ModelConfig.n_heads,
                 n_layers: int = ModelConfig.n_layers, d_ff: int = ModelConfig.d_ff,
                 attention: str = ModelConfig.attention, pooling: str = ModelConfig.pooling,
                 dropout: float = ModelConfig.dropout, tokenizer: str = TokenizerConfig.model,
                 vocab_size: int = TokenizerConfig.vocab_size, min_frequency: int = TokenizerConfig.min_frequency,
                 max_length: int = TokenizerConfig.max_length, epochs: int = TrainConfig.epochs,
                 batch_size: int = TrainConfig.batch_size, lr: float = TrainConfig.lr,
                 weight_decay: float = TrainConfig.weight_decay, patience: int = TrainConfig.patience,
                 class_weight: str | None = None, validation_fraction: float = DataConfig.validation_fraction,
                 precision: str = TrainConfig.precision, random_state=None, settings: list[str] | None = None,
                 verbose: bool = False) -> None:
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_layers = n_layers
        self.d_ff = d_ff
        self.attention = attention
        self.pooling = pooling
        self.dropout = dropout
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.min_frequency = min_frequency
        self.max_length = max_length
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.patience = patience
        self.class_weight = class_weight
        self.validation_fraction = validation_fraction
        self.precision = precision
        self.random_state = random_state
        self.settings = settings
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = _text_tags(super().__sklearn_tags__())
        # The tokenizers trainers may break frequency ties differently between runs: only a pinned
        # tokenizer (settings=["tokenizer.path=..."]) and a fixed random_state make fits repeatable.
        pinned = any(s.startswith("tokenizer.path=") for s in self.settings or [])
        tags.non_deterministic = self.random_state is None or not pinned
        return tags

    def run_config(self, seed: int = 0) -> RunConfig:
        """The run config these parameters describe (validated: a bad value raises a one-line ``UsageError``)."""
        model = ModelConfig(**{name: getattr(self, name) for name in MODEL_PARAMS},
                            max_positions=max(ModelConfig.max_positions, self.max_length))
        tokenizer = TokenizerConfig(model=self.tokenizer, vocab_size=self.vocab_size,
                                    min_frequency=self.min_frequency, max_length=self.max_length)
        train = TrainConfig(**{name: getattr(self, name) for name in TRAIN_PARAMS}, seed=seed)
        config = RunConfig(model=model, tokenizer=tokenizer, data=DataConfig(class_weights=self.class_weight),
                           train=train)
        return with_overrides(config, list(self.settings or []))

    def fit(self, X, y) -> EncoderClassifier:
        _require_y(self, y)
        y = np.asarray(y)
        check_classification_targets(y)  # the target's type first: it decides whether this is a classifier's job
        if len(np.unique(y)) == 1:
            raise ValueError(f"EncoderClassifier needs at least 2 classes in y; got only {[str(c) for c in set(y)]}")
        texts = _texts(X)
        check_consistent_length(texts, y)
        if len(texts) == 0:
            raise ValueError("0 samples given to fit; pass at least one text per class")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1); got {self.validation_fraction!r}")
        classes, ids = np.unique(y, return_inverse=True)
        names = [str(c) for c in classes]
        if len(set(names)) < len(names):
            raise ValueError(f"class labels {list(classes)} collide as text ({names}); use distinct labels")
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max)) \
            if not isinstance(self.random_state, (int, np.integer)) else int(self.random_state)
        config = self.run_config(seed)
        train, validation = self._split(texts, ids, seed)
        splits = Splits(train, validation, None, names)
        with _training_log(self.verbose):
            result = train_on_splits(config, splits, progress=self.verbose)  # in memory: nothing touches the disk
        self.classes_ = classes
        self.model_, self.tokenizer_ = result.model, result.tokenizer
        self.history_ = result.history
        self.validation_scores_ = result.metrics["validation"]
        return self

    def _split(self, texts: list[str], ids: np.ndarray, seed: int) -> tuple[Split, Split]:
        """The seeded hold-out that picks the best evaluation (the fit data itself when validation_fraction is 0)."""
        everything = Split(texts, ids, "fit data")
        if self.validation_fraction == 0:
            return everything, everything
        return carve_validation(everything, self.validation_fraction, seed)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities ``(n, len(classes_))``, columns in the order of ``classes_``."""
        check_is_fitted(self)
        texts = _texts(X)
        device = default_device()
        self.model_.to(device)
        sequences, _ = tokenize(self.tokenizer_, texts)
        return softmax(forward_batches(self.model_, sequences, pad_id(self.tokenizer_), TrainConfig.eval_batch_size,
                                       resolve_precision(self.precision, device)).logits)

    def predict(self, X) -> np.ndarray:
        best = self.predict_proba(X).argmax(axis=1)
        return self.classes_[best]

    def save(self, directory: str | Path) -> Path:
        """Write a model directory plus ``estimator.json``; :meth:`load` reads it, so do the CLI and ``features``."""
        check_is_fitted(self)
        directory = save_model(directory, self.model_, self.tokenizer_)
        params = {key: value for key, value in self.get_params(deep=False).items() if key != "random_state"}
        seed = self.random_state if isinstance(self.random_state, (int, np.integer)) else None
        record = {"format": FORMAT, "params": {**params, "random_state": None if seed is None else int(seed)},
                  "classes": self.classes_.tolist(), "history": self.history_,
                  "validation_scores": self.validation_scores_}
        try:
            text = json.dumps(record, indent=2)
        except TypeError as err:
            raise ValueError(f"cannot save: a parameter or class label is not JSON ({err}); "
                             "use str/int/float/bool labels and parameters") from None
        (directory / ESTIMATOR_FILE).write_text(text + "\n", encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> EncoderClassifier:
        """A fitted estimator from :meth:`save`'s directory, or from any classifier ``model/`` directory.

        Without ``estimator.json`` the architecture parameters come from the
        model's config and the classes are its label names.
        """
        directory = Path(directory)
        model, tokenizer = load_model(directory)
        file = directory / ESTIMATOR_FILE
        if file.is_file():
            try:
                raw = json.loads(file.read_text(encoding="utf-8"))
                estimator = cls(**raw["params"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise UsageError(f"{file} is not an encoder-clf estimator record ({err}); re-save it") from None
            classes, history, scores = raw["classes"], raw.get("history", []), raw.get("validation_scores", {})
        else:
            estimator = cls(**{name: getattr(model.config, name) for name in MODEL_PARAMS})
            classes, history, scores = list(model.config.labels), [], {}
        if len(classes) != model.config.num_labels:
            raise UsageError(f"{file}: {len(classes)} classes but the model has {model.config.num_labels} outputs; "
                             "re-save the estimator")
        estimator.classes_ = np.asarray(classes)
        estimator.model_, estimator.tokenizer_ = model, tokenizer
        estimator.history_, estimator.validation_scores_ = history, scores
        return estimator

    def __getstate__(self) -> dict:
        """Plain data for pickle: the model directory's files as bytes (safetensors and JSON), as save_model writes."""
        state = dict(super().__getstate__())
        model, tokenizer = state.pop("model_", None), state.pop("tokenizer_", None)
        if model is not None:
            state["_model_files"] = model_files(model, tokenizer)
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        files = state.pop("_model_files", None)
        if files is not None:
            state["model_"], state["tokenizer_"] = model_from_files(files, "pickled EncoderClassifier")
        super().__setstate__(state)


class SentenceEncoder(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Texts → sentence vectors ``(n, d)`` float32, through :func:`encoder_clf.features.embed`.

    ``model`` is where the encoder comes from:

    - a model directory (one of our classifiers' ``model/`` folders or a
      BERT-family checkpoint) or a Hub id: ``fit`` only loads it (``y`` is ignored);
    - an :class:`EncoderClassifier` (unfitted): ``fit(X, y)`` trains a clone
      of it on ``X, y`` and keeps it as ``classifier_``; its encoder makes the
      features. Its parameters tune as ``model__<name>`` in ``GridSearchCV``;
    - ``None``: the same with ``EncoderClassifier()`` (the library's preset).

    ``pooling`` is ``mean``, ``cls`` or ``max``, or ``None`` for the model's own
    (for a classifier: the vectors its head reads). Pickling keeps a trained
    encoder's weights; for a directory or Hub id it keeps the name, and the
    encoder is loaded again from there after unpickling.
    """

    def __init__(self, model=None, pooling: str | None = "mean", normalize: bool = False, batch_size: int = 64,
                 precision: str = "auto") -> None:
        self.model = model
        self.pooling = pooling
        self.normalize = normalize
        self.batch_size = batch_size
        self.precision = precision

    def _trains(self) -> bool:
        return self.model is None or isinstance(self.model, EncoderClassifier)

    def __sklearn_tags__(self):
        tags = _text_tags(super().__sklearn_tags__())
        tags.target_tags.required = self._trains()
        tags.transformer_tags.preserves_dtype = []  # texts in, float32 out
        return tags

    def fit(self, X, y=None) -> SentenceEncoder:
        if self._trains():
            _require_y(self, y, "it trains its encoder on (X, y) when model is None or an EncoderClassifier; "
                                "pass y, or set model to a model directory")
        texts = _texts(X)
        if self._trains():
            self.classifier_ = clone(self.model if self.model is not None else EncoderClassifier()).fit(texts, y)
        elif not isinstance(self.model, (str, os.PathLike)):
            raise ValueError(f"model must be a model directory, a Hub id, an EncoderClassifier or None; "
                             f"got {type(self.model).__name__}")
        self._encoder = None
        encoder = self._feature_encoder()
        encoder.pooling_module(self.pooling)  # refuse an unknown pooling now, not at transform time
        self.dim_ = encoder.dim
        return self

    def _feature_encoder(self) -> features.FeatureEncoder:
        """The loaded encoder, rebuilt after unpickling (from ``classifier_`` or by loading ``model`` again)."""
        if getattr(self, "_encoder", None) is None:
            if hasattr(self, "classifier_"):
                self._encoder = features.FeatureEncoder.of_classifier(self.classifier_.model_,
                                                                      self.classifier_.tokenizer_)
            else:
                self._encoder = features.load_feature_encoder(self.model)
        return self._encoder

    def transform(self, X) -> np.ndarray:
        check_is_fitted(self)
        return features.embed(self._feature_encoder(), _texts(X), pooling=self.pooling, normalize=self.normalize,
                              batch_size=self.batch_size, precision=self.precision)

    @property
    def _n_features_out(self) -> int:
        return self.dim_

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        state.pop("_encoder", None)  # torch modules: rebuilt from classifier_ (safetensors) or model
        return state
