"""The n-gram part of the head fitted as a linear model, to its optimum, before the encoder trains.

Trained by AdamW beside the encoder, a row of the n-gram table moves only in
the batches whose texts hold its n-gram: a few hundred steps on a few thousand
rows leave most rows far from their optimum, and the part scores well below a
TF-IDF + logistic regression baseline on the same rows. The part *is* such a
linear model over its own features (TF-IDF of the text's unigrams and hashed
bigrams, :class:`~encoder_clf.model.ngrams.NgramLogits`), so it is fitted the
way one is: scikit-learn's solvers (logistic regression over the classes, one
per label for multi-label, ridge regression on the standardised target) at
each L2 strength of :data:`STRENGTHS`, and, for classes and labels, once
more on the features scaled by each class's log-count ratios (:data:`SCALINGS`:
NB-LR, Wang and Manning 2012, one class against the rest; the scale folds into
the table, so the part computes the same sum). The table then stays fixed while
the encoder trains on its own loss.

The scaling tells the part which n-grams lean to a class before the fit
weighs them, which helps most when the rows are few for the features: on AG
News' 3,600 training rows it was chosen in 4 of 5 seeds and lifted the model
0.6 point on test on average. Where it does not help, validation keeps the
plain features (docs/BENCHMARKS.md).

Which fit (scaling and strength): the loss shortlists, the selection metric
picks. Each fit's validation logits are scored by the task's loss once scaled by one
fitted factor (:func:`scaled_loss`: the mix rescales the part anyway, see
:mod:`.stacking`), and those within :data:`LOSS_SHORTLIST` of the lowest are
kept; of them, the best by the run's metric wins (ties: the lower loss). A
loss hears every validation row, where accuracy moves in steps of one: on the
50 rows that a 500-row file holds out, two points a row, accuracy alone picked
among the strengths almost at random (AG News, 450 training rows, one seed:
C=1, and the part 4.7 points below TF-IDF + LR on test). Near its minimum the
loss is flat (GoEmotions: two strengths 0.06% apart, 0.9 accuracy points apart
on 4,548 rows), and there a large split's metric tells them apart
(docs/BENCHMARKS.md).
"""

from __future__ import annotations

import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from threadpoolctl import threadpool_limits

from ..data.batching import bucket_batches
from ..data.tokenized import TokenizedSplit
from ..metrics import compute_metrics
from ..model.classifier import TextClassifier
from ..model.ngrams import NgramLogits
from .stacking import stacking_weights
from .thresholds import tune_thresholds

STRENGTHS = (0.25, 1.0, 4.0, 16.0, 64.0)  # C, the inverse of the L2 penalty (scikit-learn's convention)
SCALINGS = ("none", "nb")  # the TF-IDF features as they are, or times each class's log-count ratios (NB-LR)
LOSS_SHORTLIST = 0.01  # fits whose scaled validation loss is within 1% of the lowest go on to the metric


@dataclass
class NgramFit:
    """What the fit chose and how it scored: for the run's log and ``metrics.json``."""

    C: float
    scaling: str  # of the features, one of SCALINGS
    validation: float  # the selection metric of the n-gram part alone on the validation split
    loss: float  # its validation loss at the best scale, which shortlisted the fit
    features: int  # distinct n-grams of the train split
    seconds: float


