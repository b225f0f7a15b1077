"""Faults during training: a killed run resumes to the same weights and metrics, checkpoints are atomic and
checked, a non-finite loss stops the run, and nothing in the package unpickles."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from encoder_clf.cli import main
from encoder_clf.data.tokenization import TokenizerConfig, train_tokenizer
from encoder_clf.errors import UsageError
from encoder_clf.metrics import read_log, records_of
from encoder_clf.persistence import checkpoints as state
from encoder_clf.training import run as training

from conftest import TINY, assert_same_files

# 400 rows in batches of 16: 25 steps an epoch, 50 in all. Evaluations at 10, 20, ... and at the end,
# checkpoints every 3 steps; dropout, token dropout and weight averaging all draw on or carry state. The n-gram
# part trains by AdamW too (sqrt): a fitted one scores the toy task perfectly from the first evaluation on, and
# a kill during a later best model's save needs a later best model ("fitted n-gram part" below resumes one).
SETTINGS = TINY + ["train.epochs=2", "train.eval_every=10", "train.checkpoint_every=3", "train.ema_decay=0.9",
                   "train.token_dropout=0.1", "train.precision=fp32", "model.ngram_weighting=sqrt"]
KILL_AT = 37  # mid-epoch 2, one step after the checkpoint at 36
# Run by a subprocess: SIGKILL itself inside the optimizer step number KILL_AT (argv[1]).
KILLER = """
import os, signal, sys
import torch
torch.set_num_threads(1)
kill_at, calls, step = int(sys.argv[1]), [0], torch.optim.AdamW.step
def counting(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, *args, **kwargs)
torch.optim.AdamW.step = counting
from encoder_clf.cli import main
sys.exit(main(sys.argv[2:]))
"""


class Killed(BaseException):
    """Stands in for SIGKILL in-process: nothing after the raise runs (fit's ``finally`` aside)."""


@pytest.fixture(scope="module")
def tokenizer_file(toy_data, tmp_path_factory):
    """One tokenizer for every run: its trainer may break frequency ties differently from run to run."""
    texts = [line.split("\t")[0] for line in (toy_data / "train.tsv").read_text().splitlines()[1:]]
    file = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    train_tokenizer(texts, TokenizerConfig(vocab_size=200, min_frequency=1)).save(str(file))
    return file


def train_args(data: Path, out: Path, settings: list[str]) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--quiet", *[x for s in settings for x in ("--set", s)]]


@pytest.fixture(scope="module")
def pinned(tokenizer_file):
    return SETTINGS + [f"tokenizer.path={tokenizer_file}"]


@pytest.fixture(scope="module")
def reference(toy_data, pinned, tmp_path_factory, one_thread):
    """The uninterrupted run every interrupted one must match."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(train_args(toy_data, out, pinned)) == 0
    return out


def assert_same_run(a: Path, b: Path, evaluations: list[int] | None = (10, 20, 30, 40, 50)) -> None:
    """:func:`conftest.assert_same_files`, and the evaluations at the steps expected."""
    assert_same_files(a, b)
    if evaluations is not None:
        assert [r["step"] for r in records_of(read_log(a / "log.jsonl"), "evaluation")] == list(evaluations)


def kill_in_process(monkeypatch, at: int) -> None:
    step, calls = torch.optim.AdamW.step, [0]

    def counting(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            raise Killed
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", counting)


def interrupted_run(monkeypatch, data: Path, out: Path, settings: list[str], at: int = KILL_AT,
                    flags: tuple[str, ...] = ()) -> Path:
    with monkeypatch.context() as patch:
        kill_in_process(patch, at)
        with pytest.raises(Killed):
            main(train_args(data, out, settings) + list(flags))
    return out


def test_sigkilled_run_resumes_to_identical_weights_and_metrics(reference, toy_data, pinned, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf-cache")}
    killed = subprocess.run([sys.executable, "-c", KILLER, str(KILL_AT), *train_args(toy_data, run, pinned)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    kept = [p.name for p in state.checkpoints(run / state.CHECKPOINTS)]
    assert kept == ["step-00000036", "step-00000033"]  # the newest K=2
    assert not (run / "metrics.json").exists()

    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert_same_run(reference, run)
    assert not (run / state.CHECKPOINTS).exists()  # a finished run has nothing to resume


def test_same_seed_gives_identical_runs(reference, toy_data, pinned, tmp_path):
    assert main(train_args(toy_data, tmp_path / "again", pinned)) == 0
    assert_same_run(reference, tmp_path / "again")


def test_truncated_checkpoint_is_detected_and_the_previous_one_used(reference, toy_data, pinned, tmp_path,
                                                                     monkeypatch, caplog):
    run = interrupted_run(monkeypatch, toy_data, tmp_path / "run", pinned)
    newest = run / state.CHECKPOINTS / "step-00000036" / "state.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="encoder_clf.persistence.checkpoints"):
        assert main(["train", "--resume", str(run), "--quiet"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("step-00000036 is unusable" in w and "falling back to the previous checkpoint" in w for w in warnings)
    assert_same_run(reference, run)


def test_resume_reuses_the_saved_tokenizer_and_never_retrains(toy_data, tmp_path, monkeypatch, one_thread):
    trained, real = [], training.train_tokenizer
    monkeypatch.setattr(training, "train_tokenizer", lambda *a, **k: trained.append(1) or real(*a, **k))
    run = interrupted_run(monkeypatch, toy_data, tmp_path / "run", SETTINGS, at=12)
    assert trained == [1]  # a positive control: the patch is where a fresh run trains its tokenizer
    saved = (run / state.CHECKPOINTS / "step-00000010" / "tokenizer.json").read_text()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert trained == [1]  # the resumed run did not train another
    assert json.loads((run / "model" / "tokenizer.json").read_text())["model"] == json.loads(saved)["model"]


def test_resume_refuses_data_that_changed(toy_data, pinned, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    shutil.copytree(toy_data, data)
    run = interrupted_run(monkeypatch, data, tmp_path / "run", pinned, at=5)
    with (data / "train.tsv").open("a") as handle:
        handle.write("a late extra row\t1\n")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the data differs from what" in err[0] and "restore the original files" in err[0]


def test_non_finite_loss_stops_the_run_naming_the_step(toy_data, pinned, tmp_path, monkeypatch, capsys):
    real, steps, last = training.task_loss, [0], [None]

    def poisoned(*args, **kwargs):
        loss_fn = real(*args, **kwargs)

        def loss(logits, labels):
            if labels is not last[0]:  # each of the model's predictors is scored on the step's labels
                steps[0], last[0] = steps[0] + 1, labels
            return loss_fn(logits, labels) * (float("nan") if steps[0] == 14 else 1.0)

        return loss

    monkeypatch.setattr(training, "task_loss", poisoned)
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(train_args(toy_data, run, pinned)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training loss is nan at step 14 (epoch 1)" in err[0], err
    assert "last good checkpoint" in err[0] and "lower train.lr" in err[0]
    assert [p.name for p in state.checkpoints(run / state.CHECKPOINTS)] == ["step-00000012", "step-00000010"]
    assert (run / "model" / "model.safetensors").is_file()  # the best model, from the evaluation at step 10
    assert not (run / "metrics.json").exists()


def test_overwrite_starts_afresh_and_never_resumes_an_older_run(toy_data, pinned, tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / state.CHECKPOINTS / "step-00000099").mkdir(parents=True)  # left by an older run in the same place
    (run / "metrics.json").write_text("{}")
    interrupted_run(monkeypatch, toy_data, run, pinned + ["train.keep_checkpoints=3"], at=8, flags=("--overwrite",))
    kept = [p.name for p in state.checkpoints(run / state.CHECKPOINTS)]
    assert kept == ["step-00000006", "step-00000003", "step-00000000"]
    assert not (run / "metrics.json").exists()


# --- checkpoint files ---------------------------------------------------------------------------------------------


@pytest.fixture
def trainables(tiny_model):
    model = tiny_model()
    optimizer = torch.optim.AdamW([{"params": list(model.parameters())[:3], "weight_decay": 0.1},
                                   {"params": list(model.parameters())[3:], "lr": 3e-4}], betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (step + 1))
    model(torch.tensor([[2, 7, 9, 3]])).logits.sum().backward()
    optimizer.step()
    scheduler.step()
    return state.Trainables(model, optimizer, scheduler, None, torch.Generator().manual_seed(5))


def test_optimizer_state_round_trips_through_tensors_and_json(trainables):
    tensors = {}
    plain = json.loads(json.dumps(state.flatten(trainables.optimizer.state_dict(), "optimizer", tensors)))
    restored = state.unflatten(plain, tensors)
    original = trainables.optimizer.state_dict()
    assert restored["param_groups"] == original["param_groups"]  # int keys, tuples (betas) and floats exact
    assert restored["state"].keys() == original["state"].keys()
    for key, moments in original["state"].items():
        assert all(torch.equal(moments[name], restored["state"][key][name]) for name in moments)


def test_restore_puts_back_weights_optimizer_schedule_and_random_streams(trainables, tmp_path):
    tokenizer = train_tokenizer(["a small corpus of words"] * 5, TokenizerConfig(vocab_size=100, min_frequency=1))
    at_save = {k: v.clone() for k, v in trainables.model.state_dict().items()}
    state.save_checkpoint(tmp_path, trainables, state.Progress(step=7, best=0.5), tokenizer, "data", keep=2)
    expected = (torch.rand(3), trainables.generator.get_state(), trainables.scheduler.get_last_lr())
    torch.rand(5)  # move every stream on, and the weights
    torch.rand(2, generator=trainables.generator)
    with torch.no_grad():
        next(trainables.model.parameters()).add_(1.0)
    before = {k: v.clone() for k, v in trainables.model.state_dict().items()}
    checkpoint = state.load_latest(tmp_path, 16)
    progress = state.restore(checkpoint, trainables)
    assert progress == state.Progress(step=7, best=0.5)
    assert torch.equal(torch.rand(3), expected[0])
    assert torch.equal(trainables.generator.get_state(), expected[1])
    assert trainables.scheduler.get_last_lr() == expected[2]
    assert not all(torch.equal(before[k], v) for k, v in trainables.model.state_dict().items())
    restored = trainables.model.state_dict()
    assert restored.keys() == at_save.keys()
    assert all(torch.equal(restored[k], at_save[k]) for k in restored)  # the weights as they were saved, exactly
    assert checkpoint.tokenizer.get_vocab() == tokenizer.get_vocab()


@pytest.mark.parametrize("broken", ["state.safetensors", "state.json", "tokenizer.json", "missing file"])
def test_broken_checkpoint_is_set_aside_for_the_one_before(trainables, tmp_path, broken, caplog):
    tokenizer = train_tokenizer(["a small corpus of words"] * 5, TokenizerConfig(vocab_size=100, min_frequency=1))
    for step in (1, 2, 3):
        state.save_checkpoint(tmp_path, trainables, state.Progress(step=step), tokenizer, "data", keep=2)
    assert [p.name for p in state.checkpoints(tmp_path)] == ["step-00000003", "step-00000002"]
    file = tmp_path / "step-00000003" / ("state.json" if broken == "missing file" else broken)
    if broken == "missing file":
        file.unlink()
    else:
        file.write_bytes(file.read_bytes()[:-10])
    (tmp_path / ".step-00000004.x1y2z3").mkdir()  # the staging directory of a write cut short
    with caplog.at_level(logging.WARNING, logger="encoder_clf.persistence.checkpoints"):
        assert state.load_latest(tmp_path, 16).progress.step == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".step-00000003.broken", "step-00000002"]
    assert "step-00000003 is unusable" in caplog.text


def test_no_checkpoint_at_all_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no usable checkpoint to resume from"):
        state.load_latest(tmp_path / state.CHECKPOINTS, 16)


def test_make_train_passes_resume_through():
    root = Path(__file__).resolve().parents[1]
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    dry = subprocess.run(["make", "-n", "-o", ".venv/.installed", "train", "RESUME=runs/x"], cwd=root,
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert 'encoder-clf train --resume "runs/x"' in dry.stdout and "--data" not in dry.stdout


def test_make_train_passes_settings_given_with_resume_on_for_the_command_to_refuse(tmp_path, capsys):
    """make train RESUME=... SET=... must not resume with SET dropped unsaid: the command refuses it in one line."""
    root = Path(__file__).resolve().parents[1]
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    dry = subprocess.run(["make", "-n", "-o", ".venv/.installed", "train", "RESUME=runs/x", "OUT=runs/y",
                          "CONFIG=c.json", "SET=train.lr=0.1 train.max_steps=5"], cwd=root, capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    command = " ".join(dry.stdout.replace("\\\n", " ").split())
    assert ('encoder-clf train --resume "runs/x" --out "runs/y" --config "c.json" --set train.lr=0.1 '
            "--set train.max_steps=5") in command and "--data" not in command
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path), "--out", "runs/y", "--set", "train.lr=0.1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "encoder-clf: error: --resume continues with the settings in the run's run_config.json; drop --set, --out"]


# --- finalisation: a kill at any point leaves a run that --resume completes, or a complete one ----------------


def test_a_kill_between_the_renames_of_the_model_save_is_resumed(reference, toy_data, pinned, tmp_path,
                                                                 monkeypatch):
    """save_model moves the old model/ aside, then the new one in: a kill between leaves .model.old only."""
    run, real = tmp_path / "run", os.replace

    def replace(src, dst):
        real(src, dst)
        if Path(dst).name == ".model.old" and Path(src).parent == run:  # the old best model is aside
            raise Killed

    with monkeypatch.context() as patch:
        patch.setattr("encoder_clf.persistence.model_dir.os.replace", replace)
        with pytest.raises(Killed):
            main(train_args(toy_data, run, pinned))
    assert (run / ".model.old").is_dir() and not (run / "model").exists()  # truly between the two renames
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert_same_run(reference, run)


def test_a_kill_while_the_plots_are_drawn_leaves_a_run_to_resume(reference, toy_data, pinned, tmp_path,
                                                                 monkeypatch):
    from matplotlib.figure import Figure

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(Figure, "savefig", lambda *a, **k: (_ for _ in ()).throw(Killed()))
        with pytest.raises(Killed):
            main(train_args(toy_data, run, pinned))
    assert not (run / "metrics.json").exists()  # not taken for a finished run
    assert not list(run.glob("*.png"))  # and no half-written plot
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert_same_run(reference, run)


def test_a_kill_after_metrics_json_leaves_a_complete_run(reference, toy_data, pinned, tmp_path, monkeypatch,
                                                         capsys):
    run, real = tmp_path / "run", shutil.rmtree

    def rmtree(path, *args, **kwargs):
        if Path(path) == run / state.CHECKPOINTS and (run / "metrics.json").exists():  # the run's last act
            raise Killed
        return real(path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr("encoder_clf.training.recorder.shutil.rmtree", rmtree)
        with pytest.raises(Killed):
            main(train_args(toy_data, run, pinned))
    assert (run / state.CHECKPOINTS).is_dir()
    real(run / state.CHECKPOINTS)  # what the kill left behind is all a finished run has, and its checkpoints
    assert_same_run(reference, run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert "the run already finished" in capsys.readouterr().err


# --- resume in every mode --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode, settings, kill_at, evaluations", [
    ("streaming", ["data.streaming=true", "train.max_steps=50"], 37, [10, 20, 30, 40, 50]),
    ("gradient accumulation", ["train.grad_accum=2"], 17, [10, 20, 26]),
    # learning all but off: the second evaluation improves neither the metric nor the loss, and the run stops
    ("early stopping", ["train.patience=1", "train.eval_every=4", "train.lr=1e-9", "train.head_lr=1e-9"], 7, None),
    ("fitted n-gram part", ["model.ngram_weighting=tfidf"], 17, [10, 20, 30, 40, 50]),
])
def test_a_run_resumes_bit_for_bit_in_each_mode(mode, settings, kill_at, evaluations, toy_data, pinned, tmp_path,
                                                monkeypatch):
    assert main(train_args(toy_data, tmp_path / "reference", pinned + settings)) == 0
    if mode == "early stopping":
        metrics = json.loads((tmp_path / "reference" / "metrics.json").read_text())
        assert metrics["stop_reason"].startswith("early stopping") and metrics["steps"] > kill_at
    run = interrupted_run(monkeypatch, toy_data, tmp_path / "run", pinned + settings, at=kill_at)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert_same_run(tmp_path / "reference", run, evaluations)


@pytest.mark.parametrize("version", [1, 2])
def test_a_run_checkpointed_by_an_older_version_is_refused_in_one_line(tmp_path, capsys, version):
    """tests/fixtures/run-v1: a run killed at step 5 by the code before head.weights (checkpoint format 1); format
    2 (before the stacked Q/K/V projection) is that run's metadata with the format renamed."""
    run = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "fixtures" / "run-v1", run)
    meta = run / "checkpoints" / "step-00000004" / "state.json"
    meta.write_text(meta.read_text().replace("encoder-clf-checkpoint/1", f"encoder-clf-checkpoint/{version}"))
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"encoder-clf: error: {run / 'checkpoints' / 'step-00000004'}: written by an older encoder-clf "
                   f"(encoder-clf-checkpoint/{version}), whose runs this version cannot continue; finish the run "
                   "with the version that started it, or start it again with --overwrite"]
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing set aside or rewritten


