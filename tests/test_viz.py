"""Plots: what each figure draws, PNG output, one confusion-matrix implementation, no pyplot state left behind."""

import json

import numpy as np
import pytest
import torch
from matplotlib.colors import to_hex

from encoder_clf import viz
from encoder_clf.data.splits import Split, Splits
from encoder_clf.errors import UsageError
from encoder_clf.explanations import Contribution, Explanation, LabelExplanation
from encoder_clf.metrics import compute_metrics, plot_confusion_matrix
from encoder_clf.settings import with_overrides
from encoder_clf.training.config import RunConfig
from encoder_clf.training.run import train_on_splits

from conftest import TINY, toy_rows

TOKENS = ["[CLS]", "a", "dull", ",", "life", "##less", "film", "[SEP]"]
RECORDS = [
    {"step": 10, "epoch": 1.0, "train_loss": 0.69, "lr": 1e-3, "val_accuracy": 0.6, "val_macro_f1": 0.55,
     "elapsed_s": 1.0, "examples_per_s": 100.0},
    {"step": 20, "epoch": 2.0, "train_loss": 0.50, "lr": 5e-4, "val_accuracy": 0.8, "val_macro_f1": 0.79,
     "elapsed_s": 2.0, "examples_per_s": 100.0},
    {"step": 30, "epoch": 3.0, "train_loss": 0.40, "lr": 0.0, "val_accuracy": 0.7, "val_macro_f1": 0.70,
     "elapsed_s": 3.0, "examples_per_s": 100.0},
]


@pytest.fixture(autouse=True)
def no_pyplot_figures():
    """viz never registers a figure with pyplot, so none is left open."""
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    yield
    assert plt.get_fignums() == before


def is_png(path) -> bool:
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000


def test_attention_figure_has_one_labelled_panel_per_head(tmp_path):
    weights = torch.softmax(torch.randn(4, len(TOKENS), len(TOKENS)), dim=-1).numpy()
    fig = viz.attention_figure(TOKENS, weights, "Layer 2 of 2")
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 4
    for head, ax in enumerate(panels):
        assert ax.get_title() == f"head {head + 1}"
        assert [t.get_text() for t in ax.get_xticklabels()] == TOKENS
        assert [t.get_text() for t in ax.get_yticklabels()] == TOKENS
        assert ax.get_xlabel() == "key (attended to)" and ax.get_ylabel() == "query (attending)"
        np.testing.assert_array_equal(ax.images[0].get_array(), weights[head])
    assert fig.get_suptitle() == "Layer 2 of 2"
    assert any(ax.get_ylabel() == "attention weight" for ax in fig.axes)  # the shared colour bar
    assert is_png(viz.save(fig, tmp_path / "deep" / "attention.png"))
    with pytest.raises(ValueError, match=r"\(heads, T, T\) with T = 8 tokens"):
        viz.attention_figure(TOKENS, weights[:, :5, :5])


def test_token_weights_figure_draws_one_bar_per_token():
    weights = np.linspace(0.0, 1.0, len(TOKENS))
    fig = viz.token_weights_figure(TOKENS, weights / weights.sum(), "what max pooling reads")
    ax = fig.axes[0]
    np.testing.assert_allclose([bar.get_width() for bar in ax.patches], weights / weights.sum())
    assert [t.get_text() for t in ax.get_yticklabels()] == TOKENS


