"""Every benchmark in one command: each script in its own process, then a summary; non-zero if any failed.

    python benchmarks/run_all.py            # make bench: every script, each refreshing its docs/BENCHMARKS.md section
    python benchmarks/run_all.py --quick    # make bench-quick: a subset within about ten minutes, docs/ left alone

A script fails when it exits non-zero: one of its checks failed (a resumed run
differs, vectors disagree with the peer's, a target is missed) or it crashed.
A target this machine cannot reach is listed as a known miss with its reason,
and does not fail the run. The summary goes to stdout and to
``benchmarks/out/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import OUT, ROOT, machine

HERE = Path(__file__).resolve().parent
FULL = [
    ("sst2_preset", []),
    ("embed_minilm", []),
    ("deploy", []),
    ("distill", []),
    ("finetune_minilm", []),
    ("fewshot", []),
    ("tasks", []),
    ("defaults", []),
    ("mlm_vs_scratch", []),
    ("fault_injection", []),
    ("fault_injection", ["--nproc", "2"]),
    ("throughput", []),
]
# About ten minutes on 2 cores: fault injection on a small sample in one process and under torchrun, the
# throughput suite's smoke run and the embedding comparison (its median of 3 repeats: a single one of about 10 s
# moved the fp32 ratio from 1.38x to 1.15x on a busy host); then the from-scratch defaults on SST-2's
# 2,000-row sample and AG News small (several minutes more).
QUICK = [
    ("fault_injection", ["--rows", "2000", "--kills", "3"]),
    ("fault_injection", ["--rows", "2000", "--kills", "2", "--nproc", "2"]),
    ("throughput", ["--quick", "--skip-compile"]),
    ("embed_minilm", []),
    ("defaults", ["--quick"]),
]


def run(number: int, script: str, args: list[str], env: dict[str, str]) -> dict:
    """One script in its own process; its checks come back through the file named by BENCH_CHECKS."""
    checks_file = OUT / "checks" / f"run-{number}.json"
    checks_file.unlink(missing_ok=True)
    name = " ".join([f"benchmarks/{script}.py", *args])
    print(f"\n=== {name}", flush=True)
    start = time.perf_counter()
    status = subprocess.run([sys.executable, str(HERE / f"{script}.py"), *args], cwd=ROOT,
                            env={**env, "BENCH_CHECKS": str(checks_file)}).returncode
    checks = json.loads(checks_file.read_text()) if checks_file.is_file() else []
    return {"script": name, "exit": status, "minutes": (time.perf_counter() - start) / 60, "checks": checks}


def summary(results: list[dict], minutes: float) -> list[str]:
    lines = [f"benchmarks: {sum(r['exit'] == 0 for r in results)} of {len(results)} scripts passed in "
             f"{minutes:.1f} min; machine: {machine()}", ""]
    for r in results:
        verdict = "passed" if r["exit"] == 0 else f"FAILED (exit {r['exit']})"
        lines.append(f"{verdict:<18} {r['minutes']:6.1f} min  {r['script']}")
        for check in r["checks"]:
            if check["status"] != "pass":
                why = f" ({check['why']})" if check["why"] else ""
                lines.append(f"{'':28}{check['status']}: {check['check']}: {check['detail']}{why}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the ten-minute subset; docs/BENCHMARKS.md untouched")
    args = parser.parse_args()
    env = {**os.environ, "BENCH_DOCS": "0"} if args.quick else dict(os.environ)
    start = time.perf_counter()
    results = [run(number, script, script_args, env)
               for number, (script, script_args) in enumerate(QUICK if args.quick else FULL)]
    lines = summary(results, (time.perf_counter() - start) / 60)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / ("summary-quick.json" if args.quick else "summary.json")).write_text(json.dumps(results, indent=2))
    print("\n" + "\n".join(lines))
    if any(r["exit"] != 0 for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
