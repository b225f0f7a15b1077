"""Plots: attention heatmaps, token weights, parts' contributions, confusion matrices, training curves, feature maps.

Every function builds a :class:`matplotlib.figure.Figure` on its own Agg
canvas and returns it; :func:`save` writes one to PNG. Nothing goes through
``pyplot``, so no figure is left open in its global registry, no backend is
switched, and the functions are safe in threads, tests and servers. (A
notebook shows a returned figure as the last expression of a cell.)

The PNGs a training run writes (confusion matrix, training curves) are drawn
in :mod:`encoder_clf.metrics`, a workflow, and re-exported here, so that this
face gathers every plot without the workflows importing upwards.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from .metrics import (  # noqa: F401  (re-exported: every plot in one place)
    DPI,
    confusion_matrix_figure,
    curves_figure,
    new_figure,
    plot_confusion_matrix,
    plot_training_curves,
    read_log,
    save,
)


def _token_fontsize(n: int) -> float:
    """Tick labels: 9 pt for short texts, 7 pt (still readable, one row per 0.15 in) for long ones."""
    return 9.0 if n <= 24 else 7.0


def _token_cell(n: int) -> float:
    """Inches per token row/column: each must fit one line of the tick labels' type."""
    return 0.24 if n <= 24 else 0.15


def attention_figure(tokens: Sequence[str], weights: np.ndarray, title: str = "Attention",
                     heads: Sequence[int] | None = None) -> Figure:
    """Heatmaps of one layer's attention, one panel per head, tokens on both axes.

    ``weights`` is ``(heads, T, T)`` for one text (rows: queries, columns: keys,
    each row summing to 1). All panels share one colour scale, so heads compare.
    ``heads`` picks which heads to draw (default all).
    """
    weights = np.asarray(weights, dtype=np.float32)
    if weights.ndim != 3 or weights.shape[1] != weights.shape[2] or weights.shape[1] != len(tokens):
        raise ValueError(f"weights must be (heads, T, T) with T = {len(tokens)} tokens; got {weights.shape}")
    heads = list(range(weights.shape[0])) if heads is None else list(heads)
    n = len(tokens)
    cols = math.ceil(math.sqrt(len(heads)))
    rows = math.ceil(len(heads) / cols)
    panel = max(3.2, _token_cell(n) * n + 1.2)  # grows with the text so labels never overlap
    fig = new_figure(cols * panel + 0.8, rows * panel + 0.6)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    size = _token_fontsize(n)
    vmax = float(weights[heads].max()) or 1.0
    image = None
    for ax, head in zip(axes, heads):
        image = ax.imshow(weights[head], cmap="viridis", vmin=0.0, vmax=vmax, aspect="equal")
        ax.set_xticks(range(n), labels=tokens, rotation=90, fontsize=size)
        ax.set_yticks(range(n), labels=tokens, fontsize=size)
        ax.set_title(f"head {head + 1}", fontsize=10)
        ax.set_xlabel("key (attended to)", fontsize=9)
        ax.set_ylabel("query (attending)", fontsize=9)
    for ax in axes[len(heads):]:
        ax.set_visible(False)
    fig.colorbar(image, ax=list(axes[: len(heads)]), shrink=0.8, label="attention weight")
    fig.suptitle(title, fontsize=11)
    return fig


def explanation_figure(explanation, layer: int | None = None) -> Figure:
    """:func:`attention_figure` of an :class:`encoder_clf.explanations.Explanation`'s layer (from 1; ``None``: last)."""
    number = explanation.n_layers if layer is None else layer
    label = explanation.label
    text = explanation.text if len(explanation.text) <= 80 else explanation.text[:77] + "..."
    title = (f"Self-attention, layer {number} of {explanation.n_layers}; predicted {label} "
             f"(p = {explanation.probabilities[label]:.2f})\n\u201c{text}\u201d")
    return attention_figure(explanation.tokens, explanation.layer(layer), title)


