"""The HTTP server as a real uvicorn process on 127.0.0.1: every endpoint, micro-batching, 4xx answers to bad
requests, and SIGTERM while requests are in flight."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from encoder_clf.data.tokenization import TokenizerConfig, pad_id, train_tokenizer
from encoder_clf.inference import predict, records
from encoder_clf.model.classifier import TextClassifier
from encoder_clf.persistence.model_dir import save_model

from conftest import tiny_config, toy_rows

TEXTS = ["a truly great film", "bad", "the plot was dull and the cast was poor", "fine", "lovely and superb"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(port: int, path: str, body=None, raw: bytes | None = None, timeout: float = 30) -> tuple[int, dict | str]:
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                     headers={"Content-Type": "application/json"} if data is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as err:
        text, status = err.read().decode(), err.code
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


class Server:
    def __init__(self, model_dir, *flags: str) -> None:
        self.port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen([sys.executable, "-m", "encoder_clf.cli", "serve", "--model", str(model_dir),
                                         "--port", str(self.port), *flags], env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited: {self.process.stdout.read()}")
            try:
                if call(self.port, "/health", timeout=2)[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("the server did not answer /health within 60 s")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tokenizer = train_tokenizer([t for t, _ in toy_rows(200, 0)] + TEXTS,
                                TokenizerConfig(vocab_size=100, min_frequency=1, max_length=24))
    torch.manual_seed(0)
    config = tiny_config(vocab_size=tokenizer.get_vocab_size(), pad_token_id=pad_id(tokenizer), labels=["neg", "pos"])
    model = TextClassifier(config).eval()
    with torch.no_grad():
        for parameter in model.head.parameters():
            parameter.normal_(0, 0.5)
    return save_model(tmp_path_factory.mktemp("serve") / "model", model, tokenizer)


@pytest.fixture(scope="module")
def server(model_dir):
    running = Server(model_dir, "--max-texts", "8", "--max-chars", "200", "--max-wait-ms", "200")
    yield running
    running.stop()


def test_every_endpoint_answers(server, model_dir):
    status, body = call(server.port, "/predict", {"texts": TEXTS, "top_k": 1})
    assert status == 200 and body["task"] == "single_label"
    expected = records(predict(model_dir, TEXTS, precision="fp32"), "single_label", 1)
    assert [r["label"] for r in body["results"]] == [r["label"] for r in expected]
    for ours, theirs in zip(body["results"], expected):
        assert ours["probabilities"] == pytest.approx(theirs["probabilities"], abs=1e-5)
    status, body = call(server.port, "/embed", {"texts": TEXTS[:2], "normalize": True})
    assert status == 200 and body["dim"] == 16 and len(body["vectors"]) == 2
    assert sum(v * v for v in body["vectors"][0]) == pytest.approx(1.0, abs=1e-4)
    status, body = call(server.port, "/embed", {"texts": TEXTS[:1], "normalize": "yes"})  # strict: not read as true
    assert (status, body["detail"]) == (422, "normalize: Input should be a valid boolean")
    status, info = call(server.port, "/info")
    assert status == 200 and (info["kind"], info["labels"], info["limits"]["max_texts"]) == ("classifier",
                                                                                           ["neg", "pos"], 8)
    assert call(server.port, "/docs")[0] == 200 and "openapi" in call(server.port, "/openapi.json")[1]
    status, page = call(server.port, "/")
    assert status == 200 and "<textarea" in page and "/predict" in page


def test_concurrent_requests_share_batches(server):
    before = call(server.port, "/health")[1]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda t: call(server.port, "/predict", {"texts": [t]}), TEXTS * 2))
    assert all(status == 200 and len(body["results"]) == 1 for status, body in answers)
    after = call(server.port, "/health")[1]
    assert after["requests"] - before["requests"] == 10
    assert after["batches"] - before["batches"] < 10  # some requests shared a forward pass


@pytest.mark.parametrize("body, raw, status, detail", [
    ({"texts": ["x"] * 9}, None, 413, "9 texts in one request; the limit is max_texts=8"),
    ({"texts": ["y" * 201]}, None, 422, "texts[0] has 201 characters; the limit is max_chars=200"),
    ({"texts": []}, None, 422, "texts is empty; send at least one"),
    ({"texts": ["  "]}, None, 422, "texts[0] is empty; every text needs a word"),
    ({"pairs": [["a", "b"]]}, None, 422, 'this model takes single texts: send {"texts": ["...", ...]}'),
    ({"texts": [3]}, None, 422, "texts.0: Input should be a valid string"),
    ({"texts": "a film"}, None, 422, "texts: Input should be a valid list"),
    ({"texts": ["a"], "top_k": 0}, None, 422, "top_k: Input should be greater than or equal to 1"),
    ({"texts": ["a"], "top_k": True}, None, 422, "top_k: Input should be a valid integer"),
    ({"texts": ["a"], "top_k": "2"}, None, 422, "top_k: Input should be a valid integer"),
    (None, b'{"texts": ["a"', 422, "body: not valid JSON at character 14 (Expecting ',' delimiter)"),
    # a lone surrogate is valid JSON but no text: the tokenizer refused it mid-batch (500 for every request there)
    (None, b'{"texts": ["a", "\\ud800"]}', 422,
     "texts[1] is not valid Unicode (a lone surrogate at character 0); send UTF-8 text"),
    (None, b'{"texts": ["\xff\xfe"]}', 400, "There was an error parsing the body"),
])
def test_bad_requests_get_a_4xx_json_error(server, body, raw, status, detail):
    got, answer = call(server.port, "/predict", body, raw)
    assert got == status and isinstance(answer, dict) and answer["detail"] == detail


def test_sigterm_finishes_the_requests_in_flight(model_dir):
    running = Server(model_dir, "--max-wait-ms", "300")
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(call, running.port, "/predict", {"texts": [t]}) for t in TEXTS]
        time.sleep(0.1)  # the requests are queued, waiting for their batch
        code = running.stop()
        answers = [future.result() for future in futures]
    assert code == 0
    assert [status for status, _ in answers] == [200] * len(TEXTS)


def test_an_exported_model_is_served_as_its_model_directory(model_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from encoder_clf.export import export

    export(model_dir, tmp_path / "exported")
    running = Server(tmp_path / "exported")
    try:
        status, body = call(running.port, "/predict", {"texts": TEXTS})
        info = call(running.port, "/info")[1]
    finally:
        assert running.stop() == 0
    assert status == 200 and info["runtime"] == "onnxruntime"
    expected = records(predict(model_dir, TEXTS, precision="fp32"), "single_label")
    for ours, theirs in zip(body["results"], expected):
        assert ours["label"] == theirs["label"]
        assert ours["probabilities"] == pytest.approx(theirs["probabilities"], abs=1e-4)


def test_the_page_shows_a_prediction_in_a_real_browser(server, model_dir):
    """Debian's headless Chromium (installed by .ci/run) types a text on the page at / and reads the answer."""
    webdriver = pytest.importorskip("selenium.webdriver")
    import shutil

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    try:
        chrome.get(f"http://127.0.0.1:{server.port}/")
        chrome.find_element(By.ID, "text").send_keys(TEXTS[0])
        chrome.find_element(By.ID, "go").click()
        shown = WebDriverWait(chrome, 20).until(lambda c: c.find_element(By.ID, "answer").text)
    finally:
        chrome.quit()
    expected = records(predict(model_dir, TEXTS[:1], precision="fp32"), "single_label")[0]
    assert json.loads(shown)["label"] == expected["label"]
