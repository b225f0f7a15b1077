"""Plots: attention heatmaps, cross-segment attention, contributions, confusion matrices, curves, feature maps.

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
    records_of,
    save,
    smoothed,
)


def _token_fontsize(n: int) -> float:
    """Tick labels: 9 pt for short texts, 7 pt (still readable, one row per 0.15 in) for long ones."""
    return 9.0 if n <= 24 else 7.0


def _token_cell(n: int) -> float:
    """Inches per token row/column: each must fit one line of the tick labels' type."""
    return 0.24 if n <= 24 else 0.15


MAX_LABELLED = 96  # tokens labelled along a heatmap's axis: past it every k-th is, and the panel stops growing
SECOND_TEXT = "tab:orange"  # tick labels of a pair's second text
BOUNDARY = "white"  # the lines between a pair's two texts on a heatmap


def attention_figure(tokens: Sequence[str], weights: np.ndarray, title: str = "Attention",
                     heads: Sequence[int] | None = None, second_start: int | None = None) -> Figure:
    """Heatmaps of one layer's attention, one panel per head, tokens on both axes.

    ``weights`` is ``(heads, T, T)`` for one text (rows: queries, columns: keys,
    each row summing to 1). All panels share one colour scale, so heads compare.
    ``heads`` picks which heads to draw (default all). For a sentence pair,
    ``second_start`` is the position of the second text's first token: lines
    mark the boundary on both axes and its tokens' labels are coloured.
    """
    weights = np.asarray(weights, dtype=np.float32)
    if weights.ndim != 3 or weights.shape[1] != weights.shape[2] or weights.shape[1] != len(tokens):
        raise ValueError(f"weights must be (heads, T, T) with T = {len(tokens)} tokens; got {weights.shape}")
    n = len(tokens)
    if second_start is not None and not 0 < second_start < n:
        raise ValueError(f"second_start must be a position inside the {n} tokens; got {second_start}")
    heads = list(range(weights.shape[0])) if heads is None else list(heads)
    cols = math.ceil(math.sqrt(len(heads)))
    rows = math.ceil(len(heads) / cols)
    # a long text (up to 512 tokens) labels every k-th token, so that a panel stays a page wide, not 80 inches
    shown = list(range(0, n, math.ceil(n / MAX_LABELLED)))
    labels = [tokens[i] for i in shown]
    panel = max(3.2, _token_cell(len(shown)) * len(shown) + 1.2)  # grows with the labels so they never overlap
    fig = new_figure(cols * panel + 0.8, rows * panel + 0.6 + 0.2 * (second_start is not None))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    size = _token_fontsize(len(shown))
    vmax = float(weights[heads].max()) or 1.0
    image = None
    for ax, head in zip(axes, heads):
        image = ax.imshow(weights[head], cmap="viridis", vmin=0.0, vmax=vmax, aspect="equal")
        ax.set_xticks(shown, labels=labels, rotation=90, fontsize=size)
        ax.set_yticks(shown, labels=labels, fontsize=size)
        ax.set_title(f"head {head + 1}", fontsize=10)
        ax.set_xlabel("key (attended to)", fontsize=9)
        ax.set_ylabel("query (attending)", fontsize=9)
        if second_start is not None:
            ax.axvline(second_start - 0.5, color=BOUNDARY, linewidth=1.5)
            ax.axhline(second_start - 0.5, color=BOUNDARY, linewidth=1.5)
            for axis_labels in (ax.get_xticklabels(), ax.get_yticklabels()):
                for label, position in zip(axis_labels, shown):
                    if position >= second_start:
                        label.set_color(SECOND_TEXT)
    for ax in axes[len(heads):]:
        ax.set_visible(False)
    fig.colorbar(image, ax=list(axes[: len(heads)]), shrink=0.8, label="attention weight")
    note = "" if second_start is None else "\nwhite lines: where the second text starts; its tokens in orange"
    fig.suptitle(title + note, fontsize=11)
    return fig


def _shown(text, width: int = 80) -> str:
    """A text (or pair) for a title: quoted, each cut to fit ``width`` characters in all."""
    texts = [text] if isinstance(text, str) else list(text)
    limit = width // len(texts)
    return " / ".join(f"\u201c{t if len(t) <= limit else t[: limit - 3] + '...'}\u201d" for t in texts)


