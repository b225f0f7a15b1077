"""What a trained classifier looks at in one text: attention maps, pooling weights, and what each part adds.

The attention maps are the encoder's own weights, one ``(heads, T, T)`` array
per layer (rows: queries, columns: keys, each row summing to 1), over the
tokens the tokenizer produced, ``[CLS]`` and ``[SEP]`` included.

"The tokens the pooling attends to most" depends on the pooling, so each has
its own rule in :data:`TOKEN_WEIGHTS`, all giving one non-negative weight per
token that sums to 1:

- ``attention``: the learned query's softmax weights over the tokens, averaged
  over heads: exactly the mixture the sentence vector is made of.
- ``max``: the share of feature dimensions whose maximum comes from each token
  (each of the ``d_model`` features is copied from one token).
- ``cls``: the last layer's attention from ``[CLS]`` (its query row), averaged
  over heads: what the token the head reads gathered in its final update.
- ``mean``: the last layer's attention averaged over all queries and heads.
  Every token counts equally in the mean itself; this is the weight with which
  each token's value vector enters the mean of the last attention output.

A model with n-gram logits beside its head predicts from both, mixed by
fitted weights, and the attention maps explain only the encoder's part. So an
explanation also says what each part adds to the predicted label's logit
(:class:`Contribution`), and for the n-gram part which n-grams add most. A
logit is taken *centred* over the labels (minus their mean), which the softmax
ignores, so the contributions of the parts (and of the n-grams within their
part) sum to the model's own centred logit of that label.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from .errors import UsageError
from .inference import softmax
from .model.classifier import TextClassifier
from .persistence.model_dir import load_model


def _attention_pooling(model: TextClassifier, states: torch.Tensor, attentions: list[torch.Tensor]) -> torch.Tensor:
    _, weights = model.pooling.pooled_and_weights(states, None)  # (1, heads, 1, T)
    return weights[0, :, 0].mean(dim=0)


def _max_pooling(model: TextClassifier, states: torch.Tensor, attentions: list[torch.Tensor]) -> torch.Tensor:
    winners = states[0].argmax(dim=0)  # (d_model,): the token each feature's maximum comes from
    return torch.bincount(winners, minlength=states.shape[1]).float() / states.shape[2]


def _cls_pooling(model: TextClassifier, states: torch.Tensor, attentions: list[torch.Tensor]) -> torch.Tensor:
    return attentions[-1][0, :, 0].mean(dim=0)


def _mean_pooling(model: TextClassifier, states: torch.Tensor, attentions: list[torch.Tensor]) -> torch.Tensor:
    return attentions[-1][0].mean(dim=(0, 1))


# pooling name -> (model, final states (1, T, d_model), per-layer (1, heads, T, T)) -> weights (T,), summing to 1
TOKEN_WEIGHTS: dict[str, Callable[[TextClassifier, torch.Tensor, list[torch.Tensor]], torch.Tensor]] = {
    "attention": _attention_pooling,
    "max": _max_pooling,
    "cls": _cls_pooling,
    "mean": _mean_pooling,
}

# What the weights of each pooling mean, for titles and printed reports.
TOKEN_WEIGHT_MEANINGS = {
    "attention": "attention-pooling weights (mean over heads)",
    "max": "share of feature dimensions whose max comes from the token",
    "cls": "last layer's attention from [CLS] (mean over heads)",
    "mean": "last layer's attention, mean over queries and heads",
}


@dataclass
class Contribution:
    """What one part of the head (or one n-gram) adds to the centred logit of the predicted label.

    ``share`` is ``logit`` over the sum of the absolute logits of its kind (the
    parts, or the text's n-grams): signed, and the absolute shares sum to 1.
    """

    name: str  # the part ("encoder", "ngrams"), or the n-gram's tokens ("great", "not great")
    logit: float
    share: float
    weight: float = 1.0  # a part's mixing weight (already in ``logit``)


@dataclass
class Explanation:
    """One text as the model saw it.

    ``attentions``: one ``(heads, T, T)`` float32 array per layer; ``token_weights``
    ``(T,)`` sums to 1 (see the module docstring for what it means per pooling);
    ``parts``: one :class:`Contribution` per part of the head; ``ngrams``: one
    per unigram and bigram of the text, largest first (empty without n-gram logits).
    """

    text: str
    tokens: list[str]
    attentions: list[np.ndarray]
    token_weights: np.ndarray
    pooling: str
    label: str
    probabilities: dict[str, float]
    parts: list[Contribution]
    ngrams: list[Contribution]

    @property
    def n_layers(self) -> int:
        return len(self.attentions)

    def layer(self, number: int | None = None) -> np.ndarray:
        """The ``(heads, T, T)`` weights of layer ``number``, counted from 1; ``None`` is the last layer."""
        return self.attentions[layer_index(number, self.n_layers)]

    def top(self, k: int = 5) -> list[tuple[int, str, float]]:
        """The ``k`` tokens with the largest weight: ``(position, token, weight)``, largest first."""
        order = np.argsort(-self.token_weights, kind="stable")[:k]
        return [(int(i), self.tokens[i], float(self.token_weights[i])) for i in order]


def layer_index(number: int | None, n_layers: int) -> int:
    """A layer number counted from 1 (``None``: the last) as a list index, or a one-line error."""
    if number is None:
        return n_layers - 1
    if not 1 <= number <= n_layers:
        raise UsageError(f"layer {number}: the model has {n_layers} layer(s); pick --layer 1 to {n_layers}")
    return number - 1


@torch.inference_mode()
def explain(model: TextClassifier, tokenizer: Tokenizer, text: str) -> Explanation:
    """One text through the model (its own dtype, no autocast): attention maps, token weights and prediction."""
    if not text.strip():
        raise UsageError("no text to explain; pass a non-empty TEXT")
    was_training = model.training
    model.eval()
    encoding = tokenizer.encode(text)
    device = next(model.parameters()).device
    ids = torch.tensor([encoding.ids], device=device)
    states, attentions = model.encoder(ids, None, need_weights=True)  # no padding: one text
    out = model.classify(states, ids, None)
    weights = TOKEN_WEIGHTS[model.config.pooling](model, states, attentions)
    probabilities = softmax(out.logits.float().cpu().numpy())[0]
    names = model.config.labels
    predicted = int(probabilities.argmax())
    model.train(was_training)
    return Explanation(
        text=text,
        tokens=list(encoding.tokens),
        attentions=[a[0].float().cpu().numpy() for a in attentions],
        token_weights=weights.float().cpu().numpy(),
        pooling=model.config.pooling,
        label=names[predicted],
        probabilities={name: float(p) for name, p in zip(names, probabilities)},
        parts=_part_contributions(model, out.parts[:, 0], predicted),
        ngrams=_ngram_contributions(model, ids, list(encoding.tokens), predicted),
    )


def _centred(logits: torch.Tensor, label: int) -> torch.Tensor:
    """``logits[..., label]`` minus the mean over the labels."""
    logits = logits.float()
    return logits[..., label] - logits.mean(dim=-1)


def _shares(names: list[str], logits: list[float], weights: list[float]) -> list[Contribution]:
    total = sum(abs(v) for v in logits) or 1.0
    return [Contribution(name, value, value / total, weight) for name, value, weight in zip(names, logits, weights)]


def _part_contributions(model: TextClassifier, parts: torch.Tensor, label: int) -> list[Contribution]:
    """Each part's weighted, centred logit of ``label`` (``parts`` is ``(parts, num_labels)``)."""
    weights = model.head.weights.float().cpu()
    logits = (weights * _centred(parts.cpu(), label)).tolist()
    return _shares(model.head.names, logits, weights.tolist())


def _ngram_contributions(model: TextClassifier, ids: torch.Tensor, tokens: list[str],
                         label: int) -> list[Contribution]:
    """Each unigram's and bigram's share of the n-gram part's centred logit of ``label``, largest first."""
    if "ngrams" not in model.head.parts:
        return []
    weight = float(model.head.weights[model.head.names.index("ngrams")])
    logits = (weight * _centred(model.head.parts["ngrams"].contributions(ids).cpu(), label)).tolist()
    names = tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]  # the order of NgramLogits.terms
    found = _shares(names, logits, [weight] * len(names))
    return sorted(found, key=lambda c: -abs(c.logit))


def explain_text(model_dir: str | Path, text: str) -> Explanation:
    """Load a saved model directory and :func:`explain` one text with it."""
    model, tokenizer = load_model(model_dir)
    return explain(model, tokenizer, text)
