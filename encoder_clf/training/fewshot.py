"""Few-shot training in the SetFit way (Tunstall et al., 2022): contrastive pairs tune the encoder, then a logistic
regression on its sentence vectors becomes the head.

With 8 to 64 labelled rows per class, fine-tuning a classifier end to end has a few dozen examples to learn from.
SetFit draws pairs of labelled rows instead, many more pairs than rows: two rows that share a label (the same
class; for multi-label, at least one label in common) are a positive pair, with target cosine 1, any other two a
negative pair, with target 0. The encoder is trained so that the cosine of each pair's sentence vectors meets its
target (the squared error: sentence-transformers' CosineSimilarityLoss), and scikit-learn's LogisticRegression is
then fitted on the tuned vectors of the train rows (one per label for multi-label). The vectors are scaled to unit
length (``model.normalize``, set by the few-shot preset): the cosine loss shapes their directions only, their
lengths stay as the pretrained encoder left them, and SetFit's head reads all-MiniLM-L6-v2's normalised outputs.
The coefficients are copied into the model's linear head, so the run directory is an ordinary one that
``evaluate``, ``predict``, ``embed`` and ``export`` read unchanged; a multi-label model's thresholds are then tuned
on validation, as in every run.

:func:`fit_few_shot` takes the loop's place in :func:`encoder_clf.training.run.train` (``fewshot.enabled``,
``--few-shot``). The contrastive stage reads the ``train`` settings (the few-shot preset sets SetFit's) and writes
a step record of its loss every ``train.log_every`` steps (its ``examples_per_s`` counts pairs); the one
evaluation follows the head's fit.
"""

from __future__ import annotations

import itertools
import logging
import math
import resource
import time
from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn
from tqdm.auto import tqdm

from ..data.batching import Batch
from ..data.splits import Splits
from ..data.tokenized import TokenizedSplit
from ..errors import UsageError
from ..inference import forward_batches
from ..metrics import HEADLINE, NAMES
from ..model.classifier import TextClassifier
from ..runtime import autocast, reuse_freed_blocks
from .batches import TrainBatches, deal_steps
from .config import FewShotConfig, RunConfig, TrainConfig
from .distributed import SOLO, World
from .loop import Plan, evaluate
from .optim import clipped_step, layerwise_adamw, warmup_then_decay
from .recorder import Recorder

log = logging.getLogger(__name__)


def check_few_shot(config: RunConfig, world: World) -> None:
    """What a few-shot run refuses from its settings alone, before any data is read."""
    if not config.train.init:
        raise UsageError("--few-shot tunes a pretrained sentence encoder; pass --init DIR_OR_HUB_ID (train.init), "
                         "e.g. all-MiniLM-L6-v2")
    if config.distill.teacher:
        raise UsageError("--few-shot learns from the labelled rows and distillation from a teacher's outputs; drop "
                         "--few-shot, or distill.teacher")
    if config.data.streaming:
        raise UsageError("--few-shot pairs the rows of a train split held in memory; drop --streaming")
    if world.size > 1:
        raise UsageError("--few-shot trains in one process; run it without torchrun")


def check_few_shot_data(splits: Splits) -> None:
    """What a few-shot run refuses once the data is read: a regression target (pairs are made by class), and a
    class or label that the logistic-regression head cannot be fitted for from the train rows."""
    if splits.task == "regression":
        raise UsageError("--few-shot pairs rows by class, and a regression target has no classes; train without "
                         "--few-shot")
    labels, multi = splits.train.labels, splits.task == "multi_label"
    counts = labels.sum(axis=0) if multi else np.bincount(labels, minlength=len(splits.label_names))
    for name, count in zip(splits.label_names, counts):
        if count == 0 or (multi and count == len(labels)):
            where = "none" if count == 0 else "every one"
            raise UsageError(f"--few-shot: {'label' if multi else 'class'} {name!r} is on {where} of the "
                             f"{len(labels)} train rows, so the head cannot learn it; add train rows "
                             f"{'with' if count == 0 else 'without'} it")


