"""Token ids into padded batches: length-bucketed for training, sorted by length for evaluation.

Every batch is ``(ids (batch, seq), padding mask (batch, seq))``, the mask
``True`` at padding, padded to the batch's longest sequence; a batch of
sentence pairs also has token types ``(batch, seq)``, 1 on the second text.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch


class Batch(NamedTuple):
    """A training batch: ids and padding mask ``(batch, seq)``, token types (pairs) or None, targets."""

    ids: torch.Tensor
    mask: torch.Tensor
    types: torch.Tensor | None
    labels: torch.Tensor


def bucket_batches(lengths: np.ndarray, batch_size: int, shuffle: bool, seed: int = 0,
                   bucket_batches: int = 50) -> list[np.ndarray]:
    """Index batches of similar length, so padding stays small.

    Training order: shuffle, sort within pools of ``bucket_batches`` batches by
    length, cut into batches, shuffle the batches. Evaluation order: sorted by
    length (callers restore the input order from the indices).
    """
    if not shuffle:
        order = np.argsort(lengths, kind="stable")
        return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    pool = batch_size * bucket_batches
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start: start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i: i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


EXACT_WIDTHS = 128  # batches up to this many tokens wide keep their exact width
WIDTH_STEP = 32  # wider batches are padded to a multiple of this


def batch_width(longest: int, limit: int | None = None) -> int:
    """The padded width of a batch whose longest sequence has ``longest`` tokens, at most ``limit``.

    Short batches keep their exact width. Longer ones are rounded up to a multiple of 32, so that long texts
    come in a dozen shapes rather than hundreds: every new shape costs oneDNN a new kernel and its scratch
    memory, and glibc's heap a new size of block, and with an exact width per batch a run over 300-token
    texts grew to 13 GB (3 GB rounded). Padding is masked everywhere, so it changes no output. ``limit`` is the
    widest a batch may be (the tokenizer's cut, or the model's positions: a position past them has no
    embedding); without one, every batch keeps its exact width.
    """
    if limit is None or longest <= EXACT_WIDTHS:
        return longest
    return max(longest, min(-(-longest // WIDTH_STEP) * WIDTH_STEP, limit))


def collate(sequences: list[list[int]] | list[np.ndarray], pad_id: int,
            limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest sequence (see :func:`batch_width`): ids ``(batch, seq)`` and the padding mask
    (``True`` at padding).

    The ids are laid out in one scatter of the concatenated sequences: a copy per row cost about 1 ms a batch
    of 64, 2% of a small model's prediction time.
    """
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    width = batch_width(int(lengths.max()), limit)
    real = np.arange(width)[None, :] < lengths[:, None]
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    if isinstance(sequences[0], np.ndarray):  # rows of the token cache
        ids[real] = np.concatenate(sequences)
    else:
        ids[real] = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64, count=int(lengths.sum()))
    return torch.from_numpy(ids), torch.from_numpy(~real)


def token_types(segments: np.ndarray | None, mask: torch.Tensor) -> torch.Tensor | None:
    """Token types ``(batch, seq)`` of pairs whose first ``segments`` tokens are type 0: 1 from there on, 0 at padding.

    None for single texts (``segments`` None), which the encoder reads as all type 0.
    """
    if segments is None:
        return None
    second = torch.arange(mask.shape[1])[None, :] >= torch.as_tensor(segments)[:, None]
    return (second & ~mask).long()


def sorted_batches(sequences: list[list[int]], pad_id: int, batch_size: int, segments: np.ndarray | None = None,
                   limit: int | None = None
                   ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Evaluation batches by length: ``(indices into sequences, ids, padding mask, token types)``, padded per batch
    (at most ``limit`` wide, see :func:`batch_width`).

    Callers write each batch's results at ``indices`` to get them back in input order.
    """
    lengths = np.array([len(s) for s in sequences])
    for index in bucket_batches(lengths, batch_size, shuffle=False):
        ids, mask = collate([sequences[i] for i in index], pad_id, limit)
        yield index, ids, mask, token_types(None if segments is None else segments[index], mask)
