"""Where the data is, which columns hold text and labels, and how rows are read."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError


@dataclass
class DataConfig:
    """Where the data is and which columns hold text and labels.

    ``labels`` fixes the class order; for integer labels 0..K-1 it may instead
    give the K class names (e.g. ``World,Sports,Business,Sci/Tech``).
    """

    path: str = ""
    text_column: str | None = None
    label_column: str | None = None
    labels: list[str] | None = None
    validation_fraction: float = 0.1
    class_weights: str | None = None
    strict: bool = False  # refuse rows with empty text instead of dropping them with a warning
    cache_dir: str = ""  # token ids in memory-mapped Arrow files here, keyed by tokenizer and texts; "" = in memory
    num_proc: int = 1  # processes that tokenize into cache_dir
    streaming: bool = False  # read train one pool at a time, never whole (data.streaming); needs a validation file

    def __post_init__(self) -> None:
        if self.num_proc < 1:
            raise UsageError(f"data.num_proc must be a positive integer; got {self.num_proc}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise UsageError(f"data.validation_fraction must be in (0, 1); got {self.validation_fraction}")
        if self.class_weights not in (None, "balanced"):
            raise UsageError(f"data.class_weights must be balanced or null; got {self.class_weights!r}")
