"""Attention weights out of the model, the per-pooling token weights, and `encoder-clf explain`."""

import numpy as np
import pytest
import torch

from encoder_clf.cli import main
from encoder_clf.data.tokenization import TokenizerConfig, pad_id, train_tokenizer
from encoder_clf.explanations import TOKEN_WEIGHT_MEANINGS, TOKEN_WEIGHTS, explain
from encoder_clf.inference import predict
from encoder_clf.model.attention import SCORE_RULES
from encoder_clf.model.classifier import TextClassifier
from encoder_clf.model.pooling import POOLINGS
from encoder_clf.persistence.model_dir import save_model

from conftest import tiny_config

TEXTS = ["a truly great film", "bad", "the plot was dull and the cast was poor , sadly", "lovely score"]
TEXT = "the plot was dull but the cast was great"


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS * 10 + [TEXT], TokenizerConfig(vocab_size=100, min_frequency=1))


def build(tokenizer, **overrides) -> TextClassifier:
    torch.manual_seed(0)
    config = tiny_config(vocab_size=tokenizer.get_vocab_size(), pad_token_id=pad_id(tokenizer), **overrides)
    return TextClassifier(config).eval()


@pytest.mark.parametrize("rule", list(SCORE_RULES))
def test_model_attentions_have_the_documented_shape_and_sum_to_one(rule):
    """One (batch, heads, T, T) tensor per layer; each query's weights sum to 1 and skip padded keys."""
    torch.manual_seed(0)
    model = TextClassifier(tiny_config(attention=rule, pooling="attention")).eval()
    ids = torch.tensor([[2, 10, 11, 12, 3], [2, 20, 3, 0, 0]])
    mask = ids == 0
    with torch.no_grad():
        out = model(ids, mask, need_weights=True)
        assert model(ids, mask).attentions == []  # only when asked for
        states, _ = model.encoder(ids, mask)
        pooled, pool_weights = model.pooling.pooled_and_weights(states, mask)
    assert len(out.attentions) == model.config.n_layers
    for weights in out.attentions:
        assert weights.shape == (2, model.config.n_heads, 5, 5)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, model.config.n_heads, 5))
        assert (weights[1, :, :, 3:] == 0).all() and (weights >= 0).all()
    assert pool_weights.shape == (2, model.config.n_heads, 1, 5)
    torch.testing.assert_close(pool_weights.sum(-1), torch.ones(2, model.config.n_heads, 1))
    assert (pool_weights[1, ..., 3:] == 0).all()
    torch.testing.assert_close(pooled, out.pooled)


def test_every_pooling_has_a_token_weight_rule():
    assert set(TOKEN_WEIGHTS) == set(POOLINGS) == set(TOKEN_WEIGHT_MEANINGS)


@pytest.mark.parametrize("pooling", list(POOLINGS))
def test_token_weights_are_a_distribution_over_the_tokens(tokenizer, pooling):
    model = build(tokenizer, pooling=pooling)
    explanation = explain(model, tokenizer, TEXT)
    tokens = explanation.tokens
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and len(tokens) == len(tokenizer.encode(TEXT).ids)
    assert len(explanation.attentions) == 2
    assert all(a.shape == (4, len(tokens), len(tokens)) for a in explanation.attentions)
    np.testing.assert_allclose(explanation.attentions[-1].sum(-1), 1.0, atol=1e-5)
    weights = explanation.token_weights
    assert weights.shape == (len(tokens),) and (weights >= 0).all()
    np.testing.assert_allclose(weights.sum(), 1.0, atol=1e-5)
    top = explanation.top(3)
    assert [w for _, _, w in top] == sorted(weights, reverse=True)[:3]
    assert all(tokens[i] == t for i, t, _ in top)


def test_token_weights_follow_their_definitions(tokenizer):
    ids = torch.tensor([tokenizer.encode(TEXT).ids])
    model = build(tokenizer, pooling="max")
    with torch.no_grad():
        states, attentions = model.encoder(ids, None, need_weights=True)
    winners = states[0].argmax(dim=0).numpy()  # which token each feature's maximum comes from
    expected = np.bincount(winners, minlength=ids.shape[1]) / states.shape[-1]
    np.testing.assert_allclose(explain(model, tokenizer, TEXT).token_weights, expected, atol=1e-6)
    model = build(tokenizer, pooling="cls")
    with torch.no_grad():
        _, attentions = model.encoder(ids, None, need_weights=True)
    np.testing.assert_allclose(explain(model, tokenizer, TEXT).token_weights,
                               attentions[-1][0, :, 0].mean(0).numpy(), atol=1e-6)


@pytest.mark.parametrize("ngram_buckets", [0, 64])
def test_prediction_matches_inference(tokenizer, tmp_path, ngram_buckets):
    model = build(tokenizer, pooling="attention", ngram_buckets=ngram_buckets)
    if "ngrams" in model.head.parts:  # it starts at zero: give it a say in the prediction
        torch.nn.init.normal_(model.head.parts["ngrams"].table.weight, std=3.0)
    save_model(tmp_path / "model", model, tokenizer)
    explanation = explain(model, tokenizer, TEXT)
    labels, probabilities, names = predict(tmp_path / "model", [TEXT], precision="fp32")
    assert explanation.label == labels[0]
    np.testing.assert_allclose([explanation.probabilities[n] for n in names], probabilities[0], atol=1e-5)


