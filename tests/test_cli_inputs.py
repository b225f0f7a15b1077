"""What the command line reads and prints around a run: --out, JSON lines with the model's own field names, a file
with a BOM, and multi-label --top-k lines."""

import io
import json

import numpy as np
import pytest

from encoder_clf import cli
from encoder_clf.cli import main
from encoder_clf.inference import Predictions

from conftest import TINY, tiny_config, toy_rows

FAST = [*TINY, "train.epochs=1", "model.ngram_buckets=0"]


def _train(data, out, *settings: str) -> None:
    args = ["train", "--data", str(data), "--out", str(out), "--quiet", "--precision", "fp32"]
    assert main(args + [x for s in [*FAST, *settings] for x in ("--set", s)]) == 0


@pytest.fixture(scope="module")
def single_model(tmp_path_factory, one_thread):
    """A one-text model whose data named its text column ``comment`` (data.text_column)."""
    root = tmp_path_factory.mktemp("single")
    (root / "train.tsv").write_text("comment\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in toy_rows(120, 0)),
                                    encoding="utf-8")
    _train(root / "train.tsv", root / "run", "data.text_column=comment")
    return root / "run" / "model"


@pytest.fixture(scope="module")
def pair_model(tmp_path_factory, one_thread):
    """A pair model whose data named its two texts ``foo`` and ``bar`` (data.text_columns)."""
    root = tmp_path_factory.mktemp("pairs")
    rows = "".join(f"{a}\t{b}\t{y}\n" for (a, y), (b, _) in zip(toy_rows(120, 0), toy_rows(120, 1)))
    (root / "train.tsv").write_text("foo\tbar\tlabel\n" + rows, encoding="utf-8")
    _train(root / "train.tsv", root / "run", "data.text_columns=foo,bar")
    return root / "run" / "model"


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# --- train --out ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("out, flags, named", [
    ("afile", [], "--out {root}/afile"),
    ("afile", ["--overwrite"], "--out {root}/afile"),  # --overwrite reuses a run directory; it never deletes a file
    ("afile/run", [], "--out {root}/afile/run: {root}/afile"),
])
def test_train_out_naming_a_file_is_one_line_exit_2_and_touches_nothing(toy_data, tmp_path, capsys, out, flags, named):
    (tmp_path / "afile").write_text("notes\n")
    assert main(["train", "--data", str(toy_data), "--out", str(tmp_path / out), "--quiet", *flags]) == 2
    assert _error(capsys) == (f"encoder-clf: error: {named.format(root=tmp_path)} is a file, not a directory; "
                              "pass a directory for the run")
    assert [p.name for p in tmp_path.iterdir()] == ["afile"] and (tmp_path / "afile").read_text() == "notes\n"


# --- predict: JSON lines name their texts as the training data did --------------------------------------------------

def _predict_json(model, capsys, *args: str) -> list[dict]:
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--json", *args]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_a_pair_model_reads_json_lines_with_its_own_column_names_or_the_usual_ones(pair_model, monkeypatch, capsys):
    lines = ['{"foo": "great film", "bar": "dull plot"}', '{"sentence1": "poor cast", "sentence2": "fine plot"}']
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    results = _predict_json(pair_model, capsys)
    assert [(r["text"], r["text_pair"]) for r in results] == [("great film", "dull plot"), ("poor cast", "fine plot")]


def test_a_pair_model_refuses_json_without_its_fields_naming_both_kinds_of_names(pair_model, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO('{"foo": "great film", "baz": "dull plot"}\n'))
    assert main(["predict", "--model", str(pair_model), "--json"]) == 2
    assert _error(capsys) == ("encoder-clf: error: standard input, line 1: no pair of text fields among foo, baz; "
                              "name them foo and bar, or sentence1 and sentence2 (or text and text_pair)")


