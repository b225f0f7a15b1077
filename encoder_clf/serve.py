"""``encoder-clf serve``: a model behind HTTP, on FastAPI and uvicorn (the ``serve`` extra).

It serves a trained model directory (PyTorch) or an exported one (ONNX
Runtime). ``POST /predict`` and ``POST /embed`` queue their texts; one worker
runs what has queued as one batch, up to ``max_batch`` texts, waiting at most
``max_wait_ms`` for more after the first, so concurrent requests share a
forward pass. ``GET /health`` counts the requests and the batches that served
them; ``GET /info`` says what the model is; ``/docs`` holds the OpenAPI pages.
Every bad request gets a 4xx JSON body ``{"detail": ...}`` naming the field or
the limit, never a 500. uvicorn drains requests in flight on SIGTERM and exits 0.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' request models from their
# annotations, which must be classes, not strings, for models defined inside create_app.
import asyncio
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .errors import UsageError
from .export import is_exported, load_exported
from .features import FeatureEncoder, embed
from .inference import forward_texts, load_classifier, predictions, records
from .runtime import default_device, resolve_precision

EXTRA_HINT = "pip install 'encoder-clf[serve]'"


@dataclass
class ServeConfig:
    """The server's limits and batching (flags of ``encoder-clf serve``)."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 64  # texts run together in one forward pass
    max_wait_ms: float = 5.0  # how long the first queued request waits for others to join its batch
    max_texts: int = 256  # per request (more: 413)
    max_chars: int = 10_000  # per text (more: 422)
    # of a PyTorch model: fp32, as bf16 inference makes a bf16 copy of the weights per call (an exported
    # model, int8 above all, is the fast path)
    precision: str = "fp32"

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_texts", "max_chars"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1; got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise UsageError(f"--max-wait-ms must be >= 0; got {self.max_wait_ms}")


class Served:
    """The model a server answers with: forward passes for predictions and for sentence vectors."""

    def __init__(self, model_dir: str | Path, precision: str = "fp32") -> None:
        self.exported = is_exported(model_dir)
        if self.exported:
            self.model = load_exported(model_dir)
            self.tokenizer = self.model.tokenizer
        else:
            self.model, self.tokenizer = load_classifier(model_dir)
        self.config = self.model.config
        self.classifies = self.model.task is not None
        self.precision = "fp32" if self.exported else resolve_precision(precision, default_device())
        self.features = self.model if self.exported else FeatureEncoder.of_classifier(self.model, self.tokenizer)
        self.source = str(model_dir)

    def outputs(self, texts: list) -> np.ndarray:
        return forward_texts(self.model, self.tokenizer, texts, 64, self.precision)

    def vectors(self, texts: list[str]) -> np.ndarray:
        return embed(self.features, texts, batch_size=64, precision=self.precision)

    def info(self, config: ServeConfig) -> dict:
        kind = self.model.kind if self.exported else "classifier"
        return {"kind": kind, "task": self.config.task if self.classifies else None,
                "labels": list(self.config.labels) if self.classifies else [], "text_pairs": self.config.text_pairs,
                "runtime": "onnxruntime" if self.exported else f"pytorch ({self.precision})",
                "dim": self.config.d_model, "source": self.source, "encoder_clf_version": __version__,
                "limits": {"max_texts": config.max_texts, "max_chars": config.max_chars,
                           "max_batch": config.max_batch, "max_wait_ms": config.max_wait_ms}}


