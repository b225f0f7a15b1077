"""SST-2 with the same total time: MLM pretraining on the training text then fine-tuning, vs from scratch.

Both use the `make train` preset's architecture and tokenizer settings.
MLM: `encoder-clf pretrain` on SST-2 train sentences for `--pretrain-minutes`,
then `encoder-clf train --set train.init=...` (lr `--finetune-lr`, otherwise
the preset). Scratch: the preset with the same total wall-clock budget
(`train.max_minutes`, more epochs, best validation checkpoint kept). Each
stage is its own process.

    python benchmarks/mlm_vs_scratch.py [--pretrain-minutes 7] [--finetune-lr 5e-4]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from common import DATA, OUT, Checks, machine, run_measured, write_section


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "encoder_clf.cli", *args, "--overwrite", "--quiet"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-minutes", type=float, default=7.0)
    parser.add_argument("--finetune-lr", type=float, default=5e-4)
    args = parser.parse_args()
    data = str(DATA / "sst2")
    pre, tuned, scratch = OUT / "mlm-pretrain", OUT / "mlm-finetune", OUT / "scratch-same-time"
    pre_wall, _ = run_measured(cli("pretrain", "--data", data, "--out", str(pre), "--set", "pretrain.epochs=50",
                                   "--set", f"pretrain.max_minutes={args.pretrain_minutes}"))
    tune_wall, _ = run_measured(cli("train", "--data", data, "--out", str(tuned), "--set",
                                    f"train.init={pre / 'model'}", "--set", f"train.lr={args.finetune_lr}"))
    budget = (pre_wall + tune_wall) / 60
    scratch_wall, _ = run_measured(cli("train", "--data", data, "--out", str(scratch), "--set", "train.epochs=12",
                                       "--set", f"train.max_minutes={budget - 0.5:.1f}"))
    pretrained = json.loads((pre / "metrics.json").read_text())
    rows = [("MLM pretraining + fine-tuning", json.loads((tuned / "metrics.json").read_text()), pre_wall + tune_wall),
            ("from scratch, same total time", json.loads((scratch / "metrics.json").read_text()), scratch_wall)]
    lines = ["## SST-2: MLM pretraining on the training text, then fine-tuning, vs from scratch in the same time", "",
             f"Command: `python benchmarks/mlm_vs_scratch.py {' '.join(sys.argv[1:])}`".rstrip() +
             f", {time.strftime('%Y-%m-%d')}. Machine: {machine()}.",
             f"MLM: {pretrained['steps']} steps in {args.pretrain_minutes} min on "
             f"{pretrained['texts']['train']:,} training texts, held-out masked-token loss "
             f"{pretrained['heldout_loss_initial']:.2f} → {pretrained['heldout_loss_final']:.2f}; fine-tuning at "
             f"lr {args.finetune_lr}. Scratch: the preset with `train.max_minutes` set to the same total.", "",
             "| run | val acc | test acc | test macro-F1 | total wall time |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {name} | {100 * m['validation']['accuracy']:.2f} | {100 * m['test']['accuracy']:.2f} | "
              f"{100 * m['test']['macro_f1']:.2f} | {wall / 60:.1f} min |" for name, m, wall in rows]
    print(write_section("mlm-vs-scratch", lines))
    checks = Checks("mlm_vs_scratch")
    checks.add("pretraining lowers the held-out masked-token loss",
               pretrained["heldout_loss_final"] < pretrained["heldout_loss_initial"],
               f"{pretrained['heldout_loss_initial']:.2f} -> {pretrained['heldout_loss_final']:.2f}")
    checks.finish()


if __name__ == "__main__":
    main()
