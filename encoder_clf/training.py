"""The training run: data → tokenizer → model → loop → best model, metrics and plots.

The loop is plain PyTorch in :func:`fit`: AdamW, warmup then decay, gradient
clipping, evaluation each epoch (or every N steps), early stopping on a
validation metric, the best model kept on disk, a JSONL log of every
evaluation. Everything that can be wrong with the input is checked before the
run directory is created, so a bad input leaves nothing behind.

Checkpoints (:mod:`encoder_clf.state`) are written at step 0, at every
evaluation and every ``checkpoint_every`` steps; :func:`resume` continues a
killed run from the newest one and ends with the same weights and metrics as a
run that was never interrupted. A non-finite loss stops the run, keeping the
last good checkpoint and the best model. Checkpoints are deleted once
``metrics.json`` is written: a finished run has nothing to resume.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from .checkpoint import load_model, save_model
from .config import ModelConfig, check_fields, load_json
from .data import DataConfig, Splits, bucket_batches, collate, load_splits
from .distributed import SOLO, World, all_sum, barrier, broadcast_text, current, gather_rows, gather_tensors, shard
from .errors import UsageError
from .inference import PRECISIONS, autocast, default_device, forward_batches, resolve_precision
from .metrics import compute_metrics, format_report, plot_confusion_matrix, plot_training_curves
from .model import TextClassifier
from .optimization import SCHEDULES, layerwise_adamw, warmup_then_decay
from .pretrained import load_encoder
from .state import CHECKPOINTS, Checkpoint, Progress, Trainables, fingerprint, load_latest, restore, save_checkpoint
from .tokenization import UNK, TokenizerConfig, encode, load_tokenizer, pad_id, train_tokenizer

log = logging.getLogger(__name__)

METRICS = ("accuracy", "macro_f1")
# What `train --init` starts from, before any config file or --set: the usual recipe for fine-tuning
# a pretrained BERT-family encoder (small learning rate with warmup, a faster head, little dropout).
FINETUNE_PRESET = [
    "model.pooling=mean", "model.dropout=0.1", "model.attention_dropout=0.1",
    "train.epochs=2", "train.batch_size=32", "train.lr=1e-4", "train.head_lr=1e-3", "train.weight_decay=0.01",
    "train.warmup_ratio=0.1",
]


@dataclass
class TrainConfig:
    """Optimisation, evaluation and stopping."""

    init: str = ""  # start from this encoder (our model dir, a BERT-family dir or a Hub id); "" = from scratch
    epochs: int = 3
    batch_size: int = 64  # examples per forward pass (per process in a multi-process run)
    grad_accum: int = 1  # forward passes per optimizer step: the step sees batch_size x grad_accum x processes
    lr: float = 1e-3
    head_lr: float = 0.0  # learning rate of the pooling and classification head; 0 = same as lr
    layer_lr_decay: float = 1.0  # each block below the top learns at this factor times the one above
    freeze_layers: int = 0  # keep the embeddings and the first k blocks fixed (fine-tuning)
    weight_decay: float = 0.1
    warmup_ratio: float = 0.06
    schedule: str = "linear"
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    token_dropout: float = 0.0  # chance that a word piece is replaced by [UNK] during training
    ema_decay: float = 0.0  # evaluate and keep an exponential moving average of the weights; 0 = off
    eval_every: int = 0  # optimizer steps between evaluations; 0 = once per epoch
    metric: str = "accuracy"
    patience: int = 0  # evaluations without improvement before stopping; 0 = never stop early
    precision: str = "auto"
    seed: int = 0
    max_minutes: float = 0.0  # wall-clock budget for the loop; 0 = none
    eval_batch_size: int = 256
    checkpoint_every: int = 0  # optimizer steps between checkpoints; 0 = at evaluations only
    keep_checkpoints: int = 2  # the newest K checkpoints are kept while the run goes on
    compile: bool = False  # torch.compile the training forward pass (pays off on long runs; first steps are slow)

    def __post_init__(self) -> None:
        checks = [
            (self.epochs > 0, "epochs", "a positive integer"),
            (self.batch_size > 0, "batch_size", "a positive integer"),
            (self.grad_accum > 0, "grad_accum", "a positive integer (1 = no accumulation)"),
            (self.eval_batch_size > 0, "eval_batch_size", "a positive integer"),
            (self.lr > 0, "lr", "positive"),
            (self.head_lr >= 0, "head_lr", ">= 0 (0 = same as lr)"),
            (0 < self.layer_lr_decay <= 1, "layer_lr_decay", "in (0, 1] (1 = no decay)"),
            (self.freeze_layers >= 0, "freeze_layers", ">= 0"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio", "in [0, 1)"),
            (0 <= self.label_smoothing < 1, "label_smoothing", "in [0, 1)"),
            (0 <= self.token_dropout < 1, "token_dropout", "in [0, 1)"),
            (0 <= self.ema_decay < 1, "ema_decay", "in [0, 1) (0 turns averaging off)"),
            (self.weight_decay >= 0, "weight_decay", ">= 0"),
            (self.grad_clip >= 0, "grad_clip", ">= 0 (0 turns clipping off)"),
            (self.eval_every >= 0, "eval_every", ">= 0 (0 = each epoch)"),
            (self.patience >= 0, "patience", ">= 0 (0 = no early stopping)"),
            (self.max_minutes >= 0, "max_minutes", ">= 0 (0 = no budget)"),
            (self.checkpoint_every >= 0, "checkpoint_every", ">= 0 (0 = at evaluations only)"),
            (self.keep_checkpoints >= 1, "keep_checkpoints", "a positive integer"),
            (self.schedule in SCHEDULES, "schedule", f"one of {', '.join(SCHEDULES)}"),
            (self.metric in METRICS, "metric", f"one of {', '.join(METRICS)}"),
            (self.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}"),
        ]
        check_fields("train", self, checks)


@dataclass
class RunConfig:
    """Everything one run needs; saved as ``run_config.json`` in the run directory."""

    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def prepare_output(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise UsageError(f"output directory {out_dir} already exists and is not empty; "
                         "pick another --out or pass --overwrite")


def train(config: RunConfig, out_dir: str | Path, overwrite: bool = False, progress: bool = True) -> dict:
    """Run the whole path and return ``metrics.json``'s content.

    Writes ``out_dir/model/`` (best model), ``metrics.json``, ``report.txt``,
    ``log.jsonl``, ``run_config.json``, ``confusion_matrix.png`` and ``curves.png``.
    """
    out_dir = Path(out_dir)
    prepare_output(out_dir, overwrite)
    barrier(current())  # every rank has checked the directory before rank 0 writes to it
    _check_lengths(config)
    return train_on_splits(config, load_splits(config.data, seed=config.train.seed), out_dir, progress)


def _check_lengths(config: RunConfig) -> None:
    if config.model.max_positions < config.tokenizer.max_length:
        raise UsageError(f"tokenizer.max_length ({config.tokenizer.max_length}) exceeds model.max_positions "
                         f"({config.model.max_positions}); lower one or raise the other")


def train_on_splits(config: RunConfig, splits: Splits, out_dir: str | Path, progress: bool = True) -> dict:
    """:func:`train` on splits already in memory (``config.data`` is only recorded).

    The entry point for callers that hold their data themselves, such as the
    scikit-learn estimators.
    """
    out_dir = Path(out_dir)
    _check_lengths(config)
    torch.manual_seed(config.train.seed)
    start = load_encoder(config.train.init, config.tokenizer.max_length) if config.train.init else None
    if start is not None:  # the architecture and tokenizer come with the pretrained encoder
        tokenizer = start.tokenizer
        model_config = replace(start.config, pooling=config.model.pooling, dropout=config.model.dropout,
                               attention_dropout=config.model.attention_dropout, labels=splits.label_names)
    else:
        if config.tokenizer.path:
            tokenizer = load_tokenizer(config.tokenizer.path, config.tokenizer.max_length)
        else:
            tokenizer = _trained_once(splits.train.texts, config.tokenizer, current())
        model_config = replace(config.model, vocab_size=tokenizer.get_vocab_size(), labels=splits.label_names,
                               pad_token_id=pad_id(tokenizer))
    if model_config.n_layers < config.train.freeze_layers:
        raise UsageError(f"train.freeze_layers ({config.train.freeze_layers}) exceeds the model's "
                         f"{model_config.n_layers} layers; pick at most {model_config.n_layers}")
    config = replace(config, model=model_config)
    model = TextClassifier(model_config)
    if start is not None:
        model.encoder.load_state_dict(start.encoder.state_dict())
    return _run(config, model, tokenizer, splits, out_dir, progress)


def resume(run_dir: str | Path, progress: bool = True) -> dict:
    """Continue a run that stopped (killed, out of memory, out of time) from its newest usable checkpoint.

    Everything comes from the run directory: the settings from
    ``run_config.json``, the tokenizer from the checkpoint (never retrained:
    retraining may number the vocabulary differently). The data is read again
    from ``data.path`` and must be the same. Returns ``metrics.json``'s content.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "run_config.json").is_file():
        raise UsageError(f"--resume {run_dir}: no run_config.json there; pass the directory of a run "
                         "started by encoder-clf train")
    if (run_dir / "metrics.json").is_file():
        raise UsageError(f"--resume {run_dir}: the run already finished (metrics.json is written); "
                         "nothing to resume")
    config = load_json(RunConfig, run_dir / "run_config.json")
    checkpoint = load_latest(run_dir / CHECKPOINTS, config.tokenizer.max_length)
    splits = load_splits(config.data, seed=config.train.seed)
    old, best = run_dir / ".model.old", run_dir / "model"
    if old.is_dir() and not best.exists():  # killed inside save_model, between its two renames
        os.replace(old, best)
    return _run(config, TextClassifier(config.model), checkpoint.tokenizer, splits, run_dir, progress, checkpoint)


