"""A saved model is one directory: ``config.json``, ``model.safetensors``, ``tokenizer.json``.

``config.json`` holds what a person chose (the architecture, the label names)
and ``model.safetensors`` every learned value (the weights, the head's mixing
weights). Nothing is ever unpickled. Saving writes into a temporary sibling
directory and renames it into place, so a crash never leaves a half-written
model; the same three files, as bytes, are what a pickled estimator carries.

Directories of older formats load as they were saved: format 1 kept the
head's mixing weights in ``config.json`` (``part_weights``) and named the
head's tensors ``head.1.*`` and ``ngrams.weight.*``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save, save_file
from tokenizers import Tokenizer

from ..data.tokenization import tokenizer_from_json
from ..errors import UsageError
from ..files import published
from ..model.attention import stack_projections
from ..model.classifier import TextClassifier
from ..model.config import ADDITIONS_OFF, ModelConfig
from ..model.encoder import Encoder
from ..settings import from_dict

CONFIG, WEIGHTS, TOKENIZER = "config.json", "model.safetensors", "tokenizer.json"
FILES = (CONFIG, WEIGHTS, TOKENIZER)
FORMAT = "encoder-clf/3"
OLDER_FORMATS = ("encoder-clf/2", "encoder-clf/1")  # /2: Q, K and V projections apart; /1: also part_weights
EXPORTED_FORMAT = "encoder-clf-onnx/1"  # an exported directory's config.json (encoder_clf.export)


def _weights_of(model: TextClassifier) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}


def _text_files(model: TextClassifier, tokenizer: Tokenizer) -> dict[str, bytes]:
    config = json.dumps({"format": FORMAT, **asdict(model.config)}, indent=2) + "\n"
    return {CONFIG: config.encode("utf-8"), TOKENIZER: tokenizer.to_str(pretty=True).encode("utf-8")}


def model_files(model: TextClassifier, tokenizer: Tokenizer) -> dict[str, bytes]:
    """The bytes of the three files of ``model``'s directory."""
    return {**_text_files(model, tokenizer), WEIGHTS: save(_weights_of(model), metadata={"format": FORMAT})}


def save_model(directory: str | Path, model: TextClassifier, tokenizer: Tokenizer) -> Path:
    """Write the model directory atomically, replacing an older one at the same place.

    The weights go straight from the tensors to the file (``save_file``), not through a bytes copy: a training
    run saves its best model at every improvement.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        for name, data in _text_files(model, tokenizer).items():
            (staging / name).write_bytes(data)
        save_file(_weights_of(model), staging / WEIGHTS, metadata={"format": FORMAT})
        published(staging)
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
            os.replace(staging, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def load_model(directory: str | Path) -> tuple[TextClassifier, Tokenizer]:
    """Rebuild the model and its tokenizer from a model directory, in eval mode."""
    directory = _existing(directory)
    files = {name: _read_file(directory / name) for name in FILES}
    return model_from_files(files, str(directory))


def model_from_files(files: dict[str, bytes], where: str) -> tuple[TextClassifier, Tokenizer]:
    """The model and tokenizer held by the bytes of a model directory's files (``where`` names them in errors)."""
    raw = _config_json(files[CONFIG], f"{where}/{CONFIG}")
    config = _model_config(raw, f"{where}/{CONFIG}")
    tokenizer = _tokenizer(files[TOKENIZER], where, config)
    state = _weights(files[WEIGHTS], f"{where}/{WEIGHTS}")
    model = TextClassifier(config)
    state = _upgraded(raw, state)
    load_weights(model, f"{where}/{WEIGHTS}", state)
    return model.eval(), tokenizer


def load_model_config(directory: str | Path) -> ModelConfig:
    """The ``config.json`` of a model directory (a classifier's, or a pretrained encoder's with no labels)."""
    file = _existing(directory) / CONFIG
    return _model_config(_config_json(_read_file(file), str(file)), str(file))


def load_saved_encoder(directory: Path) -> tuple[Encoder, ModelConfig, Tokenizer]:
    """Only the encoder of one of our model directories (a classifier or a pretrained encoder), in eval mode.

    The ``encoder.*`` weights are loaded strictly; heads (classification,
    masked-LM) are ignored, so any of our model directories can seed a new model.
    """
    file = _existing(directory) / CONFIG
    raw = _config_json(_read_file(file), str(file))
    config = _model_config(raw, str(file))
    tokenizer = _tokenizer(_read_file(directory / TOKENIZER), str(directory), config)
    prefix = "encoder."
    state = {name[len(prefix):]: tensor for name, tensor in read_weights(directory / WEIGHTS).items()
             if name.startswith(prefix)}
    encoder = Encoder(config)
    load_weights(encoder, directory / WEIGHTS, _upgraded(raw, state))
    return encoder.eval(), config, tokenizer


