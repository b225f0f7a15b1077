"""The model's config, and the machinery every config dataclass shares.

Each concern keeps its own dataclass beside its code (``TokenizerConfig`` in
``tokenization.py``, ``DataConfig`` in ``data.py``, ``TrainConfig`` and the
``RunConfig`` that nests them in ``training.py``). Settings flow defaults →
config file → ``--set section.key=value``; every value is type-checked and an
unknown key is refused with the list of known ones, so a typo never silently
trains the wrong model. The defaults are the SST-2 preset measured in
``docs/BENCHMARKS.md``.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .attention import SCORE_RULES
from .encoder import ACTIVATIONS, NORM_PLACEMENTS, POSITION_ENCODINGS
from .pooling import POOLINGS


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def check_fields(section: str, config, checks: list[tuple[bool, str, str]]) -> None:
    """Refuse the first failed ``(ok, field, what is allowed)`` check, naming ``section.field`` and its value."""
    for ok, name, allowed in checks:
        _require(ok, f"{section}.{name} must be {allowed}; got {getattr(config, name)!r}")


def _require_choice(where: str, value: str, choices) -> None:
    _require(value in choices, f"{where} must be one of {', '.join(sorted(choices))}; got {value!r}")


# Architecture additions beyond a plain transformer encoder, each with the value that turns it off: what a
# BERT import is built with, and what a model directory saved before the key existed was built with (today's
# default may differ: the preset changes as it is re-measured).
ADDITIONS_OFF = {"conv_kernel": 0, "relative_buckets": 0, "ngram_buckets": 0}


@dataclass
class ModelConfig:
    """Architecture of the encoder and its classification head.

    ``vocab_size`` and ``labels`` are filled in from the tokenizer and the
    training data when they are left at their empty defaults.
    """

    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 1024
    attention: str = "dot"
    norm: str = "pre"
    positions: str = "learned"
    pooling: str = "max"
    max_positions: int = 512
    dropout: float = 0.3  # on the embeddings and each sublayer's output
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0  # inside the feed-forward, after the activation (BERT has none: it costs ~15%)
    activation: str = "gelu"
    relative_buckets: int = 0  # buckets of a learned relative-position bias in every block's attention (T5); 0 = none
    conv_kernel: int = 5  # a depthwise convolution of this odd width before each block's attention; 0 = none
    ngram_buckets: int = 1_000_000  # hashed bigram buckets of a linear bag-of-n-grams beside the head; 0 = none
    # Each part's weight in the logits (the encoder's head, then the n-gram model), fitted on the validation
    # split at each evaluation; [] = their mean (before the first fit, and in directories saved before the key).
    part_weights: list[float] = field(default_factory=list)
    layer_norm_eps: float = 1e-5
    type_vocab_size: int = 0
    vocab_size: int = 0
    pad_token_id: int = 0
    labels: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("d_model", "n_heads", "n_layers", "d_ff", "max_positions"):
            _require(getattr(self, name) > 0, f"model.{name} must be positive; got {getattr(self, name)}")
        _require(
            self.d_model % self.n_heads == 0,
            f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads}); "
            "pick e.g. n_heads=4 or 8",
        )
        _require(self.conv_kernel == 0 or (self.conv_kernel > 0 and self.conv_kernel % 2 == 1),
                 f"model.conv_kernel must be 0 (no convolution) or an odd width such as 3 or 5; got {self.conv_kernel}")
        _require(self.relative_buckets == 0 or (self.relative_buckets >= 4 and self.relative_buckets % 2 == 0),
                 f"model.relative_buckets must be 0 (no relative bias) or an even number >= 4 such as 32; "
                 f"got {self.relative_buckets}")
        _require(self.ngram_buckets >= 0, f"model.ngram_buckets must be >= 0 (0 = no n-gram logits); "
                                          f"got {self.ngram_buckets}")
        _require(not self.part_weights or (self.ngram_buckets > 0 and len(self.part_weights) == 2),
                 "model.part_weights must be [] (the mean of the parts) or, with n-gram logits, two weights "
                 f"(the encoder's head, the n-gram logits); got {self.part_weights}")
        _require_choice("model.attention", self.attention, SCORE_RULES)
        _require_choice("model.norm", self.norm, NORM_PLACEMENTS)
        _require_choice("model.positions", self.positions, POSITION_ENCODINGS)
        _require_choice("model.pooling", self.pooling, POOLINGS)
        _require_choice("model.activation", self.activation, ACTIVATIONS)
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            value = getattr(self, name)
            _require(0.0 <= value < 1.0, f"model.{name} must be in [0, 1); got {value}")
        _require(self.vocab_size >= 0, f"model.vocab_size must be >= 0; got {self.vocab_size}")

    @property
    def num_labels(self) -> int:
        return len(self.labels)


def from_dict(cls: type, raw: Any, where: str, base=None):
    """Build a config dataclass (nested ones included) from a dict, refusing unknown keys and wrong types.

    Keys the dict leaves out keep their value in ``base`` (a ``cls`` instance), else the defaults.
    """
    _require(isinstance(raw, dict), f"{where} must be a JSON object; got {raw!r}")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(hints)}")
    values = {}
    for name, value in raw.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            values[name] = from_dict(tp, value, f"{where}.{name}", getattr(base, name, None))
        else:
            values[name] = check_type(tp, value, f"{where}.{name}")
    return dataclasses.replace(base, **values) if base is not None else cls(**values)


def load_json(cls: type, path: str | Path, base=None):
    """Read a config dataclass from a JSON file (on top of ``base``, if given)."""
    path = Path(path)
    _require(path.is_file(), f"config file {path} not found; pass an existing JSON file")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"config file {path} is not valid JSON: {err}") from None
    return from_dict(cls, raw, where=str(path), base=base)


def with_overrides(config, assignments: list[str]):
    """Return a copy of ``config`` with ``a.b=value`` assignments applied, each parsed to its field's type."""
    raw = dataclasses.asdict(config)
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        path = key.strip().split(".")
        _require(bool(sep) and all(path), f"--set {assignment!r}: expected key=value, e.g. model.d_model=256")
        target, cls = raw, type(config)
        for depth, name in enumerate(path):
            hints = typing.get_type_hints(cls)
            prefix = ".".join(path[:depth])
            _require(name in hints, f"--set {assignment!r}: unknown key {'.'.join(path[:depth + 1])!r}; "
                                    f"known keys{' of ' + prefix if prefix else ''}: {', '.join(hints)}")
            if depth == len(path) - 1:
                _require(not dataclasses.is_dataclass(hints[name]),
                         f"--set {assignment!r}: {name!r} is a section; set one of its keys, e.g. {name}.KEY=VALUE")
                target[name] = parse_value(hints[name], text.strip(), ".".join(path))
            else:
                _require(dataclasses.is_dataclass(hints[name]),
                         f"--set {assignment!r}: {name!r} is not a section")
                target, cls = target[name], hints[name]
    return from_dict(type(config), raw, where="--set")