@dataclass
class Pairs:
    """Pairs of train rows: their indices ``(pairs, 2)`` and target cosines ``(pairs,)``, 1 (positive) or 0."""

    rows: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)


def contrastive_pairs(labels: np.ndarray, iterations: int, seed: int) -> Pairs:
    """``iterations`` rounds in which every row gets one random positive and one random negative partner.

    ``labels``: class ids ``(n,)`` or 0/1 indicators ``(n, labels)``. Two rows are positive when they share a label
    (the same class; multi-label: at least one label in common, SetFit's rule) and negative otherwise, so a
    multi-label row without labels is negative to every row. A row is never its own partner, and a row with no
    partner of a kind (the only row of its class) gets none of that kind: 2 x iterations x rows pairs at most.
    Rows with the same labels have the same partners, so the candidates are found once per label set.
    """
    member = labels.astype(bool) if labels.ndim == 2 else np.eye(labels.max() + 1, dtype=bool)[labels]
    sets, which = np.unique(member, axis=0, return_inverse=True)
    candidates = []
    for number, label_set in enumerate(sets):
        shares = (member & label_set).any(axis=1)
        candidates.append((np.flatnonzero(which.ravel() == number), np.flatnonzero(shares), np.flatnonzero(~shares)))
    rng = np.random.default_rng(seed)
    rows, targets = [], []
    for _ in range(iterations):
        for anchors, positive, negative in candidates:
            for pool, target in ((positive, 1.0), (negative, 0.0)):
                kept, partners = _partners(anchors, pool, rng)
                rows.append(np.stack([kept, partners], axis=1))
                targets.append(np.full(len(kept), target, dtype=np.float32))
    return Pairs(np.concatenate(rows), np.concatenate(targets))


def _partners(anchors: np.ndarray, pool: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """For each anchor, a uniformly random row of ``pool`` (sorted) other than itself; anchors with none are left
    out. Returns the anchors kept and their partners."""
    inside = np.isin(anchors, pool)
    choices = len(pool) - inside
    anchors, inside, choices = anchors[choices > 0], inside[choices > 0], choices[choices > 0]
    drawn = rng.integers(choices)
    drawn += inside & (drawn >= np.searchsorted(pool, anchors))  # step over the anchor's own place in the pool
    return anchors, pool[drawn]


def pair_batches(tokens: TokenizedSplit, pairs: Pairs, batch_size: int, seed: int) -> TrainBatches:
    """The pairs in seeded random batches of ``batch_size`` pairs, another order each epoch.

    A batch holds the two rows of each pair next to each other, ``(2 x pairs, seq)`` ids, and the pairs' target
    cosines as its labels: one forward pass embeds both sides.
    """
    def epoch(number: int):
        order = np.random.default_rng(seed * 1000 + number).permutation(len(pairs))
        for start in range(0, len(order), batch_size):
            chosen = order[start: start + batch_size]
            ids, mask, types, _ = tokens.batch(pairs.rows[chosen].reshape(-1))
            yield Batch(ids, mask, types, torch.from_numpy(pairs.targets[chosen]))

    return TrainBatches(epoch, math.ceil(len(pairs) / batch_size), "", tokens.source)


def pair_loss(model: TextClassifier, batch: Batch, precision: str, device: torch.device) -> torch.Tensor:
    """SetFit's CosineSimilarityLoss: the mean squared error of each pair's cosine against its target.

    The sentence vectors are the model's own pooled outputs, the vectors its head reads.
    """
    types = None if batch.types is None else batch.types.to(device)
    with autocast(precision, device):
        pooled = model(batch.ids.to(device), batch.mask.to(device), types).pooled
    first, second = pooled.float().unflatten(0, (-1, 2)).unbind(1)
    cosine = nn.functional.cosine_similarity(first, second, dim=-1)
    return nn.functional.mse_loss(cosine, batch.labels.to(device, torch.float32))


@dataclass
class Stage:
    """What the contrastive stage did: steps, pairs seen, their mean loss, the last learning rate, seconds."""

    steps: int = 0
    pairs: int = 0
    loss_sum: float = 0.0
    lr: float = 0.0
    seconds: float = 0.0

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.pairs, 1)


