"""What a trained model looks at in one text or sentence pair: attention maps, pooling weights, what each part adds.

The attention maps are the encoder's own weights, one ``(heads, T, T)`` array
per layer (rows: queries, columns: keys, each row summing to 1), over the
tokens the tokenizer produced, ``[CLS]`` and ``[SEP]`` included. A pair model
reads ``[CLS] first [SEP] second [SEP]`` with token types 0 then 1, as it does
in training and prediction; :attr:`Explanation.second_start` is the position of
the first type-1 token, and :meth:`Explanation.cross_segment_attention` says,
layer by layer, how much each text's tokens attend to the other text.

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
explanation also says what each part adds to the output behind each predicted
label (:class:`Contribution`, one :class:`LabelExplanation` per label), and for
the n-gram part which n-grams add most. The parts' contributions (and the
n-grams' within their part) sum to the model's own value of that quantity,
which depends on the task (:data:`QUANTITIES`):

- single-label: the label's logit *centred* over the labels (minus their mean),
  which the softmax ignores; one section, the predicted class.
- multi-label: the label's own logit, whose sigmoid is its probability. Labels
  are independent, so nothing is centred; one section per label at or above
  its threshold (most probable first), or, when none is, the most probable one
  (``predicted`` False).
- regression: the standardised output ``(value - mean) / std``; one section,
  the target. A part adding ``c`` moves the prediction by ``c · std`` target units.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from .data.batching import token_types
from .data.tokenization import encode
from .errors import UsageError
from .inference import require_classifier
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


# task -> (the quantity the parts add up to, how to read it): for titles, axis labels and printed reports
QUANTITIES = {
    "single_label": ("logit", "centred over the labels"),
    "multi_label": ("logit", "the label's own sigmoid logit: labels are independent, nothing is centred"),
    "regression": ("standardised output", "value = mean + std * output"),
}


@dataclass
class Contribution:
    """What one part of the head (or one n-gram) adds to a label's quantity (see :data:`QUANTITIES`).

    ``share`` is ``logit`` over the sum of the absolute logits of its kind (the
    parts, or the text's n-grams): signed, and the absolute shares sum to 1.
    """

    name: str  # the part ("encoder", "ngrams"), or the n-gram's tokens ("great", "not great")
    logit: float
    share: float
    weight: float = 1.0  # a part's mixing weight (already in ``logit``)


@dataclass
class LabelExplanation:
    """One label's section: its score, the quantity the parts add up to, and what each part and n-gram adds.

    ``probability``: softmax (single-label) or sigmoid (multi-label) probability, ``None``
    for regression; ``threshold``: a multi-label model's threshold for the label, else
    ``None``; ``logit``: the model's own value of the task's quantity, the sum of
    ``parts``' logits; ``predicted``: False only for the most probable label of a
    multi-label text where no label reaches its threshold.
    """

    label: str
    logit: float
    parts: list[Contribution]
    ngrams: list[Contribution]
    probability: float | None = None
    threshold: float | None = None
    predicted: bool = True


@dataclass
class Explanation:
    """One text (or ``(first, second)`` pair) as the model saw it.

    ``attentions``: one ``(heads, T, T)`` float32 array per layer; ``token_weights``
    ``(T,)`` sums to 1 (see the module docstring for what it means per pooling);
    ``probabilities``: every label's softmax or sigmoid probability (empty for
    regression); ``sections``: one :class:`LabelExplanation` per predicted label
    (``parts``: one :class:`Contribution` per part of the head; ``ngrams``: one per
    unigram and bigram of the tokens, largest first, empty without n-gram logits);
    ``second_start``: for a pair, the position of the second text's first token
    (the number of type-0 tokens), else ``None``; ``value``: a regression model's
    prediction in target units, with ``mean`` and ``std`` the target's scale.
    """

    text: str | tuple[str, str]
    tokens: list[str]
    attentions: list[np.ndarray]
    token_weights: np.ndarray
    pooling: str
    task: str
    probabilities: dict[str, float]
    sections: list[LabelExplanation] = field(default_factory=list)
    second_start: int | None = None
    value: float | None = None
    mean: float | None = None
    std: float | None = None

    @property
    def n_layers(self) -> int:
        return len(self.attentions)

    @property
    def label(self) -> str:
        """The first section's label: the predicted class, the most probable predicted label, or the target."""
        return self.sections[0].label

    @property
    def labels(self) -> list[str]:
        """The predicted labels (multi-label: possibly none), in the order of the sections."""
        return [s.label for s in self.sections if s.predicted]

    @property
    def parts(self) -> list[Contribution]:
        return self.sections[0].parts

    @property
    def ngrams(self) -> list[Contribution]:
        return self.sections[0].ngrams

    @property
    def quantity(self) -> tuple[str, str]:
        """What the contributions add up to, and how to read it (see :data:`QUANTITIES`)."""
        return QUANTITIES[self.task]

    @property
    def type_ids(self) -> np.ndarray:
        """``(T,)`` token types as the encoder read them: 1 from ``second_start`` on, all 0 for a single text."""
        types = np.zeros(len(self.tokens), dtype=np.int64)
        if self.second_start is not None:
            types[self.second_start:] = 1
        return types

    def section(self, label: str | None = None) -> LabelExplanation:
        """The section of ``label`` (``None``: the first), or a one-line error naming the ones there are."""
        if label is None:
            return self.sections[0]
        for section in self.sections:
            if section.label == label:
                return section
        raise UsageError(f"label {label!r} is not explained here; pick one of {', '.join(self.labels)}")

    def layer(self, number: int | None = None) -> np.ndarray:
        """The ``(heads, T, T)`` weights of layer ``number``, counted from 1; ``None`` is the last layer."""
        return self.attentions[layer_index(number, self.n_layers)]

    def top(self, k: int = 5) -> list[tuple[int, str, float]]:
        """The ``k`` tokens with the largest weight: ``(position, token, weight)``, largest first."""
        order = np.argsort(-self.token_weights, kind="stable")[:k]
        return [(int(i), self.tokens[i], float(self.token_weights[i])) for i in order]

    def cross_segment_attention(self) -> np.ndarray:
        """``(layers, 2)``: how much of its attention each text of a pair pays to the other one, per layer.

        Column 0 is the first text's tokens (type 0: ``[CLS] first [SEP]``) attending
        to the second's, column 1 the reverse: the weight a query puts on the other
        text's keys, averaged over the text's queries and the heads, so each lies in
        [0, 1]. Attention spread evenly over the keys would give
        :meth:`uniform_cross_segment_attention`.
        """
        s = self._split()
        return np.array([[a[:, :s, s:].sum(-1).mean(), a[:, s:, :s].sum(-1).mean()] for a in self.attentions],
                        dtype=np.float32).reshape(self.n_layers, 2)

    def uniform_cross_segment_attention(self) -> np.ndarray:
        """``(2,)``: :meth:`cross_segment_attention` of even attention over the keys (the other text's token share)."""
        s, n = self._split(), len(self.tokens)
        return np.array([(n - s) / n, s / n], dtype=np.float32)

    def _split(self) -> int:
        if self.second_start is None:
            raise ValueError("a single text has no second segment; cross-segment attention needs a sentence pair")
        return self.second_start


