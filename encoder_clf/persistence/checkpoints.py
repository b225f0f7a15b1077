"""Training checkpoints: all a killed run needs to continue exactly where it stopped.

A checkpoint is a directory ``checkpoints/step-XXXXXXXX/`` holding
``state.safetensors`` (weights, averaged weights, optimizer moments, RNG
states), ``state.json`` (the loop's position, the optimizer's and scheduler's
plain settings, checksums) and the run's ``tokenizer.json``. Nested state
dicts are split: tensors go to safetensors under their path, the rest to JSON,
so nothing is ever pickled. Each checkpoint is written into a hidden staging
directory, fsynced and renamed into place; a checkpoint that fails its
checksum is set aside and the one before it used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file
from tokenizers import Tokenizer

from ..data.tokenization import load_tokenizer
from ..errors import UsageError
from ..files import published
from .model_dir import load_weights

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
FORMAT = "encoder-clf-checkpoint/3"
# /2: before the stacked Q/K/V projection (its optimizer state has them apart); /1: before head.weights and
# Progress.examples_per_process
OLDER_FORMATS = ("encoder-clf-checkpoint/2", "encoder-clf-checkpoint/1")
TENSORS, META, TOKENIZER = "state.safetensors", "state.json", "tokenizer.json"
NAME = re.compile(r"step-(\d{8})")


@dataclass
class Progress:
    """Where the loop stands; with the RNG states, enough to replay the rest of the run bit for bit.

    The batch order of an epoch is a function of the seed and the epoch, so
    ``batches_done`` says which batches of that order are already trained on.
    """

    step: int = 0
    epoch: int = 0
    batches_done: int = 0
    seen: int = 0
    running_loss: float = 0.0  # sum of loss x batch size since the last evaluation
    running_n: int = 0
    logged_loss: float = 0.0  # the same since the last step record
    logged_n: int = 0
    best: float = -1.0
    best_step: int = 0
    best_loss: float | None = None  # the lowest validation loss so far (early stopping watches it too)
    stale: int = 0  # evaluations in which neither the metric nor the loss improved
    elapsed_s: float = 0.0
    log_bytes: int = 0  # length of log.jsonl at the checkpoint: later lines are replayed
    stop_reason: str = "completed"
    examples_per_process: list[int] = field(default_factory=list)  # examples each rank trained on so far


@dataclass
class Trainables:
    """The objects whose state a checkpoint holds besides :class:`Progress`."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    averaged: torch.nn.Module | None  # the EMA copy, when train.ema_decay is on
    generator: torch.Generator  # token dropout's


@dataclass
class Checkpoint:
    path: Path
    progress: Progress
    tensors: dict[str, torch.Tensor]
    meta: dict
    tokenizer: Tokenizer