class MicroBatcher:
    """Concurrent requests' texts run together: the first waits up to ``max_wait_ms`` for others to join,
    up to ``max_batch`` texts (a request larger than that runs alone); one batch runs at a time, off the event
    loop, so the model is never called from two threads."""

    def __init__(self, run, max_batch: int, max_wait_ms: float) -> None:
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue | None = None
        self.requests = self.batches = 0
        self.worker: asyncio.Task | None = None

    async def submit(self, texts: list) -> np.ndarray:
        if self.queue is None:  # made on the server's own loop, at the first request
            self.queue = asyncio.Queue()
            self.worker = asyncio.create_task(self._work())
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, future))
        return await future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            size, deadline = len(batch[0][0]), loop.time() + self.max_wait
            while size < self.max_batch:
                try:  # what has queued already joins at once; then wait out the rest of max_wait for more
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    if deadline <= loop.time():
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), deadline - loop.time())
                    except asyncio.TimeoutError:
                        break
                batch.append(item)
                size += len(item[0])
            texts = [text for item, _ in batch for text in item]
            try:
                out = await loop.run_in_executor(None, self.run, texts)
            except Exception as err:  # the requests of this batch fail; the server goes on
                for _, future in batch:
                    if not future.done():  # a client that went away has cancelled its own
                        future.set_exception(err)
                continue
            self.requests += len(batch)
            self.batches += 1
            start = 0
            for item, future in batch:
                if not future.done():
                    future.set_result(out[start: start + len(item)])
                start += len(item)


