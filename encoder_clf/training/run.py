"""The training run: data → tokenizer → model → loop → the best model, its metrics, and a run directory.

:func:`train` reads the data, trains or loads the tokenizer (or takes a
pretrained encoder's), builds the model, hands the token ids to the loop
(:func:`encoder_clf.training.loop.fit`), scores the best model and returns a
:class:`TrainResult`. With an output directory the run also writes it as it
goes (see :mod:`encoder_clf.training.recorder`); everything that can be wrong
with the input is checked before the directory is created, so a bad input
leaves nothing behind. Without one, nothing touches the disk.

Token ids live in memory, or in memory-mapped Arrow files under
``data.cache_dir`` (tokenized once, by ``data.num_proc`` processes, and reused
by later runs); with ``data.streaming`` the train split is read pool by pool
and never held whole. :func:`resume` continues a killed run from its newest
checkpoint. Under torchrun every rank runs the same code; rank 0 trains the
tokenizer, writes the token cache and all files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from itertools import islice
from pathlib import Path

import torch
from tokenizers import Tokenizer

from ..data.config import DataConfig
from ..data.splits import Split, Splits, load_splits
from ..data.streaming import StreamingSplits, stream_batches, stream_splits, stream_texts
from ..data.targets import balance, describe_balance
from ..data.tokenization import (
    LENGTH_SAMPLE,
    TokenizerConfig,
    cut_length,
    fitted_max_length,
    load_tokenizer,
    pad_id,
    train_tokenizer,
    word_starts,
)
from ..data.tokenized import TokenizedSplit, data_key, stream_key, tokenize_split
from ..errors import UsageError
from ..metrics import SELECTION_METRICS
from ..model.classifier import TextClassifier
from ..model.config import ModelConfig
from ..persistence.checkpoints import CHECKPOINTS, Checkpoint, load_latest
from ..persistence.encoders import load_encoder
from ..runtime import default_device, resolve_precision
from ..settings import load_json
from .batches import TrainBatches, bucketed
from .board import require_tensorboard
from .config import RunConfig, TrainConfig
from .distillation import Transfer, distillation_loss, seed_embeddings, teacher_vocabulary, transfer
from .distributed import World, barrier, broadcast_text, current
from .fewshot import check_few_shot, check_few_shot_data, fit_few_shot
from .linear import fit_ngrams
from .loop import fit, part_scores, score, task_loss
from .recorder import CONFIG, METRICS, Recorder, RunDirectory

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run gives back: the best model (eval mode) and its tokenizer, the settings it used, one history
    record per evaluation (``log.jsonl``'s lines) and the metrics (``metrics.json``)."""

    model: TextClassifier
    tokenizer: Tokenizer
    config: RunConfig
    history: list[dict]
    metrics: dict


def train(config: RunConfig, out_dir: str | Path | None = None, overwrite: bool = False,
          progress: bool = True) -> TrainResult:
    """Train on ``config.data`` and return the result; with ``out_dir``, write the run directory there too.

    The directory holds ``model/`` (the best model), ``metrics.json``, ``report.txt``, ``log.jsonl``,
    ``run_config.json``, the task's figure (``confusion_matrix.png``, ``per_label_f1.png`` or ``scatter.png``)
    and ``curves.png``.
    """
    _check_options(config)
    out_dir = _prepared(out_dir, overwrite)
    if config.data.streaming:
        streamed = _stream_splits(config)
        config, model, tokenizer = _build(config, streamed, lambda: stream_texts(config.data))
        return _run(config, model, tokenizer, streamed, out_dir, progress)
    return _train_on(config, load_splits(config.data, seed=config.train.seed), out_dir, progress)


def train_on_splits(config: RunConfig, splits: Splits, out_dir: str | Path | None = None,
                    progress: bool = True) -> TrainResult:
    """:func:`train` on splits already in memory (``config.data`` is only recorded).

    The entry point for callers that hold their data themselves, such as the scikit-learn estimators.
    """
    _check_options(config)
    return _train_on(config, splits, _prepared(out_dir, overwrite=True), progress)