def layer_index(number: int | None, n_layers: int) -> int:
    """A layer number counted from 1 (``None``: the last) as a list index, or a one-line error."""
    if number is None:
        return n_layers - 1
    if not 1 <= number <= n_layers:
        raise UsageError(f"layer {number}: the model has {n_layers} layer(s); pick --layer 1 to {n_layers}")
    return number - 1


def _checked(text: str | tuple[str, str], pairs: bool) -> str | tuple[str, str]:
    """The input as :func:`encode` takes it, or a one-line error if it is empty or not what the model reads."""
    if isinstance(text, (tuple, list)):
        if len(text) != 2 or not all(isinstance(t, str) for t in text):
            raise UsageError(f"a sentence pair is two texts, (first, second); got {len(text)} item(s)")
        if not pairs:
            raise UsageError("the model takes one text per example, and a pair was given; pass a single text")
        if not all(t.strip() for t in text):
            raise UsageError("a pair needs both texts, and one is empty; pass two non-empty texts")
        return tuple(text)
    if pairs:
        raise UsageError("the model takes sentence pairs, and one text was given; pass (first, second) "
                         "(on the command line: --pair FIRST SECOND)")
    if not text.strip():
        raise UsageError("no text to explain; pass a non-empty TEXT")
    return text


@torch.inference_mode()
def explain(model: TextClassifier, tokenizer: Tokenizer, text: str | tuple[str, str]) -> Explanation:
    """One text, or a ``(first, second)`` pair for a pair model, through the model (its own dtype, no autocast).

    Gives the attention maps, token weights and prediction, with one section per
    predicted label (see the module docstring).
    """
    config = model.config
    text = _checked(text, config.text_pairs)
    was_training = model.training
    model.eval()
    try:
        encoded = encode(tokenizer, [text])
        device = next(model.parameters()).device
        ids = torch.tensor(encoded.ids, device=device)
        types = token_types(encoded.segments, torch.zeros(ids.shape, dtype=torch.bool))  # one text: no padding
        types = None if types is None else types.to(device)
        states, attentions = model.encoder(ids, None, types, need_weights=True)
        out = model.classify(states, ids, None, token_type_ids=types)
        weights = TOKEN_WEIGHTS[config.pooling](model, states, attentions)
        logits = out.logits.float()
        scores = model.task.scores(logits)[0].cpu()
        tokens = [tokenizer.id_to_token(i) for i in encoded.ids[0]]
        names = _term_names(model, ids, tokens, tokenizer)
        sections = [_section(model, out.parts[:, 0], ids, types, names, index, scores)
                    for index in _explained(model, scores)]
    finally:
        model.train(was_training)
    regression = config.task == "regression"
    return Explanation(
        text=text,
        tokens=tokens,
        attentions=[a[0].float().cpu().numpy() for a in attentions],
        token_weights=weights.float().cpu().numpy(),
        pooling=config.pooling,
        task=config.task,
        probabilities={} if regression else {name: float(p) for name, p in zip(config.labels, scores)},
        sections=sections,
        second_start=None if encoded.segments is None else int(encoded.segments[0]),
        value=float(scores) if regression else None,
        mean=float(model.task.mean) if regression else None,
        std=float(model.task.std) if regression else None,
    )