def create_app(model_dir: str | Path, config: ServeConfig | None = None):
    """The FastAPI application serving ``model_dir``."""
    try:
        from fastapi import FastAPI, HTTPException, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import HTMLResponse, JSONResponse
        from pydantic import BaseModel, Field, StrictBool, StrictInt
    except ImportError:
        raise UsageError(f"serving needs FastAPI and uvicorn, in the serve extra: {EXTRA_HINT}") from None
    config = config or ServeConfig()
    served = Served(model_dir, config.precision)
    predicting = MicroBatcher(served.outputs, config.max_batch, config.max_wait_ms)
    embedding = MicroBatcher(served.vectors, config.max_batch, config.max_wait_ms)

    class PredictRequest(BaseModel):
        texts: list[str] | None = Field(None, description="texts to classify (a model of single texts)")
        pairs: list[tuple[str, str]] | None = Field(None, description="[first, second] pairs (a pair model)")
        # strict: pydantic would read `true` as 1 and "3" as 3, and a client's mistake would pass unseen
        top_k: StrictInt | None = Field(None, ge=1, description="keep the k best labels' scores")

    class EmbedRequest(BaseModel):
        texts: list[str] = Field(description="texts to embed")
        normalize: StrictBool = Field(False, description="scale each vector to unit L2 norm")

    app = FastAPI(title="encoder-clf", version=__version__,
                  description=f"{served.info(config)['kind']} from {served.source}")

    @app.exception_handler(UsageError)
    async def refused(request: Request, err: UsageError) -> JSONResponse:
        """What the model refuses (the CLI's one-line errors) is the request's fault: 422, not 500."""
        return JSONResponse({"detail": str(err)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        """422 naming each bad field (malformed JSON and non-UTF-8 bodies arrive here as well)."""
        problems = []
        for error in err.errors():
            if error.get("type") == "json_invalid":  # its loc ends in the character where parsing stopped, not a field
                reason = error.get("ctx", {}).get("error", "invalid")
                problems.append(f"body: not valid JSON at character {error['loc'][-1]} ({reason})")
                continue
            where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
            problems.append(f"{where}: {error.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(problems)}, status_code=422)

    def limited(given: list | None, field: str) -> list:
        """``given`` within the limits: 422 when empty or a text is too long or blank, 413 when too many."""
        if not given:
            raise HTTPException(422, f"{field} is empty; send at least one")
        if len(given) > config.max_texts:
            raise HTTPException(413, f"{len(given)} {field} in one request; the limit is max_texts={config.max_texts}")
        for number, example in enumerate(given):
            for text in example if isinstance(example, tuple) else (example,):
                if len(text) > config.max_chars:
                    raise HTTPException(422, f"{field}[{number}] has {len(text)} characters; the limit is "
                                             f"max_chars={config.max_chars}")
                if not text.strip():
                    raise HTTPException(422, f"{field}[{number}] is empty; every text needs a word")
                try:  # JSON may escape a lone surrogate, which the tokenizer refuses, failing the whole batch
                    text.encode("utf-8")
                except UnicodeEncodeError as err:
                    raise HTTPException(422, f"{field}[{number}] is not valid Unicode (a lone surrogate at character "
                                             f"{err.start}); send UTF-8 text") from None
        return list(given)

    def examples(request: PredictRequest) -> list:
        """The request's texts, or its pairs for a pair model; the other field must be absent."""
        pairs = served.config.text_pairs
        given, other = (request.pairs, request.texts) if pairs else (request.texts, request.pairs)
        if given is None or other is not None:
            shape = '{"pairs": [["first", "second"], ...]}' if pairs else '{"texts": ["...", ...]}'
            raise HTTPException(422, f"this model takes {'sentence pairs' if pairs else 'single texts'}: "
                                     f"send {shape}")
        return limited([tuple(pair) for pair in given] if pairs else given, "pairs" if pairs else "texts")

    @app.post("/predict")
    async def predict(request: PredictRequest) -> dict:
        """Labels and scores (or values) for texts, or for pairs with a pair model."""
        if not served.classifies:
            raise HTTPException(400, "this model embeds texts and has no labels: use POST /embed")
        logits = await predicting.submit(examples(request))
        found = predictions(served.model, torch.from_numpy(logits))
        return {"task": served.config.task, "results": records(found, served.config.task, request.top_k)}

    @app.post("/embed")
    async def embed_texts(request: EmbedRequest) -> dict:
        """Sentence vectors: the classifier's pooled features, or an exported encoder's."""
        vectors = await embedding.submit(limited(request.texts, "texts"))
        if request.normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return {"dim": int(vectors.shape[1]), "vectors": vectors.round(6).tolist()}

    @app.get("/health")
    async def health() -> dict:
        """Up, with the requests served and the forward passes that served them."""
        return {"status": "ok", "requests": predicting.requests + embedding.requests,
                "batches": predicting.batches + embedding.batches}

    @app.get("/info")
    async def info() -> dict:
        """The task, the labels, the runtime, the version and the server's limits."""
        return served.info(config)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return _page(served.info(config))

    return app


def serve(model_dir: str | Path, config: ServeConfig) -> None:
    """Run the server until SIGINT or SIGTERM (uvicorn finishes the requests in flight, then returns)."""
    try:
        import uvicorn
    except ImportError:
        raise UsageError(f"serving needs FastAPI and uvicorn, in the serve extra: {EXTRA_HINT}") from None
    app = create_app(model_dir, config)
    # uvicorn drains, then raises the signal it caught again under the handler it found: a quiet one makes
    # SIGTERM a clean exit (status 0) once the requests in flight are answered
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.run(app, host=config.host, port=config.port, log_level="info", timeout_graceful_shutdown=30)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _page(info: dict) -> str:
    """A page to try the model by hand: a text box, a button, and the answer."""
    pair = info["text_pairs"]
    second = '<textarea id="second" rows="2" placeholder="second text"></textarea>' if pair else ""
    body = ('{pairs: [[document.getElementById("text").value, document.getElementById("second").value]]}'
            if pair else '{texts: [document.getElementById("text").value]}')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>encoder-clf</title>
<style>body{{font-family:sans-serif;max-width:40em;margin:2em auto}}textarea{{width:100%}}</style></head>
<body><h1>encoder-clf</h1><p>{info['kind']} · {info['task'] or 'embeddings'} · {info['runtime']}</p>
<textarea id="text" rows="3" placeholder="a text to classify"></textarea>{second}
<p><button id="go">Predict</button></p><pre id="answer"></pre>
<script>
document.getElementById("go").onclick = async () => {{
  const response = await fetch("/predict", {{method: "POST", headers: {{"Content-Type": "application/json"}},
                                             body: JSON.stringify({body})}});
  const answer = await response.json();
  document.getElementById("answer").textContent =
    response.ok ? JSON.stringify(answer.results[0], null, 2) : answer.detail;
}};
</script></body></html>
"""