def _run(config: RunConfig, model: TextClassifier, tokenizer, splits: Splits, out_dir: Path, progress: bool,
         checkpoint: Checkpoint | None = None) -> dict:
    """Encode, train (or go on training), then score the best model and write the run's files (rank 0)."""
    world = current()
    encoded = {name: encode(tokenizer, split.texts) for name, split in _named_splits(splits).items()}
    truncated = {name: count for name, (_, count) in encoded.items()}
    for name, count in truncated.items():
        if count and world.main:
            log.warning("%s: %d of %d texts truncated at max_length=%d tokens", name, count,
                        len(encoded[name][0]), config.tokenizer.max_length)

    if world.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if checkpoint is None:  # a fresh start (maybe --overwrite): what an older run left must not be resumed
            shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
            (out_dir / "metrics.json").unlink(missing_ok=True)
            (out_dir / "run_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n", encoding="utf-8")
    device = default_device()
    model.to(device)
    precision = resolve_precision(config.train.precision, device)
    summary = fit(model, tokenizer, splits, {k: v[0] for k, v in encoded.items()}, config, out_dir,
                  precision, progress, resume_from=checkpoint, world=world)

    best_model = load_model(out_dir / "model")[0].to(device)
    results = {name: validate(best_model, encoded[name][0], split.labels, pad_id(tokenizer),
                              config.train.eval_batch_size, precision, world)
               for name, split in _named_splits(splits).items() if name != "train"}
    metrics = {**results, **summary, "precision": precision, "device": str(device),
               "data": {name: {"rows": len(encoded[name][0]), "truncated": truncated[name]} for name in encoded},
               "parameters": sum(p.numel() for p in model.parameters())}
    if not world.main:
        return metrics
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    report = "\n\n".join(format_report(results[name], name) for name in results)
    (out_dir / "report.txt").write_text(report + "\n", encoding="utf-8")
    final = "test" if "test" in results else "validation"
    plot_confusion_matrix(results[final], out_dir / "confusion_matrix.png", f"Confusion matrix ({final})")
    plot_training_curves(out_dir / "log.jsonl", out_dir / "curves.png")
    shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)  # finished: nothing left to resume
    return metrics


