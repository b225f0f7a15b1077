"""What every benchmark script shares: measured subprocesses, the machine line, docs/BENCHMARKS.md sections, checks.

``BENCH_DOCS=0`` in the environment (``make bench-quick`` sets it) prints each section instead of writing it,
so that a quick run on a small sample never replaces the figures of a full one.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
DOC = ROOT / "docs" / "BENCHMARKS.md"
DATA = ROOT.parent / "shared" / "datasets"


def run_measured(command: list[str]) -> tuple[float, float]:
    """Run a command; return its wall seconds and peak RSS in MiB (``wait4``: this job alone)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmark job failed: {' '.join(command)}")
    return wall, usage.ru_maxrss / 1024


def bf16_features() -> list[str]:
    """The CPU's bf16 instructions; without them autocast emulates bf16, far slower than fp32."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    return [f for f in ("avx512_bf16", "amx_bf16") if f in cpuinfo]


def machine() -> str:
    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
               platform.processor())
    features = bf16_features()
    return (f"{cpu}, {os.cpu_count()} cores ({', '.join(features) or 'no bf16 instructions'}), "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def write_section(key: str, lines: list[str]) -> str:
    """Replace (or append) the section between ``<!-- key:begin -->`` and ``<!-- key:end -->``."""
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    section = "\n".join([begin, *lines, end])
    if os.environ.get("BENCH_DOCS") == "0":
        return section
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else "# Benchmarks\n\n"
    if begin in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text, encoding="utf-8")
    return section


def has_amx() -> bool:
    return "amx_bf16" in Path("/proc/cpuinfo").read_text()


class Checks:
    """A benchmark's pass/fail checks, each printed as it is made; :meth:`finish` exits 1 if one failed.

    A target this machine cannot reach (``known_miss``: why) is reported but does not fail the run: the
    reason is printed beside it, and ``benchmarks/run_all.py`` lists it in its summary.
    """

    def __init__(self, script: str) -> None:
        self.script, self.results = script, []

    def add(self, name: str, ok: bool, detail: str = "", known_miss: str | None = None) -> None:
        status = "pass" if ok else ("known miss" if known_miss else "FAIL")
        self.results.append({"check": name, "status": status, "detail": detail, "why": known_miss if not ok else ""})
        print(f"check [{status}] {name}: {detail}" + (f" ({known_miss})" if status == "known miss" else ""),
              flush=True)

    def finish(self) -> None:
        """Write the results (to ``$BENCH_CHECKS``, where run_all.py reads them), and exit 1 on a failed check."""
        file = Path(os.environ.get("BENCH_CHECKS") or OUT / "checks" / f"{self.script}.json")
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(self.results, indent=2))
        failed = [r["check"] for r in self.results if r["status"] == "FAIL"]
        if failed:
            raise SystemExit(f"{self.script}: {len(failed)} check(s) failed: {'; '.join(failed)}")
