"""The command line end to end on tiny data, and one-line refusals (exit 2, nothing written)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from encoder_clf.cli import build_parser, main
from encoder_clf.data.splits import read_texts
from encoder_clf.metrics import read_log, records_of

from conftest import TINY, toy_rows, write_tsv


@pytest.fixture(scope="module")
def trained(toy_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    args = ["train", "--data", str(toy_data), "--out", str(out), "--quiet", "--precision", "fp32"]
    assert main(args + [x for s in TINY for x in ("--set", s)]) == 0
    return out


def test_train_writes_a_complete_run_directory(trained):
    names = sorted(p.name for p in trained.iterdir())
    assert names == ["confusion_matrix.png", "curves.png", "log.jsonl", "metrics.json", "model", "report.txt",
                     "run_config.json"]
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.9  # one keyword decides the label: the model must find it
    assert metrics["data"]["train"] == {"rows": 400, "truncated": 0, "balance": {"0": 199, "1": 201}}
    log = records_of(read_log(trained / "log.jsonl"), "evaluation")
    assert [r["epoch"] for r in log] == [1.0, 2.0, 3.0, 4.0]
    assert (trained / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_matches_training_metrics(trained, toy_data, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--model", str(trained / "model"), "--data", str(toy_data), "--json",
                 "--precision", "fp32"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == json.loads((trained / "metrics.json").read_text())["test"]["accuracy"]


def test_columns_named_otherwise_are_found_by_train_evaluate_and_embed(tmp_path, capsys):
    """Data as it often ships (an id, the texts in ``tweet``, the labels in ``sentiment``): every command finds
    the text by its content and sets the id aside."""
    data = tmp_path / "data"
    data.mkdir()
    for name, n, seed in [("train", 400, 0), ("validation", 60, 1), ("test", 60, 2)]:
        rows = toy_rows(n, seed)
        pd.DataFrame({"id": range(n), "tweet": [text for text, _ in rows],
                      "sentiment": [("neg", "pos")[label] for _, label in rows]}).to_csv(data / f"{name}.csv",
                                                                                         index=False)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--quiet", "--precision", "fp32"]
                + [x for s in TINY for x in ("--set", s)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.9
    capsys.readouterr()
    assert main(["evaluate", "--model", str(run / "model"), "--data", str(data), "--json", "--precision", "fp32"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == metrics["test"]["accuracy"]
    assert main(["embed", "--model", str(run / "model"), "--data", str(data / "test.csv"), "--out",
                 str(tmp_path / "v.npy"), "--quiet"]) == 0
    assert np.load(tmp_path / "v.npy").shape == (60, 16)


def test_predict_arguments_and_json(trained, capsys):
    capsys.readouterr()
    assert main(["predict", "--model", str(trained / "model"), "--json", "great film", "dull plot"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["label"] for line in lines] == ["1", "0"]
    assert all(abs(sum(line["probabilities"].values()) - 1) < 1e-5 for line in lines)


def test_predict_reads_a_file(trained, tmp_path, capsys):
    (tmp_path / "texts.txt").write_text("superb cast\n\nawful plot\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["predict", "--model", str(trained / "model"), "--file", str(tmp_path / "texts.txt")]) == 0
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == ["1", "0"]


def test_a_text_file_is_split_at_line_ends_only(trained, tmp_path, capsys):
    """A form feed or U+2028 inside a line stays in its text: one prediction, one vector, per line of the file."""
    (tmp_path / "texts.txt").write_text("superb\u2028cast\nawful\x0cplot\r\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["predict", "--model", str(trained / "model"), "--json", "--file", str(tmp_path / "texts.txt")]) == 0
    assert len(capsys.readouterr().out.strip().split("\n")) == 2
    assert read_texts(str(tmp_path / "texts.txt")) == ["superb\u2028cast", "awful\x0cplot"]


def bad_inputs(root):
    (root / "notes.xml").write_text("<a/>")
    write_tsv(root / "empty.tsv", [])
    (root / "nolabel.csv").write_text("text,stars,source\nhello,4,web\n")
    return {
        "missing path": (["--data", str(root / "missing" / "train.tsv")], "does not exist"),
        "unknown file type": (["--data", str(root / "notes.xml")], "unsupported file type '.xml'"),
        "missing label column": (["--data", str(root / "nolabel.csv")],
                                 "no label column found among text, stars, source"),
        "empty split": (["--data", str(root / "empty.tsv")], "the split is empty"),
        "heads": (["--set", "model.n_heads=3"], "model.d_model (256) must be divisible by model.n_heads (3)"),
        "attention rule": (["--set", "model.attention=cosine"],
                           "must be one of additive, concat, concat_position, dot"),
        "unknown key": (["--set", "train.epoch=2"], "unknown key 'train.epoch'"),
    }


@pytest.mark.parametrize("case", [
    "missing path", "unknown file type", "missing label column", "empty split", "heads", "attention rule",
    "unknown key"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, toy_data, capsys):
    args, message = bad_inputs(tmp_path)[case]
    if "--data" not in args:
        args = ["--data", str(toy_data), *args]
    out = tmp_path / "out"
    assert main(["train", "--out", str(out), "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("encoder-clf: error: ") and message in err[0], err
    assert not out.exists()


def test_existing_run_directory_is_not_overwritten(trained, toy_data, capsys):
    assert main(["train", "--data", str(toy_data), "--out", str(trained)]) == 2
    assert "already exists and is not empty; pick another --out or pass --overwrite" in capsys.readouterr().err


def test_predict_without_text(trained, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("\n")
    assert main(["predict", "--model", str(trained / "model"), "--file", str(tmp_path / "empty.txt")]) == 2
    assert "no text to classify" in capsys.readouterr().err


def test_evaluate_missing_model(toy_data, tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "none"), "--data", str(toy_data)]) == 2
    assert "model directory" in capsys.readouterr().err


# No n-gram part: the mixing weights fitted at each evaluation (L-BFGS, float32, threaded) wobble the tiny loss of a
# toy model that the n-grams separate by up to 1e-4 of itself, which counted as an improvement in 1 run of 5.
FROZEN = ["train.lr=1e-9", "train.head_lr=1e-9", "model.ngram_buckets=0"]


@pytest.mark.parametrize("extra, reason, steps", [
    # lr 1e-9 (the head's too): the second evaluation scores what the first did, and its loss too
    (["train.eval_every=1", "train.patience=1", *FROZEN],
     "early stopping: neither validation accuracy nor loss improved in 1 evaluations", 2),
    (["train.eval_every=1", "train.patience=3", *FROZEN],
     "early stopping: neither validation accuracy nor loss improved in 3 evaluations", 4),
    (["train.max_minutes=0.00001"], "time budget of 1e-05 minutes reached", 1),  # past the budget after one step
])
def test_training_stops_early(toy_data, tmp_path, extra, reason, steps):
    args = ["train", "--data", str(toy_data), "--out", str(tmp_path / "run"), "--quiet", "--precision", "fp32"]
    assert main(args + [x for s in TINY + extra for x in ("--set", s)]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["stop_reason"] == reason
    assert metrics["steps"] == steps and metrics["best_step"] == 1
    log = records_of(read_log(tmp_path / "run" / "log.jsonl"), "evaluation")
    assert [r["step"] for r in log] == list(range(1, steps + 1))


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_help_is_plain_prose_with_an_example_for_every_command(capsys):
    """No reST markup (roles, double back-quotes) reaches --help; each command shows one example."""
    markup = re.compile(r":(mod|func|class|meth|data|attr):`|``")
    top = _help(["--help"], capsys)
    assert not markup.search(top) and "encoder-clf train --data" in top
    commands = [name for name in build_parser()._subparsers._group_actions[0].choices]
    assert commands == ["train", "distill", "pretrain", "embed", "evaluate", "predict", "explain", "export", "serve",
                        "runs"]
    for name in commands:
        text = _help([name, "--help"], capsys)
        assert not markup.search(text), name
        example = text.split("example:\n", 1)[1].strip()
        assert example.startswith(f"encoder-clf {name} "), name
        assert max(len(line) for line in text.splitlines()) <= 120, name


def test_version_is_the_installed_distribution_s(capsys):
    from importlib.metadata import version

    assert _help(["--version"], capsys).strip() == f"encoder-clf {version('encoder-clf')}"


def test_make_help_lists_every_target_with_its_line():
    import shutil
    import subprocess
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parents[1]
    phony = next(line for line in (root / "Makefile").read_text().splitlines() if line.startswith(".PHONY:"))
    listed = subprocess.run(["make", "-s", "help"], cwd=root, capture_output=True, text=True, check=True).stdout
    lines = {line.split()[0]: line.split(None, 1)[1] for line in listed.splitlines() if line.strip()}
    assert set(lines) == set(phony.split()[1:])
    assert all(len(text) > 10 for text in lines.values())


@pytest.mark.parametrize("model", ["runs/r/model", "runs/r/model/"])
def test_make_export_writes_beside_the_model_s_run_with_or_without_a_trailing_slash(model):
    import shutil
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parents[1]
    dry = subprocess.run(["make", "-n", "-o", ".venv/.installed", "export", f"MODEL={model}", "QUANTIZE=int8"],
                         cwd=root, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    command = " ".join(dry.stdout.replace("\\\n", " ").split())
    assert f'export --model "{model}" --out "runs/r/exported-int8" --quantize int8' in command


@pytest.mark.parametrize("target", ["embed", "evaluate"])
def test_make_embed_and_evaluate_pass_text_column_when_given(target):
    import shutil
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parents[1]

    def command(*settings: str) -> str:
        dry = subprocess.run(["make", "-n", "-o", ".venv/.installed", target, "MODEL=runs/r/model", *settings],
                             cwd=root, capture_output=True, text=True, timeout=60)
        assert dry.returncode == 0, dry.stderr
        return " ".join(dry.stdout.replace("\\\n", " ").split())

    assert '--text-column "review body"' in command("TEXT_COLUMN=review body")
    assert "--text-column" not in command()


def _run_dir(root, name: str, lr: float, metrics: dict | None = None, checkpoint: bool = False):
    run = root / name
    run.mkdir(parents=True)
    config = {"data": {"path": "/data/toy"}, "model": {"d_model": 16, "vocab_size": 200 + len(name)},
              "train": {"lr": lr, "seed": 0, "metric": "accuracy"}}
    (run / "run_config.json").write_text(json.dumps(config))
    (run / "log.jsonl").write_text("")
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    if checkpoint:
        (run / "checkpoints" / "step-00000010").mkdir(parents=True)
    return run


def test_runs_lists_each_run_with_its_status_and_only_the_settings_that_differ(tmp_path, capsys):
    finished = {"task": "single_label", "validation": {"accuracy": 0.81}, "test": {"accuracy": 0.79},
                "train_time_s": 90.0}
    _run_dir(tmp_path, "a-finished", 1e-3, finished)
    _run_dir(tmp_path, "b-resumable", 3e-3, checkpoint=True)
    _run_dir(tmp_path, "c-failed", 1e-3)
    broken = _run_dir(tmp_path, "d-broken", 1e-3)
    (broken / "metrics.json").write_text('{"task": "single_la')  # cut off mid-write
    (tmp_path / "not-a-run").mkdir()
    assert main(["runs", str(tmp_path), "--json"]) == 0
    rows = {Path(row["path"]).name: row for row in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(rows) == {"a-finished", "b-resumable", "c-failed", "d-broken"}
    assert {name: row["status"] for name, row in rows.items()} == {
        "a-finished": "finished", "b-resumable": "resumable", "c-failed": "failed", "d-broken": "broken"}
    assert rows["d-broken"]["reason"].startswith("unreadable:")
    finished_row = rows["a-finished"]
    assert (finished_row["validation"], finished_row["test"], finished_row["minutes"]) == (0.81, 0.79, 1.5)
    assert finished_row["differs"] == {"train.lr": 1e-3}  # not the vocabulary size, which the data fills in
    assert main(["runs", str(tmp_path), "--sort", "test"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["start", "status", "task"] and "a-finished" in lines[1]  # scored runs first
    assert all("train.lr=" in line for line in lines[1:4]) and "seed" not in "".join(lines)
    assert "unreadable" in next(line for line in lines if "d-broken" in line)


def test_runs_of_other_kinds_differ_only_in_the_settings_both_have(tmp_path, capsys):
    """A pretraining run has no train settings and a classifier's run no pretrain ones: neither is a difference."""
    _run_dir(tmp_path, "a-train", 1e-3, {"task": "single_label", "validation": {"accuracy": 0.8}})
    _run_dir(tmp_path, "b-train", 3e-3, {"task": "single_label", "validation": {"accuracy": 0.7}})
    pretrained = tmp_path / "c-pretrain"
    pretrained.mkdir()
    (pretrained / "run_config.json").write_text(json.dumps({
        "data": {"path": "/data/corpus.txt"}, "model": {"d_model": 32}, "pretrain": {"lr": 1e-3, "seed": 0}}))
    (pretrained / "metrics.json").write_text(json.dumps({"heldout_loss_final": 4.5}))
    assert main(["runs", str(tmp_path), "--json"]) == 0
    rows = {Path(row["path"]).name: row for row in map(json.loads, capsys.readouterr().out.splitlines())}
    assert {name: row["differs"] for name, row in rows.items()} == {
        "a-train": {"model.d_model": 16, "train.lr": 1e-3}, "b-train": {"model.d_model": 16, "train.lr": 3e-3},
        "c-pretrain": {"model.d_model": 32}}
    assert main(["runs", str(tmp_path)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "c-pretrain" in line)
    assert "model.d_model=32  " in line and "train." not in line and "null" not in line


def test_runs_of_a_missing_directory_is_one_line_and_status_2(tmp_path, capsys):
    assert main(["runs", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"encoder-clf: error: {tmp_path / 'nowhere'}: no such directory; pass run directories or a " \
                  "folder of them (default runs/)"


def test_a_reader_that_stops_early_ends_the_listing_quietly(tmp_path):
    """``encoder-clf runs | head``: the closed pipe ends the command with status 0 and no traceback."""
    for i in range(600):  # more than a pipe's buffer holds, so that writing meets the closed end
        _run_dir(tmp_path, f"run-{i:03d}", 1e-3)
    command = [sys.executable, "-m", "encoder_clf.cli", "runs", str(tmp_path), "--json"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.read(100)
    process.stdout.close()
    assert process.wait(timeout=120) == 0
    assert process.stderr.read() == b""


def test_the_hubs_libraries_messages_print_once(tmp_path):
    """`datasets` and `huggingface_hub` print through handlers of their own (a Hub retry, say): not twice."""
    script = ("import logging, sys, datasets; from encoder_clf.cli import main; main(['runs', sys.argv[1]]); "
              "logging.getLogger('huggingface_hub.utils._http').warning('Retrying in 1s [Retry 1/5].')")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.stderr.count("Retrying in 1s") == 1, done.stderr
