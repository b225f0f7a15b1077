"""From-scratch defaults on every single-label dataset: `encoder-clf train`, no settings, vs TF-IDF + LR and fastText.

The target (issue: "from-scratch defaults never worse than TF-IDF, whatever the dataset's size"): on each
dataset, `encoder-clf train --data DIR --out OUT` with no settings at all scores at least TF-IDF + LR's test
accuracy; on the full SST-2 it also reaches 84.0 within 15 minutes. Datasets, single-label only, each a
directory of split files (the derived ones are written to a temporary directory under ``benchmarks/out/``):

- ``sst2``: SST-2 as it is (67,349 / 872 / 1,821 rows);
- ``sst2-2k``, ``sst2-8k``: a seeded sample (seed 0) of 2,000 or 8,000 SST-2 training rows, the same
  validation and test;
- ``ag_news``: AG News small, its ``train.csv`` (4,000) as train and its ``validation.csv`` (1,000) as
  ``test.csv``, with no validation file: encoder-clf carves a seeded, stratified 10% out of train, and the
  peers train and select on the very same two parts;
- ``goemotions``: GoEmotions' rows with exactly one label (28 classes; 36,308 / 4,548 / 4,590 rows);
- ``sst2-docs``: long texts, which ``../shared`` lacks, built from SST-2: each document is 15 sentences drawn at
  random from one split's phrases of 8 words or more (train's for its 4,000 training documents, validation's for
  500, test's for 1,000), labelled by the majority of their labels. The evidence is spread over the whole
  document, as in a long review: 240 words on average in train, 305 in validation and test (whole sentences
  there, phrases in train), so a model that reads only the first 128 tokens sees a third to a half of it.

Each job runs in its own process (its wall time and peak RSS are its own):

- ours: ``encoder-clf train --data DIR --out OUT --quiet``, the untuned defaults;
- TF-IDF word 1-2-grams (sublinear tf, fitted on train) + LogisticRegression, C from 0.25, 1, 4, 16 and 64 (the
  grid encoder-clf's n-gram part chooses from) chosen on validation accuracy;
- fastText supervised (``fasttext-wheel``), as its users run it: the text normalised as in fastText's
  ``classification-example.sh`` (lower case, punctuation split off), wordNgrams 2, dim 100, softmax, every
  core, epoch (5, 10, 25) and lr (0.1, 0.5, 1.0) chosen on validation accuracy.

    python benchmarks/defaults.py [--datasets sst2,sst2-2k,sst2-8k,ag_news,goemotions,sst2-docs] [--skip-ours]
    python benchmarks/defaults.py --quick     # sst2-2k and ag_news only (make bench-quick); docs/ left alone
    python benchmarks/defaults.py --datasets ag_news --seeds 0,1,2,3,4   # means over seeds
    python benchmarks/defaults.py --datasets ag_news,sst2-2k --train-rows 500 --seeds 0,1,2   # small data

``--seeds``: ours runs once per ``train.seed``; where the validation part is carved from train (AG News), the
carve follows the seed, so the peers run on each seed's rows too; elsewhere they are deterministic and run once.
The table gives each run's mean over the seeds, and a line below it each seed's test accuracy.

Results go to the ``defaults`` section of ``docs/BENCHMARKS.md`` and ``benchmarks/out/defaults.json``
(``--quick``: ``defaults-quick.json``, and the section is printed, not written; so with ``--skip-ours``).
Expected time of the full run: 64 minutes measured (2026-12-02, a 2-core Intel Xeon with amx_bf16; another
benchmark shared the CPU during the GoEmotions rows, so about 45 minutes alone). GoEmotions is most of it:
TF-IDF's multinomial grid over 28 classes (23 minutes) and ours (its linear fit alone 2.6 minutes).
``sst2-docs``, added on 2026-12-07, takes about 8 minutes more (ours 7.4, the peers 0.5; AMD EPYC, 2 cores).
The whole run took 48 minutes on 2026-12-07 (AMD EPYC, 2 cores, idle; GoEmotions' TF-IDF grid 12 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import DATA, OUT, Checks, machine, run_measured, write_section

SPECS = {
    "sst2": {"title": "SST-2", "source": "sst2", "rows": 0},
    "sst2-2k": {"title": "SST-2, 2,000 train rows", "source": "sst2", "rows": 2000},
    "sst2-8k": {"title": "SST-2, 8,000 train rows", "source": "sst2", "rows": 8000},
    "ag_news": {"title": "AG News small (4 classes)", "source": "ag_news_small", "rows": 0},
    "goemotions": {"title": "GoEmotions, single-label rows (28 classes)", "source": "goemotions", "rows": 0},
    "sst2-docs": {"title": "SST-2 documents of 15 sentences (long texts)", "source": "sst2", "rows": 0},
}
DOCUMENTS = {"train": 4000, "validation": 500, "test": 1000}  # sst2-docs: documents per split
SENTENCES, MIN_WORDS = 15, 8  # sst2-docs: sentences per document, words per sentence at least
QUICK = ["sst2-2k", "ag_news"]
C_GRID = (0.25, 1.0, 4.0, 16.0, 64.0)  # the strengths encoder-clf's n-gram part chooses from
FASTTEXT_GRID = [(epoch, lr) for epoch in (5, 10, 25) for lr in (0.1, 0.5, 1.0)]
FASTTEXT = {"wordNgrams": 2, "dim": 100, "loss": "softmax", "minCount": 1, "seed": 0, "verbose": 0}
SEED = 0  # the training-row samples, and encoder-clf's default train.seed (the carved validation part's seed)
VALIDATION_FRACTION = 0.1  # encoder-clf's default data.validation_fraction
WALL_LIMIT_MIN = 15.0
SST2_AIM = 0.84


# --- data -------------------------------------------------------------------------------------------------------

def sampled(lines: list[str], rows: int) -> list[str]:
    """The header and a seeded sample of ``rows`` data lines, in file order (all of them when ``rows`` is 0)."""
    if rows <= 0 or rows >= len(lines) - 1:
        return lines
    chosen = np.sort(np.random.default_rng(SEED).permutation(np.arange(1, len(lines)))[:rows])
    return [lines[0]] + [lines[i] for i in chosen]


def prepare(name: str, root: Path, cap: int) -> Path:
    """The dataset as a directory of split files: the shared one where it is used as is, else one under ``root``.

    ``cap`` (``--train-rows``): at most this many training rows, a seeded sample (small data, smoke tests).
    """
    spec, source = SPECS[name], DATA / SPECS[name]["source"]
    rows = min(r for r in (spec["rows"], cap) if r > 0) if spec["rows"] or cap else 0
    if name in ("sst2", "sst2-2k", "sst2-8k") and rows == 0:
        return source
    target = root / name
    target.mkdir(parents=True)
    write = lambda split, lines: (target / split).write_text("\n".join(lines) + "\n", encoding="utf-8")  # noqa: E731
    read = lambda split: (source / split).read_text(encoding="utf-8").splitlines()  # noqa: E731
    if name == "ag_news":  # no validation file: encoder-clf carves its validation part out of train
        write("train.csv", sampled(read("train.csv"), rows))
        write("test.csv", read("validation.csv"))
    elif name == "sst2-docs":  # long documents, each the majority label of its sentences
        rng = np.random.default_rng(SEED)
        for split, count in DOCUMENTS.items():
            pairs = [line.rsplit("\t", 1) for line in read(f"{split}.tsv")[1:]]
            pool = [(text, int(label)) for text, label in pairs if len(text.split()) >= MIN_WORDS]
            lines = ["text\tlabel"]
            for _ in range(count):
                chosen = [pool[i] for i in rng.choice(len(pool), SENTENCES, replace=False)]
                positive = sum(label for _, label in chosen) * 2 > SENTENCES
                lines.append(f"{' '.join(text for text, _ in chosen)}\t{int(positive)}")
            write(f"{split}.tsv", lines)
    elif name == "goemotions":  # the rows with exactly one label, as a single-label `text`, `label` table
        for split in ("train", "validation", "test"):
            lines = read(f"{split}.tsv")
            column = lines[0].split("\t").index("labels")
            kept = [line for line in lines[1:] if "," not in line.split("\t")[column]]
            write(f"{split}.tsv", sampled(["text\tlabel"] + kept, rows if split == "train" else 0))
    else:
        write("train.tsv", sampled(read("train.tsv"), rows))
        for split in ("validation", "test"):
            write(f"{split}.tsv", read(f"{split}.tsv"))
    return target


def split_file(data: Path, split: str) -> Path | None:
    return next((data / f"{split}{s}" for s in (".tsv", ".csv") if (data / f"{split}{s}").is_file()), None)


def load(data: Path, seed: int = SEED) -> tuple[dict[str, tuple[list[str], np.ndarray]], list]:
    """The peers' splits, the very rows encoder-clf trains, selects and is tested on; and the class names.

    The same row rules (a row whose text is empty is dropped; pandas' default missing values, as ``datasets``
    reads CSV), the classes sorted, and with no validation file the same seeded stratified part of train held
    out (``carve_validation`` in encoder_clf/data/splits.py, on the class ids, in file order).
    """
    import pandas as pd

    from encoder_clf.data.sources import tsv_quoting

    frames = {}
    for split in ("train", "validation", "test"):
        file = split_file(data, split)
        if file is not None:
            options = {"sep": "\t", "quoting": tsv_quoting(file)} if file.suffix == ".tsv" else {}
            frame = pd.read_csv(file, keep_default_na=False, na_values=[""], **options)
            text = "sentence" if "sentence" in frame.columns else "text"
            frame = frame[[isinstance(t, str) and bool(t.strip()) for t in frame[text]]]
            frames[split] = (frame[text].tolist(), frame["label"].tolist())
    names = sorted(set(frames["train"][1]))
    index = {name: i for i, name in enumerate(names)}
    splits = {split: (texts, np.array([index[v] for v in values])) for split, (texts, values) in frames.items()}
    if "validation" not in splits:
        from sklearn.model_selection import train_test_split

        texts, labels = splits["train"]
        parts = train_test_split(np.arange(len(texts)), test_size=VALIDATION_FRACTION, random_state=seed,
                                 stratify=labels)
        (train_idx, val_idx) = (np.sort(part) for part in parts)
        splits["train"] = ([texts[i] for i in train_idx], labels[train_idx])
        splits["validation"] = ([texts[i] for i in val_idx], labels[val_idx])
    return splits, names


def scores(truth: np.ndarray, predicted: np.ndarray, classes: int) -> dict:
    """Accuracy and macro-F1 over every class, as encoder-clf's metrics.json has them."""
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": float(accuracy_score(truth, predicted)),
            "macro_f1": float(f1_score(truth, predicted, labels=list(range(classes)), average="macro",
                                       zero_division=0))}


