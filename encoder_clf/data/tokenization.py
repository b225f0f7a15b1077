"""Tokenizers built from Hugging Face ``tokenizers`` parts, trained on the training split.

A tokenizer is normaliser → pre-tokeniser → model (WordPiece, BPE or Unigram)
→ post-processor (``[CLS] $A [SEP]``, and ``[CLS] $A [SEP] $B [SEP]`` with
token types 0 then 1 for a sentence pair, as BERT's), saved as one
``tokenizer.json`` that any ``tokenizers`` user can load. Padding is left to the batcher (dynamic, per
batch); truncation to ``max_length`` is set on the tokenizer and counted, and unless set, ``max_length``
follows the training texts (:func:`fitted_max_length`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from ..errors import UsageError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]  # PAD first, so its id is 0


def _wordpiece(config: TokenizerConfig, specials: list[str] = SPECIAL_TOKENS, vocab_size: int | None = None):
    model = models.WordPiece(unk_token=UNK, max_input_chars_per_word=100)
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size or config.vocab_size, min_frequency=config.min_frequency,
                                        special_tokens=specials, show_progress=False)
    return model, trainer, pre_tokenizers.BertPreTokenizer(), decoders.WordPiece()


def _bpe(config: TokenizerConfig):
    model = models.BPE(unk_token=UNK)
    trainer = trainers.BpeTrainer(vocab_size=config.vocab_size, min_frequency=config.min_frequency,
                                  special_tokens=SPECIAL_TOKENS, show_progress=False)
    return model, trainer, pre_tokenizers.Metaspace(), decoders.Metaspace()


def _unigram(config: TokenizerConfig):
    trainer = trainers.UnigramTrainer(vocab_size=config.vocab_size, special_tokens=SPECIAL_TOKENS,
                                      unk_token=UNK, show_progress=False)
    return models.Unigram(), trainer, pre_tokenizers.Metaspace(), decoders.Metaspace()


TOKENIZER_MODELS = {"wordpiece": _wordpiece, "bpe": _bpe, "unigram": _unigram}


@dataclass
class TokenizerConfig:
    """How the tokenizer is trained on the training split, or which ``tokenizer.json`` to load instead."""

    model: str = "wordpiece"
    vocab_size: int = 16000
    min_frequency: int = 2
    lowercase: bool = True
    max_length: int | None = None  # None = by the training texts' lengths (see fitted_max_length)
    path: str | None = None

    def __post_init__(self) -> None:
        if self.model not in TOKENIZER_MODELS:
            raise UsageError(f"tokenizer.model must be one of {', '.join(TOKENIZER_MODELS)}; got {self.model!r}")
        if self.vocab_size < 100:
            raise UsageError(f"tokenizer.vocab_size must be >= 100; got {self.vocab_size}")
        if self.min_frequency < 1:
            raise UsageError(f"tokenizer.min_frequency must be >= 1; got {self.min_frequency}")
        if self.max_length is not None and self.max_length < 4:
            raise UsageError(f"tokenizer.max_length must be >= 4; got {self.max_length}")


def train_tokenizer(texts: Iterable[str] | Callable[[], Iterable[str]], config: TokenizerConfig) -> Tokenizer:
    """Train the configured tokenizer model on ``texts`` and set truncation to ``config.max_length`` (if set).

    ``texts`` may be a function that gives them afresh: WordPiece reads them twice (:func:`_continuing_pieces`), and
    a one-shot iterator is kept in memory for that, where a stream is read again.
    """
    if not callable(texts):
        kept = list(texts) if iter(texts) is texts else texts
        texts = lambda: kept  # noqa: E731
    parts = (_wordpiece(config, SPECIAL_TOKENS + _continuing_pieces(texts(), config)) if config.model == "wordpiece"
             else TOKENIZER_MODELS[config.model](config))
    tokenizer = _trained(texts(), config, *parts)
    tokenizer = _canonical_ids(tokenizer)
    cls_id, sep_id = tokenizer.token_to_id(CLS), tokenizer.token_to_id(SEP)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )
    if config.max_length is not None:
        tokenizer.enable_truncation(config.max_length)
    return tokenizer


def _trained(texts: Iterable[str], config: TokenizerConfig, model, trainer, pre_tokenizer, decoder) -> Tokenizer:
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=config.lowercase, strip_accents=None)
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoder
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def _continuing_pieces(texts: Iterable[str], config: TokenizerConfig) -> list[str]:
    """The one-character continuing pieces (``##e``) that WordPiece training makes of ``texts``, sorted.

    The trainer numbers these pieces in the order of a hash map that changes from one process to the next, and
    breaks ties between equally frequent merges by those numbers, so the same texts gave another vocabulary at
    every run (``tokenizers`` issue 1794; SST-2 and GoEmotions alike). Found by a training that stops before
    its first merge, and passed to the real one ahead of its alphabet (as special tokens, which
    :func:`_canonical_ids` turns back into plain ones), they are numbered in this fixed order.
    """
    probe = _trained(texts, config, *_wordpiece(config, vocab_size=1))
    prefix = probe.model.continuing_subword_prefix
    return sorted(piece for piece in probe.get_vocab() if piece.startswith(prefix) and len(piece) == len(prefix) + 1)


def cut_length(tokenizer: Tokenizer) -> int | None:
    """The length the tokenizer cuts texts at, or None where it keeps them whole."""
    return (tokenizer.truncation or {}).get("max_length")


LENGTH_SHARE = 0.99  # of the training texts that fit whole
LENGTH_FLOOR = 128  # tokens: short texts keep the length every run had before the rule
LENGTH_SAMPLE = 10_000  # texts measured, at most


class FittedLength(NamedTuple):
    max_length: int
    rule: str  # why, for the run's output


def fitted_max_length(tokenizer: Tokenizer, texts: Sequence[str | tuple[str, str]], ceiling: int,
                      seed: int = 0) -> FittedLength:
    """``tokenizer.max_length`` by the data: the length that holds 99% of the training texts whole (measured on at
    most 10,000 of them, seeded), rounded up to a multiple of 32, at least 128 and at most ``ceiling`` (the
    model's positions, or a pretrained encoder's own length).

    A fixed 128 cut every long text (reviews, articles, tickets) to its first 128 tokens, the n-gram part's view
    included, where a TF-IDF model reads the whole text. Past the 99th percentile the few longest texts would set
    the cost of their batches and train positions that almost nothing else reaches. The floor keeps short-text
    data exactly as before; the texts beyond the length are still cut, and counted, as before.
    """
    texts = list(texts)
    if len(texts) > LENGTH_SAMPLE:
        chosen = np.random.default_rng(seed).choice(len(texts), LENGTH_SAMPLE, replace=False)
        texts = [texts[i] for i in np.sort(chosen)]
    whole = Tokenizer.from_str(tokenizer.to_str())
    whole.no_truncation()
    lengths = [len(encoding.ids) for encoding in whole.encode_batch(texts)] or [0]
    needed = int(np.ceil(np.quantile(lengths, LENGTH_SHARE)))
    rounded = max(LENGTH_FLOOR, -(-needed // 32) * 32)
    how = (f"rounded up to a multiple of 32, at least {LENGTH_FLOOR}" if rounded <= ceiling else
           f"the model's limit is {ceiling}")
    return FittedLength(min(rounded, ceiling), f"by the data: {LENGTH_SHARE:.0%} of {len(lengths)} training texts "
                                               f"fit in {needed} tokens; {how}")


SCORE_DECIMALS = 6  # of a Unigram piece's log-probability: runs differ around the 14th
FALLBACK_STEP = 1e-4  # between the scores the Unigram trainer gives the characters it keeps without one of their own


def _settled_fallbacks(scores: dict[str, float]) -> dict[str, float]:
    """Unigram scores with the fallback characters' scores dealt in the characters' order.

    The trainer keeps every character of the texts; those its pieces lack get the lowest score, the lowest plus
    :data:`FALLBACK_STEP`, plus twice that... in the order of a hash set, which changes from run to run. They are
    the one-character pieces on that ladder from the lowest score up; the same scores go back to them sorted.
    """
    learned = {piece: score for piece, score in scores.items() if piece not in SPECIAL_TOKENS}
    if not learned:
        return scores
    lowest = min(learned.values())
    rungs = {piece: (score - lowest) / FALLBACK_STEP for piece, score in learned.items() if len(piece) == 1}
    rungs = {piece: round(rung) for piece, rung in rungs.items() if abs(rung - round(rung)) < 0.05}
    taken = set(rungs.values())
    top = next(rung for rung in itertools.count() if rung not in taken)  # the ladder is unbroken up to here
    ladder = sorted(piece for piece, rung in rungs.items() if rung < top)
    return {**scores, **dict(zip(ladder, sorted(scores[piece] for piece in ladder)))}


def _canonical_ids(tokenizer: Tokenizer) -> Tokenizer:
    """Renumber the learned vocabulary in a fixed order, special tokens first.

    The trainers number the tokens they learn in an order that varies between
    runs (hash-map iteration), and the Unigram trainer's log-probabilities vary in
    their last digits (sums in another order), which would make two runs with the
    same seed train different models. The log-probabilities are rounded to
    :data:`SCORE_DECIMALS` for the same reason. Only our special tokens stay
    special (the WordPiece trainer was given its one-character pieces as such).
    """
    data = json.loads(tokenizer.to_str())
    vocab = data["model"]["vocab"]
    specials = list(SPECIAL_TOKENS)
    if isinstance(vocab, dict):  # WordPiece, BPE: token -> id
        rest = sorted(t for t in vocab if t not in SPECIAL_TOKENS)
        data["model"]["vocab"] = {token: i for i, token in enumerate(specials + rest)}
    else:  # Unigram: [piece, log-probability] pairs; most probable first, ties by text
        scores = _settled_fallbacks({piece: round(score, SCORE_DECIMALS) for piece, score in vocab})
        rest = sorted((p for p in scores if p not in SPECIAL_TOKENS), key=lambda p: (-scores[p], p))
        data["model"]["vocab"] = [[p, scores[p]] for p in specials + rest]
        data["model"]["unk_id"] = specials.index(UNK)
    data["added_tokens"] = [added for added in data.get("added_tokens", []) if added["content"] in SPECIAL_TOKENS]
    for added in data["added_tokens"]:
        added["id"] = specials.index(added["content"])
    return Tokenizer.from_str(json.dumps(data))


def load_tokenizer(path: str | Path, max_length: int | None = None) -> Tokenizer:
    """Load a ``tokenizer.json`` (or a directory holding one); padding off, truncation kept or set."""
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise UsageError(f"tokenizer file {file} not found; pass a tokenizer.json or a directory holding one")
    return tokenizer_from_json(file.read_bytes().decode("utf-8", "replace"), f"tokenizer file {file}", max_length)


def tokenizer_from_json(text: str, where: str, max_length: int | None = None) -> Tokenizer:
    """A tokenizer from the text of a ``tokenizer.json`` (``where`` names it in errors); padding off."""
    try:
        tokenizer = Tokenizer.from_str(text)
    except Exception as err:  # tokenizers raises a bare Exception for malformed files
        raise UsageError(f"{where} could not be read ({err}); re-save it with tokenizers") from None
    tokenizer.no_padding()
    if max_length is not None:
        tokenizer.enable_truncation(max_length)
    return tokenizer


def word_starts(tokenizer: Tokenizer) -> np.ndarray:
    """Which token ids begin a word, ``(vocab_size,)`` bool: what the n-gram part needs to read whole words.

    WordPiece marks the tokens that continue a word (``##ing``), Metaspace
    (our BPE and Unigram) the ones that begin one (``▁play``); special tokens
    stand alone. A tokenizer with neither rule makes every token a word.
    """
    data = json.loads(tokenizer.to_str())
    starts = np.ones(tokenizer.get_vocab_size(), dtype=bool)
    specials = {added["id"] for added in data.get("added_tokens", [])}
    model, pre_tokenizer = data["model"], data.get("pre_tokenizer") or {}
    steps = pre_tokenizer.get("pretokenizers", [pre_tokenizer])
    metaspace = next((step["replacement"] for step in steps if step.get("type") == "Metaspace"), None)
    for token, token_id in tokenizer.get_vocab().items():
        if token_id in specials:
            continue
        if model["type"] == "WordPiece":
            starts[token_id] = not token.startswith(model.get("continuing_subword_prefix") or "##")
        elif metaspace is not None:
            starts[token_id] = token.startswith(metaspace)
    return starts


def pad_id(tokenizer: Tokenizer) -> int:
    """The id used for padding: ``[PAD]`` if the vocabulary has it, else 0."""
    token_id = tokenizer.token_to_id(PAD)
    return 0 if token_id is None else token_id


class Encoded(NamedTuple):
    """Token ids of each example, how many were cut at the truncation length, and where pairs' second texts start."""

    ids: list[list[int]]
    truncated: int
    segments: np.ndarray | None  # (n,) tokens of type 0 ([CLS] a [SEP]) in each pair; None for single texts


def encode(tokenizer: Tokenizer, texts: Sequence[str | tuple[str, str]]) -> Encoded:
    """Token ids of each text, or of each ``(first, second)`` pair through the tokenizer's pair template.

    A pair is cut longest-first (the longer text loses a token at a time), so both texts survive truncation.
    """
    texts = list(texts)
    pairs = bool(texts) and isinstance(texts[0], tuple)
    encodings = tokenizer.encode_batch(texts)
    truncated = sum(1 for e in encodings if e.overflowing)
    segments = np.array([e.type_ids.count(0) for e in encodings], dtype=np.int64) if pairs else None
    return Encoded([e.ids for e in encodings], truncated, segments)
