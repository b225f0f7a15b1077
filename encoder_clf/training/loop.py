"""The training loop: AdamW steps over batches, evaluation and a stop decision, in one process or many.

:func:`fit` is plain PyTorch and reads top to bottom: each optimizer step is
:func:`train_step` (``grad_accum`` forward passes; under torchrun each step's
batches are dealt to the ranks and DistributedDataParallel averages the
gradients); every ``eval_every`` steps comes :func:`evaluate` (the head's
mixing weights are fitted on the validation split, an explicit step, then the
split is scored) and :func:`decide` (best model, early stopping, time budget).
What the run keeps goes to a :class:`~encoder_clf.training.recorder.Recorder`:
the history and the best model, and for a run directory checkpoints at step
0, at every evaluation and every ``checkpoint_every`` steps, with each rank's
random streams, so that a resumed run replays the rest of an uninterrupted
one bit for bit. Progress shows as a bar and log lines (``logging``), so a
quiet run prints nothing.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..data.tokenization import UNK, pad_id
from ..data.tokenized import TokenizedSplit
from ..errors import UsageError
from ..inference import forward_batches, scored
from ..metrics import HEADLINE, NAMES
from ..model.classifier import TextClassifier
from ..persistence.checkpoints import Checkpoint, Progress, Trainables, restore
from ..runtime import autocast, reuse_freed_blocks
from .batches import Batch, TrainBatches, deal_steps, drop_tokens
from .config import TrainConfig
from .distributed import SOLO, World, all_sum, barrier, gather_rows, rank_streams, restore_rank_streams, shard
from .linear import selection_score
from .optim import clipped_step, layerwise_adamw, warmup_then_decay
from .recorder import Recorder
from .stacking import fit_mixing_weights
from .thresholds import fit_thresholds

log = logging.getLogger(__name__)



def task_loss(model: TextClassifier, class_weights: str | None, labels: np.ndarray | None, label_smoothing: float,
              device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The model's task loss, with ``balanced`` weights from the train targets when asked for.

    One class per text: class weights inversely proportional to the classes' frequencies (scikit-learn's
    ``balanced``). Multi-label: each label's positive weight is its negatives over its positives, so a rare
    label's few positives weigh as much as its many negatives.
    """
    weight = None
    if class_weights == "balanced" and model.config.task == "single_label":
        from sklearn.utils.class_weight import compute_class_weight

        present = np.unique(labels)
        values = np.ones(model.config.num_labels, dtype=np.float32)
        values[present] = compute_class_weight("balanced", classes=present, y=labels)
        weight = torch.tensor(values, device=device)
    elif class_weights == "balanced" and model.config.task == "multi_label":
        positives = labels.sum(axis=0)
        weight = torch.tensor(np.where(positives > 0, (len(labels) - positives) / np.maximum(positives, 1), 1.0),
                              dtype=torch.float32, device=device)
    elif class_weights == "balanced":
        raise UsageError("data.class_weights=balanced weighs classes or labels, and a regression target has "
                         "neither; drop it")
    return functools.partial(model.task.loss, weight=weight, label_smoothing=label_smoothing)


def record_interval(steps: int) -> int:
    """The step interval that gives about 100 records over ``steps``."""
    return max(1, round(steps / 100))