def sizes(splits: dict) -> dict:
    return {split: len(texts) for split, (texts, _) in splits.items()}


# --- peers ------------------------------------------------------------------------------------------------------

def tfidf_peer(data: Path, result_file: Path, seed: int) -> None:
    """TF-IDF word 1-2-grams (sublinear tf, fitted on train) + LogisticRegression, C chosen on validation."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    splits, names = load(data, seed)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    vectorizer.fit(splits["train"][0])
    x = {split: vectorizer.transform(texts) for split, (texts, _) in splits.items()}
    y = {split: labels for split, (_, labels) in splits.items()}
    best, grid = None, []
    for c in C_GRID:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model = LogisticRegression(C=c, max_iter=10000).fit(x["train"], y["train"])
        found = {split: scores(y[split], model.predict(x[split]), len(names)) for split in ("validation", "test")}
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        grid.append({"C": c, "validation_accuracy": found["validation"]["accuracy"],
                     "iterations": int(model.n_iter_.max()), "converged": converged})
        if best is None or found["validation"]["accuracy"] > best[0]["validation"]["accuracy"]:
            best = (found, c)
    found, c = best
    result_file.write_text(json.dumps({**found, "chosen": {"C": c}, "grid": grid, "rows": sizes(splits),
                                       "features": x["train"].shape[1]}))


def fasttext_line(text: str) -> str:
    """fastText's one line per text, normalised as its ``classification-example.sh`` does."""
    text = " ".join(text.split()).lower().replace("<br />", " ").replace("'", " ' ").replace('"', "")
    for mark in ".,()!?":
        text = text.replace(mark, f" {mark} ")
    return " ".join(text.replace(";", " ").replace(":", " ").split())


