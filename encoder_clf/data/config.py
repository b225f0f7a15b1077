"""Where the data is, which columns hold text and labels, and how rows are read."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

from ..errors import UsageError


@dataclass
class DataConfig:
    """Where the data is, which columns hold text and labels, and what the labels are.

    ``labels`` fixes the class order; for integer labels 0..K-1 it may instead
    give the K class names (e.g. ``World,Sports,Business,Sci/Tech``).
    ``text_columns`` names the two texts of a sentence pair; ``label_columns``
    one 0/1 column per label (multi-label). ``task`` is detected from the
    labels unless given (see :mod:`encoder_clf.data.targets`).
    """

    path: str = ""
    text_column: str | None = None
    label_column: str | None = None
    labels: list[str] | None = None
    text_columns: list[str] | None = None
    label_columns: list[str] | None = None
    label_separator: str = ","  # between the names of a multi-label row held in one string column
    task: str | None = None  # single_label, multi_label or regression; None = detected from the labels
    validation_fraction: float = 0.1
    class_weights: str | None = None
    strict: bool = False  # refuse rows with empty text instead of dropping them with a warning
    cache_dir: str = ""  # token ids in memory-mapped Arrow files here, keyed by tokenizer and texts; "" = in memory
    num_proc: int = 1  # processes that tokenize into cache_dir
    streaming: bool = False  # read train one pool at a time, never whole (data.streaming); needs a validation file
    per_class: int = 0  # keep k train rows per class (k positives per label), drawn with train.seed; 0 = all

    def __post_init__(self) -> None:
        if self.num_proc < 1:
            raise UsageError(f"data.num_proc must be a positive integer; got {self.num_proc}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise UsageError(f"data.validation_fraction must be in (0, 1); got {self.validation_fraction}")
        if self.task not in (None, "single_label", "multi_label", "regression"):
            raise UsageError(f"data.task must be single_label, multi_label, regression or null (detect it); "
                             f"got {self.task!r}")
        if not self.label_separator:
            raise UsageError("data.label_separator must not be empty; the default is ','")
        if self.class_weights not in (None, "balanced"):
            raise UsageError(f"data.class_weights must be balanced or null; got {self.class_weights!r}")
        if self.per_class < 0:
            raise UsageError(f"data.per_class must be >= 0 (0 = every train row); got {self.per_class}")
        if self.per_class and self.streaming:
            raise UsageError("data.per_class samples the train split held in memory, which data.streaming never "
                             "holds; drop one of them")


@dataclass
class RunData:
    """The data a saved model's training run read: its ``data`` settings and the seed of its validation carve-out."""

    config: DataConfig
    seed: int

    @staticmethod
    def reading(run: RunData | None, path: str, **given) -> DataConfig:
        """The settings that read ``path`` for a trained model: its run's (columns, label separator, strictness),
        else the defaults, then the ones ``given`` that are not None."""
        return replace(run.config if run is not None else DataConfig(), path=path,
                       **{key: value for key, value in given.items() if value is not None})

    @property
    def found(self) -> bool:
        """Whether the run's data can still be read from here (a relative path is read from the current directory)."""
        return bool(self.config.path) and Path(self.config.path).expanduser().exists()


def run_data(model_dir: str | Path) -> RunData | None:
    """The data settings of the run whose ``model/`` is ``model_dir`` (its ``run_config.json``), else None.

    Commands that read more data for a trained model (``evaluate``, ``export``'s check) start from them, so that
    the columns, label separator and validation rows the run was given need not be given again.
    """
    try:
        raw = json.loads((Path(model_dir).expanduser().parent / "run_config.json").read_text(encoding="utf-8"))
        known = {field.name for field in fields(DataConfig)}
        config = DataConfig(**{key: value for key, value in raw["data"].items() if key in known})
        seed = raw.get("train", {}).get("seed", 0)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, UsageError):
        return None
    return RunData(config, int(seed))