@dataclass
class Plan:
    """How long the run is and when it evaluates, fixed before the first step, and the rule that set its length.

    Unless ``train.epochs`` (or ``train.max_steps``) is set, the length follows the train split's size: at least
    ``train.min_steps`` optimizer steps, in at least 2 and at most ``train.max_epochs`` epochs. The preset's 2
    epochs are 2,100 steps on SST-2's 67k rows, but only about 130 on 4k rows, too few for the encoder to
    learn; early stopping (``train.patience``) ends a long run once validation stops improving.
    """

    steps_per_epoch: int | None  # None for a stream
    total_steps: int
    eval_every: int
    epochs: int | None = None
    rule: str = ""
    log_every: int = 1  # steps between step records: train.log_every, or about 100 records per run

    @classmethod
    def of(cls, train: TrainBatches, cfg: TrainConfig, world: World) -> Plan:
        if train.per_epoch is None:  # a stream: the run is max_steps long, as many passes as that takes
            return cls(None, cfg.max_steps, cfg.eval_every or max(1, cfg.max_steps // 10), None,
                       f"train.max_steps={cfg.max_steps} (a stream)", cfg.log_every or record_interval(cfg.max_steps))
        per_epoch = sum(1 for _ in deal_steps(range(train.per_epoch), cfg.grad_accum, world))
        if cfg.epochs is not None:
            epochs, rule = cfg.epochs, f"train.epochs={cfg.epochs}"
        elif cfg.max_steps:
            epochs, rule = math.ceil(cfg.max_steps / per_epoch), f"train.max_steps={cfg.max_steps}"
        else:
            epochs = min(cfg.max_epochs, max(2, math.ceil(cfg.min_steps / per_epoch)))
            rule = (f"by the data's size: at least train.min_steps={cfg.min_steps} steps in 2 to "
                    f"train.max_epochs={cfg.max_epochs} epochs")
        total = min(per_epoch * epochs, cfg.max_steps or math.inf)
        return cls(per_epoch, total, cfg.eval_every or per_epoch, epochs, rule, cfg.log_every or record_interval(total))

    def describe(self, cfg: TrainConfig) -> str:
        """The plan as the run states it."""
        length = (f"{self.total_steps} steps" if self.epochs is None else
                  f"{self.epochs} epoch(s) of {self.steps_per_epoch} steps = {self.total_steps} steps")
        stop = (f"stop after {cfg.patience} evaluations improving neither the metric nor the loss" if cfg.patience
                else "no early stopping")
        return f"{length} ({self.rule}), evaluating every {self.eval_every} steps, {stop}"

    def epochs_at(self, step: int) -> float | None:
        return round(step / self.steps_per_epoch, 3) if self.steps_per_epoch else None


@dataclass
class Session:
    """What the loop works with: the trained objects, how forward passes run, and where the run stands."""

    objects: Trainables
    evaluated: TextClassifier  # what is scored and kept: the model, or its moving average
    runner: nn.Module  # the model as training forward passes call it: DDP-wrapped, compiled, or itself
    ddp: DistributedDataParallel | None
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    cfg: TrainConfig
    precision: str
    device: torch.device
    world: World
    unk: int
    at: Progress
    start: float = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def fit(model: TextClassifier, tokenizer, train: TrainBatches, validation: TokenizedSplit, cfg: TrainConfig,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], precision: str, recorder: Recorder,
        progress: bool = True, *,
        resume_from: Checkpoint | None = None, world: World = SOLO) -> dict:
    """Train, keeping the history, the best model and checkpoints in ``recorder``; return the run's summary.

    With ``resume_from``, go on from that checkpoint. Every rank of a multi-process run calls it; only
    rank 0's recorder writes.
    """
    plan = Plan.of(train, cfg, world)
    if world.main:
        log.info("plan: %s", plan.describe(cfg))
    session = _session(model, tokenizer, cfg, loss_fn, precision, plan, world)
    if resume_from is not None:
        _resume(session, resume_from, train, plan)
    else:
        _checkpoint(session, recorder, tokenizer, train.key)  # step 0: a run killed early still resumes
    at = session.at
    bar = tqdm(total=plan.total_steps, initial=at.step, disable=not (progress and world.main), unit="step",
               dynamic_ncols=True)
    with bar, logging_redirect_tqdm() if progress else contextlib.nullcontext():
        for epoch in itertools.count(at.epoch):
            if at.stop_reason != "completed" or at.step >= plan.total_steps:
                break
            session.objects.model.train()
            stepped = False
            steps = deal_steps(train.epoch(epoch), cfg.grad_accum, world)
            for group in itertools.islice(steps, at.batches_done, None):  # a resumed epoch skips the steps done
                stepped = True
                logged = (at.step + 1) % plan.log_every == 0
                loss_sum, late, norm = train_step(session, group, epoch, recorder, logged)
                _advance(at, group, loss_sum, plan, epoch, world)
                if logged:
                    recorder.step(_step_record(session, plan, norm))
                bar.update(1)
                bar.set_postfix(loss=f"{at.running_loss / at.running_n:.4f}",
                                lr=f"{session.objects.scheduler.get_last_lr()[0]:.2e}",
                                ex_s=f"{at.seen / session.elapsed():.0f}", refresh=False)
                evaluating = at.step % plan.eval_every == 0 or at.step == plan.total_steps or late
                if evaluating:
                    scores = evaluate(session.evaluated, validation, cfg.eval_batch_size, precision, world)
                    improved = decide(at, scores, cfg, late)
                    record = _record(session, plan, scores)
                    recorder.evaluation(record, session.evaluated if improved else None, tokenizer)
                    if world.main:
                        shown = ", ".join([*(f"{NAMES[key]} {scores[key]:.4f}" for key in HEADLINE[scores["task"]]),
                                           f"loss {scores['loss']:.4f}"])
                        log.info("step %d%s: train loss %.4f, val %s", at.step,
                                 "" if record["epoch"] is None else f" (epoch {record['epoch']:.2f})",
                                 record["train_loss"], shown)
                if evaluating or (cfg.checkpoint_every and at.step % cfg.checkpoint_every == 0):
                    _checkpoint(session, recorder, tokenizer, train.key)
                if at.stop_reason != "completed" or at.step >= plan.total_steps:
                    break
            else:  # the pass ended (a stream's length is known only here)
                if not stepped and at.batches_done == 0:
                    raise UsageError(f"{train.source}: the train split gave no batches; add labelled rows")
                at.epoch, at.batches_done = epoch + 1, 0
    if at.stop_reason != "completed":
        log.info(at.stop_reason)
    barrier(world)  # the best model is on disk before any rank reads it
    return _summary(session, plan)