def read_weights(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, or a one-line error naming the file."""
    return _weights(_read_file(file), str(file))


def load_weights(model: torch.nn.Module, file: str | Path, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` (read from ``file``) strictly, naming any missing, unexpected or mis-shaped tensor."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing[:5])}"] if missing else []) + (
            [f"unexpected {', '.join(unexpected[:5])}"] if unexpected else [])
        raise UsageError(f"{file}: weights do not match the config ({'; '.join(parts)}); "
                         "check that config.json belongs to these weights")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise UsageError(f"{file}: weight {name} has shape {tuple(tensor.shape)}, the config expects "
                             f"{tuple(expected[name].shape)}; check that config.json belongs to these weights")
    model.load_state_dict(state, strict=True)


def refuse_run_directory(directory: Path) -> None:
    """A training run's directory is the commonest wrong model path: its model is in ``model/``, so say that."""
    if not (directory / CONFIG).is_file() and (directory / "model" / CONFIG).is_file():
        raise UsageError(f"{directory}: a run directory, not a model; pass its model/ folder ({directory / 'model'})")


def _existing(directory: str | Path) -> Path:
    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(f"model directory {directory} not found; pass the model/ folder of a training run")
    refuse_run_directory(directory)
    return directory


def _read_file(file: Path) -> bytes:
    if not file.is_file():
        if file.name == CONFIG:
            raise UsageError(f"{file.parent}: no {CONFIG}; pass a model directory written by encoder-clf train")
        raise UsageError(f"{file} not found; the model directory is incomplete, re-save or re-train the model")
    return file.read_bytes()


def _config_json(data: bytes, where: str) -> dict:
    try:
        raw = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{where} is not valid JSON ({err}); re-save the model") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{where} is not an encoder-clf model config (a JSON object); re-save the model")
    saved = raw.get("format", FORMAT)
    if saved == EXPORTED_FORMAT:
        raise UsageError(f"{where} belongs to an exported ONNX model, which predict, evaluate and embed run; this "
                         f"needs the PyTorch model directory it was exported from ({raw.get('source', '?')})")
    if saved != FORMAT and saved not in OLDER_FORMATS:
        raise UsageError(f"{where}: format {saved!r} was written by another version of encoder-clf (this one reads "
                         f"{', '.join((FORMAT, *OLDER_FORMATS))}); load it with that version, or upgrade")
    return raw


def _model_config(raw: dict, where: str) -> ModelConfig:
    values = {key: value for key, value in raw.items() if key not in ("format", "part_weights")}
    for key, off in ADDITIONS_OFF.items():  # a directory saved before the key existed was built without it
        values.setdefault(key, off)
    return from_dict(ModelConfig, values, where=where)


def _tokenizer(data: bytes, where: str, config: ModelConfig) -> Tokenizer:
    tokenizer = tokenizer_from_json(data.decode("utf-8", "replace"), f"tokenizer file {where}/{TOKENIZER}")
    if tokenizer.get_vocab_size() != config.vocab_size:
        raise UsageError(f"{where}: tokenizer.json has {tokenizer.get_vocab_size()} tokens but the model "
                         f"expects {config.vocab_size}; save the tokenizer the model was trained with")
    return tokenizer


def _weights(data: bytes, where: str) -> dict[str, torch.Tensor]:
    try:
        return load(data)
    except (SafetensorError, OSError, ValueError) as err:
        raise UsageError(f"{where} is corrupted ({err}); re-save or re-train the model") from None


def _upgraded(raw: dict, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state``, read from a directory whose config is ``raw``, in today's layout (the whole model's tensors or
    only its encoder's: format 1's renames touch the head alone)."""
    if raw.get("format") == "encoder-clf/1":
        state = _upgrade_format_1(state, raw.get("part_weights", []))
    return stack_projections(state) if raw.get("format") in OLDER_FORMATS else state


def _upgrade_format_1(state: dict[str, torch.Tensor], part_weights: list[float]) -> dict[str, torch.Tensor]:
    """Format-1 tensor names in today's layout, with the mixing weights that format kept in ``config.json``."""
    renamed = {}
    for name, tensor in state.items():
        if name.startswith("head.1."):
            name = "head.parts.encoder.linear." + name[len("head.1."):]
        elif name.startswith("ngrams.weight."):
            name = "head.parts.ngrams.table." + name[len("ngrams.weight."):]
        renamed[name] = tensor
    if "head.parts.encoder.linear.weight" in renamed:  # a classifier (a pretrained encoder has no head)
        parts = 2 if "head.parts.ngrams.table.weight" in renamed else 1
        renamed["head.weights"] = torch.tensor(part_weights or [1.0 / parts] * parts, dtype=torch.float32)
    return renamed