def fasttext_predict(model, lines: list[str], fallback: int) -> np.ndarray:
    """The top class of each line. fasttext-wheel 0.9.2's ``predict`` of one string fails under numpy 2
    (``np.array(..., copy=False)``); its list path calls ``multilinePredict``, which this calls directly."""
    labels, _ = model.f.multilinePredict([line + "\n" for line in lines], 1, 0.0, "strict")
    return np.array([int(found[0][len("__label__"):]) if found else fallback for found in labels])


def verified(model, file: Path, lines: list[str], predicted: np.ndarray, found: dict) -> dict:
    """The workaround checked against fastText itself: its own ``test()`` (precision at 1 is accuracy with one
    label a line) and its one-line predict, called below the broken Python wrapper."""
    _, precision, _ = model.test(str(file), 1)
    one_by_one = np.array([int(model.f.predict(line + "\n", 1, 0.0, "strict")[0][1][len("__label__"):])
                           for line in lines])
    return {"test_accuracy": found["accuracy"], "fasttext_test_precision_at_1": float(precision),
            "same_as_one_line_predict": float(np.mean(predicted == one_by_one))}


def fasttext_peer(data: Path, result_file: Path, seed: int) -> None:
    """fastText supervised, wordNgrams 2, epoch and lr chosen on validation accuracy."""
    import fasttext

    splits, names = load(data, seed)
    lines = {split: [fasttext_line(text) for text in texts] for split, (texts, _) in splits.items()}
    y = {split: labels for split, (_, labels) in splits.items()}
    fallback = int(np.bincount(y["train"]).argmax())
    best, grid = None, []
    with tempfile.TemporaryDirectory(prefix="defaults-fasttext-") as tmp:
        files = {}
        for split in lines:
            files[split] = Path(tmp) / f"{split}.txt"
            labelled = (f"__label__{label} {line}\n" for line, label in zip(lines[split], y[split]))
            files[split].write_text("".join(labelled), encoding="utf-8")
        for epoch, lr in FASTTEXT_GRID:
            model = None  # one model (about 0.8 GB at 2M buckets × dim 100) alive at a time
            try:
                model = fasttext.train_supervised(str(files["train"]), epoch=epoch, lr=lr, thread=os.cpu_count(),
                                                  **FASTTEXT)
            except (RuntimeError, ValueError) as err:  # "Encountered NaN." at a too high rate
                grid.append({"epoch": epoch, "lr": lr, "error": str(err)})
                continue
            predicted = {split: fasttext_predict(model, lines[split], fallback) for split in ("validation", "test")}
            found = {split: scores(y[split], p, len(names)) for split, p in predicted.items()}
            grid.append({"epoch": epoch, "lr": lr, "validation_accuracy": found["validation"]["accuracy"]})
            if best is None or found["validation"]["accuracy"] > best[0]["validation"]["accuracy"]:
                best = (found, {"epoch": epoch, "lr": lr}, verified(model, files["test"], lines["test"],
                                                                     predicted["test"], found["test"]))
    found, chosen, verify = best
    result_file.write_text(json.dumps({**found, "chosen": chosen, "grid": grid, "rows": sizes(splits),
                                       "verify": verify, "settings": FASTTEXT, "threads": os.cpu_count()}))


