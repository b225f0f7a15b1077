"""Tokenizers built from Hugging Face ``tokenizers`` parts, trained on the training split.

A tokenizer is normaliser → pre-tokeniser → model (WordPiece, BPE or Unigram)
→ post-processor (``[CLS] $A [SEP]``, and ``[CLS] $A [SEP] $B [SEP]`` with
token types 0 then 1 for a sentence pair, as BERT's), saved as one
``tokenizer.json`` that any ``tokenizers`` user can load. Padding is left to the batcher (dynamic, per
batch); truncation to ``max_length`` is set on the tokenizer and counted, and unless set, ``max_length``
follows the training texts (:func:`fitted_max_length`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from ..errors import UsageError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]  # PAD first, so its id is 0


def _wordpiece(config: TokenizerConfig):
    model = models.WordPiece(unk_token=UNK, max_input_chars_per_word=100)
    trainer = trainers.WordPieceTrainer(vocab_size=config.vocab_size, min_frequency=config.min_frequency,
                                        special_tokens=SPECIAL_TOKENS, show_progress=False)
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


def train_tokenizer(texts: Iterable[str], config: TokenizerConfig) -> Tokenizer:
    """Train the configured tokenizer model on ``texts`` and set truncation to ``config.max_length`` (if set)."""
    model, trainer, pre_tokenizer, decoder = TOKENIZER_MODELS[config.model](config)
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=config.lowercase, strip_accents=None)
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoder
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer = _canonical_ids(tokenizer)
    cls_id, sep_id = tokenizer.token_to_id(CLS), tokenizer.token_to_id(SEP)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )
    if config.max_length is not None:
        tokenizer.enable_truncation(config.max_length)
    return tokenizer


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


def _canonical_ids(tokenizer: Tokenizer) -> Tokenizer:
    """Renumber the learned vocabulary in a fixed order, special tokens first.

    The trainers learn the same tokens on every run but number them in an order
    that varies between runs (hash-map iteration), which would make two runs with
    the same seed train different models.
    """
    data = json.loads(tokenizer.to_str())
    vocab = data["model"]["vocab"]
    specials = list(SPECIAL_TOKENS)
    if isinstance(vocab, dict):  # WordPiece, BPE: token -> id
        rest = sorted(t for t in vocab if t not in SPECIAL_TOKENS)
        data["model"]["vocab"] = {token: i for i, token in enumerate(specials + rest)}
    else:  # Unigram: [piece, log-probability] pairs; most probable first, ties by text
        scores = dict(map(tuple, vocab))
        rest = sorted((p for p in scores if p not in SPECIAL_TOKENS), key=lambda p: (-scores[p], p))
        data["model"]["vocab"] = [[p, scores[p]] for p in specials + rest]
        data["model"]["unk_id"] = specials.index(UNK)
    for added in data.get("added_tokens", []):
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