def test_curves_figure_plots_the_log(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    fig = viz.curves_figure(viz.read_log(log))
    loss, scores, lr = fig.axes[:3]
    assert loss.lines[0].get_ydata().tolist() == [0.69, 0.50, 0.40]
    assert loss.lines[0].get_xdata().tolist() == [10, 20, 30]
    assert [line.get_label() for line in scores.lines] == ["accuracy", "macro-F1", "best accuracy (step 20)"]
    assert lr.lines[0].get_ydata().tolist() == [1e-3, 5e-4, 0.0]
    assert all(ax.get_xlabel() == "optimizer step" and ax.get_title() for ax in (loss, scores, lr))
    assert "3 evaluations, 3 epochs" in fig.get_suptitle()
    assert is_png(viz.plot_training_curves(log, tmp_path / "curves.png"))
    with pytest.raises(ValueError, match="no log records"):
        viz.curves_figure([])


def test_curves_draw_the_step_records_smoothed_and_the_evaluations_as_points():
    steps = [{"kind": "step", "step": s, "epoch": s / 10, "train_loss": 1.0 / s, "lr": 1e-3 * (1 - s / 40),
              "grad_norm": 1.0, "elapsed_s": 0.1 * s, "examples_per_s": 100.0} for s in range(2, 31, 2)]
    evaluations = [{"kind": "evaluation", **r} for r in RECORDS]
    records = sorted(steps + evaluations, key=lambda r: (r["step"], r["kind"] == "evaluation"))
    fig = viz.curves_figure(records)
    loss, scores, lr = fig.axes[:3]
    raw, smooth = loss.lines
    means = [1.0 / s for s in range(2, 31, 2)]
    assert raw.get_xdata().tolist() == list(range(2, 31, 2)) and raw.get_ydata().tolist() == means
    np.testing.assert_allclose(smooth.get_ydata(), viz.smoothed(means))
    assert scores.lines[0].get_xdata().tolist() == [10, 20, 30]
    assert lr.lines[0].get_xdata().tolist() == list(range(2, 31, 2))
    tops = [child for ax in (loss, scores, lr) for child in ax.child_axes]  # the epochs, on a top axis each
    assert [top.get_xlabel() for top in tops] == ["epoch"] * 3
    assert "3 evaluations, 3 epochs" in fig.get_suptitle()


def test_smoothing_keeps_a_constant_and_lags_a_step():
    np.testing.assert_allclose(viz.smoothed([2.0] * 5), [2.0] * 5)  # no start-up bias toward zero
    ramp = viz.smoothed([0.0] * 5 + [1.0] * 5)
    assert (np.diff(ramp[5:]) > 0).all() and 0 < ramp[5] < ramp[-1] < 1


def test_confusion_matrix_has_one_implementation(tmp_path):
    from sklearn.metrics import confusion_matrix

    y_true, y_pred = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0])
    metrics = compute_metrics(y_true, y_pred, ["neg", "neutral", "pos"])
    expected = confusion_matrix(y_true, y_pred, labels=[0, 1, 2])
    assert metrics["confusion_matrix"] == expected.tolist()
    fig = viz.confusion_matrix_figure(metrics, "test split")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "Predicted label" and ax.get_ylabel() == "True label"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["neg", "neutral", "pos"]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert cells == {(i, j): str(expected[i, j]) for i in range(3) for j in range(3)}  # row: true, column: predicted
    assert ax.get_title().startswith("test split\naccuracy 0.600")
    via_metrics = plot_confusion_matrix(metrics, tmp_path / "a.png", "test split")
    via_viz = viz.plot_confusion_matrix(metrics, tmp_path / "b.png", "test split")
    assert is_png(via_metrics) and via_metrics.read_bytes() == via_viz.read_bytes()


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_projection_separates_labelled_clusters(method):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 20)
    features = rng.normal(size=(40, 8)) + labels[:, None] * 6.0
    fig = viz.projection_figure(features, labels, ["neg", "pos"], method=method, title="toy")
    ax = fig.axes[0]
    neg, pos = (c.get_offsets() for c in ax.collections)
    assert len(neg) == len(pos) == 20
    gap = np.linalg.norm(neg.mean(0) - pos.mean(0))
    assert gap > 2 * max(neg.std(0).max(), pos.std(0).max())  # the two clusters stay apart in 2-D
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["neg (20)", "pos (20)"]
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title().startswith("toy:")
    if method == "pca":
        assert "% of variance" in ax.get_xlabel()
    with pytest.raises(ValueError, match="unknown projection 'umap'"):
        viz.projection_figure(features, labels, method="umap")


def test_training_writes_curves_next_to_metrics(tmp_path, one_thread):
    rows = toy_rows(120, 0)
    split = Split([t for t, _ in rows], np.array([y for _, y in rows]), "toy")
    config = with_overrides(RunConfig(), TINY + ["train.epochs=2", "train.precision=fp32"])
    train_on_splits(config, Splits(split, split, None, ["0", "1"]), tmp_path, progress=False)
    assert (tmp_path / "metrics.json").is_file()
    assert is_png(tmp_path / "curves.png") and is_png(tmp_path / "confusion_matrix.png")


PAIR_TOKENS = ["[CLS]", "a", "dull", "film", "[SEP]", "it", "bored", "me", "[SEP]"]


def synthetic(task="single_label", sections=None, second_start=None, tokens=PAIR_TOKENS, **fields) -> Explanation:
    """An explanation with random attention rows (each summing to 1) over ``tokens``: 2 layers of 2 heads."""
    generator = torch.Generator().manual_seed(0)
    n = len(tokens)
    attentions = [torch.softmax(torch.randn(2, n, n, generator=generator), dim=-1).numpy() for _ in range(2)]
    part = [Contribution("encoder", 0.5, 0.5), Contribution("ngrams", -0.5, -0.5)]
    sections = sections or [LabelExplanation("pos", 0.0, part, [], probability=0.7)]
    return Explanation(text=("a dull film", "it bored me") if second_start else "a dull film", tokens=tokens,
                       attentions=attentions, token_weights=np.full(n, 1 / n), pooling="max", task=task,
                       probabilities={s.label: s.probability for s in sections if s.probability is not None},
                       sections=sections, second_start=second_start, **fields)


