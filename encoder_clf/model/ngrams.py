"""A linear bag of n-grams (token unigrams, hashed word unigrams and bigrams): class logits beside the encoder's.

The encoder learns composition slowly from a small dataset, while a linear
model over n-grams (fastText's hashed bigrams) gives each telling phrase a
weight of its own; their errors differ, so a mix of the two beats either
(Wide & Deep, Cheng et al., 2016). :class:`~encoder_clf.model.heads.EnsembleHead`
holds it beside the encoder's head. Its features are the text's TF-IDF vector
(``tfidf``), so that it is the linear model a TF-IDF baseline fits, and it is
fitted as one (:mod:`encoder_clf.training.linear`); ``sqrt``, the older
weighting, is kept for the model directories saved with it.

Its terms (:data:`TERMS`) are the tokens, which a tokenizer trained on the
data cuts into word pieces, and, with ``words``, the whole words and word
pairs the pieces spell, as a word-level TF-IDF reads them: the pieces give
rare and misspelt words a share of their stem's weight, the words keep
``playing`` apart from ``play``. ``pieces``, the older terms (token unigrams
and bigrams), is kept for the model directories saved with them.
"""

from __future__ import annotations

import torch
from torch import nn

WEIGHTINGS = ("tfidf", "sqrt")
TERMS = ("words", "pieces")
PRIME = 2_147_483_647  # 2³¹−1: the Lehmer generator's modulus


