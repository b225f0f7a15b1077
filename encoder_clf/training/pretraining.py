"""Masked-language-model pretraining of our own encoders on unlabelled text.

BERT's recipe: 15% of the real tokens are chosen; of those, 80% become
``[MASK]``, 10% a random token and 10% stay as they are, and the model predicts
the originals. The tokenizer is trained on the same text. The result is a model
directory (``config.json`` without labels, ``model.safetensors``,
``tokenizer.json``) that ``encoder-clf train --set train.init=DIR`` starts from.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..data.batching import bucket_batches, collate, sorted_batches
from ..data.splits import read_texts
from ..data.tokenization import (
    CLS,
    MASK,
    PAD,
    SEP,
    TokenizerConfig,
    cut_length,
    encode,
    fitted_max_length,
    pad_id,
    train_tokenizer,
)
from ..errors import UsageError
from ..metrics import curves_figure, records_of, save
from ..model.config import ModelConfig
from ..model.mlm import MaskedLanguageModel
from ..persistence.model_dir import save_model
from ..runtime import PRECISIONS, autocast, default_device, resolve_precision, reuse_freed_blocks
from ..settings import check_fields
from .loop import record_interval
from .optim import adamw, clipped_step, warmup_then_decay

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    """Masking and optimisation for MLM pretraining."""

    mask_prob: float = 0.15
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    grad_clip: float = 1.0
    log_every: int = 0  # optimizer steps between the step records of log.jsonl; 0 = about 100 per run
    heldout_fraction: float = 0.02  # texts kept aside to measure masked-token loss
    max_minutes: float = 0.0  # wall-clock budget; 0 = none
    precision: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (0 < self.mask_prob < 1, "mask_prob", "in (0, 1)"),
            (self.epochs > 0, "epochs", "a positive integer"),
            (self.batch_size > 0, "batch_size", "a positive integer"),
            (self.lr > 0, "lr", "positive"),
            (self.weight_decay >= 0, "weight_decay", ">= 0"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio", "in [0, 1)"),
            (self.grad_clip >= 0, "grad_clip", ">= 0 (0 turns clipping off)"),
            (self.log_every >= 0, "log_every", ">= 0 (0 = about 100 records per run)"),
            (0 < self.heldout_fraction < 0.5, "heldout_fraction", "in (0, 0.5)"),
            (self.max_minutes >= 0, "max_minutes", ">= 0 (0 = no budget)"),
            (self.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}"),
        ]
        check_fields("pretrain", self, checks)


@dataclass
class PretrainData:
    """Where the text comes from: a data path (any split format, or a ``.txt`` file) and its text column."""

    path: str = ""
    split: str = "train"
    text_column: str | None = None


@dataclass
class PretrainRunConfig:
    """Everything one pretraining run needs; saved as ``run_config.json``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: PretrainData = field(default_factory=PretrainData)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)