def train_step(session: Session, group: list[Batch], epoch: int, recorder: Recorder,
               norm: bool = False) -> tuple[float, bool, float | None]:
    """One optimizer step over this rank's share of ``group``: the step's summed loss, whether time ran out,
    and (with ``norm``, or when clipping measures it anyway) the gradient norm before clipping.

    The loss and the time budget are reduced over the ranks, so that every rank takes the same decision.
    """
    cfg, world, objects = session.cfg, session.world, session.objects
    mine, examples = group[world.rank::world.size], sum(len(batch.labels) for batch in group)
    objects.optimizer.zero_grad(set_to_none=True)
    loss_sum = 0.0
    for i, batch in enumerate(mine):
        # DDP averages gradients over ranks: weights that sum to world.size give the step's mean loss
        weight = len(batch.labels) / examples * world.size
        last = i == len(mine) - 1
        with session.ddp.no_sync() if session.ddp is not None and not last else contextlib.nullcontext():
            loss_sum += _forward_backward(session, batch, weight) * len(batch.labels)
    late = float(bool(cfg.max_minutes) and session.elapsed() > cfg.max_minutes * 60)
    loss_sum, late = all_sum([loss_sum, late], world)  # one rank out of time stops them all
    if not math.isfinite(loss_sum):
        raise UsageError(f"training loss is {loss_sum / examples} at step {session.at.step + 1} (epoch {epoch + 1}); "
                         f"{recorder.kept(session.at)}; lower train.lr, raise train.warmup_ratio or use "
                         "--precision fp32")
    # an infinite bound measures the norm and leaves the gradients as they are
    measured = clipped_step(objects.optimizer, objects.model.parameters(),
                            cfg.grad_clip or (math.inf if norm else 0.0))
    objects.scheduler.step()
    if objects.averaged is not None:
        objects.averaged.update_parameters(objects.model)
    return loss_sum, late > 0, measured


def evaluate(model: TextClassifier, tokens: TokenizedSplit, batch_size: int, precision: str,
             world: World = SOLO) -> dict:
    """Fit what the model learns from held-out rows on ``tokens`` (a labelled split), then score it there.

    First the head's mixing weights, then a multi-label model's thresholds on the mixed outputs: they only
    turn outputs into decisions, not training losses, so fitting them at each evaluation picks the best
    model as it will be used.
    """
    logits, parts = _forward_split(model, tokens, batch_size, precision, world, with_parts=True)
    if len(parts) > 1:
        fit_mixing_weights(model, parts, tokens.labels)
        logits = model.head.mix(torch.from_numpy(parts)).numpy()
    if model.config.task == "multi_label":
        fit_thresholds(model, logits, tokens.labels)
    loss = model.task.loss(torch.from_numpy(logits).float(), torch.as_tensor(np.asarray(tokens.labels)))
    return {**scored(model, logits, tokens.labels), "loss": float(loss)}


def score(model: TextClassifier, tokens: TokenizedSplit, batch_size: int, precision: str,
          world: World = SOLO) -> tuple[dict, np.ndarray]:
    """Metrics of the model as it is on a labelled split, and its predictions (each rank scores a share; all ranks
    get them)."""
    logits, _ = _forward_split(model, tokens, batch_size, precision, world, with_parts=False)
    return scored(model, logits, tokens.labels), model.task.predict(torch.from_numpy(logits)).numpy()


