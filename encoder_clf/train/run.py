"""The training run: data → tokenizer → model → loop → best model, metrics and plots.

:func:`train` reads the data, trains or loads the tokenizer (or takes a
pretrained encoder's), builds the model and hands the token ids to the loop
(:func:`encoder_clf.train.loop.fit`); then it scores the best model and writes the
run directory. Everything that can be wrong with the input is checked before
the run directory is created, so a bad input leaves nothing behind.

Token ids live in memory, or in memory-mapped Arrow files under
``data.cache_dir`` (tokenized once, by ``data.num_proc`` processes, and reused
by later runs); with ``data.streaming`` the train split is read pool by pool
and never held whole. :func:`resume` continues a killed run from its newest
checkpoint. Under torchrun every rank runs the same code; rank 0 trains the
tokenizer, writes the token cache and all files. Checkpoints are deleted once
``metrics.json`` is written: a finished run has nothing to resume.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tokenizers import Tokenizer

from ..data.config import DataConfig
from ..data.splits import Split, Splits, load_splits
from ..data.streaming import StreamingSplits, stream_batches, stream_splits, stream_texts
from ..data.tokenization import TokenizerConfig, load_tokenizer, pad_id, train_tokenizer
from ..data.tokenized import TokenizedSplit, data_key, stream_key, tokenize_split
from ..errors import UsageError
from ..metrics import format_report, plot_confusion_matrix, plot_training_curves
from ..model.classifier import TextClassifier
from ..persistence.checkpoints import CHECKPOINTS, Checkpoint, load_latest
from ..persistence.encoders import load_encoder
from ..persistence.model_dir import load_model
from ..runtime import default_device, resolve_precision
from ..settings import load_json
from .config import RunConfig
from .distributed import World, barrier, broadcast_text, current
from .loop import TrainBatches, bucketed, class_weighted_loss, fit, validate

log = logging.getLogger(__name__)



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
    if config.data.streaming:
        streamed = _stream_splits(config)
        config, model, tokenizer = _build(config, streamed.label_names, lambda: stream_texts(config.data))
        return _run(config, model, tokenizer, streamed, out_dir, progress)
    return train_on_splits(config, load_splits(config.data, seed=config.train.seed), out_dir, progress)


def _check_lengths(config: RunConfig) -> None:
    if config.model.max_positions < config.tokenizer.max_length:
        raise UsageError(f"tokenizer.max_length ({config.tokenizer.max_length}) exceeds model.max_positions "
                         f"({config.model.max_positions}); lower one or raise the other")


def _stream_splits(config: RunConfig) -> StreamingSplits:
    if not config.train.max_steps:
        raise UsageError("data.streaming reads the train split as a stream of unknown length; "
                         "set train.max_steps (e.g. --set train.max_steps=10000)")
    if config.data.class_weights:
        raise UsageError("data.class_weights=balanced needs the train labels counted up front, which a stream "
                         "does not allow; drop it or turn data.streaming off")
    return stream_splits(config.data)


def train_on_splits(config: RunConfig, splits: Splits, out_dir: str | Path, progress: bool = True) -> dict:
    """:func:`train` on splits already in memory (``config.data`` is only recorded).

    The entry point for callers that hold their data themselves, such as the
    scikit-learn estimators.
    """
    _check_lengths(config)
    config, model, tokenizer = _build(config, splits.label_names, lambda: splits.train.texts)
    return _run(config, model, tokenizer, splits, Path(out_dir), progress)


def _build(config: RunConfig, label_names: list[str],
           train_texts: Callable[[], Iterable[str]]) -> tuple[RunConfig, TextClassifier, Tokenizer]:
    """The tokenizer (trained on ``train_texts()``, loaded, or the pretrained encoder's) and the model."""
    torch.manual_seed(config.train.seed)
    start = load_encoder(config.train.init, config.tokenizer.max_length) if config.train.init else None
    if start is not None:  # the architecture and tokenizer come with the pretrained encoder
        tokenizer = start.tokenizer
        model_config = replace(start.config, pooling=config.model.pooling, dropout=config.model.dropout,
                               attention_dropout=config.model.attention_dropout, labels=label_names)
    else:
        if config.tokenizer.path:
            tokenizer = load_tokenizer(config.tokenizer.path, config.tokenizer.max_length)
        else:
            tokenizer = _trained_once(train_texts, config.tokenizer, current())
        model_config = replace(config.model, vocab_size=tokenizer.get_vocab_size(), labels=label_names,
                               pad_token_id=pad_id(tokenizer))
    if model_config.n_layers < config.train.freeze_layers:
        raise UsageError(f"train.freeze_layers ({config.train.freeze_layers}) exceeds the model's "
                         f"{model_config.n_layers} layers; pick at most {model_config.n_layers}")
    model = TextClassifier(model_config)
    if start is not None:
        model.encoder.load_state_dict(start.encoder.state_dict())
    return replace(config, model=model_config), model, tokenizer


def _trained_once(train_texts: Callable[[], Iterable[str]], config: TokenizerConfig, world: World) -> Tokenizer:
    """A tokenizer trained on rank 0 and sent to the others: every rank must number the vocabulary alike."""
    if world.size == 1:
        return train_tokenizer(train_texts(), config)
    text = broadcast_text(train_tokenizer(train_texts(), config).to_str() if world.main else "", world)
    return Tokenizer.from_str(text)  # truncation travels in the JSON


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
    splits = _stream_splits(config) if config.data.streaming else load_splits(config.data, seed=config.train.seed)
    old, best = run_dir / ".model.old", run_dir / "model"
    if old.is_dir() and not best.exists():  # killed inside save_model, between its two renames
        os.replace(old, best)
    return _run(config, TextClassifier(config.model), checkpoint.tokenizer, splits, run_dir, progress, checkpoint)


def _run(config: RunConfig, model: TextClassifier, tokenizer: Tokenizer, splits: Splits | StreamingSplits,
         out_dir: Path, progress: bool, checkpoint: Checkpoint | None = None) -> dict:
    """Tokenize, train (or go on training), then score the best model and write the run's files (rank 0)."""
    world = current()
    streaming = isinstance(splits, StreamingSplits)
    held = {"validation": splits.validation, "test": splits.test}
    if not streaming:
        held = {"train": splits.train, **held}
    tokens = {name: _tokenized(tokenizer, split, config.data, world)
              for name, split in held.items() if split is not None}
    for name, split in tokens.items():
        if split.truncated and world.main:
            log.warning("%s: %d of %d texts truncated at max_length=%d tokens", name, split.truncated,
                        len(split), config.tokenizer.max_length)
    cfg = config.train
    if streaming:
        key = stream_key(splits.train_source, tokens["validation"])
        train = TrainBatches(lambda epoch: stream_batches(config.data, tokenizer, splits.classes, cfg.batch_size,
                                                          cfg.seed, epoch), None, key, splits.train_source)
    else:
        train = bucketed(tokens["train"], cfg.batch_size, cfg.seed, data_key(tokens, splits.label_names))

    if world.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if checkpoint is None:  # a fresh start (maybe --overwrite): what an older run left must not be resumed
            shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
            (out_dir / "metrics.json").unlink(missing_ok=True)
            (out_dir / "run_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n", encoding="utf-8")
    device = default_device()
    model.to(device)
    precision = resolve_precision(cfg.precision, device)
    loss_fn = class_weighted_loss(config.data.class_weights, None if streaming else tokens["train"].labels,
                                  model.config.num_labels, cfg.label_smoothing, device)
    summary = fit(model, tokenizer, train, tokens["validation"], cfg, loss_fn, out_dir, precision, progress,
                  resume_from=checkpoint, world=world)

    best_model = load_model(out_dir / "model")[0].to(device)
    results = {name: validate(best_model, split, cfg.eval_batch_size, precision, world)
               for name, split in tokens.items() if name != "train"}
    head = best_model.head
    fitted = {"part_weights": dict(zip(head.names, head.weights.tolist()))} if len(head.names) > 1 else {}
    metrics = {**results, **summary, **fitted, "precision": precision, "device": str(device),
               "data": {name: {"rows": len(split), "truncated": split.truncated} for name, split in tokens.items()},
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


def _tokenized(tokenizer: Tokenizer, split: Split, data: DataConfig, world: World) -> TokenizedSplit:
    """A split's token ids; with a cache, rank 0 writes a new file before the other ranks map it."""
    tokens = tokenize_split(tokenizer, split, data.cache_dir, data.num_proc) if world.main else None
    if data.cache_dir:
        barrier(world)
    return tokens if tokens is not None else tokenize_split(tokenizer, split, data.cache_dir, data.num_proc)
