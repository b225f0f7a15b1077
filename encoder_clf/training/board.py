"""TensorBoard event files of a run (``train.tensorboard``): the log's scalars, the settings with the final metrics,
and the task's figure, under ``RUN_DIR/tensorboard/``.

They go through ``torch.utils.tensorboard``, which needs the ``tensorboard``
package (the ``tensorboard`` extra). A resumed run opens the same directory
with ``purge_step`` at its checkpoint's next step, so that TensorBoard hides
what the killed process wrote past the checkpoint and the replayed steps are
shown once.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import UsageError

BOARD = "tensorboard"
STEP_SCALARS = {"train_loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
                "examples_per_s": "train/examples_per_s"}


def require_tensorboard() -> None:
    """Refuse ``train.tensorboard`` in one line, before anything is written, when the package is missing."""
    if importlib.util.find_spec("tensorboard") is None:
        raise UsageError("train.tensorboard=true needs the tensorboard package; "
                         "pip install 'encoder-clf[tensorboard]' (or turn it off)")


class Board:
    """One run's TensorBoard writer; rank 0 alone makes one."""

    def __init__(self, run: Path, resumed_at: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run / BOARD), purge_step=None if resumed_at is None else resumed_at + 1)

    def step(self, record: dict) -> None:
        for key, tag in STEP_SCALARS.items():
            if record.get(key) is not None:
                self.writer.add_scalar(tag, record[key], record["step"])

    def evaluation(self, record: dict) -> None:
        for key, value in record.items():
            if key.startswith("val_") and isinstance(value, (int, float)):
                self.writer.add_scalar(f"validation/{key[4:]}", value, record["step"])
        self.writer.flush()

    def finish(self, settings: dict, metrics: dict, figure_name: str, figure) -> None:
        """The settings beside the final scores (TensorBoard's HParams tab), and the task's figure."""
        # add_hparams also writes each final score as a scalar: under tags of its own, apart from the curves'
        final = {f"final/{split}_{key}": value for split in ("validation", "test")
                 if isinstance(metrics.get(split), dict)
                 for key, value in metrics[split].items() if isinstance(value, (int, float)) and key != "n"}
        hparams = {key: value if isinstance(value, (int, float, str, bool)) else str(value)
                   for key, value in settings.items()}
        self.writer.add_hparams(hparams, final, run_name=".")
        self.writer.add_figure(Path(figure_name).stem, figure, metrics.get("steps", 0))
        self.close()

    def close(self) -> None:
        self.writer.close()