def _trained_once(texts: list[str], config: TokenizerConfig, world: World):
    """A tokenizer trained on rank 0 and sent to the others: every rank must number the vocabulary alike."""
    if world.size == 1:
        return train_tokenizer(texts, config)
    text = broadcast_text(train_tokenizer(texts, config).to_str() if world.main else "", world)
    return Tokenizer.from_str(text)  # truncation travels in the JSON


def _named_splits(splits: Splits) -> dict:
    named = {"train": splits.train, "validation": splits.validation}
    if splits.test is not None:
        named["test"] = splits.test
    return named


def _loss_fn(config: RunConfig, labels: np.ndarray, num_labels: int, device) -> nn.Module:
    weight = None
    if config.data.class_weights == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        present = np.unique(labels)
        values = np.ones(num_labels, dtype=np.float32)
        values[present] = compute_class_weight("balanced", classes=present, y=labels)
        weight = torch.tensor(values, device=device)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=config.train.label_smoothing)


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


def _steps(batches: list[np.ndarray], grad_accum: int, world: World) -> list[list[np.ndarray]]:
    """Deal an epoch's batches into optimizer steps: this rank's micro-batches for each step.

    A step takes ``world.size * grad_accum`` consecutive batches, dealt
    round-robin to the ranks; every rank must run the same number of forward
    passes, so a list that does not divide evenly among the ranks is topped up
    with batches from the start of the epoch (as DistributedSampler does).
    """
    short = -len(batches) % world.size
    batches = batches + [batches[i % len(batches)] for i in range(short)]
    per_step = world.size * grad_accum
    return [batches[start: start + per_step] for start in range(0, len(batches), per_step)]


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


