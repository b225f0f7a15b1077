"""Attention weights out of the model, the per-pooling token weights, pairs, multi-label, regression, and `explain`."""

import re

import numpy as np
import pytest
import torch

from encoder_clf.cli import main
from encoder_clf.data.tokenization import TokenizerConfig, encode, pad_id, train_tokenizer, word_starts
from encoder_clf.errors import UsageError
from encoder_clf.explanations import TOKEN_WEIGHT_MEANINGS, TOKEN_WEIGHTS, explain
from encoder_clf.inference import forward_texts, predict
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


def with_ngrams(tokenizer, **overrides) -> TextClassifier:
    model = build(tokenizer, pooling="max", ngram_buckets=64, **overrides)
    model.head.parts["ngrams"].set_word_starts(torch.from_numpy(word_starts(tokenizer)))
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
    assert sum(n.logit for n in explanation.ngrams) == pytest.approx(explanation.parts[1].logit, abs=1e-5)
    assert sum(abs(n.share) for n in explanation.ngrams) == pytest.approx(1.0)
    magnitudes = [abs(n.logit) for n in explanation.ngrams]
    assert magnitudes == sorted(magnitudes, reverse=True)


@pytest.mark.parametrize("terms", ["words", "pieces"])
def test_the_ngram_contributions_are_named_by_the_tokens_and_words_they_read(tokenizer, terms):
    """A word of several tokens is named as spelt; a name found twice (a one-token word) is one entry."""
    text = "the plots were dull"
    tokens = tokenizer.encode(text).tokens
    assert tokens == ["[CLS]", "the", "plot", "##s", "w", "##e", "##re", "dull", "[SEP]"]
    names = [n.name for n in explain(with_ngrams(tokenizer, ngram_terms=terms), tokenizer, text).ngrams]
    assert len(names) == len(set(names))
    if terms == "pieces":
        assert set(names) == set(tokens) | {f"{a} {b}" for a, b in zip(tokens, tokens[1:])}
    else:
        words = ["[CLS]", "the", "plots", "were", "dull", "[SEP]"]
        assert set(names) == set(tokens) | set(words) | {f"{a} {b}" for a, b in zip(words, words[1:])}


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


