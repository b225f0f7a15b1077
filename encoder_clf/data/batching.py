"""Token ids into padded batches: length-bucketed for training, sorted by length for evaluation.

Every batch is ``(ids (batch, seq), padding mask (batch, seq))``, the mask
``True`` at padding, padded to the batch's longest sequence.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


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


def collate(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest sequence: ids ``(batch, seq)`` and the padding mask (``True`` at padding)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    lengths = torch.as_tensor([len(s) for s in sequences])
    return ids, torch.arange(width)[None, :] >= lengths[:, None]


def sorted_batches(sequences: list[list[int]], pad_id: int,
                   batch_size: int) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """Evaluation batches by length: ``(indices into sequences, ids, padding mask)``, padded per batch.

    Callers write each batch's results at ``indices`` to get them back in input order.
    """
    lengths = np.array([len(s) for s in sequences])
    for index in bucket_batches(lengths, batch_size, shuffle=False):
        yield (index, *collate([sequences[i] for i in index], pad_id))