def tune_encoder(model: TextClassifier, batches: TrainBatches, plan: Plan, cfg: TrainConfig, precision: str,
                 recorder: Recorder, progress: bool = True) -> Stage:
    """The contrastive stage: ``plan.total_steps`` AdamW steps on :func:`pair_loss` over ``batches``.

    ``plan`` (:class:`~encoder_clf.training.loop.Plan` of ``batches``) sets the length and the interval of the step
    records written to ``recorder``; each step takes ``train.grad_accum`` batches.
    """
    optimizer = layerwise_adamw(model, cfg.lr, cfg.weight_decay, cfg.head_lr, cfg.layer_lr_decay, cfg.freeze_layers)
    reuse_freed_blocks()  # the word embeddings' gradient is made anew at every step
    scheduler = warmup_then_decay(optimizer, cfg.warmup_ratio, plan.total_steps, cfg.schedule)
    device = next(model.parameters()).device
    steps = (group for epoch in range(plan.epochs) for group in deal_steps(batches.epoch(epoch), cfg.grad_accum, SOLO))
    stage, since, start = Stage(), Stage(), time.perf_counter()
    model.train()
    with tqdm(total=plan.total_steps, disable=not progress, unit="step", desc="pairs", dynamic_ncols=True) as bar:
        for group in itertools.islice(steps, plan.total_steps):
            optimizer.zero_grad(set_to_none=True)
            count = sum(len(batch.labels) for batch in group)
            loss_sum = 0.0
            for batch in group:
                loss = pair_loss(model, batch, precision, device)
                (loss * len(batch.labels) / count).backward()
                loss_sum += loss.item() * len(batch.labels)
            logged = (stage.steps + 1) % plan.log_every == 0
            norm = clipped_step(optimizer, model.parameters(), cfg.grad_clip or (math.inf if logged else 0.0))
            scheduler.step()
            for kept in (stage, since):
                kept.steps, kept.pairs, kept.loss_sum = kept.steps + 1, kept.pairs + count, kept.loss_sum + loss_sum
            stage.lr, stage.seconds = scheduler.get_last_lr()[0], time.perf_counter() - start
            bar.update(1)
            if logged:
                recorder.step({"kind": "step", "step": stage.steps, "epoch": plan.epochs_at(stage.steps),
                               "train_loss": since.loss, "lr": stage.lr, "grad_norm": norm,
                               "elapsed_s": round(stage.seconds, 2),
                               "examples_per_s": round(stage.pairs / stage.seconds, 1)})
                since = Stage()
    return stage


def fit_head(model: TextClassifier, features: np.ndarray, labels: np.ndarray, c: float) -> None:
    """Fit scikit-learn's LogisticRegression on sentence vectors ``(n, d_model)`` and copy it into the model's
    linear head, whose softmax (sigmoid per label) then gives the regression's probabilities.

    One class per text: a multinomial regression, one row of coefficients per class; with two classes its one row
    ``w`` becomes ``(-w/2, w/2)``, whose softmax is the regression's sigmoid. Multi-label: one regression per label
    (one-vs-rest), each its own row.
    """
    if model.config.task == "multi_label":
        fitted = [_logistic(features, column, c) for column in labels.T]
        weight, bias = np.concatenate([w for w, _ in fitted]), np.concatenate([b for _, b in fitted])
    else:
        weight, bias = _logistic(features, labels, c)
        if len(weight) == 1:
            weight, bias = np.concatenate([-weight, weight]) / 2, np.concatenate([-bias, bias]) / 2
    linear = model.head.parts["encoder"].linear
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight))
        linear.bias.copy_(torch.from_numpy(bias))


