"""The CPU dropout: its drop rate and scale, independence of neighbouring elements, gradients, and seeding."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from encoder_clf.model.attention import MultiHeadAttention
from encoder_clf.model.dropout import RESOLUTION, Dropout, dropout, keep_mask

N = 1 << 20


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_drop_rate_and_scale_keep_the_expectation(p, dtype):
    torch.manual_seed(0)
    mask = keep_mask((N,), p, dtype).float()
    rounded = round(p * RESOLUTION) / RESOLUTION
    assert abs(rounded - p) <= 0.5 / RESOLUTION and RESOLUTION == 256
    dropped = (mask == 0).float()
    sigma = (rounded * (1 - rounded) / N) ** 0.5
    assert abs(dropped.mean().item() - rounded) < 4 * sigma
    # every byte of a 64-bit draw drops at the same rate (the top one, with the sign bit, too)
    for slice_rate in dropped.view(-1, 8).mean(0).tolist():
        assert abs(slice_rate - rounded) < 4 * 8 ** 0.5 * sigma
    kept = mask[mask != 0].unique()
    assert kept.tolist() == [torch.tensor(1 / (1 - rounded), dtype=dtype).item()]
    assert abs(mask.mean().item() - 1.0) < 4 * sigma / (1 - rounded) + (0.01 if dtype == torch.bfloat16 else 0)


def test_neighbouring_elements_are_dropped_independently():
    torch.manual_seed(1)
    dropped = (keep_mask((N,), 0.5, torch.float32) == 0).float()
    for shift in (1, 2, 3, 7, 8, 9):  # within one 64-bit draw (1-7) and across draws (8, 9)
        both = (dropped[:-shift] * dropped[shift:]).mean().item()
        assert abs(both - 0.25) < 4 * (0.25 * 0.75 / N) ** 0.5, shift


def test_the_gradient_is_the_mask():
    torch.manual_seed(2)
    x = torch.randn(64, 33, requires_grad=True)
    out = dropout(x, 0.25)
    out.sum().backward()
    torch.testing.assert_close(x.grad, out.detach() / x.detach())
    assert 0.15 < (x.grad == 0).float().mean().item() < 0.35


def test_it_follows_the_global_seed_and_is_identity_when_off():
    x = torch.randn(5, 7, 11)
    torch.manual_seed(3)
    first = dropout(x, 0.2)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.2), first)
    assert not torch.equal(dropout(x, 0.2), first)  # the stream moved on
    assert dropout(x, 0.2, training=False) is x and dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    assert torch.equal(keep_mask((3, 2), 1 - 0.1 / RESOLUTION, torch.float32), torch.zeros(3, 2))
    assert (keep_mask((N,), 1e-4, torch.float32) == 0).any()  # a rate below 1/512 still drops (1/256), not never


def test_the_module_is_nn_dropout_in_eval_and_in_its_state():
    module = Dropout(0.3)
    assert isinstance(module, nn.Dropout) and module.p == 0.3 and repr(module) == repr(nn.Dropout(0.3))
    assert module.state_dict() == {}
    x = torch.randn(4, 9)
    assert torch.equal(module.eval()(x), x)
    kept = module.train()(torch.ones(100_000)).unique()
    torch.testing.assert_close(kept, torch.tensor([0.0, RESOLUTION / (RESOLUTION - round(0.3 * RESOLUTION))]))
    assert torch.equal(Dropout(0.3, inplace=True).train()(torch.zeros(3)), F.dropout(torch.zeros(3), 0.3))


def test_attention_dropout_keeps_the_expected_output():
    """On a CPU the dot rule leaves SDPA when dropout is on; averaged over masks it gives the output without."""
    torch.manual_seed(4)
    attention = MultiHeadAttention(8, 2, "dot", dropout=0.3)
    x, padding = torch.randn(2, 5, 8), torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    with torch.no_grad():
        expected, _ = attention.eval()(x, key_padding_mask=padding)
        attention.train()
        mean = sum(attention(x, key_padding_mask=padding)[0] for _ in range(4000)) / 4000
    torch.testing.assert_close(mean, expected, atol=0.03, rtol=0)
