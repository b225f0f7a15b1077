"""The scoring rules: weights, masking, agreement with plain references, general attention, the combine step."""

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from encoder_clf.model.attention import (
    SCORE_RULES,
    AdditiveScore,
    MultiHeadAttention,
    SingleHeadAttention,
    attend,
    softmax_rows,
    stack_projections,
)

RULES = sorted(SCORE_RULES)
D_MODEL, HEADS = 16, 4


def make_attention(rule: str, seed: int = 0, combine: bool = False) -> MultiHeadAttention:
    torch.manual_seed(seed)
    return MultiHeadAttention(D_MODEL, HEADS, rule, dropout=0.0, combine=combine).eval()


def padding_mask(lengths: list[int], width: int) -> torch.Tensor:
    return torch.arange(width)[None, :] >= torch.tensor(lengths)[:, None]


@pytest.mark.parametrize("rule", RULES)
def test_weights_sum_to_one_and_are_zero_on_padding(rule):
    attn = make_attention(rule)
    x = torch.randn(3, 7, D_MODEL)
    mask = padding_mask([7, 4, 1], 7)
    out, weights = attn(x, key_padding_mask=mask, need_weights=True)
    assert out.shape == (3, 7, D_MODEL)
    assert weights.shape == (3, HEADS, 7, 7)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, HEADS, 7))
    assert torch.equal(weights.masked_select(mask[:, None, None, :]), torch.zeros(int(mask.sum()) * HEADS * 7))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("combine", [False, True])
def test_real_tokens_ignore_appended_padding(rule, need_weights, combine):
    attn = make_attention(rule, combine=combine)
    x = torch.randn(2, 5, D_MODEL)
    padded = torch.cat([x, 100 * torch.randn(2, 3, D_MODEL)], dim=1)  # garbage in the padded slots
    short, _ = attn(x, need_weights=need_weights)
    long, _ = attn(padded, key_padding_mask=padding_mask([5, 5], 8), need_weights=need_weights)
    torch.testing.assert_close(long[:, :5], short, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rule", RULES)
def test_general_attention_with_other_key_length(rule):
    attn = make_attention(rule)
    queries, keys = torch.randn(2, 3, D_MODEL), torch.randn(2, 9, D_MODEL)
    out, weights = attn(queries, keys, key_padding_mask=padding_mask([9, 6], 9), need_weights=True)
    assert out.shape == (2, 3, D_MODEL)
    assert weights.shape == (2, HEADS, 3, 9)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, HEADS, 3))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("need_weights", [False, True])
def test_fully_padded_row_gives_zeros_not_nan(rule, need_weights):
    attn = make_attention(rule)
    out, weights = attn(torch.randn(2, 3, D_MODEL), torch.randn(2, 4, D_MODEL),
                        key_padding_mask=padding_mask([4, 0], 4), need_weights=need_weights)
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out[1], attn.out_proj.bias.expand(3, D_MODEL))  # zero context → bias only
    if need_weights:
        assert torch.equal(weights[1], torch.zeros(HEADS, 3, 4))


def split_heads(x: torch.Tensor) -> torch.Tensor:
    b, t, _ = x.shape
    return x.view(b, t, HEADS, D_MODEL // HEADS).transpose(1, 2)


def projection(attn: MultiHeadAttention, part: str, x: torch.Tensor) -> torch.Tensor:
    """``x`` through the query, key or value projection: one third of the stacked ``in_proj``."""
    index = "qkv".index(part)
    return F.linear(x, attn.in_proj.weight.chunk(3)[index], attn.in_proj.bias.chunk(3)[index])


def reference(attn: MultiHeadAttention, query, key, mask, score_fn):
    """Plain-tensor attention written out step by step, for any score function, with or without combine."""
    q, k, v = (split_heads(projection(attn, part, x)) for part, x in zip("qkv", (query, key, key)))
    scores = score_fn(q, k)
    scores = scores.masked_fill(mask[:, None, None, :], float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v
    b, _, t, _ = out.shape
    merged = out.transpose(1, 2).reshape(b, t, D_MODEL)
    return attn.out_proj(torch.cat([query, merged], -1) if attn.combine else merged)


# Score functions of (attn, q, k, mask); the mask is for concat_position, which summarises the real keys.
def dot_reference(attn, q, k, mask):
    return q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])


def concat_reference(attn, q, k, mask):
    """Literally concatenate every (q_i, k_j) pair and apply the per-head linear layer."""
    lq, lk = q.shape[2], k.shape[2]
    pairs = torch.cat([q[:, :, :, None].expand(-1, -1, -1, lk, -1), k[:, :, None].expand(-1, -1, lq, -1, -1)], -1)
    return torch.einsum("bhqkd,hd->bhqk", pairs, attn.score.weight) + attn.score.bias[None, :, None, None]


