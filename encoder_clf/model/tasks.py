"""What a model's outputs mean, by task: one class of several, any set of labels, or a number.

A task names how many outputs the head has, the training loss, and how the
outputs become predictions. What a task learns from the data rather than from
gradients lives in its buffers, saved in ``model.safetensors`` with the
weights: a multi-label model's decision thresholds (one per label, tuned on the
validation split) and a regression model's target mean and standard deviation
(from the train split; the head predicts the standardised target, so its
outputs are scaled like a classifier's logits whatever the target's units).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional


class SingleLabel(nn.Module):
    """One class per text: softmax over the labels, cross-entropy, the most probable class."""

    def __init__(self, num_labels: int) -> None:
        super().__init__()
        self.num_outputs = num_labels

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None,
             label_smoothing: float = 0.0) -> torch.Tensor:
        """``targets`` are class ids ``(batch,)``; ``weight`` one per class."""
        return functional.cross_entropy(logits, targets.long(), weight=weight, label_smoothing=label_smoothing)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(batch, labels)``."""
        return logits.float().softmax(dim=-1)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Class ids ``(batch,)``."""
        return logits.argmax(dim=-1)


class MultiLabel(nn.Module):
    """Any set of labels per text (none too): a sigmoid per label, binary cross-entropy, one threshold per label."""

    def __init__(self, num_labels: int) -> None:
        super().__init__()
        self.num_outputs = num_labels
        self.register_buffer("thresholds", torch.full((num_labels,), 0.5))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None,
             label_smoothing: float = 0.0) -> torch.Tensor:
        """``targets`` are 0/1 indicators ``(batch, labels)``; ``weight`` is the positive weight of each label."""
        targets = targets.to(logits.dtype)
        if label_smoothing:
            targets = targets * (1 - label_smoothing) + 0.5 * label_smoothing
        return functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Each label's probability ``(batch, labels)``, independently of the others."""
        return logits.float().sigmoid()

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """0/1 indicators ``(batch, labels)``: the labels whose probability reaches their threshold."""
        return (self.scores(logits) >= self.thresholds.to(logits.device)).long()


class Regression(nn.Module):
    """A number per text: one output, the standardised target, mean squared error; predictions in target units."""

    def __init__(self, num_labels: int) -> None:
        super().__init__()
        self.num_outputs = 1
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))

    def standardise(self, targets: torch.Tensor) -> torch.Tensor:
        return (targets - self.mean) / self.std

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None,
             label_smoothing: float = 0.0) -> torch.Tensor:
        """``targets`` are the raw values ``(batch,)``."""
        return functional.mse_loss(logits[:, 0], self.standardise(targets.to(logits.device, logits.dtype)))

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """The predicted values ``(batch,)``, in the target's units."""
        return logits.float()[:, 0] * self.std.to(logits.device) + self.mean.to(logits.device)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return self.scores(logits)


TASKS: dict[str, type[nn.Module]] = {"single_label": SingleLabel, "multi_label": MultiLabel,
                                     "regression": Regression}