def _explained(model: TextClassifier, scores: torch.Tensor) -> list[int]:
    """The outputs to explain: the predicted class; the labels at their thresholds (else the most probable); 0."""
    if model.config.task == "regression":
        return [0]
    if model.config.task == "multi_label":
        chosen = torch.nonzero(scores >= model.task.thresholds.cpu()).flatten().tolist()
        if chosen:
            return sorted(chosen, key=lambda i: (-float(scores[i]), i))
    return [int(scores.argmax())]


def _section(model: TextClassifier, parts: torch.Tensor, ids: torch.Tensor, types: torch.Tensor | None,
             names: list[str | None], index: int, scores: torch.Tensor) -> LabelExplanation:
    """Output ``index``'s section; ``parts`` ``(parts, outputs)`` are each part's outputs for the text."""
    task = model.config.task

    def quantity(logits: torch.Tensor) -> torch.Tensor:  # (..., outputs) -> (...)
        logits = logits.float()
        return logits[..., index] - logits.mean(dim=-1) if task == "single_label" else logits[..., index]

    found = _part_contributions(model, quantity(parts.cpu()))
    multi = task == "multi_label"
    return LabelExplanation(
        label=model.config.labels[index],
        logit=sum(c.logit for c in found),
        parts=found,
        ngrams=_ngram_contributions(model, ids, types, names, quantity),
        probability=None if task == "regression" else float(scores[index]),
        threshold=float(model.task.thresholds[index]) if multi else None,
        predicted=not multi or bool(scores[index] >= model.task.thresholds[index].cpu()),
    )