def test_a_one_text_model_reads_json_lines_with_its_own_column_name_or_the_one_string(single_model, tmp_path,
                                                                                     capsys):
    (tmp_path / "in.jsonl").write_text('{"comment": "superb cast", "id": 7}\n{"text": "awful plot"}\n'
                                       '{"id": 8, "tweet": "fine film", "stars": 4}\n', encoding="utf-8")
    results = _predict_json(single_model, capsys, "--file", str(tmp_path / "in.jsonl"))
    assert [r["text"] for r in results] == ["superb cast", "awful plot", "fine film"]
    (tmp_path / "bad.jsonl").write_text('{"words": "superb cast", "source": "web"}\n', encoding="utf-8")
    assert main(["predict", "--model", str(single_model), "--file", str(tmp_path / "bad.jsonl")]) == 2
    assert _error(capsys) == (f"encoder-clf: error: --file {tmp_path / 'bad.jsonl'}, line 1: no text field among "
                              "words, source; name it comment, or text")


# --- predict --file with a byte-order mark --------------------------------------------------------------------------

def test_a_byte_order_mark_is_not_part_of_the_first_text(single_model, tmp_path, capsys):
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfsuperb cast\nawful plot\n")
    (tmp_path / "plain.txt").write_bytes(b"superb cast\nawful plot\n")
    with_bom = _predict_json(single_model, capsys, "--file", str(tmp_path / "bom.txt"))
    assert [r["text"] for r in with_bom] == ["superb cast", "awful plot"]
    assert with_bom == _predict_json(single_model, capsys, "--file", str(tmp_path / "plain.txt"))


def test_a_bad_byte_after_a_byte_order_mark_is_named_at_its_offset_in_the_file(single_model, tmp_path, capsys):
    (tmp_path / "bad.txt").write_bytes(b"\xef\xbb\xbfab\xff\n")
    assert main(["predict", "--model", str(single_model), "--file", str(tmp_path / "bad.txt")]) == 2
    assert _error(capsys) == (f"encoder-clf: error: --file {tmp_path / 'bad.txt'} is not UTF-8 (byte 5); "
                              "re-encode it as UTF-8")


# --- predict: a multi-label line lists the labels it scores ---------------------------------------------------------

NAMES = ["approval", "gratitude", "neutral"]


@pytest.fixture
def multi_label(monkeypatch):
    """Two texts with set scores: the first's best label is above its threshold, the second's is not."""
    found = Predictions([["approval", "gratitude"], ["gratitude"]],
                        np.array([[0.21, 0.27, 0.05], [0.10, 0.20, 0.30]], dtype=np.float32), NAMES)
    monkeypatch.setattr(cli, "model_config", lambda model: tiny_config(labels=NAMES, task="multi_label"))
    monkeypatch.setattr(cli, "predict", lambda *args: found)


@pytest.mark.parametrize("top_k, lines", [
    ([], ["gratitude,approval\tgratitude=0.270  approval=0.210\tthanks", "gratitude\tgratitude=0.200\tok then"]),
    (["--top-k", "1"], ["gratitude\tgratitude=0.270\tthanks", "(none)\tneutral=0.300\tok then"]),
    (["--top-k", "2"], ["gratitude,approval\tgratitude=0.270  approval=0.210\tthanks",
                        "gratitude\tneutral=0.300  gratitude=0.200\tok then"]),
])
def test_multi_label_lines_lead_with_the_listed_labels_above_their_thresholds(multi_label, capsys, top_k, lines):
    assert main(["predict", "--model", "M", "thanks", "ok then", *top_k]) == 0
    assert capsys.readouterr().out.splitlines() == lines


def test_multi_label_json_keeps_every_label_above_its_threshold_beside_the_top_k_scores(multi_label, capsys):
    assert main(["predict", "--model", "M", "--json", "--top-k", "1", "thanks", "ok then"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [
        {"text": "thanks", "labels": ["approval", "gratitude"], "scores": {"gratitude": 0.27}},
        {"text": "ok then", "labels": ["gratitude"], "scores": {"neutral": 0.3}}]
