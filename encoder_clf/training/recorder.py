"""Where a run keeps what it makes: the history of evaluations, the best model, checkpoints and final files.

:class:`Recorder` keeps them in memory, for callers that hold the result
themselves (the scikit-learn estimators, notebooks). :class:`RunDirectory`
also writes a run directory as the run goes, so that a killed run can be
resumed and a finished one read:

- ``log.jsonl``, one line per step record (every ``train.log_every`` steps:
  ``"kind": "step"``) and per evaluation (``"kind": "evaluation"``; a log
  written before the field existed holds evaluations only); ``model/``, the
  best model, saved at each improvement; ``checkpoints/``, the newest
  checkpoints;
- at the end ``report.txt``, the task's figure (``confusion_matrix.png``,
  ``per_label_f1.png`` or ``scatter.png``), ``curves.png`` and,
  last, ``metrics.json``, each written to a temporary file and renamed into
  place. ``metrics.json`` marks the run as finished, so a kill at any point
  leaves a run that ``--resume`` completes or a complete one; the checkpoints
  are removed after it.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from ..files import published
from ..metrics import curves_figure, format_report, save, task_figure
from ..model.classifier import TextClassifier
from ..persistence.checkpoints import CHECKPOINTS, Progress, Trainables, save_checkpoint
from ..persistence.model_dir import load_model, save_model
from ..settings import flat_settings
from .board import Board

LOG, METRICS, REPORT, CONFIG = "log.jsonl", "metrics.json", "report.txt", "run_config.json"


class Recorder:
    """The history (the records of ``log.jsonl``, in order) and the best model of a run, in memory; checkpoints
    are not kept."""

    keeps_checkpoints = False

    def __init__(self) -> None:
        self.history: list[dict] = []
        self._best: tuple[TextClassifier, Tokenizer] | None = None

    def step(self, record: dict) -> None:
        """Keep one step record."""
        self.history.append(record)

    def evaluation(self, record: dict, best: TextClassifier | None, tokenizer: Tokenizer) -> None:
        """Keep one evaluation's record, and the evaluated model when it is the best so far."""
        self.history.append(record)
        if best is not None:
            self._best = (copy.deepcopy(best).eval(), tokenizer)

    def best_model(self) -> tuple[TextClassifier, Tokenizer]:
        return self._best

    def checkpoint(self, objects: Trainables, progress: Progress, tokenizer: Tokenizer, data: str,
                   extra: dict[str, torch.Tensor]) -> None:
        """Nothing to write in memory."""

    def kept(self, progress: Progress) -> str:
        """What survives a run stopped now, for the message that stops it."""
        return "stopped"

    def finish(self, metrics: dict, final: tuple[np.ndarray, np.ndarray]) -> None:
        """Nothing to write in memory (``final``: the targets and predictions of the last split scored)."""


class RunDirectory(Recorder):
    """A run directory: the same records as :class:`Recorder`, written to files as the run goes.

    Every rank of a multi-process run has one (they take part in checkpoints together); only the one
    that ``writes`` (rank 0) touches files.
    """

    keeps_checkpoints = True

    def __init__(self, path: Path, keep_checkpoints: int, resumed: Progress | None = None,
                 writes: bool = True, tensorboard: bool = False) -> None:
        super().__init__()
        self.path, self.keep, self.writes = path, keep_checkpoints, writes
        self.board = Board(path, None if resumed is None else resumed.step) if tensorboard and writes else None
        log = path / LOG
        if resumed is not None and log.exists():  # evaluations after the checkpoint are logged again on the way
            if writes:
                with log.open("r+b") as handle:
                    handle.truncate(resumed.log_bytes)
            self.history = [json.loads(line) for line in log.read_bytes()[: resumed.log_bytes].decode().splitlines()
                            if line]
        self._log = log.open("a" if resumed is not None else "w", encoding="utf-8") if writes else None

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    def step(self, record: dict) -> None:
        self.history.append(record)
        self._write(record)
        if self.board is not None:
            self.board.step(record)

    def evaluation(self, record: dict, best: TextClassifier | None, tokenizer: Tokenizer) -> None:
        self.history.append(record)
        self._write(record)
        if self.board is not None:
            self.board.evaluation(record)
        if best is not None and self.writes:
            save_model(self.path / "model", best, tokenizer)

    def _write(self, record: dict) -> None:
        if self.writes:
            self._log.write(json.dumps(record) + "\n")
            self._log.flush()

    def best_model(self) -> tuple[TextClassifier, Tokenizer]:
        return load_model(self.path / "model")

    def checkpoint(self, objects: Trainables, progress: Progress, tokenizer: Tokenizer, data: str,
                   extra: dict[str, torch.Tensor]) -> None:
        if not self.writes:
            return
        progress.log_bytes = self._log.tell()
        save_checkpoint(self.checkpoints, objects, progress, tokenizer, data, self.keep, extra)

    def kept(self, progress: Progress) -> str:
        best = f"the best model in {self.path / 'model'}" if progress.best_step else "no best model yet"
        return f"stopped, keeping the last good checkpoint in {self.checkpoints} and {best}"

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
        if self.board is not None:
            self.board.close()

    def finish(self, metrics: dict, final: tuple[np.ndarray, np.ndarray]) -> None:
        """Write the report, the plots and then ``metrics.json``; then remove the checkpoints.

        ``final`` holds the targets and predictions of the last split scored (test, else validation), which
        the task's figure draws.
        """
        if self._log is not None:
            self._log.close()
        if not self.writes:
            return
        scored = [name for name in ("validation", "test") if name in metrics]
        report = "\n\n".join(format_report(metrics[name], name) for name in scored)
        _write_atomically(self.path / REPORT, lambda file: file.write_text(report + "\n", encoding="utf-8"))
        name, figure = task_figure(metrics[scored[-1]], scored[-1], *final)
        if self.board is not None:
            settings = flat_settings(json.loads((self.path / CONFIG).read_text(encoding="utf-8")))
            self.board.finish(settings, metrics, name, figure)
        _write_atomically(self.path / name, lambda file: save(figure, file))
        curves = curves_figure(self.history)
        _write_atomically(self.path / "curves.png", lambda file: save(curves, file))
        text = json.dumps(metrics, indent=2) + "\n"
        _write_atomically(self.path / METRICS, lambda file: file.write_text(text, encoding="utf-8"))
        shutil.rmtree(self.checkpoints, ignore_errors=True)  # finished: nothing left to resume


def _write_atomically(target: Path, write: Callable[[Path], object]) -> None:
    """``write`` a temporary file beside ``target``, then rename it into place: never a partial ``target``."""
    handle, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=target.suffix, dir=target.parent)
    os.close(handle)
    partial = Path(name)
    try:
        write(partial)
        os.replace(published(partial), target)
    finally:
        partial.unlink(missing_ok=True)