def _logistic(features: np.ndarray, labels: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
    """The coefficients ``(rows, d)`` and intercepts ``(rows,)`` of a logistic regression (lbfgs, run to
    convergence: SetFit's head with more iterations than scikit-learn's 100)."""
    from sklearn.linear_model import LogisticRegression

    fitted = LogisticRegression(C=c, max_iter=1000).fit(features, labels)
    return fitted.coef_, fitted.intercept_


def fit_few_shot(model: TextClassifier, tokenizer: Tokenizer, train: TokenizedSplit, validation: TokenizedSplit,
                 cfg: TrainConfig, fewshot: FewShotConfig, precision: str, recorder: Recorder,
                 progress: bool = True) -> dict:
    """Tune the encoder on contrastive pairs of the train rows, fit the head on its vectors, evaluate on validation
    (tuning a multi-label model's thresholds there) and keep the model in ``recorder``.

    Returns the run's summary, with the keys of the loop's and a ``few_shot`` part: the pairs, the stage's
    contrastive loss and the head's fit.
    """
    start = time.perf_counter()
    pairs = contrastive_pairs(train.labels, fewshot.iterations, cfg.seed)
    positive = int(pairs.targets.sum())
    batches = pair_batches(train, pairs, cfg.batch_size, cfg.seed)
    plan = Plan.of(batches, cfg, SOLO)
    log.info("contrastive stage: %d pairs of the %d train rows (%d positive, %d negative), %d epoch(s) of %d steps = "
             "%d steps (%s)", len(pairs), len(train), positive, len(pairs) - positive, plan.epochs,
             plan.steps_per_epoch, plan.total_steps, plan.rule)
    stage = tune_encoder(model, batches, plan, cfg, precision, recorder, progress)
    head_start = time.perf_counter()
    features = forward_batches(model, list(train.sequences), train.pad_id, cfg.eval_batch_size, precision,
                               train.segments).pooled
    fit_head(model, features, train.labels, fewshot.head_c)
    head_seconds = time.perf_counter() - head_start
    scores = evaluate(model, validation, cfg.eval_batch_size, precision)
    elapsed = time.perf_counter() - start
    shown = dict.fromkeys([cfg.metric, *HEADLINE[scores["task"]]])
    recorder.evaluation({"kind": "evaluation", "step": stage.steps, "epoch": plan.epochs_at(stage.steps),
                         "train_loss": stage.loss, "lr": stage.lr, **{f"val_{key}": scores[key] for key in shown},
                         "elapsed_s": round(elapsed, 2), "examples_per_s": round(stage.pairs / elapsed, 1)},
                        model, tokenizer)
    log.info("contrastive loss %.4f over %d steps; head fitted in %.1fs; val %s", stage.loss, stage.steps,
             head_seconds, ", ".join(f"{NAMES[key]} {scores[key]:.4f}" for key in HEADLINE[scores["task"]]))
    return {"plan": {"epochs": plan.epochs, "steps_per_epoch": plan.steps_per_epoch, "steps": plan.total_steps,
                     "log_every": plan.log_every, "rule": plan.rule},
            "best_step": stage.steps, f"best_val_{cfg.metric}": scores[cfg.metric], "steps": stage.steps,
            "stop_reason": f"completed: the contrastive stage's {stage.steps} steps, then the head",
            "train_time_s": round(elapsed, 2), "train_examples_per_s": round(2 * stage.pairs / stage.seconds, 1),
            "processes": 1, "examples_per_process": [2 * stage.pairs],
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "few_shot": {"pairs": len(pairs), "positive_pairs": positive, "iterations": fewshot.iterations,
                         "contrastive_loss": stage.loss, "contrastive_time_s": round(stage.seconds, 2),
                         "head": {"model": "LogisticRegression", "C": fewshot.head_c,
                                  "time_s": round(head_seconds, 2)}}}