def token_weights_figure(tokens: Sequence[str], weights: np.ndarray, title: str = "Token weights",
                         xlabel: str = "share of the sentence vector") -> Figure:
    """Horizontal bars, one per token in text order: how much the pooled vector draws on each token."""
    weights = np.asarray(weights, dtype=np.float32)
    if weights.shape != (len(tokens),):
        raise ValueError(f"weights must have one value per token ({len(tokens)}); got shape {weights.shape}")
    fig = new_figure(5.5, max(2.5, _token_cell(len(tokens)) * len(tokens) + 1.2))
    ax = fig.subplots()
    ax.barh(range(len(tokens)), weights, color="tab:blue")
    ax.set_yticks(range(len(tokens)), labels=tokens, fontsize=_token_fontsize(len(tokens)))
    ax.invert_yaxis()  # first token at the top, as the text reads
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    return fig


def contributions_figure(explanation, top: int = 10) -> Figure:
    """What each part of the head adds to the predicted label's logit and, with n-gram logits, the top n-grams.

    Bars are centred logits (see :mod:`encoder_clf.explanations`): to the right for
    the predicted label, to the left against it.
    """
    ngrams = explanation.ngrams[:top]
    rows = [explanation.parts] + ([ngrams] if ngrams else [])
    fig = new_figure(6.0, 1.2 + 0.3 * sum(len(r) for r in rows) + 0.8 * len(rows))
    axes = np.atleast_1d(fig.subplots(len(rows), 1, squeeze=False,
                                      height_ratios=[len(r) + 1 for r in rows]).ravel())
    titles = [f"parts of the head (weight in the mix) for {explanation.label!r}", f"top {len(ngrams)} n-grams"]
    for ax, items, title in zip(axes, rows, titles):
        names = [f"{c.name} ({c.weight:.2f})" if items is explanation.parts else c.name for c in items]
        values = [c.logit for c in items]
        ax.barh(range(len(items)), values, color=["tab:blue" if v >= 0 else "tab:red" for v in values])
        ax.set_yticks(range(len(items)), labels=names, fontsize=9)
        ax.invert_yaxis()
        ax.axvline(0.0, color="grey", linewidth=0.8)
        ax.set_title(title, fontsize=10)
    axes[-1].set_xlabel("centred logit added")
    return fig


def _pca(features: np.ndarray, random_state: int) -> tuple[np.ndarray, list[str]]:
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, random_state=random_state)
    points = pca.fit_transform(features)
    share = pca.explained_variance_ratio_
    return points, [f"PC {i + 1} ({100 * share[i]:.0f}% of variance)" for i in range(2)]


def _tsne(features: np.ndarray, random_state: int) -> tuple[np.ndarray, list[str]]:
    from sklearn.manifold import TSNE

    perplexity = min(30.0, max(2.0, (len(features) - 1) / 3))  # t-SNE needs perplexity < n
    points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=random_state).fit_transform(features)
    return points, ["t-SNE 1", "t-SNE 2"]


# name -> (features (n, d), seed) -> (points (n, 2), axis labels)
PROJECTIONS = {"pca": _pca, "tsne": _tsne}


def projection_figure(features: np.ndarray, labels: Sequence, label_names: Sequence[str] | None = None,
                      method: str = "pca", title: str = "Sentence features", random_state: int = 0) -> Figure:
    """Scatter ``features`` ``(n, d)`` projected to 2-D (``pca`` or ``tsne``), coloured by label.

    ``labels`` are class ids into ``label_names`` (or the class values themselves
    when ``label_names`` is ``None``).
    """
    if method not in PROJECTIONS:
        raise ValueError(f"unknown projection {method!r}; choose one of {', '.join(PROJECTIONS)}")
    features, labels = np.asarray(features, dtype=np.float32), np.asarray(labels)
    if features.ndim != 2 or len(features) != len(labels) or len(features) < 3:
        raise ValueError(f"need features (n >= 3, d) and one label per row; got {features.shape} and {labels.shape}")
    points, axis_labels = PROJECTIONS[method](features, random_state)
    fig = new_figure(6.0, 5.0)
    ax = fig.subplots()
    for value in np.unique(labels):
        chosen = labels == value
        name = label_names[int(value)] if label_names is not None else str(value)
        ax.scatter(points[chosen, 0], points[chosen, 1], s=10, alpha=0.6, label=f"{name} ({chosen.sum()})")
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(f"{title}: {method.upper() if method == 'pca' else 't-SNE'} of {features.shape[1]}-d vectors",
                 fontsize=10)
    ax.legend(title="label", fontsize=8)
    return fig