def fit_ngrams(model: TextClassifier, train: TokenizedSplit, validation: TokenizedSplit, metric: str,
               class_weights: str | None = None, batch_size: int = 512) -> NgramFit:
    """Set a TF-IDF n-gram part's table, idf and C to the best L2-regularised linear fit of ``train``.

    N-grams the train split never holds get idf 0: as in a vocabulary's TF-IDF, they are left out of the sum.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.feature_extraction.text import TfidfTransformer

    start = time.perf_counter()
    part: NgramLogits = model.head.parts["ngrams"]
    counts = term_matrix(part, train, batch_size, weighted=False)
    seen = np.unique(counts.indices)  # the n-grams the train split holds
    # the part's own weighting (NgramLogits.terms), computed from the counts in hand rather than a second pass
    counts = counts[:, seen]
    tfidf = TfidfTransformer(sublinear_tf=True).fit(counts)
    idf = np.zeros(part.table.num_embeddings)
    idf[seen] = tfidf.idf_
    part.idf.copy_(torch.from_numpy(idf))
    x_train = tfidf.transform(counts)
    x_val = term_matrix(part, validation, batch_size)[:, seen]
    task, outputs, targets = model.config.task, model.config.num_outputs, train.labels
    if task == "regression":
        targets = model.task.standardise(torch.as_tensor(targets, dtype=torch.float64)).numpy()
    scalings = SCALINGS[:1] if task == "regression" else SCALINGS  # NB needs classes
    ratios = None if task == "regression" else log_count_ratios((counts > 0).astype(np.float64),
                                                                  _positives(task, targets, outputs))
    grid = [(scaling, strength) for scaling in scalings for strength in STRENGTHS]

    def solved(choice: tuple[str, float]) -> np.ndarray:
        scaling, strength = choice
        return _solve(task, x_train, targets, strength, class_weights, outputs, ratios if scaling == "nb" else None)

    # The grid's fits run side by side, one core each: the solvers release the GIL, and their vector products,
    # which OpenBLAS would spread over every core for no gain (GoEmotions: the same 17 s a fit on 1 thread or 2),
    # keep to one thread. (The warning filter is set here, once: warnings' filters are the process's, and a
    # catch_warnings in each thread would race.)
    workers = max(1, min(len(grid), torch.get_num_threads()))
    with warnings.catch_warnings(), threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        # a strength past the data's separable point converges slowly, not wrongly
        warnings.simplefilter("ignore", ConvergenceWarning)
        solutions = list(pool.map(solved, grid))
    fits = []  # (scaled validation loss, strength, scaling, weights, validation logits)
    for (scaling, strength), weights in zip(grid, solutions):
        logits = x_val @ weights.T
        fits.append((scaled_loss(model, logits, validation.labels), strength, scaling, weights, logits))
    lowest = min(loss for loss, *_ in fits)
    shortlist = [(selection_score(model, logits, validation.labels, metric), loss, strength, scaling, weights)
                 for loss, strength, scaling, weights, logits in fits if loss <= lowest * (1 + LOSS_SHORTLIST)]
    value, loss, strength, scaling, weights = max(shortlist, key=lambda entry: (entry[0], -entry[1]))
    table = torch.zeros_like(part.table.weight)
    table[torch.from_numpy(seen)] = torch.from_numpy(weights.T).to(table.dtype)
    part.table.weight.data.copy_(table)
    part.strength.fill_(strength)
    return NgramFit(strength, scaling, float(value), loss, len(seen), round(time.perf_counter() - start, 2))


def term_matrix(part: NgramLogits, tokens: TokenizedSplit, batch_size: int = 512,
                weighted: bool = True) -> sp.csr_matrix:
    """Each text's n-gram features ``(texts, table rows)``: the weights the part sums (or, unweighted, counts)."""
    rows, columns, values = [], [], []
    with torch.no_grad():
        for index in bucket_batches(tokens.lengths, batch_size, shuffle=False):
            ids, mask, types, _ = tokens.batch(index)
            if weighted:
                terms, weight = part.terms(ids, mask, types)
            else:
                terms, keep = part.indices(ids, mask, types)
                weight = keep.float()
            real = weight != 0
            rows.append(np.broadcast_to(np.asarray(index)[:, None], terms.shape)[real.numpy()])
            columns.append(terms[real].numpy())
            values.append(weight[real].double().numpy())
    matrix = sp.csr_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(columns))),
                           shape=(len(tokens), part.table.num_embeddings))
    matrix.sum_duplicates()
    return matrix