def additive_reference(attn, q, k, mask):
    """Bahdanau: W [q_i; k_j] with W = [W_q W_k], then tanh and v."""
    s = attn.score
    lq, lk = q.shape[2], k.shape[2]
    pairs = torch.cat([q[:, :, :, None].expand(-1, -1, -1, lk, -1), k[:, :, None].expand(-1, -1, lq, -1, -1)], -1)
    w = torch.cat([s.q_proj, s.k_proj], dim=1)  # (heads, 2d, d)
    hidden = torch.tanh(torch.einsum("bhqkc,hcd->bhqkd", pairs, w) + s.bias[None, :, None, None])
    return torch.einsum("bhqkd,hd->bhqk", hidden, s.v)


def concat_position_reference(attn, q, k, mask):
    """General attention: each query concatenated with the mean of its real keys, one linear row per key position."""
    real = (~mask).float()[:, None, :, None]
    summary = (k * real).sum(2, keepdim=True) / real.sum(2, keepdim=True)
    pairs = torch.cat([q, summary.expand_as(q)], -1)
    s, lk = attn.score, k.shape[2]
    return torch.einsum("bhqc,hkc->bhqk", pairs, s.weight[:, :lk]) + s.bias[None, :, None, :lk]


REFERENCES = {"dot": dot_reference, "concat": concat_reference, "concat_position": concat_position_reference,
              "additive": additive_reference}


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("combine", [False, True])
def test_matches_plain_reference(rule, need_weights, combine):
    attn = make_attention(rule, combine=combine)
    query, key = torch.randn(3, 5, D_MODEL), torch.randn(3, 6, D_MODEL)
    mask = padding_mask([6, 3, 1], 6)
    expected = reference(attn, query, key, mask, lambda q, k: REFERENCES[rule](attn, q, k, mask))
    out, _ = attn(query, key, key_padding_mask=mask, need_weights=need_weights)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_concat_position_pairs_each_query_with_its_own_key_in_self_attention():
    attn = make_attention("concat_position")
    x, mask = torch.randn(2, 6, D_MODEL), padding_mask([6, 4], 6)
    s = attn.score

    def scores(q, k):  # [q_i; k_i] against the rows of the first 6 positions
        return torch.einsum("bhqc,hkc->bhqk", torch.cat([q, k], -1), s.weight[:, :6]) + s.bias[None, :, None, :6]

    out, _ = attn(x, key_padding_mask=mask)
    torch.testing.assert_close(out[:, :4], reference(attn, x, x, mask, scores)[:, :4], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("need_weights", [False, True])
def test_bias_is_added_to_every_rules_scores(rule, need_weights):
    attn = make_attention(rule)
    query, key = torch.randn(3, 5, D_MODEL), torch.randn(3, 6, D_MODEL)
    mask, bias = padding_mask([6, 3, 1], 6), torch.randn(1, HEADS, 5, 6)
    expected = reference(attn, query, key, mask, lambda q, k: REFERENCES[rule](attn, q, k, mask) + bias)
    out, _ = attn(query, key, key_padding_mask=mask, need_weights=need_weights, bias=bias)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    if need_weights:  # still a distribution over the real keys only
        _, weights = attn(query, key, key_padding_mask=mask, need_weights=True, bias=bias)
        torch.testing.assert_close(weights.sum(-1), torch.ones(3, HEADS, 5))
        assert torch.equal(weights[2, :, :, 1:], torch.zeros(HEADS, 5, 5))


@pytest.mark.parametrize("need_weights", [False, True])
def test_biased_fully_padded_row_gives_zeros_not_nan(need_weights):
    attn = make_attention("dot")
    out, _ = attn(torch.randn(2, 3, D_MODEL), torch.randn(2, 4, D_MODEL), key_padding_mask=padding_mask([4, 0], 4),
                  need_weights=need_weights, bias=torch.randn(1, HEADS, 3, 4))
    torch.testing.assert_close(out[1], attn.out_proj.bias.expand(3, D_MODEL))


def test_dot_fused_and_plain_paths_agree_in_training_mode_without_dropout():
    attn = make_attention("dot").train()
    x, mask = torch.randn(2, 6, D_MODEL), padding_mask([6, 2], 6)
    fused, none = attn(x, key_padding_mask=mask, need_weights=False)
    plain, weights = attn(x, key_padding_mask=mask, need_weights=True)
    assert none is None and weights is not None
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)