def validate(model: TextClassifier, sequences: list[list[int]], labels: np.ndarray, pad: int, batch_size: int,
             precision: str, world: World = SOLO) -> dict:
    """Metrics on labelled sequences, each rank scoring its share and the logits gathered, so all ranks agree."""
    mine = shard(len(sequences), world)
    logits, _ = forward_batches(model, [sequences[i] for i in mine], pad, batch_size, precision)
    logits = gather_rows(logits, len(sequences), world)
    return compute_metrics(labels, logits.argmax(axis=1), model.config.labels)


def fit(model: TextClassifier, tokenizer, splits: Splits, sequences: dict[str, list[list[int]]],
        config: RunConfig, out_dir: Path, precision: str, progress: bool = True, *,
        resume_from: Checkpoint | None = None, world: World = SOLO) -> dict:
    """The training loop. Saves the best model to ``out_dir/model``, logs to ``out_dir/log.jsonl`` and
    checkpoints to ``out_dir/checkpoints``; with ``resume_from``, goes on from that checkpoint.

    Every rank of a multi-process run calls it; only rank 0 writes files.
    """
    cfg = config.train
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    train_seqs, train_labels = sequences["train"], torch.as_tensor(splits.train.labels)
    lengths = np.array([len(s) for s in train_seqs])
    steps_per_epoch = len(_steps(bucket_batches(lengths, cfg.batch_size, shuffle=False), cfg.grad_accum, world))
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = layerwise_adamw(model, cfg.lr, cfg.weight_decay, cfg.head_lr, cfg.layer_lr_decay,
                                cfg.freeze_layers)
    scheduler = warmup_then_decay(optimizer, cfg.warmup_ratio, total_steps, cfg.schedule)
    loss_fn = _loss_fn(config, splits.train.labels, model.config.num_labels, device)
    # The averaged copy is what gets evaluated and saved: it smooths the noise of the last steps.
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay)) if cfg.ema_decay else None
    evaluated = averaged.module if averaged is not None else model
    eval_every = cfg.eval_every or steps_per_epoch
    unk = tokenizer.token_to_id(UNK) if tokenizer.token_to_id(UNK) is not None else pad
    dropout_rng = torch.Generator().manual_seed(cfg.seed * world.size + world.rank)
    if world.size > 1:  # the same initial weights everywhere (DDP broadcasts rank 0's), other dropout masks
        torch.manual_seed(cfg.seed * world.size + world.rank)
    trainables = Trainables(model, optimizer, scheduler, averaged, dropout_rng)
    data = fingerprint({k: sequences[k] for k in ("train", "validation")},
                       {"train": splits.train.labels, "validation": splits.validation.labels}, splits.label_names)
    at = Progress()
    log_path, checkpoint_dir = out_dir / "log.jsonl", out_dir / CHECKPOINTS
    if resume_from is not None:
        if resume_from.meta["data"] != data:
            raise UsageError(f"{config.data.path}: the data differs from what {out_dir} was trained on so far "
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
            save_checkpoint(checkpoint_dir, trainables, at, tokenizer, data, cfg.keep_checkpoints, ranks)

    runner = DistributedDataParallel(model) if world.size > 1 else model
    if cfg.compile:
        runner = torch.compile(runner, dynamic=True)

    def forward_backward(index: np.ndarray, weight: float) -> float:
        """One micro-batch: its loss, scaled by ``weight`` before backward; returns the unscaled loss."""
        ids, mask = collate([train_seqs[i] for i in index], pad)
        if cfg.token_dropout:
            ids = _drop_tokens(ids, mask, cfg.token_dropout, unk, dropout_rng)
        with autocast(precision, device):
            logits = runner(ids.to(device), mask.to(device)).logits
        loss = loss_fn(logits.float(), train_labels[index].to(device))
        (loss * weight).backward()
        return loss.item()

    if resume_from is None:
        checkpoint()  # step 0: a run killed before its first evaluation can still resume (with its tokenizer)
    local_examples = 0  # this process's share, this invocation: how the ranks split the work
    bar = tqdm(total=total_steps, initial=at.step, disable=not (progress and world.main), unit="step",
               dynamic_ncols=True)
    try:
        for epoch in range(at.epoch, cfg.epochs):
            if at.stop_reason != "completed":
                break
            model.train()
            batches = bucket_batches(lengths, cfg.batch_size, shuffle=True, seed=cfg.seed * 1000 + epoch)
            for group in _steps(batches, cfg.grad_accum, world)[at.batches_done:]:  # a resumed epoch skips steps done
                mine, examples = group[world.rank::world.size], sum(len(index) for index in group)
                optimizer.zero_grad(set_to_none=True)
                loss_sum = 0.0
                for i, index in enumerate(mine):
                    # DDP averages gradients over ranks: weights that sum to world.size give the step's mean loss
                    weight = len(index) / examples * world.size
                    last = i == len(mine) - 1
                    with runner.no_sync() if world.size > 1 and not last else contextlib.nullcontext():
                        loss_sum += forward_backward(index, weight) * len(index)
                    local_examples += len(index)
                elapsed = time.perf_counter() - start
                late = float(bool(cfg.max_minutes) and elapsed > cfg.max_minutes * 60)
                loss_sum, late = all_sum([loss_sum, late], world)  # rank 0's clock counts, as do all losses
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
                    val = validate(evaluated, sequences["validation"], splits.validation.labels, pad,
                                   cfg.eval_batch_size, precision, world)
                    record = {"step": at.step, "epoch": round(at.step / steps_per_epoch, 3),
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
                        bar.write(f"step {at.step} (epoch {record['epoch']:.2f}): "
                                  f"train loss {record['train_loss']:.4f}, val accuracy {val['accuracy']:.4f}, "
                                  f"macro-F1 {val['macro_f1']:.4f}")
                    if cfg.patience and at.stale >= cfg.patience:
                        at.stop_reason = f"early stopping: no improvement in {cfg.patience} evaluations"
                    elif out_of_time:
                        at.stop_reason = f"time budget of {cfg.max_minutes} minutes reached"
                if evaluating or (cfg.checkpoint_every and at.step % cfg.checkpoint_every == 0):
                    checkpoint()
                if at.stop_reason != "completed":
                    log.info(at.stop_reason)
                    break
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
