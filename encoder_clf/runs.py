"""A table of run directories: when each started, on what, with which settings, how it scored and where it stands.

After a few runs the question is which settings gave which score. A run
directory already holds the answer (``run_config.json``, ``metrics.json``,
``checkpoints/``); :func:`list_runs` reads it from each and keeps, of the
settings, only those that differ between the runs listed, as a sweep's table
does. A directory that cannot be read is listed as ``broken`` with the
reason, never as a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from .errors import UsageError
from .persistence.checkpoints import checkpoints
from .settings import flat_settings

STATUSES = ("finished", "resumable", "failed", "broken")
SORT_KEYS = ("start", "validation", "test", "time", "status", "path")
# Settings the data or the run fills in, rather than the user: never the difference that explains a score.
FILLED_IN = {"model.vocab_size", "model.pad_token_id", "model.labels", "model.task", "model.text_pairs",
             "model.type_vocab_size", "data.path"}


@dataclass
class RunRow:
    """One run directory as the table shows it."""

    path: str
    status: str  # finished, resumable (a checkpoint to go on from, or still running), failed or broken
    start: str = ""  # when run_config.json was written, local time
    data: str = ""
    task: str = ""
    metric: str = ""  # the selection metric (pretraining: the held-out masked-token loss)
    validation: float | None = None
    test: float | None = None
    minutes: float | None = None
    settings: dict = field(default_factory=dict)  # every setting; the table shows those that differ
    reason: str = ""  # why a run is broken

    def sort_key(self, key: str):
        value = {"validation": self.validation, "test": self.test, "time": self.minutes,
                 "status": STATUSES.index(self.status)}.get(key, getattr(self, key, ""))
        return (value is None, value if value is not None else 0)


def run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """The run directories named, or found one level below a directory that is not one itself."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise UsageError(f"{path}: no such directory; pass run directories or a folder of them "
                                    "(default runs/)")
        if _is_run(path):
            found.append(path)
        else:
            found.extend(sorted(child for child in path.iterdir() if child.is_dir() and _is_run(child)))
    return found


def _is_run(path: Path) -> bool:
    return any((path / name).exists() for name in ("run_config.json", "metrics.json", "log.jsonl"))


def read_run(path: Path) -> RunRow:
    """One run directory's row; a broken one says why."""
    try:
        config = json.loads((path / "run_config.json").read_text(encoding="utf-8"))
        finished = (path / "metrics.json").is_file()
        metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8")) if finished else {}
    except FileNotFoundError:
        return RunRow(str(path), "broken", reason="no run_config.json")
    except (OSError, ValueError) as err:  # a half-written or hand-edited file
        return RunRow(str(path), "broken", reason=f"unreadable: {err}")
    if not isinstance(config, dict) or not isinstance(metrics, dict):
        return RunRow(str(path), "broken", reason="run_config.json or metrics.json is not a JSON object")
    start = datetime.fromtimestamp((path / "run_config.json").stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    status = "finished" if finished else "resumable" if checkpoints(path / "checkpoints") else "failed"
    row = RunRow(str(path), status, start, str(config.get("data", {}).get("path") or ""),
                 settings=flat_settings(config))
    if "pretrain" in config:
        row.task, row.metric = "pretraining", "heldout_loss"
        row.validation = metrics.get("heldout_loss_final")
    else:
        row.task = str(metrics.get("task") or config.get("model", {}).get("task") or "")
        row.metric = str(config.get("train", {}).get("metric") or "")
        row.validation = _score(metrics.get("validation"), row.metric)
        row.test = _score(metrics.get("test"), row.metric)
    if metrics.get("train_time_s") is not None:
        row.minutes = round(metrics["train_time_s"] / 60, 1)
    return row


def _score(split: object, metric: str) -> float | None:
    value = split.get(metric) if isinstance(split, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def differing(rows: Sequence[RunRow]) -> list[str]:
    """The settings whose values are not the same in every readable run that has them (those the data fills in
    aside): a pretraining run has no ``train`` settings, a classifier's run no ``pretrain`` ones, and a setting
    one kind of run lacks is no difference between runs."""
    readable = [row for row in rows if row.status != "broken"]
    keys = sorted({key for row in readable for key in row.settings} - FILLED_IN)
    return [key for key in keys
            if len({json.dumps(row.settings[key]) for row in readable if key in row.settings}) > 1]


def list_runs(paths: Iterable[str | Path], sort: str = "start") -> list[RunRow]:
    """Every run under ``paths``, sorted by ``sort`` (see :data:`SORT_KEYS`)."""
    if sort not in SORT_KEYS:
        raise UsageError(f"--sort {sort}: pick one of {', '.join(SORT_KEYS)}")
    rows = [read_run(path) for path in run_dirs(paths)]
    return sorted(rows, key=lambda row: row.sort_key(sort))


def format_table(rows: Sequence[RunRow]) -> str:
    """The runs as aligned columns, with only the settings that differ between them."""
    if not rows:
        return "no run directories found"
    keys = differing(rows)
    header = ["start", "status", "task", "data", "metric", "validation", "test", "min", "settings", "run"]
    lines = [header]
    for row in rows:
        shown = " ".join(f"{key}={json.dumps(row.settings[key])}" for key in keys if key in row.settings) or "-"
        lines.append([row.start or "-", row.status, row.task or "-", Path(row.data).name if row.data else "-",
                      row.metric or "-", _number(row.validation), _number(row.test),
                      "-" if row.minutes is None else f"{row.minutes:g}",
                      row.reason if row.status == "broken" else shown, row.path])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1]
                     for line in lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def as_jsonl(rows: Sequence[RunRow]) -> str:
    """One JSON object per run, with the differing settings under ``differs``."""
    keys = differing(rows)
    return "\n".join(json.dumps({**asdict(row), "differs": {key: row.settings[key] for key in keys
                                                             if key in row.settings}})
                     for row in rows)
