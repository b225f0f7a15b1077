"""The whole classifier: masking invariance, attention maps, gradients, every variant."""

import pytest
import torch

from encoder_clf.errors import UsageError
from encoder_clf.model.attention import SCORE_RULES
from encoder_clf.model.encoder import NORM_PLACEMENTS, POSITION_ENCODINGS, RelativePositionBias
from encoder_clf.model.ngrams import _last_start, bigram_buckets
from encoder_clf.model.pooling import POOLINGS

from conftest import tiny_config

VARIANTS = [
    *({"attention": r} for r in SCORE_RULES), *({"pooling": p} for p in POOLINGS),
    *({"norm": n} for n in NORM_PLACEMENTS), *({"positions": p} for p in POSITION_ENCODINGS),
    {"type_vocab_size": 2}, {"conv_kernel": 3}, {"conv_kernel": 5, "norm": "post"},
    *({"relative_buckets": 8, "attention": r, "positions": "none"} for r in SCORE_RULES),
    {"ngram_buckets": 64}, {"ngram_buckets": 64, "pooling": "mean", "relative_buckets": 8},
    {"attention_combine": True}, {"attention_combine": True, "attention": "concat_position"},
    {"pooling": "mean", "normalize": True},
]
IDS = [",".join(f"{key}={value}" for key, value in variant.items()) for variant in VARIANTS]


def batch_with_padding(pad_to: int):
    ids = torch.tensor([[2, 7, 8, 9, 3], [2, 11, 3, 0, 0]])
    lengths = torch.tensor([5, 3])
    padded = torch.zeros(2, pad_to, dtype=torch.long)
    padded[:, :5] = ids
    mask = torch.arange(pad_to)[None, :] >= lengths[:, None]
    return padded, mask


def randomize_zero_starts(model):
    """Tables that start at or near zero (relative bias, n-gram logits) would hide a masking bug: fill them."""
    for table in (model.encoder.embeddings.relative, dict(model.head.parts).get("ngrams")):
        if table is not None:
            for parameter in table.parameters():
                torch.nn.init.normal_(parameter)
    return model


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_logits_do_not_change_when_padding_is_appended(tiny_model, variant):
    model = randomize_zero_starts(tiny_model(**variant))
    short_ids, short_mask = batch_with_padding(5)
    long_ids, long_mask = batch_with_padding(12)
    long_ids[long_mask] = 17  # whatever sits in padded slots must not matter
    short, long = model(short_ids, short_mask), model(long_ids, long_mask)
    torch.testing.assert_close(long.logits, short.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(long.pooled, short.pooled, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rule", sorted(SCORE_RULES))
def test_attention_maps_per_layer(tiny_model, rule):
    model = tiny_model(attention=rule, n_layers=3)
    ids, mask = batch_with_padding(7)
    out = model(ids, mask, need_weights=True)
    assert len(out.attentions) == 3
    for weights in out.attentions:
        assert weights.shape == (2, 4, 7, 7)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 7))
        assert torch.all(weights.masked_select(mask[:, None, None, :]) == 0)
    assert model(ids, mask).attentions == []


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_gradients_reach_every_parameter(tiny_model, variant):
    model = tiny_model(**variant).train()
    ids, mask = batch_with_padding(6)
    model(ids, mask).logits.logsumexp(-1).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []


def test_relative_buckets_are_exact_nearby_directed_and_saturate_far_away():
    bias = RelativePositionBias(16, n_heads=2)  # 8 per direction: distances 0-3 exact, then log-spaced to 128
    distance = torch.arange(0, 300)
    ahead, behind = bias.bucket(distance), bias.bucket(-distance)
    assert ahead[:4].tolist() == [0, 9, 10, 11] and behind[:4].tolist() == [0, 1, 2, 3]
    assert set(ahead[1:].tolist()) == set(range(9, 16)) and set(behind[1:].tolist()) == set(range(1, 8))
    assert (ahead.diff() >= 0).all() and (behind.diff() >= 0).all()  # farther never maps to a nearer bucket
    assert ahead[128:].eq(15).all() and behind[128:].eq(7).all()