def flatten(value: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON for a nested state dict, with each tensor moved to ``tensors[path]``.

    Every dict becomes ``{"dict": [[key, value], ...]}`` (optimizer state is keyed
    by int) and every tuple ``{"tuple": [...]}``, so :func:`unflatten` gives back
    the same types.
    """
    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().cpu().contiguous()
        return {"tensor": prefix}
    if isinstance(value, dict):
        return {"dict": [[key, flatten(item, f"{prefix}.{key}", tensors)] for key, item in value.items()]}
    if isinstance(value, (list, tuple)):
        items = [flatten(item, f"{prefix}.{i}", tensors) for i, item in enumerate(value)]
        return {"tuple": items} if isinstance(value, tuple) else items
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot checkpoint {prefix}: a {type(value).__name__} is neither a tensor nor plain data")


def unflatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [unflatten(item, tensors) for item in value]
    if isinstance(value, dict):
        (kind, inner), = value.items()
        if kind == "tensor":
            return tensors[inner]
        if kind == "tuple":
            return tuple(unflatten(item, tensors) for item in inner)
        return {key: unflatten(item, tensors) for key, item in inner}
    return value


def _capture_rng(generator: torch.Generator, tensors: dict[str, torch.Tensor]) -> dict:
    """Every random stream the loop may draw from: torch (CPU, each CUDA device), numpy, python, token dropout."""
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.generator"] = generator.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    for device, state in enumerate(cuda):
        tensors[f"rng.cuda.{device}"] = state
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, internal, gauss_next = random.getstate()
    return {"cuda_devices": len(cuda), "numpy": [kind, int(position), int(has_gauss), float(gauss)],
            "python": [version, list(internal), gauss_next]}


def _restore_rng(meta: dict, tensors: dict[str, torch.Tensor], generator: torch.Generator) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.generator"])
    cuda = [tensors[f"rng.cuda.{device}"] for device in range(meta["cuda_devices"])]
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)
    elif cuda:
        log.warning("the checkpoint holds the RNG states of %d CUDA device(s) and this machine has %d: "
                    "the rest of the run will not replay bit for bit", len(cuda), torch.cuda.device_count())
    kind, position, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(file: Path, data: bytes) -> None:
    with file.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _write_tensors(file: Path, tensors: dict[str, torch.Tensor]) -> str:
    """Write ``tensors`` to ``file`` and make them durable; return the file's SHA-256.

    ``save_file`` writes straight from the tensors' memory with the GIL released, where ``save`` first builds a
    Python bytes object: for all-MiniLM-L6-v2's weights and AdamW moments (270 MB) that copy was about 1 s of a
    1.8 s checkpoint. The digest reads the file back from the page cache.
    """
    save_file(tensors, file)
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 24), b""):
            digest.update(chunk)
        os.fsync(handle.fileno())
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoints(root: Path) -> list[Path]:
    """The checkpoint directories under ``root``, newest first (staging and set-aside ones excluded)."""
    found = [p for p in root.iterdir() if p.is_dir() and NAME.fullmatch(p.name)] if root.is_dir() else []
    return sorted(found, key=lambda p: p.name, reverse=True)


def save_checkpoint(root: Path, objects: Trainables, progress: Progress, tokenizer: Tokenizer, data: str,
                    keep: int, extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``root/step-XXXXXXXX`` atomically, then delete all but the newest ``keep`` checkpoints.

    ``extra`` tensors are stored as they are (other ranks' random streams).
    """
    tensors = _prefixed("model.", objects.model.state_dict())
    tensors.update(_prefixed("", extra or {}))
    if objects.averaged is not None:
        tensors.update(_prefixed("ema.", objects.averaged.state_dict()))
    meta = {"format": FORMAT, "progress": asdict(progress), "data": data,
            "optimizer": flatten(objects.optimizer.state_dict(), "optimizer", tensors),
            "scheduler": flatten(objects.scheduler.state_dict(), "scheduler", tensors),
            "grad_scaler": None,  # bf16 autocast and fp32 need no loss scaling: no GradScaler is used
            "ema": objects.averaged is not None,
            "rng": _capture_rng(objects.generator, tensors)}
    tokenizer_json = tokenizer.to_str().encode("utf-8")
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{progress.step:08d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        meta["files"] = {TENSORS: _write_tensors(staging / TENSORS, tensors), TOKENIZER: _sha256(tokenizer_json)}
        _write(staging / TOKENIZER, tokenizer_json)
        _write(staging / META, json.dumps(meta).encode("utf-8"))  # last: it vouches for the others
        _fsync_dir(published(staging))
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        _fsync_dir(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for old in checkpoints(root)[keep:]:
        shutil.rmtree(old)
    return final


class _Unusable(Exception):
    """A checkpoint that is incomplete, truncated or altered."""


def _read(path: Path, max_length: int | None) -> Checkpoint:
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise _Unusable(f"{META} is not an encoder-clf checkpoint ({FORMAT})")
        for name in (TENSORS, TOKENIZER):
            if _sha256((path / name).read_bytes()) != meta["files"][name]:
                raise _Unusable(f"{name} is truncated or altered (checksum mismatch)")
        tensors = load((path / TENSORS).read_bytes())
        # a checkpoint written before a field existed has its default
        saved = meta["progress"]
        progress = Progress(**{f.name: saved[f.name] for f in fields(Progress) if f.name in saved})
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:  # JSON errors are ValueErrors
        raise _Unusable(f"{type(err).__name__}: {err}") from None
    return Checkpoint(path, progress, tensors, meta, load_tokenizer(path / TOKENIZER, max_length))


def load_latest(root: Path, max_length: int | None = None) -> Checkpoint:
    """The newest checkpoint that reads back whole; broken newer ones are renamed ``.step-XXXXXXXX.broken``.

    Setting them aside (not deleting) keeps the evidence, and keeps them out of
    the way of the checkpoints the resumed run writes at the same steps. A
    checkpoint of an older format is refused (not set aside): the run is fine,
    this version cannot continue it. ``max_length`` re-sets the tokenizer's
    truncation (``None``: as saved).
    """
    for leftover in root.glob(".step-*") if root.is_dir() else []:  # staging of a write that was cut short
        if not leftover.name.endswith(".broken"):
            shutil.rmtree(leftover, ignore_errors=True)
    for path in checkpoints(root):
        _refuse_older_format(path)
        try:
            return _read(path, max_length)
        except _Unusable as err:
            aside = path.with_name(f".{path.name}.broken")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(path, aside)
            log.warning("%s is unusable (%s); set aside as %s, falling back to the previous checkpoint",
                        path, err, aside.name)
    raise UsageError(f"{root}: no usable checkpoint to resume from (the run stopped before training began, "
                     "or every checkpoint is broken); start the run again with --overwrite")


def _refuse_older_format(path: Path) -> None:
    try:
        saved = json.loads((path / META).read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError):
        return  # unreadable: _read sets it aside
    if saved in OLDER_FORMATS:
        raise UsageError(f"{path}: written by an older encoder-clf ({saved}), whose runs this version cannot "
                         "continue; finish the run with the version that started it, or start it again with "
                         "--overwrite")


def restore(checkpoint: Checkpoint, objects: Trainables) -> Progress:
    """Put the weights, optimizer, schedule and every RNG back as they were; return the loop's position."""
    tensors, meta = checkpoint.tensors, checkpoint.meta
    where = checkpoint.path / TENSORS
    load_weights(objects.model, where, {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    if objects.averaged is not None:
        load_weights(objects.averaged, where, {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")})
    objects.optimizer.load_state_dict(unflatten(meta["optimizer"], tensors))
    objects.scheduler.load_state_dict(unflatten(meta["scheduler"], tensors))
    _restore_rng(meta["rng"], tensors, objects.generator)
    return checkpoint.progress
