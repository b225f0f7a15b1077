"""What every benchmark script shares: measured subprocesses, the machine line, and docs/BENCHMARKS.md sections."""

from __future__ import annotations

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


def machine() -> str:
    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
               platform.processor())
    features = [f for f in ("avx512_bf16", "amx_bf16") if f in cpuinfo]
    return (f"{cpu}, {os.cpu_count()} cores ({', '.join(features) or 'no bf16 instructions'}), "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def write_section(key: str, lines: list[str]) -> str:
    """Replace (or append) the section between ``<!-- key:begin -->`` and ``<!-- key:end -->``."""
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    section = "\n".join([begin, *lines, end])
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else "# Benchmarks\n\n"
    if begin in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text, encoding="utf-8")
    return section