def test_relative_bias_gives_order_without_absolute_positions(tiny_model):
    ids, reversed_ids = torch.tensor([[2, 7, 8, 9, 3]]), torch.tensor([[2, 9, 8, 7, 3]])
    plain = tiny_model(positions="none", pooling="mean", conv_kernel=0)
    torch.testing.assert_close(plain(ids).logits, plain(reversed_ids).logits)  # a bag of tokens
    relative = randomize_zero_starts(tiny_model(positions="none", pooling="mean", conv_kernel=0, relative_buckets=8))
    assert not torch.allclose(relative(ids).logits, relative(reversed_ids).logits)


def test_ngram_logits_add_unigrams_and_adjacent_bigrams_of_real_tokens(tiny_model):
    model = randomize_zero_starts(tiny_model(ngram_buckets=64, ngram_terms="pieces"))
    ngrams = model.head.parts["ngrams"]
    ids, mask = torch.tensor([[2, 7, 8, 3, 0]]), torch.tensor([[False, False, False, False, True]])
    bigrams = [ngrams.vocab_size + (a * ngrams.vocab_size + b) % (2**31 - 1) * 48_271 % (2**31 - 1) % ngrams.buckets
               for a, b in [(2, 7), (7, 8), (8, 3)]]
    expected = ngrams.table.weight[[2, 7, 8, 3, *bigrams]].sum(0) / 7 ** 0.5
    torch.testing.assert_close(ngrams(ids, mask), expected[None])
    torch.testing.assert_close(ngrams.contributions(ids[:, :4]).sum(0), expected)  # one text, its n-grams' shares
    out = model(ids, mask)
    encoder_part, ngram_part = out.parts
    torch.testing.assert_close(encoder_part, model.head.parts["encoder"](out.pooled))
    torch.testing.assert_close(ngram_part, expected[None])
    torch.testing.assert_close(out.logits, (encoder_part + ngram_part) / 2)  # the mean until weights are fitted
    model.head.weights.copy_(torch.tensor([0.25, 2.0]))
    torch.testing.assert_close(model(ids, mask).logits, 0.25 * encoder_part + 2.0 * ngram_part)
    assert model.state_dict()["head.weights"].tolist() == [0.25, 2.0]  # a learned value: in the weights file


def _word_part(tiny_model, continuing=(8, 9)):
    part = randomize_zero_starts(tiny_model(ngram_buckets=1_000_000)).head.parts["ngrams"]
    starts = torch.ones(part.vocab_size, dtype=torch.bool)
    starts[list(continuing)] = False  # tokens 8 and 9 continue a word, as "##" pieces do
    part.set_word_starts(starts)
    return part


def test_word_begins_are_the_running_max_of_the_starts():
    """The scatter-and-gather form (which ONNX can run) gives what ``cummax`` gives, starts or none."""
    generator = torch.Generator().manual_seed(0)
    for rate in (0.0, 0.1, 0.5, 1.0):
        starts = torch.rand(6, 40, generator=generator) < rate
        starts[0, 0] = rate > 0  # a first word that starts late, and rows with no start at all
        position = torch.arange(40).expand(6, 40)
        expected = torch.where(starts, position, 0).cummax(dim=1).values
        assert torch.equal(_last_start(starts, position), expected)


