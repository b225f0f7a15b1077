"""SST-2 from scratch: the default `make train` preset, each attention rule, and TF-IDF + LR.

Every job runs in its own process so that wall time and peak memory (max RSS,
from ``wait4``) belong to it alone. Results go to ``docs/BENCHMARKS.md``
(between markers, so other benchmark sections are kept) and
``benchmarks/out/sst2_preset.json``.

    python benchmarks/sst2_preset.py [--rules dot concat concat_position additive] [--no-ablation]
                                     [--data ../shared/datasets/sst2]

The preset's head has two parts, the encoder's linear head and a linear bag
of n-grams, mixed by weights fitted on validation; each is also scored alone on
the same trained model, as is their plain mean, and the ablations retrain the
preset without one of its parts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common import DATA, OUT, Checks, machine, run_measured, write_section


def tfidf_baseline(data: Path, result_file: Path) -> None:
    """TF-IDF (word 1-2-grams, sublinear tf) + LogisticRegression, C chosen on validation."""
    import pandas as pd
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    read = lambda name: pd.read_csv(data / f"{name}.tsv", sep="\t", quoting=3, keep_default_na=False)  # noqa: E731
    train, validation, test = read("train"), read("validation"), read("test")
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    x_train = vectorizer.fit_transform(train.sentence)
    best = None
    for c in (0.5, 1.0, 2.0, 4.0, 8.0):
        model = LogisticRegression(C=c, max_iter=2000).fit(x_train, train.label)
        score = accuracy_score(validation.label, model.predict(vectorizer.transform(validation.sentence)))
        if best is None or score > best[0]:
            best = (score, c, model)
    val_acc, c, model = best
    predicted = model.predict(vectorizer.transform(test.sentence))
    result = {"validation": {"accuracy": val_acc}, "test": {"accuracy": accuracy_score(test.label, predicted),
              "macro_f1": f1_score(test.label, predicted, average="macro")}, "C": c}
    result_file.write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA / "sst2"))
    parser.add_argument("--rules", nargs="*", default=["dot", "concat", "concat_position", "additive"],
                        help="attention rules to train with the preset (dot is the preset itself)")
    parser.add_argument("--no-ablation", action="store_true",
                        help="skip the preset without its convolution or its n-gram logits")
    parser.add_argument("--baseline-only", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    data = Path(args.data)
    if args.baseline_only:
        tfidf_baseline(data, Path(args.baseline_only))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    baseline_file = OUT / "tfidf.json"
    wall, rss = run_measured([sys.executable, __file__, "--data", str(data), "--baseline-only", str(baseline_file)])
    baseline = json.loads(baseline_file.read_text())
    rows.append({"name": f"TF-IDF 1-2-grams + LogisticRegression (C={baseline['C']})", **baseline,
                 "wall_s": wall, "peak_mib": rss})
    runs = [("encoder-clf preset (`make train`)" if rule == "dot" else f"preset with attention={rule}",
             f"preset-{rule}", f"model.attention={rule}") for rule in args.rules]
    if not args.no_ablation:
        runs += [("preset without its convolution (model.conv_kernel=0)", "preset-no-conv", "model.conv_kernel=0"),
                 ("preset without its n-gram logits (model.ngram_buckets=0)", "preset-no-ngrams",
                  "model.ngram_buckets=0")]
    for name, run_name, setting in runs:
        run_dir = OUT / run_name
        command = [sys.executable, "-m", "encoder_clf.cli", "train", "--data", str(data), "--out", str(run_dir),
                   "--overwrite", "--quiet", "--set", setting]
        wall, rss = run_measured(command)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        rows.append({"name": name, "validation": metrics["validation"], "test": metrics["test"], "wall_s": wall,
                     "peak_mib": rss, "train_time_s": metrics["train_time_s"], "precision": metrics["precision"],
                     "examples_per_s": metrics["train_examples_per_s"]})
        if run_name == "preset-dot":
            rows += scored_parts(run_dir / "model", data)
    (OUT / "sst2_preset.json").write_text(json.dumps(rows, indent=2))
    write_doc(rows, " ".join(sys.argv[1:]))
    preset = next((r for r in rows if r["name"].startswith("encoder-clf preset")), None)
    checks = Checks("sst2_preset")
    if preset is not None:
        ours, theirs = preset["test"]["accuracy"], rows[0]["test"]["accuracy"]
        checks.add("the preset's SST-2 test accuracy >= TF-IDF + LogisticRegression's", ours >= theirs,
                   f"{100 * ours:.2f} vs {100 * theirs:.2f}")
    checks.finish()


def scored_parts(model_dir: Path, data: Path) -> list[dict]:
    """Each part of the trained preset's head scored alone, and their plain mean (same trained weights)."""
    from encoder_clf.data.splits import read_split
    from encoder_clf.data.tokenization import encode, pad_id
    from encoder_clf.inference import forward_batches
    from encoder_clf.metrics import compute_metrics
    from encoder_clf.persistence.model_dir import load_model

    model, tokenizer = load_model(model_dir)
    if len(model.head.names) < 2:
        return []
    parts = {}
    for split in ("validation", "test"):
        labelled = read_split(str(data), split, model.config.labels)
        out = forward_batches(model, encode(tokenizer, labelled.texts)[0], pad_id(tokenizer), 256)
        parts[split] = (labelled.labels, out.parts)
    choices = [("its encoder's head alone", lambda p: p[0]), ("its n-gram logits alone", lambda p: p[1]),
               ("the plain mean of the two, before the weights are fitted", lambda p: p.mean(axis=0))]
    rows = []
    for name, pick in choices:
        scores = {split: compute_metrics(labels, pick(logits).argmax(axis=1), model.config.labels)
                  for split, (labels, logits) in parts.items()}
        rows.append({"name": f"... {name} (same trained weights)", **scores, "wall_s": None, "peak_mib": None})
    return rows


def write_doc(rows: list[dict], argv: str) -> None:
    lines = ["## SST-2 from scratch: the `make train` preset vs TF-IDF + LogisticRegression", "",
             f"Command: `make bench` (`{' '.join(['python benchmarks/sst2_preset.py', argv]).strip()}`), "
             f"{time.strftime('%Y-%m-%d')}. Machine: {machine()}.",
             "Train on the full SST-2 train split (67,349 rows), select on `validation.tsv` (872), report "
             "`test.tsv` (1,821). Wall time is the whole process (data, tokenizer, training, evaluation); "
             "peak memory is the process's max RSS.", "",
             "| model | val acc | test acc | test macro-F1 | wall time | train loop | peak memory |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        loop = f"{row['train_time_s'] / 60:.1f} min ({row['precision']}, {row['examples_per_s']:.0f} ex/s)" \
            if "train_time_s" in row else "-"
        wall = f"{row['wall_s'] / 60:.1f} min" if row["wall_s"] is not None else "-"
        peak = f"{row['peak_mib']:.0f} MiB" if row["peak_mib"] is not None else "-"
        lines.append(f"| {row['name']} | {100 * row['validation']['accuracy']:.2f} | "
                     f"{100 * row['test']['accuracy']:.2f} | {100 * row['test']['macro_f1']:.2f} | "
                     f"{wall} | {loop} | {peak} |")
    print(write_section("sst2-preset", lines))


if __name__ == "__main__":
    main()
