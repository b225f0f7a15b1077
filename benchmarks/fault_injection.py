"""Fault injection: a training run SIGKILLed at random steps and resumed each time ends where an uninterrupted one does.

An SST-2 sample is trained twice with the same seed and tokenizer: once straight
through, once as a subprocess that is killed with SIGKILL as soon as its
progress bar passes each of ``--kills`` randomly drawn steps, then continued
with ``encoder-clf train --resume``. The kills land wherever the process is
(mid-step, mid-evaluation, mid-checkpoint). The final weights must be bit-identical
and every file the run writes equal, timings aside: the whole ``metrics.json``
and ``log.jsonl`` (every key but the named timing ones), ``report.txt`` and
``run_config.json``. With ``--nproc N`` both runs go through ``torchrun`` with N
processes, and each kill takes down the launcher and every rank at once (all its
descendant processes), as a machine failure would. Results go to ``docs/BENCHMARKS.md``
and ``benchmarks/out/fault_injection[-ddpN].json``.

    python benchmarks/fault_injection.py [--rows 8000] [--kills 5] [--seed 0] [--precision auto] [--nproc 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import DATA, OUT, ROOT, Checks, machine, write_section

TIMING = {"train_time_s", "train_examples_per_s", "peak_rss_mb", "elapsed_s", "examples_per_s"}  # may differ
PROGRESS = re.compile(r"(\d+)/(\d+) \[")
RESUMED = re.compile(r"from step (\d+) of")


def sample(source: Path, target: Path, rows: int, seed: int) -> None:
    """``rows`` seeded training rows, and the full validation and test splits."""
    target.mkdir(parents=True, exist_ok=True)
    lines = (source / "train.tsv").read_text(encoding="utf-8").splitlines()
    picked = np.random.default_rng(seed).choice(np.arange(1, len(lines)), size=rows, replace=False)
    (target / "train.tsv").write_text("\n".join([lines[0]] + [lines[i] for i in picked]) + "\n", encoding="utf-8")
    for split in ("validation", "test"):
        (target / f"{split}.tsv").write_text((source / f"{split}.tsv").read_text(encoding="utf-8"), encoding="utf-8")


def settings(tokenizer: Path, precision: str) -> list[str]:
    values = ["model.d_model=128", "model.n_heads=4", "model.n_layers=1", "model.d_ff=256", "train.epochs=3",
              "train.batch_size=32", "train.eval_every=50", "train.checkpoint_every=20", "train.token_dropout=0.1",
              "train.ema_decay=0.99", f"train.precision={precision}", f"tokenizer.path={tokenizer}"]
    return [x for value in values for x in ("--set", value)]


def launch(arguments: list[str], stderr: Path, nproc: int) -> subprocess.Popen:
    """``encoder-clf train ARGS``: one process, or ``nproc`` ranks under torchrun."""
    if nproc == 1:
        command, env = [sys.executable, "-m", "encoder_clf.cli"], os.environ
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   "-m", "encoder_clf.cli"]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}
    with stderr.open("w") as handle:  # the child keeps its own descriptor
        return subprocess.Popen([*command, "train", *arguments], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=handle,
                                env=env)


def last_step(stderr: Path) -> int:
    found = PROGRESS.findall(stderr.read_text(errors="replace"))
    return int(found[-1][0]) if found else 0


def kill_when_past(process: subprocess.Popen, stderr: Path, target: int) -> int:
    """SIGKILL the run as soon as its progress bar shows ``target`` steps; return the step it showed."""
    while process.poll() is None:
        step = last_step(stderr)
        if step >= target:
            for pid in [*descendants(process.pid), process.pid]:  # every rank, then the launcher: a machine failure
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.wait()
            return step
        time.sleep(0.05)
    raise SystemExit(f"the run ended (exit {process.returncode}) before step {target}; see {stderr}")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts each rank in a session of its own, out of its group's reach)."""
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children += [int(child) for child in (task / "children").read_text().split()]
    return [p for child in children for p in (*descendants(child), child)]


def finish(process: subprocess.Popen, stderr: Path) -> None:
    if process.wait() != 0:
        raise SystemExit(f"the run failed (exit {process.returncode}); see {stderr}")


def without_timing(value):
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING}
    return [without_timing(v) for v in value] if isinstance(value, list) else value