def mask_tokens(ids: torch.Tensor, padding_mask: torch.Tensor, special: torch.Tensor, mask_id: int,
                vocab_size: int, prob: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 corruption: the corrupted ids and the boolean positions to predict.

    Only real, non-special tokens can be chosen; ``special`` lists the ids that
    are never chosen nor used as random replacements' targets.
    """
    eligible = ~padding_mask & ~torch.isin(ids, special)
    chosen = (torch.rand(ids.shape, generator=generator) < prob) & eligible
    roll = torch.rand(ids.shape, generator=generator)
    corrupted = ids.masked_fill(chosen & (roll < 0.8), mask_id)
    randomised = chosen & (roll >= 0.8) & (roll < 0.9)
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator)
    corrupted = torch.where(randomised, random_ids, corrupted)
    return corrupted, chosen


@dataclass
class PretrainResult:
    """What pretraining gives back: the masked-language model, its tokenizer, the log's records, metrics."""

    model: MaskedLanguageModel
    tokenizer: Tokenizer
    history: list[dict]
    metrics: dict


@dataclass
class _Corpus:
    """The text as pretraining reads it: token ids to train on, and held-out ids to measure the loss on."""

    tokenizer: Tokenizer
    train: list[list[int]]
    heldout: list[list[int]]
    special: torch.Tensor  # ids never masked: [PAD], [CLS], [SEP], [MASK]
    mask_id: int
    pad: int


def pretrain(config: PretrainRunConfig, out_dir: str | Path, overwrite: bool = False,
             progress: bool = True) -> PretrainResult:
    """Train a tokenizer and an MLM on the text; write ``model/``, ``run_config.json``, ``log.jsonl``,
    ``curves.png`` and ``metrics.json``.

    Each epoch ends with the held-out masked-token loss, logged (``logging``) and recorded.
    """
    from .run import check_lengths, prepare_output  # one rule for lengths that do not fit, one for overwriting runs

    check_lengths(config.model, config.tokenizer)
    out_dir = Path(out_dir)
    prepare_output(out_dir, overwrite)
    cfg = config.pretrain
    corpus = _corpus(config)
    model_config = replace(config.model, vocab_size=corpus.tokenizer.get_vocab_size(), labels=[],
                           pad_token_id=corpus.pad)
    tokenizer_config = replace(config.tokenizer, max_length=cut_length(corpus.tokenizer))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "run_config.json").write_text(
        json.dumps(asdict(replace(config, model=model_config, tokenizer=tokenizer_config)), indent=2) + "\n",
        encoding="utf-8")
    device = default_device()
    precision = resolve_precision(cfg.precision, device)
    model = MaskedLanguageModel(model_config).to(device)
    initial = _heldout_loss(model, corpus, cfg, precision)
    total = math.ceil(len(corpus.train) / cfg.batch_size) * cfg.epochs
    optimizer = adamw([(model, cfg.lr, cfg.weight_decay)])
    scheduler = warmup_then_decay(optimizer, cfg.warmup_ratio, total)
    reuse_freed_blocks()  # the word embeddings' gradient is made anew at every step
    generator = torch.Generator().manual_seed(cfg.seed)
    history, step, start, stop_reason = [], 0, time.perf_counter(), "completed"
    log_every, since = cfg.log_every or record_interval(total), []

    def write(record: dict) -> None:
        history.append(record)
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()

    with tqdm(total=total, disable=not progress, unit="step", dynamic_ncols=True) as bar, \
            logging_redirect_tqdm() if progress else contextlib.nullcontext(), \
            (out_dir / "log.jsonl").open("w", encoding="utf-8") as log_file:
        for epoch in range(cfg.epochs):
            losses = []
            for ids, padding in _batches(corpus, cfg, epoch):
                stepped = _step(model, optimizer, scheduler, corpus, ids, padding, cfg, precision, generator)
                if stepped is None:  # nothing chosen to mask in this batch
                    continue
                loss, norm = stepped
                step, losses, since = step + 1, losses + [loss], since + [loss]
                if step % log_every == 0:
                    elapsed = time.perf_counter() - start
                    write({"kind": "step", "step": step, "epoch": round(step / (total / cfg.epochs), 3),
                           "train_loss": sum(since) / len(since), "lr": scheduler.get_last_lr()[0],
                           "grad_norm": norm, "elapsed_s": round(elapsed, 2)})
                    since = []
                bar.update(1)
                bar.set_postfix(loss=f"{sum(losses) / len(losses):.3f}", refresh=False)
                if cfg.max_minutes and time.perf_counter() - start > cfg.max_minutes * 60:
                    stop_reason = f"time budget of {cfg.max_minutes} minutes reached"
                    break
            record = {"kind": "evaluation", "step": step, "epoch": epoch + 1,
                      "train_loss": sum(losses) / max(len(losses), 1), "lr": scheduler.get_last_lr()[0],
                      "heldout_loss": _heldout_loss(model, corpus, cfg, precision),
                      "elapsed_s": round(time.perf_counter() - start, 2)}
            write(record)
            log.info("epoch %d: train loss %.4f, held-out masked-token loss %.4f", epoch + 1, record["train_loss"],
                     record["heldout_loss"])
            if stop_reason != "completed":
                break
    save_model(out_dir / "model", model, corpus.tokenizer)
    save(curves_figure(history, "Pretraining curves"), out_dir / "curves.png")
    evaluations = records_of(history, "evaluation")
    metrics = {"heldout_loss_initial": initial, "heldout_loss_final": evaluations[-1]["heldout_loss"], "steps": step,
               "stop_reason": stop_reason, "train_time_s": round(time.perf_counter() - start, 2),
               "precision": precision, "texts": {"train": len(corpus.train), "heldout": len(corpus.heldout)}}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return PretrainResult(model.eval(), corpus.tokenizer, history, metrics)