def peer_job(kind: str, name: str, data: Path, seed: int) -> dict:
    """A peer in its own process (this file with a hidden flag); its result plus wall time and peak memory."""
    result_file = OUT / f"defaults-{kind}-{name}{suffix(seed)}.json"
    result_file.unlink(missing_ok=True)
    wall, rss = run_measured([sys.executable, __file__, "--peer", kind, "--data", str(data),
                              "--result", str(result_file), "--seed", str(seed)])
    return {**json.loads(result_file.read_text()), "wall_s": wall, "peak_mib": rss}


# --- ours -------------------------------------------------------------------------------------------------------

def suffix(seed: int) -> str:
    """The seed's mark in file names (none for the default seed, whose files keep their names)."""
    return "" if seed == SEED else f"-seed{seed}"


def ours(name: str, data: Path, seed: int) -> dict:
    """`encoder-clf train` with no settings at all (``--quiet`` only hides the progress bar), or the seed alone."""
    run = OUT / f"defaults-ours-{name}{suffix(seed)}"
    shutil.rmtree(run, ignore_errors=True)
    seeded = [] if seed == SEED else ["--set", f"train.seed={seed}"]
    wall, rss = run_measured([sys.executable, "-m", "encoder_clf.cli", "train", "--data", str(data), "--out",
                              str(run), "--quiet", *seeded])
    metrics = json.loads((run / "metrics.json").read_text())
    rows = metrics.get("data", {})
    trained = sum(metrics.get("examples_per_process") or [])
    epochs = trained / rows["train"]["rows"] if trained and rows.get("train", {}).get("rows") else None
    if epochs is None and (run / "log.jsonl").is_file():
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
        epochs = log[-1].get("epoch") if log else None
    result = {"validation": metrics["validation"], "test": metrics["test"], "steps": metrics.get("steps"),
              "epochs": epochs, "stop_reason": metrics.get("stop_reason"), "train_time_s": metrics.get("train_time_s"),
              "precision": metrics.get("precision", "?"), "rows": {s: r.get("rows") for s, r in rows.items()},
              "wall_s": wall, "peak_mib": rss}
    if "plan" in metrics:
        result["plan"] = metrics["plan"]
        print(f"{name}: encoder-clf's plan: {json.dumps(metrics['plan'])}", flush=True)
    return result