def resume(run_dir: str | Path, progress: bool = True) -> TrainResult:
    """Continue a run that stopped (killed, out of memory, out of time) from its newest usable checkpoint.

    Everything comes from the run directory: the settings from
    ``run_config.json``, the tokenizer from the checkpoint (never retrained:
    retraining may number the vocabulary differently). The data is read again
    from ``data.path`` and must be the same.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise UsageError(f"--resume {run_dir}: no run_config.json there; pass the directory of a run "
                         "started by encoder-clf train")
    if (run_dir / METRICS).is_file():
        raise UsageError(f"--resume {run_dir}: the run already finished (metrics.json is written); "
                         "nothing to resume")
    checkpoint = load_latest(run_dir / CHECKPOINTS)  # before the settings: an older run is refused for its format
    config = load_json(RunConfig, run_dir / CONFIG)
    _check_options(config)
    splits = _stream_splits(config) if config.data.streaming else load_splits(config.data, seed=config.train.seed)
    old, best = run_dir / ".model.old", run_dir / "model"
    if old.is_dir() and not best.exists():  # killed inside save_model, between its two renames
        os.replace(old, best)
    return _run(config, TextClassifier(config.model), checkpoint.tokenizer, splits, run_dir, progress, checkpoint)


def prepare_output(out_dir: Path, overwrite: bool) -> None:
    """Refuse a non-empty output directory unless ``overwrite``, and a file where it or a folder above it would be
    (``overwrite`` reuses a run directory; it never replaces a file)."""
    existing = next(path for path in (out_dir, *out_dir.parents) if path.exists())  # "." or "/" at the latest
    if not existing.is_dir():
        where = "" if existing == out_dir else f": {existing}"
        raise UsageError(f"--out {out_dir}{where} is a file, not a directory; pass a directory for the run")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise UsageError(f"output directory {out_dir} already exists and is not empty; "
                         "pick another --out or pass --overwrite")


def _prepared(out_dir: str | Path | None, overwrite: bool) -> Path | None:
    if out_dir is None:
        return None
    out_dir = Path(out_dir)
    prepare_output(out_dir, overwrite)
    barrier(current())  # every rank has checked the directory before rank 0 writes to it
    return out_dir


def _check_options(config: RunConfig) -> None:
    """What can be refused before any file is written: lengths that do not fit, an extra that is missing."""
    check_lengths(config.model, config.tokenizer)
    if config.train.tensorboard:
        require_tensorboard()
    if config.fewshot.enabled:
        check_few_shot(config, current())
    if config.distill.teacher and config.data.streaming:
        raise UsageError("distillation labels the whole train split with the teacher first, which a stream does not "
                         "allow; turn data.streaming off")
    if config.distill.teacher and config.data.class_weights:
        raise UsageError("data.class_weights weighs the labels, and a distilled student learns the teacher's outputs; "
                         "drop data.class_weights")


def check_lengths(model: ModelConfig, tokenizer: TokenizerConfig) -> None:
    """Refuse texts cut longer than the model's positions: the first such text would stop the run with a traceback
    (training and pretraining alike)."""
    if tokenizer.max_length is not None and model.max_positions < tokenizer.max_length:
        raise UsageError(f"tokenizer.max_length ({tokenizer.max_length}) exceeds model.max_positions "
                         f"({model.max_positions}); lower one or raise the other")


def _stream_splits(config: RunConfig) -> StreamingSplits:
    if not config.train.max_steps:
        raise UsageError("data.streaming reads the train split as a stream of unknown length; "
                         "set train.max_steps (e.g. --set train.max_steps=10000)")
    if config.data.class_weights:
        raise UsageError("data.class_weights=balanced needs the train labels counted up front, which a stream "
                         "does not allow; drop it or turn data.streaming off")
    return stream_splits(config.data)


def _train_on(config: RunConfig, splits: Splits, out_dir: Path | None, progress: bool) -> TrainResult:
    if current().main:
        log.info("task: %s", describe(splits))
    if config.fewshot.enabled:
        check_few_shot_data(splits)
    texts = splits.train.texts
    flat = (lambda: (text for pair in texts for text in pair)) if splits.text_pairs else (lambda: texts)
    config, model, tokenizer = _build(config, splits, flat)
    if splits.task == "regression":  # the head learns the standardised target: its mean and spread are kept
        model.task.mean.fill_(float(splits.train.labels.mean()))
        model.task.std.fill_(max(float(splits.train.labels.std()), 1e-6))
    return _run(config, model, tokenizer, splits, out_dir, progress)


def describe(splits: Splits) -> str:
    """The task as the run states it: ``multi_label, 28 labels, sentence pairs``."""
    count = len(splits.label_names)
    what = f"target {splits.label_names[0]!r}" if splits.task == "regression" else \
        f"{count} {'classes' if splits.task == 'single_label' else 'labels'}"
    return f"{splits.task} ({what}), {'sentence pairs' if splits.text_pairs else 'one text per example'}"


def _build(config: RunConfig, splits: Splits | StreamingSplits,
           train_texts: Callable[[], Iterable[str]]) -> tuple[RunConfig, TextClassifier, Tokenizer]:
    """The tokenizer (trained on ``train_texts()``, loaded, the teacher's or the pretrained encoder's) and the model.

    The data decides the task, the labels and whether examples are pairs (which need two token types); the
    selection metric, unless set, is the task's own.
    """
    vocabulary = None if config.train.init else teacher_vocabulary(config.distill, config.tokenizer.path,
                                                                   config.tokenizer.max_length)
    torch.manual_seed(config.train.seed)
    start = load_encoder(config.train.init, config.tokenizer.max_length) if config.train.init else None
    if start is not None and (config.tokenizer.max_length or 0) > start.config.max_positions:
        raise UsageError(f"tokenizer.max_length ({config.tokenizer.max_length}) exceeds the pretrained encoder's "
                         f"{start.config.max_positions} positions; lower it, or leave it unset to follow the data")
    shape = {"labels": splits.label_names, "task": splits.task, "text_pairs": splits.text_pairs}
    if start is not None:  # the architecture and tokenizer come with the pretrained encoder
        tokenizer = start.tokenizer
        model_config = replace(start.config, pooling=config.model.pooling, normalize=config.model.normalize,
                               dropout=config.model.dropout, attention_dropout=config.model.attention_dropout, **shape)
    else:
        if vocabulary is not None:
            tokenizer = vocabulary.tokenizer
        elif config.tokenizer.path:
            tokenizer = load_tokenizer(config.tokenizer.path, config.tokenizer.max_length)
        else:
            tokenizer = _trained_once(train_texts, config.tokenizer, current())
        model_config = replace(config.model, vocab_size=tokenizer.get_vocab_size(), pad_token_id=pad_id(tokenizer),
                               **shape)
    if config.tokenizer.max_length is None:
        config = _fitted_length(config, tokenizer, splits, train_texts,
                                start.config.max_positions if start is not None else model_config.max_positions)
    if splits.text_pairs:
        model_config = replace(model_config, type_vocab_size=max(model_config.type_vocab_size, 2))
    if model_config.n_layers < config.train.freeze_layers:
        raise UsageError(f"train.freeze_layers ({config.train.freeze_layers}) exceeds the model's "
                         f"{model_config.n_layers} layers; pick at most {model_config.n_layers}")
    model = TextClassifier(model_config)
    if start is not None:
        _load_start(model, start)
    elif vocabulary is not None:
        seed_embeddings(model.encoder.embeddings.tokens, vocabulary.embeddings)
    if "ngrams" in model.head.parts:
        model.head.parts["ngrams"].set_word_starts(torch.from_numpy(word_starts(tokenizer)))
    return replace(config, model=model_config, train=_with_metric(config.train, splits.task)), model, tokenizer


def _fitted_length(config: RunConfig, tokenizer: Tokenizer, splits: Splits | StreamingSplits,
                   train_texts: Callable[[], Iterable[str]], positions: int) -> RunConfig:
    """``tokenizer.max_length`` left unset, set by the training texts (:func:`fitted_max_length`) and said; at most
    the model's positions, or a pretrained encoder's own length (its tokenizer's truncation, as imported)."""
    own = (cut_length(tokenizer) or positions) if config.train.init else positions
    texts = splits.train.texts if isinstance(splits, Splits) else list(islice(train_texts(), LENGTH_SAMPLE))
    fitted = fitted_max_length(tokenizer, texts, min(own, positions), config.train.seed)
    tokenizer.enable_truncation(fitted.max_length)
    if current().main:
        log.info("tokenizer: max_length %d (%s)", fitted.max_length, fitted.rule)
    return replace(config, tokenizer=replace(config.tokenizer, max_length=fitted.max_length))


def _load_start(model: TextClassifier, start) -> None:
    """The pretrained encoder's weights; token types it lacks (pairs on an encoder pretrained without them) start
    fresh, as initialised."""
    state = start.encoder.state_dict()
    new = {name for name in model.encoder.state_dict() if name not in state}
    if new - {"embeddings.token_types.weight"}:
        raise UsageError(f"--init {start.config}: the pretrained encoder lacks {', '.join(sorted(new))}")
    model.encoder.load_state_dict(state, strict=not new)


def _with_metric(train: TrainConfig, task: str) -> TrainConfig:
    """``train.metric``, or the task's default; one the task cannot score is refused."""
    allowed = SELECTION_METRICS[task]
    if train.metric and train.metric not in allowed:
        raise UsageError(f"train.metric={train.metric} does not score a {task} task; pick one of "
                         f"{', '.join(allowed)}")
    return replace(train, metric=train.metric or allowed[0])


def _trained_once(train_texts: Callable[[], Iterable[str]], config: TokenizerConfig, world: World) -> Tokenizer:
    """A tokenizer trained on rank 0 and sent to the others: every rank must number the vocabulary alike."""
    if world.size == 1:
        return train_tokenizer(train_texts, config)
    text = broadcast_text(train_tokenizer(train_texts, config).to_str() if world.main else "", world)
    return Tokenizer.from_str(text)  # truncation travels in the JSON


def _run(config: RunConfig, model: TextClassifier, tokenizer: Tokenizer, splits: Splits | StreamingSplits,
         out_dir: Path | None, progress: bool, checkpoint: Checkpoint | None = None) -> TrainResult:
    """Tokenize, train (or go on training), then score the best model (and write the run's files: rank 0)."""
    world, cfg = current(), config.train
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
    taught = None
    if streaming:
        key = stream_key(splits.train_source, tokens["validation"])
        train = TrainBatches(lambda epoch: stream_batches(config.data, tokenizer, splits.classes, cfg.batch_size,
                                                          cfg.seed, epoch), None, key, splits.train_source)
    else:
        taught = _transfer(config, tokenizer, splits, out_dir, world, progress) if config.distill.teacher else None
        rows = taught.tokens if taught else tokens["train"]
        train = bucketed(rows, cfg.batch_size, cfg.seed, data_key({**tokens, "train": rows}, splits.label_names))
    counts = balance(tokens["train"].labels, splits.label_names, splits.task) if "train" in tokens else None
    if counts is not None and world.main:
        log.info("train: %d rows (%s)", len(tokens["train"]), describe_balance(counts, len(tokens["train"]),
                                                                             splits.task))
    _fitted_ngrams(model, tokens, cfg.metric, config.data.class_weights, checkpoint, world)
    recorder = _recorder(out_dir, config, checkpoint, world)
    device = default_device()
    model.to(device)
    precision = resolve_precision(cfg.precision, device)
    if taught is None:
        loss_fn = task_loss(model, config.data.class_weights, None if streaming else tokens["train"].labels,
                            cfg.label_smoothing, device)
    else:  # the student learns the teacher's outputs, and the labels where known
        loss_fn = distillation_loss(model.task, model.config.task, config.distill.alpha, config.distill.temperature)
    try:
        if config.fewshot.enabled:  # contrastive pairs, then a fitted head, in the loop's place
            summary = fit_few_shot(model, tokenizer, tokens["train"], tokens["validation"], cfg, config.fewshot,
                                   precision, recorder, progress)
        else:
            summary = fit(model, tokenizer, train, tokens["validation"], cfg, loss_fn, precision, recorder, progress,
                          resume_from=checkpoint, world=world)
    finally:
        if isinstance(recorder, RunDirectory):
            recorder.close()

    best_model, best_tokenizer = recorder.best_model()
    best_model.to(device)
    scored = {name: score(best_model, split, cfg.eval_batch_size, precision, world)
              for name, split in tokens.items() if name != "train"}
    results = {name: metrics for name, (metrics, _) in scored.items()}
    metrics = {"task": model.config.task, "text_pairs": model.config.text_pairs, **results, **summary,
               **_head_report(best_model, tokens["validation"], cfg, precision, world),
               "precision": precision, "device": str(device),
               "data": {name: {"rows": len(split), "truncated": split.truncated} for name, split in tokens.items()},
               "parameters": sum(p.numel() for p in model.parameters())}
    if counts is not None:
        metrics["data"]["train"]["balance"] = counts
    if taught is not None:
        metrics["distillation"] = taught.report
    final = "test" if "test" in scored else "validation"
    recorder.finish(metrics, (tokens[final].labels, scored[final][1]))
    return TrainResult(best_model, best_tokenizer, config, recorder.history, metrics)


def _transfer(config: RunConfig, tokenizer: Tokenizer, splits: Splits, out_dir: Path | None, world: World,
              progress: bool) -> Transfer:
    """The distilled student's train rows; the teacher's outputs are cached in ``data.cache_dir``, else in the run
    directory's ``cache/`` (where a resumed run finds them), else kept in memory."""
    cache = config.data.cache_dir or (str(out_dir / "cache") if out_dir is not None else "")
    return transfer(config, tokenizer, splits, cache, world, progress)


def _head_report(model: TextClassifier, validation: TokenizedSplit, cfg: TrainConfig, precision: str,
                 world: World) -> dict:
    """A head of several parts: their mixing weights, each part's validation score alone, and the n-gram fit's C."""
    head = model.head
    if len(head.names) == 1:
        return {}
    report = {"part_weights": dict(zip(head.names, head.weights.tolist())),
              f"validation_{cfg.metric}_by_part": part_scores(model, validation, cfg.eval_batch_size, precision,
                                                              cfg.metric, world)}
    ngrams = head.parts["ngrams"]
    if getattr(ngrams, "strength", 0) > 0:
        report["ngram_fit"] = {"C": float(ngrams.strength), "features": int((ngrams.idf > 0).sum())}
    return report


def _fitted_ngrams(model: TextClassifier, tokens: dict[str, TokenizedSplit], metric: str, class_weights: str | None,
                   checkpoint: Checkpoint | None, world: World) -> None:
    """Fit a TF-IDF n-gram part as a linear model (see :mod:`.linear`) and hold it fixed while the encoder trains.

    A stream has no train split to fit on, and a ``sqrt`` part is the older kind: both train with the encoder.
    A resumed run finds the fitted table in its checkpoint.
    """
    if "ngrams" not in model.head.parts or "train" not in tokens:
        return
    part = model.head.parts["ngrams"]
    if part.weighting != "tfidf":
        return
    part.requires_grad_(False)
    if checkpoint is None:
        fit = fit_ngrams(model, tokens["train"], tokens["validation"], metric, class_weights)
        if world.main:
            log.info("n-gram part: a linear fit on %d distinct n-grams in %.1fs, C=%g and scaling %s chosen on "
                     "validation (%s %.4f, loss at the best scale %.4f)", fit.features, fit.seconds, fit.C, fit.scaling,
                     metric, fit.validation, fit.loss)


def _recorder(out_dir: Path | None, config: RunConfig, checkpoint: Checkpoint | None, world: World) -> Recorder:
    """In memory without ``out_dir``; else the run directory, started afresh unless the run resumes."""
    if out_dir is None:
        return Recorder()
    if world.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if checkpoint is None:  # a fresh start (maybe --overwrite): what an older run left must not be resumed
            shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
            (out_dir / METRICS).unlink(missing_ok=True)
            (out_dir / CONFIG).write_text(json.dumps(asdict(config), indent=2) + "\n", encoding="utf-8")
    return RunDirectory(out_dir, config.train.keep_checkpoints, checkpoint.progress if checkpoint else None,
                        writes=world.main, tensorboard=config.train.tensorboard)


def _tokenized(tokenizer: Tokenizer, split: Split, data: DataConfig, world: World) -> TokenizedSplit:
    """A split's token ids; with a cache, rank 0 writes a new file before the other ranks map it."""
    tokens = tokenize_split(tokenizer, split, data.cache_dir, data.num_proc) if world.main else None
    if data.cache_dir:
        barrier(world)
    return tokens if tokens is not None else tokenize_split(tokenizer, split, data.cache_dir, data.num_proc)