def _predicted(explanation) -> str:
    """What the model predicted, for a title: the class, the labels at their thresholds, or the value."""
    if explanation.task == "regression":
        return f"predicted {explanation.label} = {explanation.value:.3f}"
    sections, shown = explanation.sections, 4  # a title line holds about four labels
    chosen = ", ".join(f"{s.label} (p = {s.probability:.2f})" for s in sections[:shown])
    chosen += f" and {len(sections) - shown} more" if len(sections) > shown else ""
    if explanation.task == "multi_label" and not explanation.labels:
        return f"no label reaches its threshold; most probable {chosen}"
    return f"predicted {chosen}"


def explanation_figure(explanation, layer: int | None = None) -> Figure:
    """:func:`attention_figure` of an :class:`encoder_clf.explanations.Explanation`'s layer (from 1; ``None``: last).

    A sentence pair's heatmap marks where its second text starts.
    """
    number = explanation.n_layers if layer is None else layer
    title = (f"Self-attention, layer {number} of {explanation.n_layers}; {_predicted(explanation)}\n"
             f"{_shown(explanation.text)}")
    return attention_figure(explanation.tokens, explanation.layer(layer), title,
                            second_start=explanation.second_start)


def cross_segment_figure(explanation) -> Figure:
    """Per layer, how much of its attention each text of a pair pays to the other (bars, in [0, 1]).

    Dashed lines are what attention spread evenly over the keys would give (the
    other text's share of the tokens): a bar above its line attends to the other
    text more than evenly. See :meth:`encoder_clf.explanations.Explanation.cross_segment_attention`.
    """
    shares = explanation.cross_segment_attention()  # (layers, 2)
    even = explanation.uniform_cross_segment_attention()
    layers = np.arange(1, len(shares) + 1)
    fig = new_figure(max(6.0, 1.5 + 0.9 * len(layers)), 4.0)
    ax = fig.subplots()
    for column, (name, colour) in enumerate([("first \u2192 second", "tab:blue"),
                                             ("second \u2192 first", SECOND_TEXT)]):
        ax.bar(layers + (column - 0.5) * 0.38, shares[:, column], width=0.38, color=colour, label=name)
        ax.axhline(even[column], color=colour, linestyle="--", linewidth=1.0)
    ax.set_xticks(layers)
    ax.set_xlim(0.3, len(layers) + 0.7)
    ax.set_xlabel("layer")
    ax.set_ylabel("share of attention on the other text")
    ax.set_ylim(0.0, 1.0)
    ax.legend(fontsize=8, title="queries \u2192 keys", title_fontsize=8, loc="upper right")
    ax.set_title(f"Attention across the two texts\n{_shown(explanation.text, 60)}\n"
                 "mean over each text's tokens and the heads; dashed: even attention", fontsize=9)
    return fig


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


def contributions_figure(explanation, top: int = 10, label: str | None = None) -> Figure:
    """What each part of the head adds to one label's quantity and, with n-gram logits, the top n-grams.

    ``label`` picks the section (a multi-label model's predicted labels; default
    the first). Bars are the task's quantity (see :mod:`encoder_clf.explanations`:
    the centred logit, a multi-label label's own logit, or the standardised
    output): to the right for the label (or a higher value), to the left against it.
    """
    section = explanation.section(label)
    ngrams = section.ngrams[:top]
    rows = [section.parts] + ([ngrams] if ngrams else [])
    fig = new_figure(6.0, 1.2 + 0.3 * sum(len(r) for r in rows) + 0.8 * len(rows))
    axes = np.atleast_1d(fig.subplots(len(rows), 1, squeeze=False,
                                      height_ratios=[len(r) + 1 for r in rows]).ravel())
    titles = [f"parts of the head (weight in the mix) for {section.label!r}", f"top {len(ngrams)} n-grams"]
    for ax, items, title in zip(axes, rows, titles):
        names = [f"{c.name} ({c.weight:.2f})" if items is section.parts else c.name for c in items]
        values = [c.logit for c in items]
        ax.barh(range(len(items)), values, color=["tab:blue" if v >= 0 else "tab:red" for v in values])
        ax.set_yticks(range(len(items)), labels=names, fontsize=9)
        ax.invert_yaxis()
        ax.axvline(0.0, color="grey", linewidth=0.8)
        ax.set_title(title, fontsize=10)
    name, meaning = explanation.quantity
    axes[-1].set_xlabel(f"{name} added ({meaning})", fontsize=9)
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