def _shares(names: list[str], logits: list[float], weights: list[float]) -> list[Contribution]:
    total = sum(abs(v) for v in logits) or 1.0
    return [Contribution(name, value, value / total, weight) for name, value, weight in zip(names, logits, weights)]


def _part_contributions(model: TextClassifier, parts: torch.Tensor) -> list[Contribution]:
    """Each part's weighted quantity (``parts`` ``(parts,)``: each part's own, unweighted)."""
    weights = model.head.weights.float().cpu()
    return _shares(model.head.names, (weights * parts).tolist(), weights.tolist())


def _term_names(model: TextClassifier, ids: torch.Tensor, tokens: list[str], tokenizer: Tokenizer) -> list[str | None]:
    """The name of each term of the n-gram part (the order of ``NgramLogits.indices``, before a pair's overlap
    rows): its tokens, or the words it reads as the tokenizer spells them; ``None`` where no term is."""
    if "ngrams" not in model.head.parts:
        return []
    ngrams = model.head.parts["ngrams"]
    if not ngrams.words:
        return tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]
    spans = ngrams.spans(ids, torch.ones_like(ids, dtype=torch.bool))
    begin, ends, pairs = (spans[key][0].tolist() for key in ("begin", "ends", "pairs"))
    row = ids[0].tolist()

    def spell(first: int, last: int) -> str:
        return tokenizer.decode(row[first:last + 1], skip_special_tokens=False)

    words = [spell(begin[i], i) if ends[i] else None for i in range(len(row))]
    bigrams = [spell(begin[begin[i] - 1], i) if pairs[i] else None for i in range(len(row))]
    return tokens + words + bigrams


def _ngram_contributions(model: TextClassifier, ids: torch.Tensor, types: torch.Tensor | None,
                         names: list[str | None],
                         quantity: Callable[[torch.Tensor], torch.Tensor]) -> list[Contribution]:
    """What each n-gram of the text adds to the n-gram part's quantity, largest first.

    Terms of the same name (a one-token word is a token and a word) are summed into one entry. For a pair, an
    n-gram found in both texts is named so, and the rows every shared (or unshared) n-gram adds are summed
    into two entries: the texts' overlap.
    """
    if "ngrams" not in model.head.parts:
        return []
    ngrams = model.head.parts["ngrams"]
    weight = float(model.head.weights[model.head.names.index("ngrams")])
    logits = (weight * quantity(ngrams.contributions(ids, types).cpu())).tolist()
    extra: dict[str, float] = {}
    if ngrams.pairs:
        shared = (ngrams.terms(ids, None, types)[0][0, : len(names)] >= ngrams.vocab_size + ngrams.buckets).tolist()
        overlap = [(v, s) for v, s, name in zip(logits[len(names):], shared, names) if name is not None]
        extra = {"(overlap: n-grams in both texts)": sum(v for v, s in overlap if s),
                 "(overlap: n-grams in one text)": sum(v for v, s in overlap if not s)}
        names = [f"{name} (in both texts)" if s and name is not None else name for name, s in zip(names, shared)]
    summed: dict[str, float] = {}
    for name, value in zip(names, logits):
        if name is not None:
            summed[name] = summed.get(name, 0.0) + value
    summed.update(extra)
    found = _shares(list(summed), list(summed.values()), [weight] * len(summed))
    return sorted(found, key=lambda c: -abs(c.logit))


def explain_text(model_dir: str | Path, text: str | tuple[str, str]) -> Explanation:
    """Load a saved model directory and :func:`explain` one text (or pair) with it."""
    require_classifier(model_dir)
    model, tokenizer = load_model(model_dir)
    return explain(model, tokenizer, text)