def test_a_long_texts_heatmap_labels_every_kth_token_and_stays_page_sized():
    """512 tokens: every 6th labelled (86 labels), a panel about 14 inches, not 78; the whole map still drawn."""
    tokens = [f"t{i}" for i in range(512)]
    weights = np.full((2, 512, 512), 1 / 512, dtype=np.float32)
    fig = viz.attention_figure(tokens, weights, second_start=300)
    panel = [ax for ax in fig.axes if ax.images][0]
    assert [t.get_text() for t in panel.get_xticklabels()] == tokens[::6]
    assert list(panel.get_xticks()) == list(range(0, 512, 6)) and panel.images[0].get_array().shape == (512, 512)
    assert max(fig.get_size_inches()) < 30  # two panels of 14 inches side by side (157 inches wide before)
    colours = {label.get_text(): to_hex(label.get_color()) for label in panel.get_yticklabels()}
    assert colours["t294"] != colours["t300"] == to_hex(viz.SECOND_TEXT)


def test_attention_figure_marks_where_a_pairs_second_text_starts(tmp_path):
    explanation = synthetic(second_start=5)
    fig = viz.explanation_figure(explanation, layer=1)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2
    for ax in panels:
        lines = {(tuple(line.get_xdata()), tuple(line.get_ydata())) for line in ax.lines}
        assert ((4.5, 4.5), (0, 1)) in lines and ((0, 1), (4.5, 4.5)) in lines  # a vertical and a horizontal line
        for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
            colours = [to_hex(label.get_color()) for label in labels]
            assert len(set(colours[:5])) == 1 and set(colours[5:]) == {to_hex(viz.SECOND_TEXT)} != set(colours[:5])
        np.testing.assert_array_equal(ax.images[0].get_array(), explanation.attentions[0][panels.index(ax)])
    assert "\u201ca dull film\u201d / \u201cit bored me\u201d" in fig.get_suptitle()
    assert "where the second text starts" in fig.get_suptitle()
    assert is_png(viz.save(fig, tmp_path / "pair.png"))
    single = viz.explanation_figure(synthetic())
    assert not any(ax.lines for ax in single.axes) and "second text" not in single.get_suptitle()
    with pytest.raises(ValueError, match="second_start must be a position inside the 9 tokens; got 9"):
        viz.attention_figure(PAIR_TOKENS, explanation.attentions[0], second_start=9)


def test_cross_segment_figure_draws_each_layers_shares_beside_even_attention(tmp_path):
    explanation = synthetic(second_start=5)
    fig = viz.cross_segment_figure(explanation)
    ax = fig.axes[0]
    heights = np.array([bar.get_height() for bar in ax.patches]).reshape(2, 2)  # (direction, layer)
    np.testing.assert_allclose(heights.T, explanation.cross_segment_attention(), atol=1e-6)
    dashed = sorted(line.get_ydata()[0] for line in ax.lines)
    np.testing.assert_allclose(dashed, sorted(explanation.uniform_cross_segment_attention()))
    assert ax.get_ylim() == (0.0, 1.0) and [t.get_text() for t in ax.get_xticklabels()] == ["1", "2"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["first \u2192 second", "second \u2192 first"]
    assert is_png(viz.save(fig, tmp_path / "cross.png"))
    with pytest.raises(ValueError, match="needs a sentence pair"):
        viz.cross_segment_figure(synthetic())


def test_contributions_and_titles_follow_the_task_and_the_chosen_label():
    sections = [LabelExplanation(name, logit, [Contribution("encoder", logit, 1.0)], [], probability=p,
                                 threshold=0.5) for name, logit, p in [("joy", 1.5, 0.82), ("love", 0.4, 0.6)]]
    explanation = synthetic("multi_label", sections)
    fig = viz.contributions_figure(explanation, label="love")
    ax = fig.axes[0]
    assert [bar.get_width() for bar in ax.patches] == [0.4] and "'love'" in ax.get_title()
    assert ax.get_xlabel().startswith("logit added (the label's own sigmoid logit")
    with pytest.raises(UsageError, match="label 'anger' is not explained here; pick one of joy, love"):
        viz.contributions_figure(explanation, label="anger")
    assert "predicted joy (p = 0.82), love (p = 0.60)\n" in viz.explanation_figure(explanation).get_suptitle()
    many = synthetic("multi_label", sections * 3)  # six predicted labels: the title names four
    assert "joy (p = 0.82), love (p = 0.60) and 2 more\n" in viz.explanation_figure(many).get_suptitle()
    none = [LabelExplanation("joy", -1.0, sections[0].parts, [], probability=0.3, threshold=0.5, predicted=False)]
    assert "no label reaches its threshold; most probable joy (p = 0.30)" in \
        viz.explanation_figure(synthetic("multi_label", none)).get_suptitle()
    value = [LabelExplanation("score", 0.25, sections[0].parts, [])]
    regression = synthetic("regression", value, value=3.5, mean=3.0, std=2.0)
    assert "predicted score = 3.500" in viz.explanation_figure(regression).get_suptitle()
    assert viz.contributions_figure(regression).axes[-1].get_xlabel().startswith("standardised output added")