def _optional_inner(tp) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def check_type(tp, value: Any, where: str) -> Any:
    """Return ``value`` if it fits the annotation ``tp`` (ints are accepted for floats)."""
    inner, optional = _optional_inner(tp)
    if value is None:
        _require(optional, f"{where} may not be null")
        return None
    if typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner)
        message = f"{where} must be a list of {_plural(item)}; got {value!r}"
        _require(isinstance(value, list), message)
        try:
            return [check_type(item, v, where) for v in value]
        except UsageError:
            raise UsageError(message) from None
    if inner is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    ok = isinstance(value, inner) and not (inner is int and isinstance(value, bool))
    _require(ok, f"{where} must be of type {inner.__name__}; got {value!r}")
    return value


def _plural(tp) -> str:
    return {str: "strings", float: "numbers", int: "integers"}.get(tp, tp.__name__)


def parse_value(tp, text: str, where: str) -> Any:
    """Parse a ``--set`` value from text into the annotation ``tp``."""
    inner, optional = _optional_inner(tp)
    if optional and text.lower() in ("none", "null", ""):
        return None
    if typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner)
        if text.startswith("["):
            try:
                return check_type(tp, json.loads(text), where)
            except json.JSONDecodeError:
                raise UsageError(f"--set {where}: {text!r} is not a JSON list of {_plural(item)}") from None
        return [parse_value(item, part.strip(), where) for part in text.split(",") if part.strip()]
    if inner is bool:
        lowered = text.lower()
        _require(lowered in ("true", "false", "1", "0", "yes", "no"),
                 f"--set {where}: expected true or false; got {text!r}")
        return lowered in ("true", "1", "yes")
    if inner in (int, float):
        try:
            return inner(text)
        except ValueError:
            raise UsageError(f"--set {where}: expected {inner.__name__}; got {text!r}") from None
    return text
