"""The three scoring rules: weights, masking, agreement with plain references, general attention."""

import math

import pytest
import torch

from encoder_clf.model.attention import SCORE_RULES, AdditiveScore, MultiHeadAttention

RULES = sorted(SCORE_RULES)
D_MODEL, HEADS = 16, 4


def make_attention(rule: str, seed: int = 0) -> MultiHeadAttention:
    torch.manual_seed(seed)
    return MultiHeadAttention(D_MODEL, HEADS, rule, dropout=0.0).eval()


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
def test_real_tokens_ignore_appended_padding(rule, need_weights):
    attn = make_attention(rule)
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


def reference(attn: MultiHeadAttention, query, key, mask, score_fn):
    """Plain-tensor attention written out step by step, for any score function."""
    q, k, v = split_heads(attn.q_proj(query)), split_heads(attn.k_proj(key)), split_heads(attn.v_proj(key))
    scores = score_fn(q, k)
    scores = scores.masked_fill(mask[:, None, None, :], float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v
    b, _, t, _ = out.shape
    return attn.out_proj(out.transpose(1, 2).reshape(b, t, D_MODEL))


def dot_reference(attn, q, k):
    return q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])


def concat_reference(attn, q, k):
    """Literally concatenate every (q_i, k_j) pair and apply the per-head linear layer."""
    lq, lk = q.shape[2], k.shape[2]
    pairs = torch.cat([q[:, :, :, None].expand(-1, -1, -1, lk, -1), k[:, :, None].expand(-1, -1, lq, -1, -1)], -1)
    return torch.einsum("bhqkd,hd->bhqk", pairs, attn.score.weight) + attn.score.bias[None, :, None, None]


def additive_reference(attn, q, k):
    """Bahdanau: W [q_i; k_j] with W = [W_q W_k], then tanh and v."""
    s = attn.score
    lq, lk = q.shape[2], k.shape[2]
    pairs = torch.cat([q[:, :, :, None].expand(-1, -1, -1, lk, -1), k[:, :, None].expand(-1, -1, lq, -1, -1)], -1)
    w = torch.cat([s.q_proj, s.k_proj], dim=1)  # (heads, 2d, d)
    hidden = torch.tanh(torch.einsum("bhqkc,hcd->bhqkd", pairs, w) + s.bias[None, :, None, None])
    return torch.einsum("bhqkd,hd->bhqk", hidden, s.v)


REFERENCES = {"dot": dot_reference, "concat": concat_reference, "additive": additive_reference}


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("need_weights", [False, True])
def test_matches_plain_reference(rule, need_weights):
    attn = make_attention(rule)
    query, key = torch.randn(3, 5, D_MODEL), torch.randn(3, 6, D_MODEL)
    mask = padding_mask([6, 3, 1], 6)
    expected = reference(attn, query, key, mask, lambda q, k: REFERENCES[rule](attn, q, k))
    out, _ = attn(query, key, key_padding_mask=mask, need_weights=need_weights)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("need_weights", [False, True])
def test_bias_is_added_to_every_rules_scores(rule, need_weights):
    attn = make_attention(rule)
    query, key = torch.randn(3, 5, D_MODEL), torch.randn(3, 6, D_MODEL)
    mask, bias = padding_mask([6, 3, 1], 6), torch.randn(1, HEADS, 5, 6)
    expected = reference(attn, query, key, mask, lambda q, k: REFERENCES[rule](attn, q, k) + bias)
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
def test_gradients_reach_every_parameter(rule):
    attn = make_attention(rule).train()
    out, _ = attn(torch.randn(2, 5, D_MODEL), torch.randn(2, 4, D_MODEL), key_padding_mask=padding_mask([4, 2], 4))
    out.pow(2).sum().backward()
    for name, p in attn.named_parameters():
        assert p.grad is not None, name  # every parameter in the graph: DistributedDataParallel requires it
        if name in ROW_SHIFTS.get(rule, ()):
            torch.testing.assert_close(p.grad, torch.zeros_like(p.grad), atol=1e-6, rtol=0)
        else:
            assert p.grad.abs().sum() > 0, name


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
    expected = reference(attn, query, key, mask, lambda q, k: REFERENCES[rule](attn, q, k))
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
    assert weights.dtype == torch.float32  # the softmax runs in float32 whatever the input precision
    torch.testing.assert_close(low.float(), full, atol=0.05, rtol=0.05)


def test_unknown_rule_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown attention rule 'cosine'; choose one of dot, concat, additive"):
        MultiHeadAttention(D_MODEL, HEADS, "cosine")