def test_cli_explain_refuses_an_out_it_cannot_write_in_one_line(model_dir, tmp_path, capsys):
    (tmp_path / "map.png").mkdir()  # a directory where the heatmap would go
    assert main(["explain", "--model", str(model_dir), TEXT, "--out", str(tmp_path / "map.png")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"encoder-clf: error: --out {tmp_path / 'map.png'}: cannot write it (Is a directory); pick another path"]
    assert [p.name for p in tmp_path.rglob("*")] == ["map.png"]


# Sentence pairs: [CLS] first [SEP] second [SEP], token types 0 then 1.

PAIR = ("the plot was dull", "but the cast was great")


def pair_model(tokenizer, **overrides) -> TextClassifier:
    model = build(tokenizer, text_pairs=True, type_vocab_size=2, pooling="attention", **overrides)
    torch.nn.init.normal_(model.encoder.embeddings.token_types.weight, std=1.0)  # types must change the outputs,
    torch.nn.init.normal_(model.head.parts["encoder"].linear.weight, std=1.0)  # and the outputs be far from 0
    return model


def test_a_pair_is_read_through_the_pair_template_with_its_token_types(tokenizer):
    model = pair_model(tokenizer)
    explanation = explain(model, tokenizer, PAIR)
    encoding = tokenizer.encode(*PAIR)
    assert explanation.text == PAIR and explanation.tokens == encoding.tokens
    assert explanation.type_ids.tolist() == encoding.type_ids  # the boundary is where the tokenizer puts type 1
    assert explanation.second_start == encoding.type_ids.index(1) == encode(tokenizer, [PAIR]).segments[0]
    assert explanation.tokens[explanation.second_start - 1] == "[SEP]" and explanation.tokens[-1] == "[SEP]"
    expected = model.task.scores(torch.from_numpy(forward_texts(model, tokenizer, [PAIR])))[0]
    np.testing.assert_allclose(list(explanation.probabilities.values()), expected, atol=1e-5)
    with torch.no_grad():  # read as all type 0, the pair would score otherwise: the types were given
        untyped = model.task.scores(model(torch.tensor([encoding.ids])).logits)[0]
    assert not np.allclose(untyped, expected, atol=1e-4)


def test_cross_segment_attention_is_a_share_of_rows_that_sum_to_one(tokenizer):
    explanation = explain(pair_model(tokenizer), tokenizer, PAIR)
    s, n = explanation.second_start, len(explanation.tokens)
    for weights in explanation.attentions:
        np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    shares = explanation.cross_segment_attention()
    assert shares.shape == (explanation.n_layers, 2) and ((shares >= 0) & (shares <= 1)).all()
    last = explanation.attentions[-1]
    assert shares[-1, 0] == pytest.approx(last[:, :s, s:].sum(-1).mean(), abs=1e-6)  # first text's queries
    assert shares[-1, 1] == pytest.approx(last[:, s:, :s].sum(-1).mean(), abs=1e-6)  # second text's queries
    np.testing.assert_allclose(explanation.uniform_cross_segment_attention(), [(n - s) / n, s / n])
    single = explain(build(tokenizer), tokenizer, TEXT)
    assert single.second_start is None and not single.type_ids.any()
    with pytest.raises(ValueError, match="needs a sentence pair"):
        single.cross_segment_attention()


@pytest.mark.parametrize("pairs, text, message", [
    (True, TEXT, "the model takes sentence pairs, and one text was given"),
    (False, PAIR, "the model takes one text per example, and a pair was given"),
    (True, ("the plot", "  "), "a pair needs both texts"),
    (True, ("a", "b", "c"), "a sentence pair is two texts, (first, second); got 3 item(s)"),
])
def test_input_that_does_not_match_the_model_is_refused_in_one_line(tokenizer, pairs, text, message):
    model = pair_model(tokenizer) if pairs else build(tokenizer)
    with pytest.raises(UsageError, match=re.escape(message)) as error:
        explain(model, tokenizer, text)
    assert "\n" not in str(error.value)


# Multi-label: one section per label at or above its threshold, each explaining its own (uncentred) logit.

LABELS = ["x", "y", "z"]


def multi_label_model(tokenizer) -> tuple[TextClassifier, torch.Tensor, torch.Tensor]:
    """A model with n-gram logits, and its logits and sigmoid probabilities for TEXT."""
    model = build(tokenizer, task="multi_label", labels=LABELS, ngram_buckets=64)
    torch.nn.init.normal_(model.head.parts["ngrams"].table.weight, std=3.0)
    model.head.weights.copy_(torch.tensor([0.6, 0.9]))
    with torch.no_grad():
        out = model(torch.tensor([tokenizer.encode(TEXT).ids]))
    return model, out, model.task.scores(out.logits)[0]


def test_multi_label_explains_each_predicted_label(tokenizer):
    model, out, probabilities = multi_label_model(tokenizer)
    order = probabilities.argsort(descending=True).tolist()
    thresholds = torch.ones(3)
    thresholds[order[:2]] = probabilities[order[:2]] - 1e-3  # the two most probable labels are predicted
    model.task.thresholds.copy_(thresholds)
    explanation = explain(model, tokenizer, TEXT)
    assert explanation.labels == [LABELS[i] for i in order[:2]] == [s.label for s in explanation.sections]
    np.testing.assert_allclose([explanation.probabilities[n] for n in LABELS], probabilities, atol=1e-5)
    assert explanation.quantity[0] == "logit" and "nothing is centred" in explanation.quantity[1]
    for section, index in zip(explanation.sections, order):
        assert section.predicted and section.probability == pytest.approx(float(probabilities[index]), abs=1e-5)
        assert section.threshold == pytest.approx(float(thresholds[index]))
        logit = float(out.logits[0, index])  # the sigmoid's own logit: not centred over the labels
        assert section.logit == pytest.approx(logit, abs=1e-5)
        assert sum(p.logit for p in section.parts) == pytest.approx(logit, abs=1e-5)
        assert section.parts[1].logit == pytest.approx(0.9 * float(out.parts[1, 0, index]), abs=1e-5)
        assert sum(n.logit for n in section.ngrams) == pytest.approx(section.parts[1].logit, abs=1e-5)
    first, second = explanation.sections
    assert [n.name for n in first.ngrams] != [n.name for n in second.ngrams]  # each label has its own top n-grams


def test_multi_label_with_no_label_at_its_threshold_explains_the_most_probable(tokenizer):
    model, out, probabilities = multi_label_model(tokenizer)
    model.task.thresholds.fill_(1.0)
    explanation = explain(model, tokenizer, TEXT)
    (section,) = explanation.sections
    assert explanation.labels == [] and not section.predicted
    assert section.label == LABELS[int(probabilities.argmax())] and section.threshold == 1.0


def test_regression_explains_the_value_through_the_standardised_output(tokenizer):
    model = build(tokenizer, task="regression", labels=["score"], ngram_buckets=64)
    torch.nn.init.normal_(model.head.parts["ngrams"].table.weight, std=3.0)
    model.task.mean.fill_(3.0)
    model.task.std.fill_(2.0)
    explanation = explain(model, tokenizer, TEXT)
    with torch.no_grad():
        out = model(torch.tensor([tokenizer.encode(TEXT).ids]))
    (section,) = explanation.sections
    assert (explanation.label, explanation.probabilities, section.probability) == ("score", {}, None)
    assert explanation.value == pytest.approx(float(model.task.scores(out.logits)[0]), abs=1e-5)
    assert section.logit == pytest.approx(float(out.logits[0, 0]), abs=1e-5)  # the standardised output
    assert explanation.value == pytest.approx(3.0 + 2.0 * sum(p.logit for p in section.parts), abs=1e-5)
    assert sum(n.logit for n in section.ngrams) == pytest.approx(section.parts[1].logit, abs=1e-5)


@pytest.fixture(scope="module")
def pair_dir(tokenizer, tmp_path_factory):
    directory = tmp_path_factory.mktemp("explain-pair") / "model"
    save_model(directory, pair_model(tokenizer), tokenizer)
    return directory


def test_cli_explain_of_a_pair_marks_the_texts_and_prints_the_attention_across_them(pair_dir, tmp_path, capsys):
    out = tmp_path / "pair.png"
    assert main(["explain", "--model", str(pair_dir), "--pair", *PAIR, "--top", "20", "--out", str(out)]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t")[0] in ("neg", "pos")
    ranked = [line for line in lines if "(position" in line]
    assert {line.rsplit(", ", 1)[1] for line in ranked} == {"first text)", "second text)"}
    start = lines.index(next(line for line in lines if line.startswith("attention across the two texts")))
    layers = [line.split() for line in lines[start + 1:-1]]
    assert [words[:2] for words in layers] == [["layer", "1:"], ["layer", "2:"]]
    assert all(0.0 <= float(words[i]) <= 1.0 for words in layers for i in (5, 9))
    assert lines[-1] == f"attention heatmap of layer 2 of 2 written to {out}"


@pytest.mark.parametrize("which, args, message", [
    ("pair", PAIR, "the model takes sentence pairs; pass --pair FIRST SECOND"),
    ("pair", ["--pair", "the plot", "was", "dull"], "--pair takes exactly two texts, the first and the second of "
                                                    "the pair; got 3"),
    ("single", ["--pair", *PAIR], "the model takes one text per example; drop --pair"),
])
def test_cli_explain_refuses_input_that_does_not_match_the_model(pair_dir, model_dir, tmp_path, monkeypatch, capsys,
                                                                 which, args, message):
    monkeypatch.chdir(tmp_path)
    directory = pair_dir if which == "pair" else model_dir
    assert main(["explain", "--model", str(directory), *args, "--out", str(tmp_path / "map.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_cli_explain_of_a_multi_label_model_prints_a_section_per_predicted_label(tokenizer, tmp_path, capsys):
    model, _, probabilities = multi_label_model(tokenizer)
    order = probabilities.argsort(descending=True).tolist()
    model.task.thresholds.copy_(torch.where(probabilities >= probabilities[order[1]], 0.0, 1.0))
    save_model(tmp_path / "model", model, tokenizer)
    assert main(["explain", "--model", str(tmp_path / "model"), TEXT, "--top", "2",
                 "--out", str(tmp_path / "map.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    predicted = [LABELS[i] for i in order[:2]]
    assert lines[0].split("\t")[0] == ",".join(predicted)
    headings = [line for line in lines if line.startswith("label ")]
    assert [h.split()[1] for h in headings] == [f"{name!r}:" for name in predicted]
    assert all(">= threshold 0.000, logit " in h for h in headings)
    parts = [line for line in lines if line.startswith("what each part adds")]
    assert parts == [f"what each part adds to the logit of {name!r} (the label's own sigmoid logit: labels are "
                     f"independent, nothing is centred):" for name in predicted]


def test_cli_explain_of_a_regression_model_prints_the_value(tokenizer, tmp_path, capsys):
    model = build(tokenizer, task="regression", labels=["score"], ngram_buckets=0)
    model.task.mean.fill_(3.0)
    save_model(tmp_path / "model", model, tokenizer)
    assert main(["explain", "--model", str(tmp_path / "model"), TEXT, "--out", str(tmp_path / "map.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    value, name = lines[0].split("\t")
    assert name == "score" and lines[1].startswith(f"{value} = mean 3.0000 + std 1.0000 x standardised output ")
    assert (tmp_path / "map.png").is_file()