@pytest.fixture(scope="module")
def multi_label_pairs(tmp_path_factory):
    """Pairs of toy sentences with any of two labels: each text's sentiment word, when it is a positive one."""
    from conftest import toy_rows

    root = tmp_path_factory.mktemp("pairs")
    for name, n, seed in [("train", 300, 0), ("validation", 60, 1)]:
        rows = zip(toy_rows(n, seed), toy_rows(n, seed + 10))
        lines = [f"{a}\t{b}\t{','.join(tag for tag, y in (('first', ya), ('second', yb)) if y)}"
                 for (a, ya), (b, yb) in rows]
        (root / f"{name}.tsv").write_text("sentence1\tsentence2\tlabels\n" + "\n".join(lines) + "\n")
    return root


def test_a_multi_label_pair_run_resumes_bit_for_bit(multi_label_pairs, pinned, tmp_path, monkeypatch):
    """The thresholds tuned at each evaluation and the pairs' token types survive a kill like the weights."""
    settings = pinned + ["model.ngram_buckets=64"]
    assert main(train_args(multi_label_pairs, tmp_path / "reference", settings)) == 0
    metrics = json.loads((tmp_path / "reference" / "metrics.json").read_text())
    assert metrics["task"] == "multi_label" and metrics["text_pairs"]
    run = interrupted_run(monkeypatch, multi_label_pairs, tmp_path / "run", settings, at=23)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert_same_run(tmp_path / "reference", run, [10, 20, 30, 38])


