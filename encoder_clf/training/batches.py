"""The train split as the loop reads it: one seeded iterable of batches per epoch, dealt into optimizer steps.

A batch is a :class:`~encoder_clf.data.batching.Batch`: ids and padding mask
``(batch, seq)`` (True at padding), token types for pairs, and the targets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch

from ..data.batching import Batch, bucket_batches
from ..data.tokenized import TokenizedSplit
from .distributed import World

T = TypeVar("T")


@dataclass
class TrainBatches:
    """The train split as the loop reads it: ``epoch(e)`` gives that epoch's batches, in a seeded order."""

    epoch: Callable[[int], Iterable[Batch]]
    per_epoch: int | None  # batches in an epoch; None for a stream, whose length is known only at its end
    key: str  # a hash of the data: a resumed run refuses data that changed
    source: str  # for messages


def bucketed(tokens: TokenizedSplit, batch_size: int, seed: int, key: str) -> TrainBatches:
    """Length-bucketed batches over token ids held in memory or memory-mapped (:mod:`encoder_clf.data.tokenized`)."""

    def epoch(number: int) -> Iterator[Batch]:
        for index in bucket_batches(tokens.lengths, batch_size, shuffle=True, seed=seed * 1000 + number):
            yield tokens.batch(index)

    return TrainBatches(epoch, len(bucket_batches(tokens.lengths, batch_size, shuffle=False)), key, tokens.source)


def drop_tokens(ids: torch.Tensor, mask: torch.Tensor, p: float, unk: int, rng: torch.Generator) -> torch.Tensor:
    """Replace a random fraction ``p`` of the real tokens (not the first and last, ``[CLS]``/``[SEP]``) by ``unk``.

    Word dropout (Iyyer et al., 2015): the model cannot lean on any single word,
    which regularises small-data text classifiers more than weight dropout.
    """
    lengths = (~mask).sum(dim=1, keepdim=True)
    position = torch.arange(ids.shape[1])[None, :]
    inner = (position > 0) & (position < lengths - 1)
    drop = (torch.rand(ids.shape, generator=rng) < p) & inner
    return ids.masked_fill(drop, unk)


def deal_steps(batches: Iterable[T], grad_accum: int, world: World) -> Iterator[list[T]]:
    """Deal an epoch's batches into optimizer steps of ``world.size * grad_accum`` consecutive batches.

    Rank ``r`` trains on ``step[r::world.size]``. Every rank must run the same
    number of forward passes, so a last step that does not divide evenly
    among the ranks is topped up with batches from the start of the epoch (as
    DistributedSampler does); one process just takes a shorter last step.
    """
    per_step, first, group = world.size * grad_accum, [], []
    for batch in batches:
        if len(first) < world.size - 1:
            first.append(batch)
        group.append(batch)
        if len(group) == per_step:
            yield group
            group = []
    if group:
        yield group + [first[i % len(first)] for i in range(-len(group) % world.size)]