def _last_start(starts: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """At each position, the position of the latest start at or before it (0 before the first): a running max
    of the starts' positions, written as a scatter and a gather so that ONNX (which has no cummax) can run it."""
    count = starts.long().cumsum(dim=1)  # the number of the word each position belongs to, from 1
    slot = torch.where(starts, count - 1, starts.shape[1])  # every non-start writes to one spare slot
    first = torch.zeros(starts.shape[0], starts.shape[1] + 1, dtype=position.dtype, device=position.device)
    first = first.scatter(1, slot, position)
    return torch.where(count > 0, first.gather(1, (count - 1).clamp(min=0)), 0)


def _scrambled(value: torch.Tensor) -> torch.Tensor:
    """One step of the Lehmer generator: a bijection of ``0 … PRIME−1`` that looks random (int64 in, int64 out)."""
    return value % PRIME * 48_271 % PRIME


def bigram_buckets(first: torch.Tensor, second: torch.Tensor, vocab_size: int, buckets: int) -> torch.Tensor:
    """Hash each token pair to one of ``buckets`` rows, spread like a random hash.

    The pair's exact index ``first · vocab_size + second`` goes through a Lehmer
    step (a bijection modulo the prime 2³¹−1) before the final modulo: a plain
    ``(first · m + second) % buckets`` keeps only ``m % buckets`` of the
    multiplier, and with m = 1,000,003 and a million buckets that is 3, which
    folds every bigram into ~4·vocab_size rows.
    """
    return _scrambled(first * vocab_size + second) % buckets


class NgramLogits(nn.Module):
    """Class logits from the text's n-grams (see :data:`TERMS`), one learned row of logits each.

    The logits are the weighted sum of the text's rows (see :meth:`terms`);
    padding is left out. Rows start at zero, so a new model's logits are the
    encoder's alone.

    For sentence pairs (``pairs``) what matters is what the two texts share:
    an n-gram found in both texts has a row of its own, apart from the same
    n-gram found in one text only, and every n-gram also adds one of two rows
    common to all shared (or all unshared) n-grams, which together measure
    the texts' overlap. These are the binary counterparts of the product and
    difference of two TF-IDF vectors that a linear pair classifier reads.
    """

    def __init__(self, vocab_size: int, buckets: int, num_labels: int, pairs: bool = False,
                 weighting: str = "tfidf", terms: str = "words") -> None:
        super().__init__()
        self.vocab_size, self.buckets, self.pairs, self.weighting = vocab_size, buckets, pairs, weighting
        self.words = terms == "words"
        if self.words:  # which tokens begin a word; every one until the tokenizer says (set_word_starts)
            self.register_buffer("word_starts", torch.ones(vocab_size, dtype=torch.bool))
        rows = vocab_size + buckets
        self.table = nn.Embedding(2 * rows + 2 if pairs else rows, num_labels)
        if weighting == "tfidf":  # fitted to the train split (training/linear.py); a stream's part trains by AdamW
            self.register_buffer("idf", torch.ones(self.table.num_embeddings))  # each row's; 1 until fitted
            self.register_buffer("strength", torch.zeros(()))  # the fit's C, chosen on validation; 0 = not fitted

    def set_word_starts(self, starts: torch.Tensor) -> None:
        """Which token ids begin a word: ``(vocab_size,)`` bool (:func:`~encoder_clf.data.tokenization.word_starts`)."""
        if self.words:
            self.word_starts.copy_(starts)

    def indices(self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each text's n-grams as rows of the table, and which are real: both ``(batch, terms)``.

        Positions ``0 … seq−1`` are the token unigrams. Then, for ``pieces``,
        position ``seq + i`` is the bigram of tokens ``i, i+1``; for ``words``,
        position ``seq + i`` is the word that ends at token ``i`` and
        ``2·seq + i`` that word after the one before it. Padding (and an
        n-gram touching it, or a position where no word ends) is not real. A
        pair model's n-grams come next again, as the rows common to shared or
        unshared n-grams.
        """
        real = torch.ones_like(input_ids, dtype=torch.bool) if padding_mask is None else ~padding_mask
        if self.words:
            spans = self.spans(input_ids, real)
            words, previous, ends, pairs = spans["word"], spans["previous"], spans["ends"], spans["pairs"]
            unigrams = self.vocab_size + _scrambled(2 * words) % self.buckets
            bigrams = self.vocab_size + _scrambled(2 * (_scrambled(previous) + words) + 1) % self.buckets
            index = torch.cat([input_ids, unigrams, bigrams], dim=1)
            keep = torch.cat([real, ends, pairs], dim=1)
        else:
            bigrams = self.vocab_size + bigram_buckets(input_ids[:, :-1], input_ids[:, 1:], self.vocab_size,
                                                       self.buckets)
            index = torch.cat([input_ids, bigrams], dim=1)
            keep = torch.cat([real, real[:, :-1] & real[:, 1:]], dim=1)
        if self.pairs:
            index, keep = self._pair_terms(index, keep, input_ids, token_type_ids)
        return index, keep

    def spans(self, input_ids: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """The words the tokens spell, each ``(batch, seq)`` and read at the token that ends a word.

        ``begin``: the position of the word's first token; ``word``: a hash of
        its tokens in order; ``previous``: the hash of the word before it;
        ``ends``: whether a real word ends here; ``pairs``: whether it has a
        real word before it. A word's hash is the sum of its tokens' scrambled
        (id, place in the word) modulo :data:`PRIME`, read from a running sum,
        so that words of any length cost the same few tensor operations.
        """
        starts = self.word_starts[input_ids] | ~real
        position = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        begin = _last_start(starts, position)
        total = _scrambled(_scrambled(input_ids + 1) + position - begin).cumsum(dim=1)
        before = (begin - 1).clamp(min=0)
        word = (total - torch.where(begin > 0, total.gather(1, before), 0)) % PRIME
        ends = torch.cat([starts[:, 1:], torch.ones_like(starts[:, :1])], dim=1) & real
        pairs = ends & (begin > 0) & real.gather(1, before)
        return {"begin": begin, "word": word, "previous": word.gather(1, before), "ends": ends, "pairs": pairs}

    def terms(self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None,
              token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`indices`, with the weight of each position in the sum (0 for padding): both ``(batch, terms)``.

        ``tfidf``: scikit-learn's ``TfidfTransformer(sublinear_tf=True)`` of the
        text's n-gram counts, spread over the positions: an n-gram seen ``tf``
        times weighs ``(1 + ln tf) · idf`` in all, and each text's vector has
        unit length. ``sqrt``: every position weighs ``1 / √positions``.
        """
        index, keep = self.indices(input_ids, padding_mask, token_type_ids)
        keep = keep.float()
        if self.weighting == "sqrt":
            return index, keep / keep.sum(dim=1, keepdim=True).clamp(min=1).sqrt()
        tf = _counts(torch.where(keep > 0, index, -1))
        value = self.idf[index] * (1 + tf.log()) * keep
        norm = (value.square() / tf).sum(dim=1, keepdim=True).sqrt().clamp(min=1e-12)  # each n-gram's value once
        return index, value / tf / norm

    def _pair_terms(self, index: torch.Tensor, keep: torch.Tensor, input_ids: torch.Tensor,
                    token_type_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Shared n-grams moved to their own rows, then each n-gram's shared-or-not row appended."""
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        # a word (or word pair) belongs to the text of its last token, a token bigram to that of its first
        segment = torch.cat([types] * 3 if self.words else [types, types[:, :-1]], dim=1)
        same = index[:, :, None] == index[:, None, :]
        other = (segment[:, :, None] != segment[:, None, :]) & keep[:, None, :]
        shared = (same & other).any(dim=2).long()
        rows = self.vocab_size + self.buckets
        summary = 2 * rows + 1 - shared  # 2·rows: the row of every shared n-gram; 2·rows + 1: of every other one
        return torch.cat([index + shared * rows, summary], dim=1), torch.cat([keep, keep], dim=1)

    def forward(self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``(batch, num_labels)`` logits."""
        index, scale = self.terms(input_ids, padding_mask, token_type_ids)
        return torch.einsum("bn,bnc->bc", scale, self.table(index).float())

    def contributions(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """What each n-gram of one unpadded text ``(1, seq)`` adds to the logits: ``(terms, num_labels)``.

        They sum to :meth:`forward`'s logits; the order is that of :meth:`terms`.
        """
        index, scale = self.terms(input_ids, None, token_type_ids)
        return scale[0, :, None] * self.table(index[0]).float()


def _counts(index: torch.Tensor) -> torch.Tensor:
    """How often each position's value occurs in its row of ``index`` ``(batch, terms)``, at every position."""
    ordered, order = index.sort(dim=1)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = starts.long().cumsum(dim=1) - 1
    sizes = torch.zeros_like(group).scatter_add_(1, group, torch.ones_like(group))
    return torch.empty_like(group).scatter_(1, order, sizes.gather(1, group)).float()
