"""The training loop: AdamW steps over batches, evaluation, early stopping, checkpoints, in one process or many.

:func:`fit` is plain PyTorch. It reads the train split as a
:class:`TrainBatches` (one iterable of batches per epoch: a length-bucketed
pass over token ids in memory or memory-mapped, or a stream read pool by
pool), takes ``grad_accum`` forward passes per optimizer step, and under
torchrun deals each step's batches to the ranks (DistributedDataParallel
averages the gradients; only rank 0 writes). Checkpoints
(:mod:`encoder_clf.persistence.checkpoints`) are written at step 0, at every evaluation and
every ``checkpoint_every`` steps, with each rank's random streams, so a
resumed run replays the rest of an uninterrupted one bit for bit.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import resource
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from ..data.batching import bucket_batches
from ..data.tokenization import UNK, pad_id
from ..data.tokenized import TokenizedSplit
from ..errors import UsageError
from ..inference import forward_batches
from ..metrics import compute_metrics
from ..model.classifier import TextClassifier
from ..persistence.checkpoints import CHECKPOINTS, Checkpoint, Progress, Trainables, restore, save_checkpoint
from ..persistence.model_dir import save_model
from ..runtime import autocast
from .config import TrainConfig
from .distributed import SOLO, World, all_sum, barrier, gather_rows, gather_tensors, shard
from .optim import layerwise_adamw, warmup_then_decay
from .stacking import fit_mixing_weights

log = logging.getLogger(__name__)

T = TypeVar("T")
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # ids (b, seq), padding mask (b, seq), labels (b,)


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


def class_weighted_loss(class_weights: str | None, labels: np.ndarray | None, num_labels: int,
                        label_smoothing: float, device) -> nn.Module:
    """Cross-entropy, with ``balanced`` class weights from the train labels when asked for."""
    weight = None
    if class_weights == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        present = np.unique(labels)
        values = np.ones(num_labels, dtype=np.float32)
        values[present] = compute_class_weight("balanced", classes=present, y=labels)
        weight = torch.tensor(values, device=device)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)


def _drop_tokens(ids: torch.Tensor, mask: torch.Tensor, p: float, unk: int, rng: torch.Generator) -> torch.Tensor:
    """Replace a random fraction ``p`` of the real tokens (not the first and last, ``[CLS]``/``[SEP]``) by ``unk``.

    Word dropout (Iyyer et al., 2015): the model cannot lean on any single word,
    which regularises small-data text classifiers more than weight dropout.
    """
    lengths = (~mask).sum(dim=1, keepdim=True)
    position = torch.arange(ids.shape[1])[None, :]
    inner = (position > 0) & (position < lengths - 1)
    drop = (torch.rand(ids.shape, generator=rng) < p) & inner
    return ids.masked_fill(drop, unk)


def _steps(batches: Iterable[T], grad_accum: int, world: World) -> Iterator[list[T]]:
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


def _rank_rng(generator: torch.Generator, world: World) -> dict[str, torch.Tensor]:
    """Every rank's dropout streams (torch, CUDA, token dropout), for a checkpoint of a multi-process run.

    Rank 0's streams are in every checkpoint already; the other ranks draw
    their own, and a resumed run replays them only if they are saved too.
    """
    if world.size == 1:
        return {}
    streams = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        streams["cuda"] = torch.cuda.get_rng_state()
    return {f"rng.rank{rank}.{name}": state for name, local in streams.items()
            for rank, state in enumerate(gather_tensors(local, world))}


def _restore_rank_rng(checkpoint: Checkpoint, generator: torch.Generator, world: World) -> None:
    saved = len({key.split(".")[1] for key in checkpoint.tensors if key.startswith("rng.rank")}) or 1
    if saved != world.size:
        raise UsageError(f"{checkpoint.path}: the run was trained by {saved} process(es) and is resumed by "
                         f"{world.size}; resume it with torchrun --nproc_per_node={saved}")
    if world.size > 1:
        prefix = f"rng.rank{world.rank}."
        torch.set_rng_state(checkpoint.tensors[prefix + "torch"])
        generator.set_state(checkpoint.tensors[prefix + "generator"])
        if torch.cuda.is_available() and prefix + "cuda" in checkpoint.tensors:
            torch.cuda.set_rng_state(checkpoint.tensors[prefix + "cuda"])


def validate(model: TextClassifier, tokens: TokenizedSplit, batch_size: int, precision: str,
             world: World = SOLO, refit_mixing: bool = False) -> dict:
    """Metrics on a labelled split, each rank scoring its share and the logits gathered, so all ranks agree.

    With ``refit_mixing``, the mixing weights of the head's parts are first fitted on this split
    (:func:`~encoder_clf.train.stacking.fit_mixing_weights`), and the split is scored with them.
    """
    mine = shard(len(tokens), world)
    out = forward_batches(model, [tokens.sequences[i] for i in mine], tokens.pad_id, batch_size, precision)
    logits = gather_rows(out.logits, len(tokens), world)
    if refit_mixing and len(out.parts) > 1:
        parts = gather_rows(out.parts.transpose(1, 0, 2), len(tokens), world).transpose(1, 0, 2)
        fit_mixing_weights(model, parts, tokens.labels)
        logits = model.head.mix(torch.from_numpy(parts)).numpy()
    return compute_metrics(tokens.labels, logits.argmax(axis=1), model.config.labels)


def fit(model: TextClassifier, tokenizer, train: TrainBatches, validation: TokenizedSplit, cfg: TrainConfig,
        loss_fn: nn.Module, out_dir: Path, precision: str, progress: bool = True, *,
        resume_from: Checkpoint | None = None, world: World = SOLO) -> dict:
    """Train; save the best model to ``out_dir/model``, log to ``out_dir/log.jsonl``, checkpoint to
    ``out_dir/checkpoints``; with ``resume_from``, go on from that checkpoint.

    Every rank of a multi-process run calls it; only rank 0 writes files.
    """
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    if train.per_epoch is None:  # a stream: the run is max_steps long, as many passes as that takes
        steps_per_epoch, total_steps = None, cfg.max_steps
    else:
        steps_per_epoch = sum(1 for _ in _steps(range(train.per_epoch), cfg.grad_accum, world))
        total_steps = min(steps_per_epoch * cfg.epochs, cfg.max_steps or math.inf)
    optimizer = layerwise_adamw(model, cfg.lr, cfg.weight_decay, cfg.head_lr, cfg.layer_lr_decay,
                                cfg.freeze_layers)
    scheduler = warmup_then_decay(optimizer, cfg.warmup_ratio, total_steps, cfg.schedule)
    # The averaged copy is what gets evaluated and saved: it smooths the noise of the last steps.
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay)) if cfg.ema_decay else None
    evaluated = averaged.module if averaged is not None else model
    eval_every = cfg.eval_every or steps_per_epoch or max(1, total_steps // 10)
    unk = tokenizer.token_to_id(UNK) if tokenizer.token_to_id(UNK) is not None else pad
    dropout_rng = torch.Generator().manual_seed(cfg.seed * world.size + world.rank)
    if world.size > 1:  # the same initial weights everywhere (DDP broadcasts rank 0's), other dropout masks
        torch.manual_seed(cfg.seed * world.size + world.rank)
    trainables = Trainables(model, optimizer, scheduler, averaged, dropout_rng)
    at = Progress()
    log_path, checkpoint_dir = out_dir / "log.jsonl", out_dir / CHECKPOINTS
    if resume_from is not None:
        if resume_from.meta["data"] != train.key:
            raise UsageError(f"{train.source}: the data differs from what {out_dir} was trained on so far "
                             "(rows, texts or labels changed); restore the original files to resume")
        at = restore(resume_from, trainables)
        _restore_rank_rng(resume_from, dropout_rng, world)
        if log_path.exists() and world.main:  # evaluations after the checkpoint are logged again on the way
            with log_path.open("r+b") as handle:
                handle.truncate(at.log_bytes)
        log.info("resuming %s from step %d of %d (epoch %d, step %d of the epoch)", out_dir, at.step, total_steps,
                 at.epoch + 1, at.batches_done)
    start = time.perf_counter() - at.elapsed_s
    log_file = log_path.open("a" if resume_from is not None else "w", encoding="utf-8") if world.main else None

    def checkpoint() -> None:
        ranks = _rank_rng(dropout_rng, world)  # every rank takes part in the gather
        if world.main:
            at.elapsed_s, at.log_bytes = time.perf_counter() - start, log_file.tell()
            save_checkpoint(checkpoint_dir, trainables, at, tokenizer, train.key, cfg.keep_checkpoints, ranks)

    ddp = DistributedDataParallel(model) if world.size > 1 else None
    runner = ddp or model
    if cfg.compile:
        runner = torch.compile(runner, dynamic=True)

    def forward_backward(ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, weight: float) -> float:
        """One micro-batch: its loss, scaled by ``weight`` before backward; returns the unscaled loss."""
        if cfg.token_dropout:
            ids = _drop_tokens(ids, mask, cfg.token_dropout, unk, dropout_rng)
        with autocast(precision, device):
            out = runner(ids.to(device), mask.to(device))
        labels = labels.to(device)
        loss = torch.stack([loss_fn(part.float(), labels) for part in out.parts]).mean()
        (loss * weight).backward()
        return loss.item()

    if resume_from is None:
        checkpoint()  # step 0: a run killed before its first evaluation can still resume (with its tokenizer)
    local_examples = 0  # this process's share, this invocation: how the ranks split the work
    bar = tqdm(total=total_steps, initial=at.step, disable=not (progress and world.main), unit="step",
               dynamic_ncols=True)
    try:
        for epoch in itertools.count(at.epoch):
            if at.stop_reason != "completed" or at.step >= total_steps:
                break
            model.train()
            steps = _steps(train.epoch(epoch), cfg.grad_accum, world)
            stepped = False
            for group in itertools.islice(steps, at.batches_done, None):  # a resumed epoch skips the steps done
                stepped = True
                mine, examples = group[world.rank::world.size], sum(len(labels) for _, _, labels in group)
                optimizer.zero_grad(set_to_none=True)
                loss_sum = 0.0
                for i, (ids, mask, labels) in enumerate(mine):
                    # DDP averages gradients over ranks: weights that sum to world.size give the step's mean loss
                    weight = len(labels) / examples * world.size
                    last = i == len(mine) - 1
                    with ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext():
                        loss_sum += forward_backward(ids, mask, labels, weight) * len(labels)
                    local_examples += len(labels)
                elapsed = time.perf_counter() - start
                late = float(bool(cfg.max_minutes) and elapsed > cfg.max_minutes * 60)
                loss_sum, late = all_sum([loss_sum, late], world)  # one rank out of time stops them all
                if not math.isfinite(loss_sum):
                    kept = f"the best model in {out_dir / 'model'}" if at.best_step else "no best model yet"
                    raise UsageError(f"training loss is {loss_sum / examples} at step {at.step + 1} "
                                     f"(epoch {epoch + 1}); stopped, keeping the last good checkpoint in "
                                     f"{checkpoint_dir} and {kept}; lower train.lr, raise train.warmup_ratio "
                                     "or use --precision fp32")
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                if averaged is not None:
                    averaged.update_parameters(model)
                at.step += 1
                at.batches_done += 1
                if at.batches_done == steps_per_epoch:
                    at.epoch, at.batches_done = epoch + 1, 0
                at.seen += examples
                at.running_loss += loss_sum
                at.running_n += examples
                bar.update(1)
                bar.set_postfix(loss=f"{at.running_loss / at.running_n:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                                ex_s=f"{at.seen / elapsed:.0f}", refresh=False)
                out_of_time = late > 0
                evaluating = at.step % eval_every == 0 or at.step == total_steps or out_of_time
                if evaluating:
                    # the parts' weights only mix the logits, not the training losses: fitting them on validation
                    # at each evaluation picks the best model as it will be used
                    val = validate(evaluated, validation, cfg.eval_batch_size, precision, world, refit_mixing=True)
                    epochs = round(at.step / steps_per_epoch, 3) if steps_per_epoch else None  # a stream: unknown
                    record = {"step": at.step, "epoch": epochs,
                              "train_loss": at.running_loss / at.running_n, "lr": scheduler.get_last_lr()[0],
                              "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"],
                              "elapsed_s": round(elapsed, 2), "examples_per_s": round(at.seen / elapsed, 1)}
                    at.running_loss, at.running_n = 0.0, 0
                    improved = val[cfg.metric] > at.best
                    if improved:
                        at.best, at.best_step, at.stale = val[cfg.metric], at.step, 0
                    else:
                        at.stale += 1
                    if world.main:
                        log_file.write(json.dumps(record) + "\n")
                        log_file.flush()
                        if improved:
                            save_model(out_dir / "model", evaluated, tokenizer)
                        where = f" (epoch {epochs:.2f})" if epochs is not None else ""
                        bar.write(f"step {at.step}{where}: train loss {record['train_loss']:.4f}, "
                                  f"val accuracy {val['accuracy']:.4f}, macro-F1 {val['macro_f1']:.4f}")
                    if cfg.patience and at.stale >= cfg.patience:
                        at.stop_reason = f"early stopping: no improvement in {cfg.patience} evaluations"
                    elif out_of_time:
                        at.stop_reason = f"time budget of {cfg.max_minutes} minutes reached"
                if evaluating or (cfg.checkpoint_every and at.step % cfg.checkpoint_every == 0):
                    checkpoint()
                if at.stop_reason != "completed" or at.step >= total_steps:
                    break
            else:  # the pass ended (a stream's length is known only here)
                if not stepped and at.batches_done == 0:
                    raise UsageError(f"{train.source}: the train split gave no batches; add labelled rows")
                at.epoch, at.batches_done = epoch + 1, 0
        if at.stop_reason != "completed":
            log.info(at.stop_reason)
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
    share = all_sum([float(local_examples if rank == world.rank else 0) for rank in range(world.size)], world)
    barrier(world)  # the best model is on disk before any rank reads it
    train_time = time.perf_counter() - start
    return {"best_step": at.best_step, f"best_val_{cfg.metric}": at.best, "steps": at.step,
            "stop_reason": at.stop_reason, "train_time_s": round(train_time, 2),
            "train_examples_per_s": round(at.seen / train_time, 1), "processes": world.size,
            "examples_per_process": [int(n) for n in share],
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
