"""Augmented copies of training texts, for a teacher to label (Tang et al., 2019, "Distilling Task-Specific
Knowledge from BERT into Simple Neural Networks", section 3.3).

Each copy goes word by word (words are runs of non-space characters): with
``mask_rate`` a word becomes ``[MASK]``; else with ``replace_rate`` it becomes
another word seen in the same context. Then, with ``ngram_rate``, the copy is
cut down to a random run of 1 to 5 of its words. A copy is never longer, in
words, than its text, and copies equal to their text or to each other are
dropped, so a text yields at most ``copies`` new ones.

Tang et al. replace a word with another of the same part of speech. A tagger
needs a trained model for each language, which this package does not ship, so
the stand-in is distributional: a word seen between the same two neighbours
elsewhere in the texts (words that share contexts mostly share their part of
speech), else one seen after the same left neighbour, else any word drawn by
its frequency. It needs nothing but the texts, in any language.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace

from .tokenization import MASK

MAX_NGRAM = 5
START, END = "\x02", "\x03"  # the neighbours of a text's first and last word


@dataclass(frozen=True)
class Augmentation:
    """How many copies per text and how each is made (rates are per word, ``ngram_rate`` per copy)."""

    copies: int = 4
    mask_rate: float = 0.1
    replace_rate: float = 0.1
    ngram_rate: float = 0.25


class ContextWords:
    """The words seen between each pair of neighbours, and after each left neighbour, in a list of texts."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.between: dict[tuple[str, str], list[str]] = defaultdict(list)
        self.after: dict[str, list[str]] = defaultdict(list)
        self.words: list[str] = []
        for text in texts:
            words = text.split()
            padded = [START, *words, END]
            for i, word in enumerate(words, 1):
                self.between[padded[i - 1], padded[i + 1]].append(word)
                self.after[padded[i - 1]].append(word)
            self.words.extend(words)

    def other(self, left: str, word: str, right: str, rng: random.Random) -> str:
        """A word other than ``word`` for the place between ``left`` and ``right``: see the module's docstring."""
        for candidates in (self.between.get((left, right), ()), self.after.get(left, ()), self.words):
            if any(candidate != word for candidate in candidates):
                while (choice := rng.choice(candidates)) == word:
                    pass
                return choice
        return word


def augmented(texts: Sequence, augmentation: Augmentation, seed: int,
              context: ContextWords | None = None) -> list[list]:
    """For each text (or ``(first, second)`` pair), its distinct augmented copies (at most
    ``augmentation.copies``), seeded and repeatable.

    Both texts of a pair are augmented, and never cut to an n-gram: a fragment of one would no longer make a
    pair with the other.
    """
    pairs = bool(texts) and isinstance(texts[0], tuple)
    context = context or ContextWords([side for text in texts for side in (text if pairs else (text,))])
    rule = replace(augmentation, ngram_rate=0.0) if pairs else augmentation
    rng = random.Random(seed)
    result = []
    for text in texts:
        sides = [side.split() for side in (text if pairs else (text,))]
        copies = dict.fromkeys(tuple(_copy(words, rule, context, rng) for words in sides)
                               for _ in range(augmentation.copies))
        copies.pop(tuple(" ".join(words) for words in sides), None)
        result.append([copy if pairs else copy[0] for copy in copies if all(copy)])
    return result


def _copy(words: list[str], augmentation: Augmentation, context: ContextWords, rng: random.Random) -> str:
    padded = [START, *words, END]
    out = []
    for i, word in enumerate(words, 1):
        draw = rng.random()
        if draw < augmentation.mask_rate:
            out.append(MASK)
        elif draw < augmentation.mask_rate + augmentation.replace_rate:
            out.append(context.other(padded[i - 1], word, padded[i + 1], rng))
        else:
            out.append(word)
    if out and rng.random() < augmentation.ngram_rate:
        n = rng.randint(1, min(MAX_NGRAM, len(out)))
        start = rng.randint(0, len(out) - n)
        out = out[start: start + n]
    return " ".join(out)