def part_scores(model: TextClassifier, tokens: TokenizedSplit, batch_size: int, precision: str, metric: str,
                world: World = SOLO) -> dict[str, float]:
    """The selection metric of each part of the head alone, and of their mix, on a labelled split.

    The report that shows whether the mix earns its place: it should be at least as good as its best part.
    """
    logits, parts = _forward_split(model, tokens, batch_size, precision, world, with_parts=True)
    scores = {name: selection_score(model, part, tokens.labels, metric) for name, part in zip(model.head.names, parts)}
    return {**scores, "mixed": selection_score(model, logits, tokens.labels, metric)}


LOSS_TOLERANCE = 1e-4  # a validation loss must fall by more than this share of the lowest one to count


def decide(at: Progress, scores: dict, cfg: TrainConfig, late: bool) -> bool:
    """After an evaluation: is this the best model so far, and does the run stop (early stopping, time)?

    The best model is the one with the best selection metric. Early stopping waits for ``train.patience``
    evaluations in which neither that metric nor the validation loss improved: while one part of the head
    decides most predictions (the fitted n-gram part on a small dataset), the encoder's progress shows in
    the mixed outputs' loss long before it moves their accuracy.
    """
    improved = scores[cfg.metric] > at.best
    lower = at.best_loss is None or scores["loss"] < at.best_loss - LOSS_TOLERANCE * abs(at.best_loss)
    if lower:
        at.best_loss = scores["loss"]
    if improved:
        at.best, at.best_step = scores[cfg.metric], at.step
    at.stale = 0 if improved or lower else at.stale + 1
    if cfg.patience and at.stale >= cfg.patience:
        at.stop_reason = (f"early stopping: neither validation {cfg.metric} nor loss improved in {cfg.patience} "
                          "evaluations")
    elif late:
        at.stop_reason = f"time budget of {cfg.max_minutes} minutes reached"
    return improved


def _forward_split(model: TextClassifier, tokens: TokenizedSplit, batch_size: int, precision: str, world: World,
                   with_parts: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The outputs ``(n, outputs)`` of a split and, ``with_parts``, each part's ``(parts, n, outputs)``, gathered."""
    mine = shard(len(tokens), world)
    segments = None if tokens.segments is None else tokens.segments[mine]
    out = forward_batches(model, [tokens.sequences[i] for i in mine], tokens.pad_id, batch_size, precision, segments)
    parts = gather_rows(out.parts.transpose(1, 0, 2), len(tokens), world).transpose(1, 0, 2) if with_parts else None
    return gather_rows(out.logits, len(tokens), world), parts


def _session(model: TextClassifier, tokenizer, cfg: TrainConfig, loss_fn: nn.Module, precision: str, plan: Plan,
             world: World) -> Session:
    optimizer = layerwise_adamw(model, cfg.lr, cfg.weight_decay, cfg.head_lr, cfg.layer_lr_decay,
                                cfg.freeze_layers)
    reuse_freed_blocks()  # the word embeddings' gradient is made anew at every step
    scheduler = warmup_then_decay(optimizer, cfg.warmup_ratio, plan.total_steps, cfg.schedule)
    # The averaged copy is what gets evaluated and saved: it smooths the noise of the last steps.
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay)) if cfg.ema_decay else None
    generator = torch.Generator().manual_seed(cfg.seed * world.size + world.rank)
    if world.size > 1:  # the same initial weights everywhere (DDP broadcasts rank 0's), other dropout masks
        torch.manual_seed(cfg.seed * world.size + world.rank)
    ddp = DistributedDataParallel(model) if world.size > 1 else None
    runner = ddp or model
    if cfg.compile:
        runner = torch.compile(runner, dynamic=True)
    unk = tokenizer.token_to_id(UNK) if tokenizer.token_to_id(UNK) is not None else pad_id(tokenizer)
    at = Progress(examples_per_process=[0] * world.size)
    session = Session(Trainables(model, optimizer, scheduler, averaged, generator),
                      averaged.module if averaged is not None else model, runner, ddp, loss_fn, cfg, precision,
                      next(model.parameters()).device, world, unk, at)
    session.start = time.perf_counter()
    return session


def _resume(session: Session, checkpoint: Checkpoint, train: TrainBatches, plan: Plan) -> None:
    if checkpoint.meta["data"] != train.key:
        raise UsageError(f"{train.source}: the data differs from what the run was trained on so far "
                         "(rows, texts or labels changed); restore the original files to resume")
    session.at = restore(checkpoint, session.objects)
    restore_rank_streams(checkpoint.tensors, checkpoint.path, session.objects.generator, session.world)
    session.start = time.perf_counter() - session.at.elapsed_s
    at = session.at
    log.info("resuming from step %d of %d (epoch %d, step %d of the epoch)", at.step, plan.total_steps,
             at.epoch + 1, at.batches_done)