# --- report -----------------------------------------------------------------------------------------------------

def averaged(kind: str, runs: list[dict]) -> dict:
    """One row for the runs of several seeds: the mean of each score, wall time and memory; each seed's test."""
    if len(runs) == 1:
        return runs[0]
    mean = lambda values: float(np.mean(values))  # noqa: E731
    row = {**runs[0], "seeds": [r["seed"] for r in runs], "test_by_seed": [r["test"]["accuracy"] for r in runs],
           "wall_s": mean([r["wall_s"] for r in runs]), "peak_mib": mean([r["peak_mib"] for r in runs])}
    for split in ("validation", "test"):
        row[split] = {key: mean([r[split][key] for r in runs]) for key in ("accuracy", "macro_f1")}
    if kind == "ours":
        row["steps"] = mean([r["steps"] for r in runs])
    return row


def training(row: dict) -> str:
    if row["run"] == "ours" and "seeds" in row:
        return f"{row['steps']:.0f} steps on average over {len(row['seeds'])} seeds ({row['precision']})"
    if row["run"] == "ours":
        epochs = f", {row['epochs']:.2g} epochs" if row.get("epochs") is not None else ""
        return f"{row['steps']} steps{epochs}, {row['stop_reason']} ({row['precision']})"
    return ", ".join(f"{k} {v:g}" for k, v in row["chosen"].items())


def write_doc(rows: list[dict], argv: str) -> None:
    lines = ["## From-scratch defaults on every single-label dataset: encoder-clf vs TF-IDF + LR and fastText", "",
             f"Command: `python benchmarks/defaults.py {argv}`".rstrip() + f" (part of `make bench`), "
             f"{time.strftime('%Y-%m-%d')}. Machine: {machine()}.",
             "Ours is `encoder-clf train --data DIR` with no settings at all. The peers train, select and test on "
             "the same rows: TF-IDF word 1-2-grams (sublinear tf, fitted on train) + LogisticRegression with C "
             "from 0.25, 1, 4, 16 and 64 chosen on validation accuracy; fastText supervised (wordNgrams 2, "
             "dim 100, softmax, every core, text lower-cased with punctuation split off as in fastText's "
             "`classification-example.sh`), epoch 5/10/25 × lr 0.1/0.5/1.0 chosen on validation accuracy. "
             "SST-2's 2,000- and 8,000-row sets are seeded samples of its train split (same validation and test). "
             "AG News small has no validation file: encoder-clf holds out a seeded stratified 10% of train and the "
             "peers hold out the same rows; its test split is the given `validation.csv`. GoEmotions: the rows "
             "with exactly one label. Each run is its own process: wall time is the whole process (data, "
             "tokenizer, training, evaluation, and for the peers their whole grid), peak memory its max RSS. "
             "Accuracy and macro-F1 in points.", "",
             "| dataset (train / val / test rows) | run | val acc | test acc | test macro-F1 | training | wall time "
             "| peak memory |",
             "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |"]
    for row in rows:
        size = " / ".join(f"{row['rows'][s]:,}" for s in ("train", "validation", "test") if row["rows"].get(s))
        lines.append(f"| {SPECS[row['dataset']]['title']} ({size}) | {row['name']} | "
                     f"{100 * row['validation']['accuracy']:.2f} | {100 * row['test']['accuracy']:.2f} | "
                     f"{100 * row['test']['macro_f1']:.2f} | {training(row)} | {row['wall_s'] / 60:.1f} min | "
                     f"{row['peak_mib']:.0f} MiB |")
    for row in rows:
        if "seeds" in row:
            lines.append(f"- {SPECS[row['dataset']]['title']}, {row['name']}, test accuracy at train.seed "
                         + ", ".join(f"{seed}: {100 * value:.2f}" for seed, value in zip(row["seeds"],
                                                                                         row["test_by_seed"])))
    print(write_section("defaults", lines))