def _corpus(config: PretrainRunConfig) -> _Corpus:
    """The non-empty texts, a seeded held-out share of them, a tokenizer trained on the rest, and their ids."""
    cfg = config.pretrain
    if not config.data.path:
        raise UsageError("no data given; pass --data PATH (a text file, a directory of splits, or a data file)")
    texts = [t for t in read_texts(config.data.path, config.data.split, config.data.text_column) if t.strip()]
    if len(texts) < 10:
        raise UsageError(f"{config.data.path}: only {len(texts)} non-empty texts; MLM pretraining needs more text")
    torch.manual_seed(cfg.seed)
    order = np.random.default_rng(cfg.seed).permutation(len(texts))
    n_heldout = max(1, int(cfg.heldout_fraction * len(texts)))
    train_texts = [texts[i] for i in order[n_heldout:]]
    tokenizer = train_tokenizer(train_texts, config.tokenizer)
    if config.tokenizer.max_length is None:
        fitted = fitted_max_length(tokenizer, train_texts, config.model.max_positions, cfg.seed)
        tokenizer.enable_truncation(fitted.max_length)
        log.info("tokenizer: max_length %d (%s)", fitted.max_length, fitted.rule)
    sequences, truncated, _ = encode(tokenizer, train_texts)
    if truncated:
        log.warning("%d of %d texts truncated at max_length=%d tokens", truncated, len(train_texts),
                    cut_length(tokenizer))
    special = torch.tensor([tokenizer.token_to_id(t) for t in (PAD, CLS, SEP, MASK)
                            if tokenizer.token_to_id(t) is not None])
    heldout = encode(tokenizer, [texts[i] for i in order[:n_heldout]]).ids
    return _Corpus(tokenizer, sequences, heldout, special, tokenizer.token_to_id(MASK), pad_id(tokenizer))


def _batches(corpus: _Corpus, cfg: PretrainConfig, epoch: int):
    """One epoch's length-bucketed batches of ids ``(b, seq)`` and padding masks, in a seeded order."""
    lengths = np.array([len(s) for s in corpus.train])
    for index in bucket_batches(lengths, cfg.batch_size, shuffle=True, seed=cfg.seed * 1000 + epoch):
        yield collate([corpus.train[i] for i in index], corpus.pad, cut_length(corpus.tokenizer))


def _step(model: MaskedLanguageModel, optimizer, scheduler, corpus: _Corpus, ids: torch.Tensor,
          padding: torch.Tensor, cfg: PretrainConfig, precision: str,
          generator: torch.Generator) -> tuple[float, float] | None:
    """Mask the batch, and take one optimizer step on the masked-token loss: the loss and the gradient norm
    before clipping; ``None`` when nothing was masked."""
    device = next(model.parameters()).device
    model.train()
    corrupted, targets = mask_tokens(ids, padding, corpus.special, corpus.mask_id, model.config.vocab_size,
                                     cfg.mask_prob, generator)
    if not targets.any():
        return None
    with autocast(precision, device):
        logits = model(corrupted.to(device), padding.to(device), targets.to(device))
    loss = nn.functional.cross_entropy(logits.float(), ids[targets].to(device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # the norm before clipping, for the step records (an infinite bound only measures it)
    norm = clipped_step(optimizer, model.parameters(), cfg.grad_clip or math.inf)
    scheduler.step()
    return loss.item(), norm


@torch.inference_mode()
def _heldout_loss(model: MaskedLanguageModel, corpus: _Corpus, cfg: PretrainConfig, precision: str) -> float:
    """Masked-token cross-entropy on the held-out texts, with a fixed masking so values compare across epochs."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    total, count = 0.0, 0
    for _, ids, padding, _ in sorted_batches(corpus.heldout, corpus.pad, 256, limit=cut_length(corpus.tokenizer)):
        corrupted, targets = mask_tokens(ids, padding, corpus.special, corpus.mask_id, model.config.vocab_size,
                                         cfg.mask_prob, generator)
        if not targets.any():
            continue
        with autocast(precision, device):
            logits = model(corrupted.to(device), padding.to(device), targets.to(device))
        total += nn.functional.cross_entropy(logits.float(), ids[targets].to(device), reduction="sum").item()
        count += int(targets.sum())
    model.train(was_training)
    return total / max(count, 1)
