"""Settings: the machinery every config dataclass shares.

Each concern keeps its own dataclass beside its code (``ModelConfig`` in
``model/config.py``, ``TokenizerConfig`` in ``data/tokenization.py``,
``DataConfig`` in ``data/config.py``, ``TrainConfig`` and the ``RunConfig``
that nests them in ``train/config.py``). Settings flow defaults → config file
→ ``--set section.key=value``; every value is type-checked and an unknown key
is refused with the list of known ones, so a typo never silently trains the
wrong model.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

from .errors import UsageError


def require(ok: bool, message: str) -> None:
    """Raise a :class:`UsageError` with ``message`` unless ``ok``."""
    if not ok:
        raise UsageError(message)


def check_fields(section: str, config, checks: list[tuple[bool, str, str]]) -> None:
    """Refuse the first failed ``(ok, field, what is allowed)`` check, naming ``section.field`` and its value."""
    for ok, name, allowed in checks:
        require(ok, f"{section}.{name} must be {allowed}; got {getattr(config, name)!r}")


def require_choice(where: str, value: str, choices) -> None:
    require(value in choices, f"{where} must be one of {', '.join(sorted(choices))}; got {value!r}")


def field_types(cls: type) -> dict[str, Any]:
    """The settable fields of a config dataclass and their types, refusing keys it retired (``cls.RETIRED``).

    A retired key was a setting once; its value now lives elsewhere, and saying where beats "unknown key".
    """
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _refuse_retired(cls: type, key: str, where: str) -> None:
    reason = getattr(cls, "RETIRED", {}).get(key)
    require(reason is None, f"{where}: {key!r} is no longer a setting: {reason}; drop it")


def from_dict(cls: type, raw: Any, where: str, base=None):
    """Build a config dataclass (nested ones included) from a dict, refusing unknown keys and wrong types.

    Keys the dict leaves out keep their value in ``base`` (a ``cls`` instance), else the defaults.
    """
    require(isinstance(raw, dict), f"{where} must be a JSON object; got {raw!r}")
    hints = field_types(cls)
    unknown = sorted(set(raw) - set(hints))
    for key in unknown:
        _refuse_retired(cls, key, where)
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
    require(path.is_file(), f"config file {path} not found; pass an existing JSON file")
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
        require(bool(sep) and all(path), f"--set {assignment!r}: expected key=value, e.g. model.d_model=256")
        target, cls = raw, type(config)
        for depth, name in enumerate(path):
            hints = field_types(cls)
            prefix = ".".join(path[:depth])
            _refuse_retired(cls, name, f"--set {assignment!r}")
            require(name in hints, f"--set {assignment!r}: unknown key {'.'.join(path[:depth + 1])!r}; "
                                    f"known keys{' of ' + prefix if prefix else ''}: {', '.join(hints)}")
            if depth == len(path) - 1:
                require(not dataclasses.is_dataclass(hints[name]),
                         f"--set {assignment!r}: {name!r} is a section; set one of its keys, e.g. {name}.KEY=VALUE")
                target[name] = parse_value(hints[name], text.strip(), ".".join(path))
            else:
                require(dataclasses.is_dataclass(hints[name]),
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
        require(optional, f"{where} may not be null")
        return None
    if typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner)
        message = f"{where} must be a list of {_plural(item)}; got {value!r}"
        require(isinstance(value, list), message)
        try:
            return [check_type(item, v, where) for v in value]
        except UsageError:
            raise UsageError(message) from None
    if inner is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    ok = isinstance(value, inner) and not (inner is int and isinstance(value, bool))
    require(ok, f"{where} must be of type {inner.__name__}; got {value!r}")
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
        require(lowered in ("true", "false", "1", "0", "yes", "no"),
                 f"--set {where}: expected true or false; got {text!r}")
        return lowered in ("true", "1", "yes")
    if inner in (int, float):
        try:
            return inner(text)
        except ValueError:
            raise UsageError(f"--set {where}: expected {inner.__name__}; got {text!r}") from None
    return text


def flat_settings(config: dict, prefix: str = "") -> dict:
    """A run's settings as ``--set`` names them: ``{"train": {"lr": 0.001}}`` → ``{"train.lr": 0.001}``."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