def test_additive_query_chunks_give_the_same_scores(monkeypatch):
    attn = make_attention("additive")
    x = torch.randn(2, 11, D_MODEL)
    whole, _ = attn(x, need_weights=True)
    monkeypatch.setattr(type(attn.score), "max_elements", 1)  # forces one query per chunk
    chunked, _ = attn(x, need_weights=True)
    torch.testing.assert_close(chunked, whole)


# Parameters that only shift a whole row of scores, which the softmax cancels: their gradient is zero.
ROW_SHIFTS = {"dot": {"k_proj.bias"}, "concat": {"q_proj.weight", "q_proj.bias", "k_proj.bias", "score.bias"}}


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("combine", [False, True])
def test_gradients_reach_every_parameter(rule, combine):
    attn = make_attention(rule, combine=combine).train()
    out, _ = attn(torch.randn(2, 5, D_MODEL), torch.randn(2, 4, D_MODEL), key_padding_mask=padding_mask([4, 2], 4))
    out.pow(2).sum().backward()
    for name, p in attn.named_parameters():
        assert p.grad is not None, name  # every parameter in the graph: DistributedDataParallel requires it
    for name, grad in named_gradients(attn):
        if name in ROW_SHIFTS.get(rule, ()):
            # zero up to the float32 rounding of a sum that cancels
            torch.testing.assert_close(grad, torch.zeros_like(grad), atol=1e-5, rtol=0)
        else:
            assert grad.abs().sum() > 0, name


def named_gradients(attn: MultiHeadAttention):
    """Each parameter's gradient, the stacked projection's split into its ``q_proj``, ``k_proj`` and ``v_proj``."""
    for name, p in attn.named_parameters():
        if name.startswith("in_proj."):
            leaf = name.split(".")[1]
            yield from ((f"{part}_proj.{leaf}", grad) for part, grad in zip("qkv", p.grad.chunk(3)))
        else:
            yield name, p.grad


@pytest.mark.parametrize("rule", sorted(set(RULES) - {"concat_position"}))  # which pairs each query with its own key
def test_self_attention_equals_general_attention_on_the_same_sequence(rule):
    """The stacked product of self-attention and the sliced ones of general attention are the same projections."""
    attn = make_attention(rule)
    x, mask = torch.randn(2, 6, D_MODEL), padding_mask([6, 4], 6)
    alone, _ = attn(x, key_padding_mask=mask, need_weights=True)
    general, _ = attn(x, x.clone(), key_padding_mask=mask, need_weights=True)
    torch.testing.assert_close(general, alone, atol=1e-6, rtol=1e-5)


def test_separate_projections_are_stacked_in_query_key_value_order():
    q, k, v = (torch.full((2, 2), float(i)) for i in range(3))
    state = {"a.q_proj.weight": q, "a.k_proj.weight": k, "a.v_proj.weight": v, "a.q_proj.bias": q[0],
             "a.k_proj.bias": k[0], "a.v_proj.bias": v[0], "a.score.q_proj": q, "a.score.k_proj": k}
    stacked = stack_projections(state)
    assert sorted(stacked) == ["a.in_proj.bias", "a.in_proj.weight", "a.score.k_proj", "a.score.q_proj"]
    assert torch.equal(stacked["a.in_proj.weight"], torch.cat([q, k, v]))
    assert torch.equal(stacked["a.in_proj.bias"], torch.tensor([0.0, 0.0, 1.0, 1.0, 2.0, 2.0]))
    assert stacked["a.score.q_proj"] is q  # an additive score's own projections are not attention projections


LEAN_RULES = ["concat", "additive"]