def test_word_terms_read_the_words_the_tokens_spell_wherever_they_stand(tiny_model):
    part = _word_part(tiny_model)
    ids, mask = torch.tensor([[2, 7, 8, 5, 3, 0, 0]]), torch.tensor([[False] * 5 + [True] * 2])
    index, keep = part.indices(ids, mask)
    rows = index[keep].tolist()
    assert len(rows) == 5 + 4 + 3  # tokens; the words [CLS], 7+8, 5, [SEP]; the 3 pairs of adjacent words
    assert len(set(rows)) == len(rows) and rows[:5] == [2, 7, 8, 5, 3]
    word = index[0, 7 + 2]  # the word 7+8 ends at token 2
    # the same word in another text, after another word, has the same row; its pair with the word before does not
    other, other_keep = part.indices(torch.tensor([[2, 6, 7, 8, 3]]), None)
    assert other[0, 5 + 3] == word and other[0, 10 + 3] != index[0, 14 + 2]
    # other spellings are other words: 8 7 (a piece, then a word start), 7 alone, 7 8 9
    for spelling, end in [([2, 8, 7, 3], 2), ([2, 7, 3], 1), ([2, 7, 8, 9, 3], 3)]:
        terms, _ = part.indices(torch.tensor([spelling]), None)
        assert terms[0, len(spelling) + end] != word
    # padding is not read: the same text without it has the same logits
    torch.testing.assert_close(part(ids, mask), part(ids[:, :5], None))


def test_a_head_of_one_part_gives_that_part_s_logits(tiny_model):
    model = tiny_model(ngram_buckets=0)
    ids = torch.tensor([[2, 7, 8, 3]])
    out = model(ids)
    assert model.head.names == ["encoder"] and model.head.weights.tolist() == [1.0]
    assert torch.equal(out.logits, model.head.parts["encoder"](out.pooled))


def test_bigrams_spread_over_the_buckets_like_a_random_hash():
    vocab, buckets = 16_000, 1_000_000
    first, second = (x.flatten() for x in torch.meshgrid(torch.arange(300), torch.arange(300), indexing="ij"))
    rows = bigram_buckets(first, second, vocab, buckets)
    assert rows.min() >= 0 and rows.max() < buckets
    # 90,000 pairs into a million rows: a random hash leaves ~4% of them sharing a row.
    assert rows.unique().numel() / rows.numel() > 0.95


def test_sequence_longer_than_positions_is_refused(tiny_model):
    model = tiny_model(max_positions=8)
    with pytest.raises(ValueError, match="sequence length 9 exceeds max_positions 8"):
        model(torch.ones(1, 9, dtype=torch.long))


def test_model_needs_vocabulary_and_labels():
    from encoder_clf.model.classifier import TextClassifier
    from encoder_clf.model.config import ModelConfig

    with pytest.raises(ValueError, match="vocab_size > 0 and at least 2 labels"):
        TextClassifier(ModelConfig(vocab_size=0, labels=["a", "b"]))


def test_activation_dropout_is_the_only_dropout_inside_the_feed_forward(tiny_model):
    """Off by default (BERT's layout): with the other rates at 0, training-mode passes are then deterministic."""
    torch.manual_seed(0)
    ids = torch.randint(4, 50, (2, 6))
    quiet = tiny_model(dropout=0.0, attention_dropout=0.0).train()
    assert torch.equal(quiet(ids).logits, quiet(ids).logits)
    noisy = tiny_model(dropout=0.0, attention_dropout=0.0, activation_dropout=0.5).train()
    assert not torch.equal(noisy(ids).logits, noisy(ids).logits)
    with pytest.raises(UsageError, match=r"model.activation_dropout must be in \[0, 1\); got 1.0"):
        tiny_config(activation_dropout=1.0)


