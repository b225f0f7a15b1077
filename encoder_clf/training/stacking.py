"""Stacking: the weights that mix the head's parts, fitted on held-out rows.

Each part of the head is trained on its own loss and ends up with its own
confidence (the encoder's head is far more confident than the n-gram logits
beside it, though not more accurate), so a plain mean of their logits follows
the loudest part. The weights of the mix minimise the task's loss (for one
class per text, a multinomial logistic regression of the labels on the parts'
logits, without bias), fitted on the validation split: the rows the model is
selected on, which no part was trained on. The weights are kept non-negative
(Breiman's stacked regressions, 1996): every part predicts the labels, so a
negative weight only fits the noise of a small validation split, and a part
that adds nothing can still fall to about zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..model.classifier import TextClassifier


def stacking_weights(parts: torch.Tensor, labels: torch.Tensor,
                     loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> list[float]:
    """The weight of each part (``parts`` is ``(parts, n, outputs)``) whose weighted sum best predicts ``labels``.

    L-BFGS on the task's loss (cross-entropy by default) over the weights' logarithms (which keeps them
    positive), from equal weights; a small L2 penalty keeps the weights finite when the rows are separable.
    """
    parts = parts.double()
    loss_of = loss or (lambda logits, targets: nn.functional.cross_entropy(logits, targets.long()))
    logs = torch.full((len(parts),), -math.log(len(parts)), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([logs], max_iter=100, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        weights = logs.exp()
        value = loss_of(torch.einsum("p,pnc->nc", weights, parts), labels)
        value = value + 1e-3 * weights.square().sum()
        value.backward()
        return value

    optimizer.step(loss)
    return logs.detach().exp().tolist()


def fit_mixing_weights(model: TextClassifier, parts: np.ndarray, labels: np.ndarray) -> None:
    """Set ``model.head.weights`` to the stacking weights of its parts' held-out outputs ``(parts, n, outputs)``.

    A head of one part keeps its weight of 1: rescaling one part's logits changes no prediction.
    """
    if len(parts) < 2:
        return
    weights = stacking_weights(torch.from_numpy(parts), torch.as_tensor(np.asarray(labels)), model.task.loss)
    model.head.weights.copy_(torch.tensor(weights))