@pytest.mark.parametrize("rule", LEAN_RULES)
def test_lean_rules_have_the_gradients_of_the_full_grid(rule, monkeypatch):
    """Float64 everywhere but the float32 softmax, against the explicit grid of the plain references."""
    monkeypatch.setattr(AdditiveScore, "max_elements", 1)  # one checkpointed chunk per query
    attn = make_attention(rule).double().train()
    query = torch.randn(3, 5, D_MODEL, dtype=torch.float64, requires_grad=True)
    key = torch.randn(3, 6, D_MODEL, dtype=torch.float64, requires_grad=True)
    mask, upstream = padding_mask([6, 3, 1], 6), torch.randn(3, 5, D_MODEL, dtype=torch.float64)
    inputs = [query, key, *attn.parameters()]
    lean, _ = attn(query, key, key_padding_mask=mask)
    expected = reference(attn, query, key, mask, lambda q, k: REFERENCES[rule](attn, q, k, mask))
    for got, want in zip(torch.autograd.grad((lean * upstream).sum(), inputs),
                         torch.autograd.grad((expected * upstream).sum(), inputs)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("rule, grids", [("concat", 0), ("additive", 1)])
def test_lean_rules_keep_no_five_d_tensor_for_backward(rule, grids, monkeypatch):
    """Bytes training keeps for backward, counted in float32 ``(batch, heads, q_len, k_len)`` grids.

    Concat keeps one score row per head, no grid; additive keeps the softmax
    output but no chunk's ``(batch, heads, chunk, k_len, head_dim)`` tanh.
    """
    monkeypatch.setattr(AdditiveScore, "max_elements", 1 << 16)  # chunks of 16 queries
    batch, length = 2, 128
    attn = make_attention(rule).train()
    kept = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, _ = attn(torch.randn(batch, length, D_MODEL), key_padding_mask=padding_mask([length, 80], length))
    out.sum().backward()
    grid_bytes = 4 * batch * HEADS * length * length
    assert sum(kept.values()) < (grids + 0.5) * grid_bytes, sum(kept.values()) / grid_bytes


@pytest.mark.parametrize("rule", LEAN_RULES)
def test_lean_rules_train_under_bf16_autocast(rule, monkeypatch):
    monkeypatch.setattr(AdditiveScore, "max_elements", 64)
    attn = make_attention(rule).train()
    x, mask = torch.randn(2, 9, D_MODEL), padding_mask([9, 5], 9)

    def gradients() -> list[torch.Tensor]:
        out, _ = attn(x, key_padding_mask=mask)
        return torch.autograd.grad(out.float().pow(2).sum(), list(attn.parameters()))

    full = gradients()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = gradients()
    for (name, _), g, g_low in zip(attn.named_parameters(), full, low):
        assert g_low.dtype == torch.float32
        if name not in ROW_SHIFTS.get(rule, ()):
            assert (g_low - g).norm() < 0.05 * g.norm(), name


@pytest.mark.parametrize("rule", RULES)
def test_bf16_autocast_runs_and_stays_close(rule):
    attn = make_attention(rule)
    x = torch.randn(2, 5, D_MODEL)
    full, _ = attn(x, need_weights=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, weights = attn(x, need_weights=True)
    assert weights.dtype == torch.float32  # handed out in float32 whatever the softmax's dtype
    # the softmax keeps bf16 (it computes in float32 inside): outputs within bf16's rounding of float32's
    torch.testing.assert_close(low.float(), full, atol=0.05, rtol=0.05)
    torch.testing.assert_close(weights, attn(x, need_weights=True)[1], atol=0.01, rtol=0.02)


@pytest.mark.parametrize("rule", sorted(set(RULES) - {"concat_position"}))  # it pairs aligned keys by position
@pytest.mark.parametrize("training", [False, True])
def test_self_attention_s_stacked_projection_equals_the_three_projections(rule, training):
    """``attn(x)`` projects Q, K and V in one product with the weights stacked; ``attn(x, x)`` in three."""
    attn = make_attention(rule).train(training)
    x, mask = torch.randn(3, 6, D_MODEL), padding_mask([6, 4, 1], 6)
    gradients = []
    for key in (None, x):
        torch.manual_seed(5)  # the same dropout masks (none in eval)
        out, _ = attn(x, key, key_padding_mask=mask)
        gradients.append((out, torch.autograd.grad(out.pow(2).sum(), list(attn.parameters()))))
    (stacked, g_stacked), (three, g_three) = gradients
    torch.testing.assert_close(stacked, three, atol=1e-6, rtol=1e-6)
    for a, b in zip(g_stacked, g_three):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_unknown_rule_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown attention rule 'cosine'; "
                                         "choose one of dot, concat, concat_position, additive"):
        MultiHeadAttention(D_MODEL, HEADS, "cosine")


@pytest.mark.parametrize("rule, follows_the_query", [("concat", False), ("concat_position", True)])
def test_concat_position_weights_follow_the_query(rule, follows_the_query):
    """The same keys read by two queries: concat's query term cancels in the softmax, concat_position's does not."""
    attn = make_attention(rule)
    queries, keys = torch.randn(1, 2, D_MODEL), torch.randn(1, 6, D_MODEL)
    _, weights = attn(queries, keys, need_weights=True)
    assert torch.allclose(weights[:, :, 0], weights[:, :, 1], atol=1e-6) != follows_the_query


def test_concat_position_scores_are_the_full_rows_with_positions_past_the_sequence_masked():
    torch.manual_seed(0)
    rule = SCORE_RULES["concat_position"](HEADS, 4, max_len=10)
    q, paired, v = torch.randn(2, HEADS, 3, 4), torch.randn(2, HEADS, 1, 4), torch.randn(2, HEADS, 10, 4)
    full = rule(q, paired, 10)
    torch.testing.assert_close(rule(q, paired, 6), full[..., :6])
    beyond = padding_mask([6, 6], 10)
    _, masked = attend(full, v, 3, beyond, 0.0, False)
    _, short = attend(rule(q, paired, 6), v[:, :, :6], 3, None, 0.0, False)
    torch.testing.assert_close(masked[..., :6], short)
    assert torch.equal(masked[..., 6:], torch.zeros(2, HEADS, 3, 4))


def test_a_sequence_longer_than_concat_position_s_maximum_is_refused():
    attn = MultiHeadAttention(D_MODEL, HEADS, "concat_position", max_len=8)
    message = ("concat_position scores at most 8 positions and the sequence has 9; "
               "truncate it (tokenizer.max_length) or raise model.max_positions")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        attn(torch.randn(1, 9, D_MODEL), need_weights=True)


class TutorialAttn(nn.Module):
    """The widely copied tutorial ``Attn`` class in its own terms: Q, K ``(1, 1, 32)`` and V ``(1, 32, 64)``."""

    def __init__(self, query_size=32, key_size=32, value_len=32, value_size=64, output_size=64):
        super().__init__()
        self.attn = nn.Linear(query_size + key_size, value_len)
        self.attn_combine = nn.Linear(query_size + value_size, output_size)

    def forward(self, Q, K, V):
        attn_weights = torch.softmax(self.attn(torch.cat((Q[0], K[0]), 1)), dim=1)
        output = torch.bmm(attn_weights.unsqueeze(0), V)
        output = torch.cat((Q[0], output[0]), 1)
        return self.attn_combine(output).unsqueeze(0), attn_weights


def test_tutorial_case_matches_the_tutorial_attn_class():
    torch.manual_seed(0)
    tutorial, ours = TutorialAttn(), SingleHeadAttention(32, 64, 64, max_len=32)
    with torch.no_grad():  # row j of the tutorial's Linear(64 -> 32) scores position j
        ours.score.weight.copy_(tutorial.attn.weight[None])
        ours.score.bias.copy_(tutorial.attn.bias[None])
        ours.combine.load_state_dict(tutorial.attn_combine.state_dict())
    Q, K, V = torch.randn(1, 1, 32), torch.randn(1, 1, 32), torch.randn(1, 32, 64)
    expected_out, expected_weights = tutorial(Q, K, V)
    out, weights = ours(Q, K, V)
    assert expected_weights.shape == (1, 32) and weights.shape == (1, 1, 32)  # ours keeps the query axis
    assert expected_out.shape == out.shape == (1, 1, 64)
    torch.testing.assert_close(weights[:, 0], expected_weights, atol=1e-6, rtol=0)
    torch.testing.assert_close(out, expected_out, atol=1e-6, rtol=0)


def test_single_head_attention_refuses_more_values_than_its_maximum():
    with pytest.raises(ValueError, match="concat_position scores at most 32 positions and the sequence has 33"):
        SingleHeadAttention(32, 64, 64, max_len=32)(torch.randn(1, 1, 32), torch.randn(1, 1, 32),
                                                    torch.randn(1, 33, 64))


@pytest.mark.parametrize("length", [5, 27, 32, 33, 64])
def test_bf16_softmax_rows_agree_with_float64_whichever_way_they_go(length):
    """Rows whose length is a multiple of 32 stay in bf16 and the others go through float32 (a speed choice: both
    round once from float32); either way the weights are bf16, within its rounding, and so is their gradient."""
    scores = (3 * torch.randn(2, 3, 4, length)).to(torch.bfloat16).requires_grad_()
    weights = softmax_rows(scores)
    assert weights.dtype == torch.bfloat16
    reference = torch.softmax(scores.detach().double(), dim=-1)
    torch.testing.assert_close(weights.double(), reference, atol=4e-3, rtol=8e-3)
    upstream = torch.randn(weights.shape, dtype=torch.float64)
    (grad,) = torch.autograd.grad(weights, scores, upstream.to(torch.bfloat16))
    assert grad.dtype == torch.bfloat16
    exact = scores.detach().double().requires_grad_()
    (expected,) = torch.autograd.grad(torch.softmax(exact, dim=-1), exact, upstream)
    torch.testing.assert_close(grad.double(), expected, atol=0.03, rtol=0.05)