def _forward_backward(session: Session, batch: Batch, weight: float) -> float:
    """One micro-batch: each part of the head scored on its own loss, their mean scaled by ``weight`` for backward."""
    ids, mask, types, labels = batch
    if session.cfg.token_dropout:
        ids = drop_tokens(ids, mask, session.cfg.token_dropout, session.unk, session.objects.generator)
    device = session.device
    with autocast(session.precision, device):
        out = session.runner(ids.to(device), mask.to(device), None if types is None else types.to(device))
    labels = labels.to(device)
    loss = torch.stack([session.loss_fn(part.float(), labels) for part in out.parts]).mean()
    (loss * weight).backward()
    return loss.item()


def _advance(at: Progress, group: list[Batch], loss_sum: float, plan: Plan, epoch: int, world: World) -> None:
    """Count a finished step: the position in the epoch, the loss and examples seen, and each rank's share."""
    at.step += 1
    at.batches_done += 1
    if at.batches_done == plan.steps_per_epoch:
        at.epoch, at.batches_done = epoch + 1, 0
    examples = sum(len(batch.labels) for batch in group)
    at.seen += examples
    at.running_loss += loss_sum
    at.running_n += examples
    at.logged_loss += loss_sum
    at.logged_n += examples
    for rank in range(world.size):
        at.examples_per_process[rank] += sum(len(batch.labels) for batch in group[rank::world.size])


def _record(session: Session, plan: Plan, scores: dict) -> dict:
    """One line of the history (``log.jsonl``), and the running loss starts again."""
    at, elapsed = session.at, session.elapsed()
    shown = dict.fromkeys([session.cfg.metric, *HEADLINE[scores["task"]]])  # the selection metric first
    record = {"kind": "evaluation", "step": at.step, "epoch": plan.epochs_at(at.step),
              "train_loss": at.running_loss / at.running_n,
              "lr": session.objects.scheduler.get_last_lr()[0], **{f"val_{key}": scores[key] for key in shown},
              "val_loss": scores["loss"],
              "elapsed_s": round(elapsed, 2), "examples_per_s": round(at.seen / elapsed, 1)}
    at.running_loss, at.running_n = 0.0, 0
    return record


def _step_record(session: Session, plan: Plan, norm: float | None) -> dict:
    """One step record of ``log.jsonl``: the mean loss since the last one, the rate, the gradient norm, speed."""
    at, elapsed = session.at, session.elapsed()
    record = {"kind": "step", "step": at.step, "epoch": plan.epochs_at(at.step),
              "train_loss": at.logged_loss / at.logged_n, "lr": session.objects.scheduler.get_last_lr()[0],
              "grad_norm": norm, "elapsed_s": round(elapsed, 2), "examples_per_s": round(at.seen / elapsed, 1)}
    at.logged_loss, at.logged_n = 0.0, 0
    return record


def _checkpoint(session: Session, recorder: Recorder, tokenizer, data_key: str) -> None:
    """A checkpoint of every rank's state, written by rank 0 (every rank takes part in gathering the streams)."""
    if not recorder.keeps_checkpoints:
        return
    extra = rank_streams(session.objects.generator, session.world)
    if session.world.main:
        session.at.elapsed_s = session.elapsed()
        recorder.checkpoint(session.objects, session.at, tokenizer, data_key, extra)


def _summary(session: Session, plan: Plan) -> dict:
    at, cfg, elapsed = session.at, session.cfg, session.elapsed()
    planned = {"epochs": plan.epochs, "steps_per_epoch": plan.steps_per_epoch, "steps": plan.total_steps,
               "eval_every": plan.eval_every, "log_every": plan.log_every, "patience": cfg.patience, "rule": plan.rule}
    stop = f"completed: the plan's {plan.total_steps} steps" if at.stop_reason == "completed" else at.stop_reason
    return {"plan": planned, "best_step": at.best_step, f"best_val_{cfg.metric}": at.best, "steps": at.step,
            "stop_reason": stop, "train_time_s": round(elapsed, 2),
            "train_examples_per_s": round(at.seen / elapsed, 1), "processes": session.world.size,
            "examples_per_process": list(at.examples_per_process),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
