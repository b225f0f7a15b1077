"""Several processes (torchrun, gloo on CPU) and gradient accumulation: the same optimisation as one process."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from encoder_clf.cli import main
from encoder_clf.data.tokenization import TokenizerConfig, train_tokenizer
from encoder_clf.errors import UsageError
from encoder_clf.metrics import read_log, records_of
from encoder_clf.persistence.checkpoints import CHECKPOINTS, checkpoints
from encoder_clf.settings import with_overrides
from encoder_clf.training import batches as training_batches
from encoder_clf.training import loop
from encoder_clf.training import run as training
from encoder_clf.training.config import RunConfig
from encoder_clf.training.distributed import World
from encoder_clf.training.run import train

from conftest import TINY, assert_same_files

# No dropout anywhere: then two processes and one process accumulating two batches compute the same steps.
EXACT = ["model.dropout=0", "model.attention_dropout=0", "train.precision=fp32"]
SAMPLE = ["tokenizer.vocab_size=2000", "model.d_model=64", "model.d_ff=128", "model.n_layers=1",
          "train.epochs=3", "train.batch_size=32", *EXACT]
RUN_FILES = {"model", "metrics.json", "report.txt", "log.jsonl", "run_config.json", "confusion_matrix.png",
             "curves.png"}

# Run by torchrun: rank 0 SIGKILLs itself inside its optimizer step number argv[1]; rank 1 then loses its peer.
KILLER = """
import os, signal, sys
import torch
kill_at, calls, step = int(sys.argv[1]), [0], torch.optim.AdamW.step
def counting(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == kill_at and os.environ["RANK"] == "0":
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, *args, **kwargs)
torch.optim.AdamW.step = counting
from encoder_clf.cli import main
sys.exit(main(sys.argv[2:]))
"""


def settings_args(settings: list[str]) -> list[str]:
    return [x for s in settings for x in ("--set", s)]


def torchrun(args: list[str], cwd: Path, script: str | None = None) -> subprocess.CompletedProcess:
    """Two CPU processes with one thread each, on a free port (no GPU: gloo, and CPU determinism)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_CACHE": str(cwd / "hf-cache"),
           "CUDA_VISIBLE_DEVICES": ""}
    target = [script] if script else ["-m", "encoder_clf.cli"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *target, *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def sst2_even(sst2_dir, tmp_path_factory):
    """1,984 SST-2 training rows of 10 words or more (62 batches of 32: no rank is topped up) and 400 of
    the validation and test rows each."""
    root = tmp_path_factory.mktemp("sst2_even")
    lines = (sst2_dir / "train.tsv").read_text(encoding="utf-8").splitlines()
    long_rows = [i for i in range(1, len(lines)) if len(lines[i].split("\t")[0].split()) >= 10]
    rows = np.random.default_rng(0).choice(long_rows, size=1984, replace=False)
    (root / "train.tsv").write_text("\n".join([lines[0]] + [lines[i] for i in rows]) + "\n", encoding="utf-8")
    for split in ("validation", "test"):
        kept = (sst2_dir / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[:401]
        (root / f"{split}.tsv").write_text("\n".join(kept) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def ddp_run(sst2_even, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("ddp")
    done = torchrun(["train", "--data", str(sst2_even), "--out", str(cwd / "run"), "--quiet",
                     *settings_args(SAMPLE)], cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return cwd / "run"


def test_steps_deal_batches_round_robin_and_top_up_the_last():
    batches = [np.array([i]) for i in range(5)]
    steps = list(training_batches.deal_steps(batches, grad_accum=2, world=World(rank=1, size=2)))
    assert [[int(b[0]) for b in step] for step in steps] == [[0, 1, 2, 3], [4, 0]]  # topped up with batch 0
    solo = list(training_batches.deal_steps(batches, grad_accum=2, world=World()))
    assert [[int(b[0]) for b in step] for step in solo] == [[0, 1], [2, 3], [4]]  # one process: no top-up


def test_gradient_accumulation_equals_one_batch_of_the_union(toy_data, tmp_path, monkeypatch, one_thread):
    """Micro-batches of unequal size, each weighted by its share of the step: the mean loss of the union."""
    rng = np.random.default_rng(0)
    micro = [np.sort(rng.choice(400, size=n, replace=False)) for n in (5, 11, 9, 7)]
    union = [np.concatenate(micro[:2]), np.concatenate(micro[2:])]
    tokenizer = []  # the second run reuses the first one's: the trainer may break ties differently
    for name, batches, accum in [("accumulated", micro, 2), ("union", union, 1)]:
        monkeypatch.setattr(training_batches, "bucket_batches", lambda *a, b=batches, **k: list(b))
        config = with_overrides(RunConfig(), [f"data.path={toy_data}", *TINY, *EXACT, "train.epochs=3",
                                              f"train.grad_accum={accum}", *tokenizer])
        assert train(config, tmp_path / name, progress=False).metrics["steps"] == 6
        tokenizer = [f"tokenizer.path={tmp_path / name / 'model'}"]
    weights = [load_file(tmp_path / name / "model" / "model.safetensors") for name in ("accumulated", "union")]
    for key in weights[0]:
        # the mixing weights are an L-BFGS fit to the parts' validation logits, which stops at its own tolerance
        # (a weight near 0, approached in log space, is the least determined: 2e-5 and 6e-5 mix alike)
        atol, rtol = (1e-3, 1e-2) if key == "head.weights" else (1e-5, 1e-4)
        torch.testing.assert_close(weights[0][key], weights[1][key], atol=atol, rtol=rtol,
                                   msg=lambda message, name=key: f"{name}: {message}")


def test_grad_accum_must_be_positive():
    with pytest.raises(UsageError, match="train.grad_accum must be a positive integer"):
        with_overrides(RunConfig(), ["train.grad_accum=0"])


@pytest.mark.slow
def test_torchrun_two_processes_train_together_and_write_one_run(ddp_run, sst2_even, tmp_path, capsys):
    assert {p.name for p in ddp_run.iterdir()} == RUN_FILES  # one set of files, no leftovers
    metrics = json.loads((ddp_run / "metrics.json").read_text())
    assert metrics["processes"] == 2
    assert metrics["examples_per_process"] == [992 * 3, 992 * 3]  # both ranks took part, half the data each
    log = records_of(read_log(ddp_run / "log.jsonl"), "evaluation")
    assert [r["step"] for r in log] == [31, 62, 93]  # 62 batches of 32 an epoch, two per step
    assert log[-1]["train_loss"] < log[0]["train_loss"]

    for split in ("validation", "test"):  # the reduced metrics equal one process scoring the saved model
        assert main(["evaluate", "--model", str(ddp_run / "model"), "--data", str(sst2_even), "--split", split,
                     "--precision", "fp32", "--json"]) == 0
        single = json.loads(capsys.readouterr().out)
        assert single["accuracy"] == metrics[split]["accuracy"]
        assert single["macro_f1"] == metrics[split]["macro_f1"]


@pytest.mark.slow
def test_two_processes_match_one_process_accumulating_two_batches(ddp_run, sst2_even, tmp_path, one_thread):
    """Same batches, same steps: DDP's averaged gradient is the mean over both ranks' examples."""
    settings = [f"data.path={sst2_even}", *SAMPLE, "train.grad_accum=2", f"tokenizer.path={ddp_run / 'model'}"]
    solo = train(with_overrides(RunConfig(), settings), tmp_path / "solo", progress=False).metrics
    together = json.loads((ddp_run / "metrics.json").read_text())
    assert solo["steps"] == together["steps"] == 93
    assert abs(solo["validation"]["accuracy"] - together["validation"]["accuracy"]) <= 2 / 400
    weights = [load_file(run / "model" / "model.safetensors") for run in (ddp_run, tmp_path / "solo")]
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], atol=1e-3, rtol=1e-3)


@pytest.mark.slow
def test_killed_two_process_run_resumes_to_the_same_result(toy_data, tmp_path):
    """Each rank's random streams are checkpointed: the resumed run replays the uninterrupted one bit for bit."""
    texts = [line.split("\t")[0] for line in (toy_data / "train.tsv").read_text().splitlines()[1:]]
    train_tokenizer(texts, TokenizerConfig(vocab_size=200, min_frequency=1)).save(str(tmp_path / "tokenizer.json"))
    settings = [*TINY, "train.epochs=2", "train.eval_every=5", "train.checkpoint_every=3", "train.token_dropout=0.1",
                "train.precision=fp32", f"tokenizer.path={tmp_path / 'tokenizer.json'}"]
    args = lambda out: ["train", "--data", str(toy_data), "--out", str(out), "--quiet", *settings_args(settings)]  # noqa: E731
    assert torchrun(args(tmp_path / "reference"), tmp_path).returncode == 0
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    killed = torchrun(["20", *args(tmp_path / "run")], tmp_path, script=str(killer))
    assert killed.returncode != 0 and not (tmp_path / "run" / "metrics.json").exists()
    # killed in step 20: of the checkpoints at 0, 3, 5, 6, ... 15, 18 the newest two are kept
    assert [p.name for p in checkpoints(tmp_path / "run" / CHECKPOINTS)] == ["step-00000018", "step-00000015"]
    with pytest.raises(UsageError, match=r"trained by 2 process\(es\) and is resumed by 1; "
                                         r"resume it with torchrun --nproc_per_node=2"):
        training.resume(tmp_path / "run", progress=False)
    resumed = torchrun(["train", "--resume", str(tmp_path / "run"), "--quiet"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    assert_same_files(tmp_path / "reference", tmp_path / "run")



def test_two_processes_train_a_pair_regression_model(tmp_path):
    """Pairs' token types and a regression target go through the ranks' shards and the gathered evaluation."""
    rows = ["sentence1\tsentence2\tscore"]
    rng = np.random.default_rng(0)
    words = ["great", "awful", "film", "plot", "cast", "the"]
    for _ in range(160):
        a, b = (" ".join(rng.choice(words, 4)) for _ in range(2))
        rows.append(f"{a}\t{b}\t{len(set(a.split()) & set(b.split())) + rng.uniform(-0.2, 0.2):.3f}")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.tsv").write_text("\n".join(rows) + "\n")
    settings = [*TINY, "train.epochs=2", "train.precision=fp32", "model.ngram_buckets=64"]
    args = ["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--quiet",
            *settings_args(settings)]
    result = torchrun(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["task"] == "regression" and metrics["text_pairs"] and metrics["processes"] == 2
    assert metrics["validation"]["n"] == 16 and np.isfinite(metrics["validation"]["pearson"])
    assert (tmp_path / "run" / "scatter.png").is_file()


def test_make_train_ddp_launches_torchrun_with_the_train_flags():
    root = Path(__file__).resolve().parents[1]
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    for extra, expected in [([], '-m encoder_clf.cli train --data "data/x"'),
                            (["RESUME=runs/x"], '-m encoder_clf.cli train --resume "runs/x"')]:
        dry = subprocess.run(["make", "-n", "-o", ".venv/.installed", "train-ddp", "NPROC=3", "DATA=data/x", *extra],
                             cwd=root, capture_output=True, text=True, timeout=60)
        assert dry.returncode == 0, dry.stderr
        command = " ".join(dry.stdout.replace("\\\n", " ").split())
        assert "torchrun --standalone --nproc_per_node=3" in command and expected in command


def test_compile_option_compiles_the_training_forward(toy_data, tmp_path, monkeypatch, one_thread):
    """The opt-in goes through torch.compile (dynamo traces our model); with the eager backend, same numbers."""
    calls = []
    real = torch.compile

    def eager_compile(module, **options):
        calls.append(options)
        return real(module, backend="eager", dynamic=options.get("dynamic"))

    settings = [f"data.path={toy_data}", *TINY, *EXACT, "train.epochs=1"]
    plain = train(with_overrides(RunConfig(), settings), tmp_path / "plain", progress=False).metrics
    monkeypatch.setattr(loop.torch, "compile", eager_compile)
    pinned = settings + ["train.compile=true", f"tokenizer.path={tmp_path / 'plain' / 'model'}"]
    compiled = train(with_overrides(RunConfig(), pinned), tmp_path / "compiled", progress=False).metrics
    assert calls == [{"dynamic": True}]
    assert compiled["validation"] == plain["validation"]
