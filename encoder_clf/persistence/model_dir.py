"""A saved model is one directory: ``config.json``, ``model.safetensors``, ``tokenizer.json``.

Nothing is ever unpickled. Saving writes into a temporary sibling directory
and renames it into place, so a crash never leaves a half-written model.
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
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from ..data.tokenization import load_tokenizer
from ..errors import UsageError
from ..model.classifier import TextClassifier
from ..model.config import ADDITIONS_OFF, ModelConfig
from ..model.encoder import Encoder
from ..settings import from_dict

CONFIG, WEIGHTS, TOKENIZER = "config.json", "model.safetensors", "tokenizer.json"
FORMAT = "encoder-clf/1"


def save_model(directory: str | Path, model: TextClassifier, tokenizer: Tokenizer) -> Path:
    """Write the model directory atomically, replacing an older one at the same place."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        config = {"format": FORMAT, **asdict(model.config)}
        (staging / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
        save_file(state, str(staging / WEIGHTS), metadata={"format": FORMAT})
        tokenizer.save(str(staging / TOKENIZER))
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


def load_config(directory: str | Path) -> ModelConfig:
    directory = Path(directory)
    file = directory / CONFIG
    if not file.is_file():
        raise UsageError(f"{directory}: no {CONFIG}; pass a model directory written by encoder-clf train")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{file} is not valid JSON ({err}); re-save the model") from None
    raw.pop("format", None)
    for key, off in ADDITIONS_OFF.items():  # a directory saved before the key existed was built without it
        raw.setdefault(key, off)
    return from_dict(ModelConfig, raw, where=str(file))


def _tokenizer_for(directory: Path, config: ModelConfig) -> Tokenizer:
    tokenizer = load_tokenizer(directory / TOKENIZER)
    if tokenizer.get_vocab_size() != config.vocab_size:
        raise UsageError(f"{directory}: tokenizer.json has {tokenizer.get_vocab_size()} tokens but the model "
                         f"expects {config.vocab_size}; save the tokenizer the model was trained with")
    return tokenizer


def load_model(directory: str | Path) -> tuple[TextClassifier, Tokenizer]:
    """Rebuild the model and its tokenizer from a model directory, in eval mode."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(f"model directory {directory} not found; pass the model/ folder of a training run")
    config = load_config(directory)
    tokenizer = _tokenizer_for(directory, config)
    model = TextClassifier(config)
    load_weights(model, directory / WEIGHTS)
    return model.eval(), tokenizer


def read_weights(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, or a one-line error naming the file."""
    if not file.is_file():
        raise UsageError(f"{file} not found; the model directory is incomplete, re-save or re-train the model")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as err:
        raise UsageError(f"{file} is corrupted ({err}); re-save or re-train the model") from None


def load_weights(model: torch.nn.Module, file: Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """Load safetensors weights strictly, naming any missing, unexpected or mis-shaped tensor."""
    state = read_weights(file) if state is None else state
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


def load_encoder(directory: str | Path) -> tuple[Encoder, ModelConfig, Tokenizer]:
    """Only the encoder of a saved model (a classifier or a pretrained encoder), in eval mode.

    The ``encoder.*`` weights are loaded strictly; heads (classification,
    masked-LM) are ignored, so any of our model directories can seed a new model.
    """
    directory = Path(directory)
    config = load_config(directory)
    tokenizer = _tokenizer_for(directory, config)
    prefix = "encoder."
    state = {name[len(prefix):]: tensor for name, tensor in read_weights(directory / WEIGHTS).items()
             if name.startswith(prefix)}
    encoder = Encoder(config)
    load_weights(encoder, directory / WEIGHTS, state)
    return encoder.eval(), config, tokenizer