@pytest.mark.parametrize("kernel", [3, 5])
def test_the_export_form_of_the_convolution_equals_the_convolution(kernel):
    """ONNX export writes the depthwise convolution as shifted copies (LocalConv._shifted); same numbers."""
    from encoder_clf.model.encoder import LocalConv

    torch.manual_seed(0)
    conv = LocalConv(8, kernel)
    x = torch.randn(2, 7, 8)
    expected = conv.depthwise(x.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(conv._shifted(x), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_a_batch_without_padding_gives_what_its_mask_gives(tiny_model, variant, monkeypatch):
    """An all-False mask is dropped (no masked fills); the masked path, forced, gives the same numbers."""
    model = randomize_zero_starts(tiny_model(**variant))
    ids = torch.tensor([[2, 7, 8, 9, 3], [2, 11, 12, 13, 3]])
    unpadded = torch.zeros_like(ids, dtype=torch.bool)
    fast = model(ids, unpadded, need_weights=True)
    monkeypatch.setattr("encoder_clf.model.classifier.inspectable", lambda t: False)  # as under export: kept
    masked = model(ids, unpadded, need_weights=True)
    torch.testing.assert_close(fast.logits, masked.logits, atol=1e-6, rtol=1e-6)
    for a, b in zip(fast.attentions, masked.attentions):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_a_model_traced_on_a_batch_without_padding_still_masks_padding(tiny_model):
    """The shortcuts are value-dependent: a traced graph (ONNX export) must keep the masked path for every input."""
    model = tiny_model(ngram_buckets=0, pooling="cls")  # cls reads a fully padded row's state (the others mask it)
    ids = torch.tensor([[2, 7, 8, 9, 3], [2, 11, 12, 13, 3]])
    padded_ids, mask = batch_with_padding(5)  # same length: a trace fixes the shapes it saw
    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.model(ids, mask, need_weights=True).logits  # the plain path (SDPA zeroes empty rows itself)

    with torch.no_grad():
        traced = torch.jit.trace(Logits(), (ids, torch.zeros_like(mask)), check_trace=False)
        eager = model(padded_ids, mask, need_weights=True).logits
        torch.testing.assert_close(traced(padded_ids, mask), eager, atol=1e-6, rtol=1e-6)
        empty = mask.clone()
        empty[1] = True  # a row of padding only: its attention output is zeroed, in the graph as in eager mode
        eager = model(padded_ids, empty, need_weights=True).logits
        torch.testing.assert_close(traced(padded_ids, empty), eager, atol=1e-6, rtol=1e-6)


def test_normalize_scales_the_pooled_vector_to_unit_length_before_the_head(tiny_model):
    plain, unit = tiny_model(pooling="mean"), tiny_model(pooling="mean", normalize=True)  # the same weights
    ids, mask = batch_with_padding(7)
    raw, out = plain(ids, mask), unit(ids, mask)
    torch.testing.assert_close(out.pooled.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(out.pooled, torch.nn.functional.normalize(raw.pooled, dim=-1))
    torch.testing.assert_close(out.logits, unit.head(out.pooled, ids, mask, None)[0])
    assert not torch.allclose(out.logits, raw.logits)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_outputs_are_the_mix_that_evaluation_recomputes_from_the_parts(precision):
    """Evaluation fits the mixing weights on the parts it gathered and scores their mix; the model's own outputs
    must be that mix bit for bit (under bf16 autocast too), or the saved model scores other than its evaluation."""
    import numpy as np

    from encoder_clf.inference import forward_batches
    from encoder_clf.model.classifier import TextClassifier

    torch.manual_seed(0)
    model = TextClassifier(tiny_config(vocab_size=100, pad_token_id=0, ngram_buckets=64, task="multi_label",
                                       labels=["a", "b", "c"]))
    with torch.no_grad():
        for parameter in model.head.parameters():
            parameter.normal_(0, 0.5)
        model.head.weights.copy_(torch.tensor([0.3137, 0.8291]))  # fitted values: not bf16-representable
        model.task.thresholds.uniform_(0.2, 0.8)
    sequences = [list(np.random.default_rng(i).integers(2, 100, size=5 + i % 7)) for i in range(50)]
    out = forward_batches(model, sequences, 0, 16, precision)
    assert out.logits.dtype == np.float32
    mixed = model.head.mix(torch.from_numpy(out.parts))
    assert np.array_equal(out.logits, mixed.numpy())
    # and its decisions are those of its own thresholds on that mix
    decided = model.task.predict(torch.from_numpy(out.logits)).numpy()
    assert np.array_equal(decided, (model.task.scores(mixed) >= model.task.thresholds).numpy())