# --- main -------------------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(SPECS), help=f"comma-separated: {', '.join(SPECS)}")
    parser.add_argument("--quick", action="store_true",
                        help=f"only {' and '.join(QUICK)} (make bench-quick); docs/BENCHMARKS.md left alone")
    parser.add_argument("--skip-ours", action="store_true", help="the peers only; docs/BENCHMARKS.md left alone")
    parser.add_argument("--seeds", default=str(SEED), help="comma-separated train.seed values; the table gives "
                        "means over them")
    parser.add_argument("--seed", type=int, default=SEED, help=argparse.SUPPRESS)  # a peer's carve
    parser.add_argument("--train-rows", type=int, default=0, help="at most this many training rows, a seeded "
                        "sample (small data: AG News then carves 10%% of them for validation); docs/ left alone")
    parser.add_argument("--peer", choices=("tfidf", "fasttext"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        (tfidf_peer if args.peer == "tfidf" else fasttext_peer)(Path(args.data), Path(args.result), args.seed)
        return
    names = QUICK if args.quick else [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(unknown)}; choose from {', '.join(SPECS)}")
    if args.quick or args.skip_ours or args.train_rows:  # a partial run never replaces a full run's figures
        os.environ["BENCH_DOCS"] = "0"
    OUT.mkdir(parents=True, exist_ok=True)
    results_file = OUT / ("defaults-quick.json" if args.quick else "defaults.json")
    checks = Checks("defaults")
    seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="defaults-data-", dir=OUT) as tmp:
        for name in names:
            data = prepare(name, Path(tmp), args.train_rows)
            print(f"\n=== {name}: {data}", flush=True)
            carved = split_file(data, "validation") is None  # the validation rows follow the seed
            runs: dict[str, list[dict]] = {"tfidf": [], "fasttext": [], "ours": []}
            for seed in seeds:
                if carved or seed == seeds[0]:
                    runs["tfidf"].append({"seed": seed, **peer_job("tfidf", name, data, seed)})
                    runs["fasttext"].append({"seed": seed, **peer_job("fasttext", name, data, seed)})
                    verify = runs["fasttext"][-1]["verify"]
                    checks.add(f"{name}: fastText's predictions here agree with its own test() and one-line "
                               f"predict, train.seed={seed}",
                               abs(verify["test_accuracy"] - verify["fasttext_test_precision_at_1"]) < 1e-9
                               and verify["same_as_one_line_predict"] == 1.0,
                               f"accuracy {100 * verify['test_accuracy']:.2f}, test() P@1 "
                               f"{100 * verify['fasttext_test_precision_at_1']:.2f}, same as one-line predict on "
                               f"{100 * verify['same_as_one_line_predict']:.1f}% of test rows")
                if not args.skip_ours:
                    runs["ours"].append({"seed": seed, **ours(name, data, seed)})
                    mine, peer = runs["ours"][-1], runs["tfidf"][-1]
                    if all(mine["rows"].get(s) for s in ("train", "validation", "test")):
                        checks.add(f"{name}: the peers had ours' rows, train.seed={seed}",
                                   mine["rows"] == peer["rows"] == runs["fasttext"][-1]["rows"],
                                   f"ours {mine['rows']}, TF-IDF {peer['rows']}")
            names_of = {"tfidf": "TF-IDF 1-2-grams + LogisticRegression", "fasttext": "fastText (wordNgrams 2)",
                        "ours": "encoder-clf train (defaults)"}
            row_of = {kind: {**averaged(kind, found), "dataset": name, "run": kind, "name": names_of[kind]}
                      for kind, found in runs.items() if found}
            rows += list(row_of.values())
            if "ours" in row_of:
                ours_acc, theirs = row_of["ours"]["test"]["accuracy"], row_of["tfidf"]["test"]["accuracy"]
                checks.add(f"{name}: ours test accuracy >= TF-IDF + LR's" + (" (means over the seeds)"
                                                                             if len(seeds) > 1 else ""),
                           ours_acc >= theirs,
                           f"{100 * ours_acc:.2f} vs {100 * theirs:.2f} ({100 * (ours_acc - theirs):+.2f})")
                if name == "sst2" and not args.train_rows:
                    checks.add(f"sst2: ours test accuracy >= {100 * SST2_AIM:.1f}", ours_acc >= SST2_AIM,
                               f"{100 * ours_acc:.2f}")
                    checks.add(f"sst2: ours wall time <= {WALL_LIMIT_MIN:g} min",
                               row_of["ours"]["wall_s"] <= 60 * WALL_LIMIT_MIN,
                               f"{row_of['ours']['wall_s'] / 60:.1f} min")
            results_file.write_text(json.dumps(rows, indent=2, default=str))
    write_doc(rows, " ".join(sys.argv[1:]))
    checks.finish()


if __name__ == "__main__":
    main()
