"""scikit-learn estimators: :class:`EncoderClassifier` (texts → labels), :class:`EncoderRegressor` (texts → numbers)
and :class:`SentenceEncoder` (texts → vectors).

One thin layer over the workflows, as skorch adapts torch: ``fit`` turns the
estimator's plain parameters into a :class:`~encoder_clf.training.config.RunConfig`
and calls :func:`~encoder_clf.training.run.train_on_splits`, which trains in
memory and returns the model; ``predict``, ``predict_proba`` and ``transform``
call :func:`~encoder_clf.inference.forward_texts` and :func:`encoder_clf.features.embed`.
The two estimators that train share one base class (parameters, fitting,
prediction, persistence); they differ in the targets they take. All compose
with ``Pipeline``, ``cross_val_score`` and ``GridSearchCV``.

The shapes they take:

- ``X``: one text per sample, as a 1-D list, array or Series of strings (a
  one-column 2-D array or DataFrame also works); or a pair of texts per sample,
  as a list of 2-tuples, a two-column array or a two-column DataFrame, which
  trains a pair model (``[CLS] first [SEP] second [SEP]``, with token types).
  ``predict`` wants X in the shape ``fit`` saw (pairs or single texts) and
  refuses the other with a ``ValueError``. A DataFrame's column names are kept
  as ``feature_names_in_``; a frame given later with other names, or the same
  in another order, is refused (a pair model reads its columns by position).
  :class:`SentenceEncoder` embeds single texts only.
- ``y`` of :class:`EncoderClassifier`: one label per sample (1-D: a
  single-label model; ``classes_`` the sorted labels; ``predict`` gives labels,
  ``predict_proba`` the softmax ``(n, classes)``), or scikit-learn's multi-label
  convention, a 0/1 indicator matrix ``(n, K)`` (a multi-label model;
  ``classes_`` the DataFrame's column names, else ``0 … K-1``; ``predict``
  gives an int64 indicator ``(n, K)`` by the thresholds tuned on the held-out
  part, ``predict_proba`` each label's probability ``(n, K)``).
- ``y`` of :class:`EncoderRegressor`: one number per sample; the model learns
  it standardised, and ``predict`` gives float64 values in y's own units
  (``score`` is R²).

Persistence: ``save(dir)`` writes a model directory (``config.json``,
``model.safetensors``, ``tokenizer.json``) plus ``estimator.json`` (parameters,
classes, history), and ``EncoderClassifier.load(dir)`` (or
``EncoderRegressor.load``) reads it back, or any ``model/`` folder of its task
that ``encoder-clf train`` wrote. Pickling (what ``joblib``, ``GridSearchCV``
workers and sklearn users rely on) also works: the weights travel as
safetensors bytes with the JSON config and ``tokenizer.json`` text, never as
pickled torch modules.

Every scikit-learn estimator check runs on the three estimators (``tests/test_sklearn.py``,
``parametrize_with_checks``). Their tags say what they take: 1-D input, or a
one- or two-column 2-D array or frame, of strings; so the checks that feed numbers
(random floats, NaN, sparse matrices, dtypes, numeric 2-D shapes) are expected
to fail, each listed there with its reason, and the data-dependent ones that
matter for text (fit contract, pickling, classes, multi-label output, order and
subset invariance, containers) are re-stated on texts. ``check_fit_idempotent``
holds with a fixed ``random_state`` (the tokenizer's training is repeatable too,
:func:`~encoder_clf.data.tokenization.train_tokenizer`), which the
``non_deterministic`` tag reports.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassifierMixin,
    ClassNamePrefixFeaturesOutMixin,
    RegressorMixin,
    TransformerMixin,
    clone,
)
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_array, check_consistent_length, check_is_fitted, column_or_1d

from . import features
from .data.config import DataConfig
from .data.splits import Split, Splits, carve_validation
from .data.tokenization import TokenizerConfig
from .errors import UsageError
from .inference import forward_texts
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


def _inputs(X) -> tuple[list, bool]:
    """The texts of X and whether they are pairs: one string per sample from a list, 1-D array, Series, or
    one-column 2-D array/DataFrame; a ``(first, second)`` tuple per sample from a list of 2-tuples or a two-column
    array/DataFrame."""
    if hasattr(X, "toarray") or hasattr(X, "tocsr"):  # a scipy sparse matrix or array
        raise TypeError("sparse input is not supported: X must hold texts (one string, or a pair of strings, "
                        "per sample)")
    if hasattr(X, "to_numpy"):
        X = X.to_numpy()
    array = np.asarray(X, dtype=object)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim not in (1, 2) or array.ndim == 2 and array.shape[1] != 2:
        raise ValueError(f"X must be a 1-D sequence of texts (one string per sample) or two columns of texts (a pair "
                         f"per sample); got shape {array.shape}")
    for where, text in np.ndenumerate(array):
        if not isinstance(text, str):
            at = ", ".join(str(i) for i in where)
            raise ValueError(f"X[{at}] is {type(text).__name__} {text!r}, not a string; pass one text per sample "
                             "(or two, as two columns or 2-tuples, for pairs)")
    if array.ndim == 2:
        return [(str(first), str(second)) for first, second in array], True
    return [str(text) for text in array], False


def _texts(X) -> list[str]:
    """One string per sample (see :func:`_inputs`); pairs are refused."""
    texts, pairs = _inputs(X)
    if pairs:
        raise ValueError("X holds pairs of texts (two columns); sentence vectors are made of one text per sample")
    return texts


def _column_names(X) -> np.ndarray | None:
    """A DataFrame's column names, when all of them are strings (scikit-learn's ``feature_names_in_`` rule)."""
    columns = getattr(X, "columns", None)
    if columns is None or not all(isinstance(name, str) for name in columns):
        return None
    return np.asarray(list(columns), dtype=object)


def _require_y(estimator, y, why: str = "pass the labels of X") -> None:
    if y is None:  # scikit-learn's own wording, which its estimator checks look for
        raise ValueError(f"{type(estimator).__name__} requires y to be passed, but the target y is None; {why}")


def _text_tags(tags):
    """Texts in: 1-D, or a one-column (texts) or two-column (pairs) 2-D array or frame (two_d_array), of strings."""
    tags.input_tags.one_d_array = True
    tags.input_tags.two_d_array = True
    tags.input_tags.string = True
    return tags


def _shape(pairs: bool) -> str:
    return "pairs of texts (two columns or 2-tuples)" if pairs else "one text per sample"


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


def _with_parameter(init, name: str, default, annotation: str, after: str):
    """``init`` with one more parameter, ``name``, placed after ``after``.

    scikit-learn reads an estimator's parameters off its ``__init__`` signature, so a subclass that adds one must
    list them all; this lists the shared ones once (``get_params``, ``clone`` and ``repr`` see the full signature).
    """
    signature = inspect.signature(init)
    parameters = list(signature.parameters.values())
    at = [p.name for p in parameters].index(after) + 1
    parameters.insert(at, inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                                            annotation=annotation))
    signature = signature.replace(parameters=parameters)

    def __init__(self, *args, **kwargs) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        values = {key: value for key, value in bound.arguments.items() if key != "self"}
        setattr(self, name, values.pop(name))
        init(self, **values)

    __init__.__signature__ = signature
    __init__.__doc__ = init.__doc__
    return __init__


class _EncoderEstimator(BaseEstimator):
    """What the classifier and the regressor share: the parameters, fitting, forward passes and persistence.

    A subclass says which model tasks it serves (``_tasks``), turns ``y`` into targets (``fit``, through
    :meth:`_fit`) and keeps what its targets need beside the model (:meth:`_record`, :meth:`_restore`).
    """

    _tasks: tuple[str, ...] = ()

    def __init__(self, d_model: int = ModelConfig.d_model, n_heads: int = ModelConfig.n_heads,
                 n_layers: int = ModelConfig.n_layers, d_ff: int = ModelConfig.d_ff,
                 attention: str = ModelConfig.attention, pooling: str = ModelConfig.pooling,
                 dropout: float = ModelConfig.dropout, tokenizer: str = TokenizerConfig.model,
                 vocab_size: int = TokenizerConfig.vocab_size, min_frequency: int = TokenizerConfig.min_frequency,
                 max_length: int | None = TokenizerConfig.max_length, epochs: int | None = TrainConfig.epochs,
                 batch_size: int = TrainConfig.batch_size, lr: float = TrainConfig.lr,
                 weight_decay: float = TrainConfig.weight_decay, patience: int = TrainConfig.patience,
                 validation_fraction: float = DataConfig.validation_fraction, precision: str = TrainConfig.precision,
                 random_state=None, settings: list[str] | None = None, verbose: bool = False) -> None:
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
        self.validation_fraction = validation_fraction
        self.precision = precision
        self.random_state = random_state
        self.settings = settings
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = _text_tags(super().__sklearn_tags__())
        tags.non_deterministic = self.random_state is None  # a fixed one makes fits repeatable, tokenizer included
        return tags

    def run_config(self, seed: int = 0) -> RunConfig:
        """The run config these parameters describe (validated: a bad value raises a one-line ``UsageError``)."""
        model = ModelConfig(**{name: getattr(self, name) for name in MODEL_PARAMS},
                            max_positions=max(ModelConfig.max_positions, self.max_length or 0))
        tokenizer = TokenizerConfig(model=self.tokenizer, vocab_size=self.vocab_size,
                                    min_frequency=self.min_frequency, max_length=self.max_length)
        train = TrainConfig(**{name: getattr(self, name) for name in TRAIN_PARAMS}, seed=seed)
        data = DataConfig(class_weights=getattr(self, "class_weight", None))  # the classifier's; a regressor has none
        config = RunConfig(model=model, tokenizer=tokenizer, data=data, train=train)
        return with_overrides(config, list(self.settings or []))

    def _fit(self, X, targets: np.ndarray, names: list[str], task: str):
        """Train on X's texts (or pairs) and ``targets`` (a :class:`~encoder_clf.data.splits.Split`'s labels)."""
        texts, pairs = _inputs(X)
        check_consistent_length(texts, targets)
        if len(texts) == 0:
            raise ValueError("0 samples given to fit; pass the texts (or pairs) to learn from, one per target")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1); got {self.validation_fraction!r}")
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max)) \
            if not isinstance(self.random_state, (int, np.integer)) else int(self.random_state)
        config = self.run_config(seed)
        train, validation = self._split(texts, targets, seed)
        splits = Splits(train, validation, None, names, task, pairs)
        with _training_log(self.verbose):
            result = train_on_splits(config, splits, progress=self.verbose)  # in memory: nothing touches the disk
        self.model_, self.tokenizer_ = result.model, result.tokenizer
        self.history_ = result.history
        self.validation_scores_ = result.metrics["validation"]
        columns = _column_names(X)
        if columns is None:
            vars(self).pop("feature_names_in_", None)  # an earlier fit's columns no longer describe X
        else:
            self.feature_names_in_ = columns
        return self

    def _split(self, texts: list, targets: np.ndarray, seed: int) -> tuple[Split, Split]:
        """The seeded hold-out that picks the best evaluation (the fit data itself when validation_fraction is 0);
        stratified by class for single-label targets, at random for the others."""
        everything = Split(texts, targets, "fit data")
        if self.validation_fraction == 0:
            return everything, everything
        return carve_validation(everything, self.validation_fraction, seed)

    def _outputs(self, X) -> torch.Tensor:
        """The model's outputs ``(n, outputs)`` for X, which must have the shape fit saw (pairs or single texts)."""
        check_is_fitted(self)
        self._check_columns(X)
        texts, pairs = _inputs(X)
        if pairs != self.model_.config.text_pairs:
            raise ValueError(f"{type(self).__name__} was fitted on {_shape(self.model_.config.text_pairs)}, and X "
                             f"holds {_shape(pairs)}; pass X in the shape fit saw")
        device = default_device()
        self.model_.to(device)
        return torch.from_numpy(forward_texts(self.model_, self.tokenizer_, texts, TrainConfig.eval_batch_size,
                                              resolve_precision(self.precision, device)))

    def _check_columns(self, X) -> None:
        """A DataFrame whose column names differ from fit's is refused: a pair model reads its columns by position,
        so swapped columns would be scored as the other text in silence (scikit-learn refuses such frames too)."""
        fitted, given = getattr(self, "feature_names_in_", None), _column_names(X)
        if fitted is None or given is None or list(given) == list(fitted):
            return
        if sorted(given) == sorted(fitted):
            raise ValueError(f"X's columns are {list(given)} and fit saw {list(fitted)}, in that order; pass "
                             f"X[{list(fitted)}]")
        raise ValueError(f"X's columns are {list(given)} and fit saw {list(fitted)}; rename them as fit saw them, "
                         "or pass the texts without column names (a list, an array)")

    def _record(self) -> dict:
        """What ``estimator.json`` keeps beside the parameters and the history."""
        return {}

    def _restore(self, record: dict | None, where: str) -> None:
        """Set what :meth:`_record` kept, from ``record`` (None: a plain model directory, without estimator.json)."""

    def save(self, directory: str | Path) -> Path:
        """Write a model directory plus ``estimator.json``; :meth:`load` reads it, so do the CLI and ``features``."""
        check_is_fitted(self)
        directory = save_model(directory, self.model_, self.tokenizer_)
        params = {key: value for key, value in self.get_params(deep=False).items() if key != "random_state"}
        seed = self.random_state if isinstance(self.random_state, (int, np.integer)) else None
        record = {"format": FORMAT, "params": {**params, "random_state": None if seed is None else int(seed)},
                  **self._record(), "history": self.history_, "validation_scores": self.validation_scores_}
        if hasattr(self, "feature_names_in_"):
            record["feature_names_in"] = self.feature_names_in_.tolist()
        try:
            text = json.dumps(record, indent=2)
        except TypeError as err:
            raise ValueError(f"cannot save: a parameter or class label is not JSON ({err}); "
                             "use str/int/float/bool labels and parameters") from None
        (directory / ESTIMATOR_FILE).write_text(text + "\n", encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> _EncoderEstimator:
        """A fitted estimator from :meth:`save`'s directory, or from any ``model/`` directory of its task.

        Without ``estimator.json`` the architecture parameters come from the
        model's config (and a classifier's classes are its label names).
        """
        directory = Path(directory)
        model, tokenizer = load_model(directory)
        if model.config.task not in cls._tasks:
            other = "EncoderRegressor" if model.config.task == "regression" else "EncoderClassifier"
            raise UsageError(f"{directory} holds a {model.config.task} model; load it with {other}.load")
        file = directory / ESTIMATOR_FILE
        record = None
        if file.is_file():
            try:
                record = json.loads(file.read_text(encoding="utf-8"))
                estimator = cls(**record["params"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise UsageError(f"{file} is not an encoder-clf estimator record ({err}); re-save it") from None
        else:
            estimator = cls(**{name: getattr(model.config, name) for name in MODEL_PARAMS})
        estimator.model_, estimator.tokenizer_ = model, tokenizer
        estimator.history_ = [] if record is None else record.get("history", [])
        estimator.validation_scores_ = {} if record is None else record.get("validation_scores", {})
        if record is not None and "feature_names_in" in record:
            estimator.feature_names_in_ = np.asarray(record["feature_names_in"], dtype=object)
        estimator._restore(record, str(file))
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
            state["model_"], state["tokenizer_"] = model_from_files(files, f"pickled {type(self).__name__}")
        super().__setstate__(state)


class EncoderClassifier(ClassifierMixin, _EncoderEstimator):
    """A self-attention text classifier trained from scratch, with scikit-learn's interface.

    Parameters map onto the run config: ``d_model`` … ``dropout`` onto
    ``model.*``, ``tokenizer`` (the tokenizer model: wordpiece, bpe, unigram),
    ``vocab_size``, ``min_frequency``, ``max_length`` onto ``tokenizer.*``,
    ``epochs`` … ``precision`` onto ``train.*``, ``class_weight`` onto
    ``data.class_weights`` and ``random_state`` onto ``train.seed`` (``None``:
    a fresh seed per fit). ``settings`` takes any other ``section.key=value``
    as ``--set`` does, applied last. ``fit`` holds out ``validation_fraction``
    of the data (seeded; stratified for one label per sample) to pick the best
    epoch, and to tune a multi-label model's thresholds; 0 evaluates on the
    training data itself. ``y`` is one label per sample, or a 0/1 indicator
    matrix ``(n, K)`` for multi-label (see the module's docstring for the
    shapes). After ``fit``: ``classes_``, ``model_``, ``tokenizer_``,
    ``history_`` (the ``log.jsonl`` records), ``validation_scores_``
    (metrics on the held-out part) and, when X was a DataFrame,
    ``feature_names_in_`` (its column names).
    """

    _tasks = ("single_label", "multi_label")
    __init__ = _with_parameter(_EncoderEstimator.__init__, "class_weight", None, "str | None", after="patience")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    def fit(self, X, y) -> EncoderClassifier:
        _require_y(self, y)
        names = getattr(y, "columns", None)  # an indicator DataFrame names its labels
        y = np.asarray(y.toarray() if hasattr(y, "toarray") else y)
        check_classification_targets(y)  # the target's type first: it decides whether this is a classifier's job
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if y.ndim == 2:
            if type_of_target(y) != "multilabel-indicator":
                raise ValueError(f"a 2-D y must be a 0/1 indicator matrix (one column per label, multi-label); got "
                                 f"{type_of_target(y)} of shape {y.shape}, and multi-output targets are not supported")
            classes = np.asarray(list(names)) if names is not None else np.arange(y.shape[1])
            targets, task = y.astype(np.float32), "multi_label"
        else:
            if len(np.unique(y)) == 1:
                raise ValueError(f"EncoderClassifier needs at least 2 classes in y; got only "
                                 f"{[str(c) for c in set(y)]}")
            classes, ids = np.unique(y, return_inverse=True)
            targets, task = ids, "single_label"
        labels = [str(c) for c in classes]
        if len(set(labels)) < len(labels):
            raise ValueError(f"class labels {list(classes)} collide as text ({labels}); use distinct labels")
        self._fit(X, targets, labels, task)
        self.classes_ = classes
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities ``(n, len(classes_))``, columns in the order of ``classes_``: a softmax for one label
        per sample, each label's own probability for multi-label."""
        logits = self._outputs(X)
        return self.model_.task.scores(logits).numpy()

    def predict(self, X) -> np.ndarray:
        """The labels ``(n,)`` (of ``classes_``), or a multi-label model's int64 indicators ``(n, len(classes_))``."""
        logits = self._outputs(X)
        predicted = self.model_.task.predict(logits).numpy()
        return predicted.astype(np.int64) if self.model_.config.task == "multi_label" else self.classes_[predicted]

    def _record(self) -> dict:
        return {"classes": self.classes_.tolist()}

    def _restore(self, record: dict | None, where: str) -> None:
        try:
            classes = list(self.model_.config.labels) if record is None else record["classes"]
        except KeyError as err:
            raise UsageError(f"{where} is not an encoder-clf estimator record ({err}); re-save it") from None
        if len(classes) != self.model_.config.num_labels:
            raise UsageError(f"{where}: {len(classes)} classes but the model has {self.model_.config.num_labels} "
                             "outputs; re-save the estimator")
        self.classes_ = np.asarray(classes)


class EncoderRegressor(RegressorMixin, _EncoderEstimator):
    """A self-attention text regressor trained from scratch: one number per text (or pair of texts).

    The parameters are :class:`EncoderClassifier`'s but ``class_weight``; ``fit`` holds out
    ``validation_fraction`` at random. The model learns the standardised target (the train part's mean and
    standard deviation travel in ``model.safetensors``), and ``predict`` gives float64 values in y's own
    units; ``score`` is R². After ``fit``: ``model_``, ``tokenizer_``, ``history_``, ``validation_scores_``
    (pearson, spearman, mse, mae on the held-out part) and, for a DataFrame X, ``feature_names_in_``.
    """

    _tasks = ("regression",)

    def fit(self, X, y) -> EncoderRegressor:
        _require_y(self, y, "pass the target values of X")
        name = getattr(y, "name", None)  # a Series names its target
        y = column_or_1d(check_array(y, ensure_2d=False, dtype=np.float64, ensure_min_samples=0, input_name="y"),
                         warn=True)
        return self._fit(X, y.astype(np.float32), [str(name) if name is not None else "target"], "regression")

    def predict(self, X) -> np.ndarray:
        """The predicted values ``(n,)``, float64, in the units of the y that fit saw."""
        logits = self._outputs(X)
        return self.model_.task.predict(logits).numpy().astype(np.float64)


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
        else:  # an earlier fit's classifier would otherwise make the features in place of the directory's encoder
            vars(self).pop("classifier_", None)
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