def log_count_ratios(present: sp.csr_matrix, positives: np.ndarray) -> np.ndarray:
    """Each feature's log-count ratio ``(outputs, features)`` between each output's positive rows
    (``positives``, ``(outputs, rows)`` bool) and the rest: NBSVM's ``r``, smoothed by 1."""
    held = np.asarray(present.T @ positives.T.astype(np.float64)).T  # how many of each output's rows hold each
    inside, outside = 1 + held, 1 + np.asarray(present.sum(axis=0)).ravel() - held
    return np.log(inside / inside.sum(axis=1, keepdims=True)) - np.log(outside / outside.sum(axis=1, keepdims=True))


def _positives(task: str, targets: np.ndarray, outputs: int) -> np.ndarray:
    """``(outputs, rows)``: the rows of each class (single-label) or holding each label (multi-label)."""
    if task == "multi_label":
        return np.asarray(targets).T == 1
    return np.arange(outputs)[:, None] == np.asarray(targets)[None, :]


def _solve(task: str, x: sp.csr_matrix, targets: np.ndarray, strength: float, class_weights: str | None,
           outputs: int, ratios: np.ndarray | None = None) -> np.ndarray:
    """The L2-regularised linear fit's weights ``(outputs, features)``, without intercept (the part has none).

    With ``ratios`` (each output's log-count ratios, :func:`log_count_ratios`), each output is fitted one against
    the rest on the features scaled by its ratios, as NB-LR does (Wang and Manning, 2012), and the scale folds
    into its weights.
    """
    from sklearn.linear_model import LogisticRegression, Ridge

    def logistic(features: sp.csr_matrix, y: np.ndarray) -> LogisticRegression:
        solver = "liblinear" if len(np.unique(y)) == 2 else "lbfgs"  # liblinear's dual solver: fastest for one output
        return LogisticRegression(C=strength, fit_intercept=False, solver=solver, max_iter=1000,
                                  class_weight=class_weights).fit(features, y)

    def binary(positive: np.ndarray, output: int) -> np.ndarray:
        """One weight vector: positive rows against the rest (NB-scaled by ``output``'s ratios, if given)."""
        if ratios is None:
            return logistic(x, positive.astype(int)).coef_[0]
        return logistic(x.multiply(ratios[output]).tocsr(), positive.astype(int)).coef_[0] * ratios[output]

    weights = np.zeros((outputs, x.shape[1]))
    if task == "regression":
        weights[0] = Ridge(alpha=1 / strength, fit_intercept=False).fit(x, targets).coef_
    elif task == "multi_label":
        for label in range(outputs):
            y = targets[:, label] == 1
            if 0 < y.sum() < len(y):  # a label always (or never) present has nothing to fit
                weights[label] = binary(y, label)
    else:
        classes = np.unique(targets)
        if len(classes) == 2:  # one weight vector w: logits -w/2 and +w/2 give the same softmax
            w = binary(targets == classes[1], classes[1])
            weights[classes] = np.stack([-w / 2, w / 2])
        elif ratios is None:
            weights[classes] = logistic(x, targets).coef_
        else:
            weights[classes] = np.stack([binary(targets == c, c) for c in classes])
    return weights


def scaled_loss(model: TextClassifier, logits: np.ndarray, targets: np.ndarray) -> float:
    """The task's loss of ``logits`` times the one factor that minimises it: the loss that a mix of this part
    alone would reach (:func:`~encoder_clf.training.stacking.stacking_weights`)."""
    logits = torch.from_numpy(np.asarray(logits, dtype=np.float64))
    targets = torch.as_tensor(np.asarray(targets))
    scale = stacking_weights(logits[None], targets, model.task.loss)[0]
    return float(model.task.loss(scale * logits, targets))


def selection_score(model: TextClassifier, logits: np.ndarray, targets: np.ndarray, metric: str) -> float:
    """The selection metric of ``logits`` alone (a multi-label set's thresholds tuned on the same rows)."""
    logits = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    if model.config.task == "multi_label":
        probabilities = model.task.scores(logits).numpy()
        predicted = (probabilities >= tune_thresholds(probabilities, targets)).astype(int)
    else:
        predicted = model.task.predict(logits).numpy()
    return compute_metrics(targets, predicted, model.config.labels, model.config.task)[metric]
