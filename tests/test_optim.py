"""AdamW groups' companions: the clip folded into the fused AdamW agrees with clip_grad_norm_ then step."""

import copy
import math

import pytest
import torch
from torch import nn

from encoder_clf.training.optim import clipped_step


def twins(seed: int = 0, fused: bool = True):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 30), nn.GELU(), nn.Linear(30, 3))
    twin = copy.deepcopy(model)
    make = lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.01, fused=fused)  # noqa: E731
    return model, make(model), twin, make(twin)


def backward(model: nn.Module, scale: float) -> None:
    torch.manual_seed(int(scale))
    (model(torch.randn(16, 20) * scale) ** 2).sum().backward()


def max_difference(a: nn.Module, b: nn.Module) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("max_norm", [1.0, 0.5])
@pytest.mark.parametrize("fused", [True, False])
def test_it_steps_as_clip_grad_norm_then_step_does(max_norm, fused):
    model, optimizer, twin, twin_optimizer = twins(fused=fused)
    unclipped = copy.deepcopy(model)
    unclipped_optimizer = torch.optim.AdamW(unclipped.parameters(), lr=1e-2, weight_decay=0.01, fused=True)
    for scale in (30.0, 3.0, 60.0, 0.001):  # norms far above and below the bound, changing from step to step
        for m in (model, twin, unclipped):
            backward(m, scale)
        expected = float(nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        optimizer.step()
        assert clipped_step(twin_optimizer, twin.parameters(), max_norm) == pytest.approx(expected, rel=1e-6)
        unclipped_optimizer.step()
        assert not hasattr(twin_optimizer, "grad_scale")
        for opt in (optimizer, twin_optimizer, unclipped_optimizer):
            opt.zero_grad()
        assert max_difference(model, twin) < 1e-6
    assert max_difference(model, unclipped) > 1e-3  # the positive control: the clip changed the updates


def test_an_infinite_bound_measures_and_zero_neither_clips_nor_measures():
    model, optimizer, twin, twin_optimizer = twins(1)
    backward(model, 50.0)
    backward(twin, 50.0)
    expected = float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()])))
    assert clipped_step(optimizer, model.parameters(), math.inf) == pytest.approx(expected, rel=1e-5)
    assert clipped_step(twin_optimizer, twin.parameters(), 0.0) is None
    assert max_difference(model, twin) == 0.0


def test_the_scale_is_removed_when_the_step_fails():
    model, optimizer, _, _ = twins(2)
    backward(model, 100.0)

    def failing_step():
        raise RuntimeError("step failed")

    optimizer.step = failing_step
    with pytest.raises(RuntimeError, match="step failed"):
        clipped_step(optimizer, model.parameters(), 1.0)
    assert not hasattr(optimizer, "grad_scale")