def _scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run's TensorBoard events, as TensorBoard reads them (a resumed run's purge applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(run / "tensorboard"))
    board.Reload()
    return {tag: [(event.step, event.value) for event in board.Scalars(tag)] for tag in board.Tags()["scalars"]}


def test_tensorboard_events_hold_the_log_s_scalars_once_after_a_resume(toy_data, pinned, tmp_path, monkeypatch):
    """Killed three steps past its checkpoint, the resumed run's events show each of those steps once."""
    settings = pinned + ["train.checkpoint_every=5"]
    assert main(train_args(toy_data, tmp_path / "reference", settings) + ["--tensorboard"]) == 0
    run = interrupted_run(monkeypatch, toy_data, tmp_path / "run", settings, at=38, flags=("--tensorboard",))
    written = _scalars(run)
    assert [step for step, _ in written["train/loss"]][-2:] == [36, 37]  # past the checkpoint at step 35
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    reference, resumed = _scalars(tmp_path / "reference"), _scalars(run)
    log = read_log(tmp_path / "reference" / "log.jsonl")
    steps, evaluations = records_of(log, "step"), records_of(log, "evaluation")
    assert set(reference) >= {"train/loss", "train/lr", "train/grad_norm", "train/examples_per_s",
                              "validation/accuracy", "validation/macro_f1", "validation/loss"}
    assert [step for step, _ in reference["train/loss"]] == [r["step"] for r in steps]
    assert [value for _, value in reference["train/loss"]] == pytest.approx([r["train_loss"] for r in steps])
    assert [step for step, _ in reference["validation/accuracy"]] == [r["step"] for r in evaluations]
    for tag in set(reference) - {"train/examples_per_s"}:  # speed differs from run to run
        assert resumed[tag] == reference[tag], tag
    # the final scores beside the settings (the HParams tab), and the task's figure
    metrics = json.loads((tmp_path / "reference" / "metrics.json").read_text())
    assert reference["final/test_accuracy"][0][1] == pytest.approx(metrics["test"]["accuracy"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(tmp_path / "reference" / "tensorboard"))
    board.Reload()
    assert board.Tags()["images"] == ["confusion_matrix"]


def test_tensorboard_without_its_package_is_refused_before_anything_is_written(toy_data, tmp_path, monkeypatch,
                                                                                capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else
                        find_spec(name, *a))
    assert main(train_args(toy_data, tmp_path / "run", TINY) + ["--tensorboard"]) == 2
    assert capsys.readouterr().err.strip() == ("encoder-clf: error: train.tensorboard=true needs the tensorboard "
                                               "package; pip install 'encoder-clf[tensorboard]' (or turn it off)")
    assert not (tmp_path / "run").exists()