def with_ngrams(tokenizer) -> TextClassifier:
    model = build(tokenizer, pooling="max", ngram_buckets=64)
    torch.nn.init.normal_(model.head.parts["ngrams"].table.weight, std=3.0)  # it starts at zero
    model.head.weights.copy_(torch.tensor([0.4, 1.3]))
    return model


def test_contributions_of_the_parts_and_the_ngrams_add_up_to_the_logit(tokenizer):
    model = with_ngrams(tokenizer)
    explanation = explain(model, tokenizer, TEXT)
    ids = torch.tensor([tokenizer.encode(TEXT).ids])
    with torch.no_grad():
        out = model(ids)
    label = model.config.labels.index(explanation.label)
    centred = lambda logits: float(logits[..., label] - logits.mean(-1))  # noqa: E731
    assert [p.name for p in explanation.parts] == ["encoder", "ngrams"]
    assert [p.weight for p in explanation.parts] == pytest.approx([0.4, 1.3])
    assert sum(p.logit for p in explanation.parts) == pytest.approx(centred(out.logits[0]), abs=1e-5)
    assert explanation.parts[1].logit == pytest.approx(1.3 * centred(out.parts[1, 0]), abs=1e-5)
    tokens = tokenizer.encode(TEXT).tokens
    assert len(explanation.ngrams) == 2 * len(tokens) - 1  # every unigram and bigram, largest first
    assert {n.name for n in explanation.ngrams} >= {"dull", "the plot", tokens[0]}
    assert sum(n.logit for n in explanation.ngrams) == pytest.approx(explanation.parts[1].logit, abs=1e-5)
    assert sum(abs(n.share) for n in explanation.ngrams) == pytest.approx(1.0)
    magnitudes = [abs(n.logit) for n in explanation.ngrams]
    assert magnitudes == sorted(magnitudes, reverse=True)


def test_a_model_of_one_part_has_no_ngram_contributions(tokenizer):
    explanation = explain(build(tokenizer, ngram_buckets=0), tokenizer, TEXT)
    (part,) = explanation.parts
    assert (part.name, part.weight, abs(part.share)) == ("encoder", 1.0, pytest.approx(1.0))
    assert explanation.ngrams == []


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory):
    directory = tmp_path_factory.mktemp("explain") / "model"
    save_model(directory, build(tokenizer, pooling="attention", ngram_buckets=0), tokenizer)
    return directory


def test_cli_explain_writes_a_heatmap_and_lists_top_tokens(model_dir, tmp_path, capsys):
    out = tmp_path / "maps" / "attention.png"
    assert main(["explain", "--model", str(model_dir), TEXT, "--layer", "1", "--top", "3", "--out", str(out)]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t")[0] in ("neg", "pos")
    assert "tokens the attention pooling attends to most" in lines[1]
    ranked = [line for line in lines if line.strip()[:2] in ("1.", "2.", "3.", "4.")]
    assert len(ranked) == 3
    assert lines[-1] == f"attention heatmap of layer 1 of 2 written to {out}"


def test_cli_explain_of_a_model_with_ngram_logits_lists_what_each_part_adds(tokenizer, tmp_path, capsys):
    save_model(tmp_path / "model", with_ngrams(tokenizer), tokenizer)
    out = tmp_path / "attention.png"
    assert main(["explain", "--model", str(tmp_path / "model"), TEXT, "--top", "2", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    label = lines[0].split("\t")[0]
    assert lines[1] == f"what each part adds to the logit of {label!r} (centred over the labels):"
    assert lines[2].split()[:3] == ["encoder", "weight", "0.40"]
    assert lines[3].split()[:3] == ["ngrams", "weight", "1.30"]
    assert lines[4] == f"n-grams that add most to the n-gram part's logit of {label!r}:"
    assert [line.split()[0] for line in lines[5:7]] == ["1.", "2."] and "of the n-gram part" in lines[5]
    assert "tokens the max pooling attends to most" in lines[7]


@pytest.mark.parametrize("args, message", [
    (["--layer", "3"], "layer 3: the model has 2 layer(s); pick --layer 1 to 2"),
    (["--layer", "0"], "layer 0: the model has 2 layer(s); pick --layer 1 to 2"),
    (["--out", "{tmp}/map.jpg"], "the heatmap is a PNG; name the file with .png"),
    (["--top", "0"], "--top 0: pass a positive number of tokens to list"),
])
def test_cli_explain_refuses_bad_input_in_one_line(model_dir, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)  # a relative --out would land here: nothing may
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = ["--out", str(tmp_path / "map.png")] if "--out" not in args else []
    assert main(["explain", "--model", str(model_dir), TEXT, *out, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_cli_explain_missing_model_or_empty_text(model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["explain", "--model", str(tmp_path / "nope"), TEXT, "--out", str(tmp_path / "a.png")]) == 2
    assert "model directory" in capsys.readouterr().err
    assert main(["explain", "--model", str(model_dir), "  ", "--out", str(tmp_path / "a.png")]) == 2
    assert "no text to explain" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