def compare(a: Path, b: Path) -> dict:
    from safetensors.torch import load_file

    weights = [load_file(run / "model" / "model.safetensors") for run in (a, b)]
    same = sum(int((weights[0][k] == weights[1][k]).all()) for k in weights[0])
    metrics = [json.loads((run / "metrics.json").read_text()) for run in (a, b)]
    logs = [[json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()] for run in (a, b)]
    files = {name: (a / name).read_bytes() == (b / name).read_bytes() for name in ("report.txt", "run_config.json")}
    differing = sorted(k for k in metrics[0] if k not in TIMING and metrics[0][k] != metrics[1].get(k))
    return {"tensors": len(weights[0]), "tensors_equal": same,
            "metrics_equal": without_timing(metrics[0]) == without_timing(metrics[1]), "metric_differences": differing,
            "log_equal": without_timing(logs[0]) == without_timing(logs[1]), "files_equal": files,
            "evaluations": sum(r.get("kind", "evaluation") == "evaluation" for r in logs[0]),
            "step_records": sum(r.get("kind") == "step" for r in logs[0]), "metrics": metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA / "sst2"))
    parser.add_argument("--rows", type=int, default=8000, help="training rows sampled from SST-2")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="draws the rows and the kill steps")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--nproc", type=int, default=1, help="processes per run, under torchrun when above 1")
    args = parser.parse_args()

    from encoder_clf.data.tokenization import TokenizerConfig, train_tokenizer

    name = "fault-injection" if args.nproc == 1 else f"fault-injection-ddp{args.nproc}"
    work = OUT / name
    sample(Path(args.data), work / "data", args.rows, args.seed)
    texts = [line.split("\t")[0] for line in (work / "data" / "train.tsv").read_text().splitlines()[1:]]
    tokenizer = work / "tokenizer.json"  # one tokenizer for both runs: its trainer may break ties differently
    train_tokenizer(texts, TokenizerConfig(vocab_size=4000)).save(str(tokenizer))
    common = ["--data", str(work / "data"), "--overwrite", *settings(tokenizer, args.precision)]

    reference, faulted = work / "reference", work / "faulted"
    start = time.perf_counter()
    finish(launch(["--out", str(reference), *common], work / "reference.log", args.nproc), work / "reference.log")
    reference_wall = time.perf_counter() - start
    total = json.loads((reference / "metrics.json").read_text())["steps"]

    targets = sorted(random.Random(args.seed).sample(range(5, total - 5), args.kills))
    kills, start = [], time.perf_counter()
    for attempt, target in enumerate(targets + [None]):
        stderr = work / f"faulted-{attempt}.log"
        process = launch(["--out", str(faulted), *common] if attempt == 0 else ["--resume", str(faulted)], stderr,
                         args.nproc)
        if target is None:
            finish(process, stderr)
        else:
            kills.append({"target": target, "killed_at": kill_when_past(process, stderr, target)})
        if attempt:  # this attempt's log says where the previous kill left the run
            resumed = RESUMED.search(stderr.read_text(errors="replace"))
            kills[attempt - 1]["resumed_from"] = int(resumed.group(1)) if resumed else None
            print(f"kill {attempt}: {kills[attempt - 1]}", flush=True)
    faulted_wall = time.perf_counter() - start

    result = {"rows": args.rows, "steps": total, "precision": args.precision, "kills": kills, "nproc": args.nproc,
              "reference_wall_s": reference_wall, "faulted_wall_s": faulted_wall, **compare(reference, faulted)}
    (OUT / f"{name.replace('-', '_')}.json").write_text(json.dumps(result, indent=2))
    write_doc(result, " ".join(sys.argv[1:]), name)
    checks = Checks(name.replace("-", "_"))
    checks.add("the best model's tensors are bit-identical", result["tensors_equal"] == result["tensors"],
               f"{result['tensors_equal']} of {result['tensors']}")
    checks.add("metrics.json equal, timings aside", result["metrics_equal"],
               f"differing keys: {result['metric_differences'] or 'none'}")
    checks.add("log.jsonl equal, timings aside", result["log_equal"],
               f"{result['evaluations']} evaluations, {result['step_records']} step records")
    checks.add("report.txt and run_config.json byte-identical", all(result["files_equal"].values()),
               json.dumps(result["files_equal"]))
    checks.finish()


def write_doc(result: dict, argv: str, key: str) -> None:
    reference, faulted = result["metrics"]
    where = "" if result["nproc"] == 1 else f", {result['nproc']} processes under torchrun"
    lines = [f"## Fault injection: SIGKILL at random steps, then `train --resume`{where}", "",
             f"Command: `{' '.join(['python benchmarks/fault_injection.py', argv]).strip()}`, "
             f"{time.strftime('%Y-%m-%d')}. Machine: {machine()}.",
             f"{result['rows']:,} seeded SST-2 training rows, 3 epochs of {result['steps'] // 3} steps "
             f"(d_model 128, 1 layer, batch 32, token dropout 0.1, EMA 0.99, precision {reference['precision']}), "
             "evaluation every 50 steps, a checkpoint every 20 and at each evaluation. The faulted run is killed "
             "with SIGKILL as soon as its progress bar passes each randomly drawn step, then resumed from its "
             "newest checkpoint.", "",
             "| kill | drawn step | killed at step | resumed from checkpoint | steps redone |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    for number, kill in enumerate(result["kills"], 1):
        lines.append(f"| {number} | {kill['target']} | {kill['killed_at']} | {kill['resumed_from']} | "
                     f"{kill['killed_at'] - kill['resumed_from']} |")
    lines += ["", "| run | val acc | test acc | test macro-F1 | best step | wall time |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, metrics, wall in [("uninterrupted", reference, result["reference_wall_s"]),
                                (f"killed {len(result['kills'])} times and resumed", faulted,
                                 result["faulted_wall_s"])]:
        lines.append(f"| {name} | {100 * metrics['validation']['accuracy']:.2f} | "
                     f"{100 * metrics['test']['accuracy']:.2f} | {100 * metrics['test']['macro_f1']:.2f} | "
                     f"{metrics['best_step']} | {wall:.0f} s |")
    verdict = "identical" if result["tensors_equal"] == result["tensors"] else "DIFFERENT"
    lines += ["", f"Best-model weights: {result['tensors_equal']} of {result['tensors']} tensors bit-identical "
              f"({verdict}); metrics equal: {result['metrics_equal']} (every key of metrics.json but the timings "
              f"{', '.join(sorted(TIMING))}); log ({result['evaluations']} evaluations, {result['step_records']} step "
              f"records) equal: "
              f"{result['log_equal']}; report.txt and run_config.json byte-identical: "
              f"{all(result['files_equal'].values())}. Wall time includes a process start (imports, data, "
              "tokenizing) per resume."]
    print(write_section(key, lines))


if __name__ == "__main__":
    main()
