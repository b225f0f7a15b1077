"""Sentence features: input order, pooling choices, normalisation, output files and CLI refusals."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from encoder_clf.cli import main
from encoder_clf.data.tokenization import TokenizerConfig, pad_id, train_tokenizer
from encoder_clf.data.tokenization import encode as tokenize
from encoder_clf.errors import UsageError
from encoder_clf.features import embed, load_feature_encoder, write_features
from encoder_clf.inference import forward_batches
from encoder_clf.model.classifier import TextClassifier
from encoder_clf.persistence.model_dir import save_model

from conftest import tiny_config

TEXTS = ["a truly great film", "bad", "the plot was dull and the cast was poor , sadly", "fine", "",
         "lovely score and superb acting"]


@pytest.fixture(scope="module", params=["attention", "max"])
def classifier_dir(request, tmp_path_factory):
    tokenizer = train_tokenizer(TEXTS * 10, TokenizerConfig(vocab_size=100, min_frequency=1))
    torch.manual_seed(0)
    config = tiny_config(vocab_size=tokenizer.get_vocab_size(), pooling=request.param,
                         pad_token_id=pad_id(tokenizer))
    directory = tmp_path_factory.mktemp("classifier") / "model"
    save_model(directory, TextClassifier(config).eval(), tokenizer)
    return directory


def test_default_features_are_the_vectors_the_head_sees(classifier_dir):
    model = load_feature_encoder(classifier_dir)
    features = embed(model, TEXTS, batch_size=2, precision="fp32")
    from encoder_clf.persistence.model_dir import load_model

    classifier, tokenizer = load_model(classifier_dir)
    pooled = forward_batches(classifier, tokenize(tokenizer, TEXTS)[0], pad_id(tokenizer), 2).pooled
    np.testing.assert_allclose(features, pooled, atol=1e-6)


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_batches_come_back_in_input_order(classifier_dir, pooling):
    model = load_feature_encoder(classifier_dir)
    together = embed(model, TEXTS, pooling=pooling, batch_size=4, precision="fp32")
    one_by_one = np.concatenate([embed(model, [t], pooling=pooling, precision="fp32") for t in TEXTS])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_normalised_vectors_have_unit_length(classifier_dir):
    vectors = embed(load_feature_encoder(classifier_dir), TEXTS, pooling="mean", normalize=True, precision="fp32")
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_unknown_pooling_is_refused(classifier_dir):
    with pytest.raises(UsageError, match="pooling 'sum' is not available here; choose one of mean, cls, max"):
        embed(load_feature_encoder(classifier_dir), TEXTS, pooling="sum")


def test_outputs_round_trip(tmp_path):
    vectors = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    np.testing.assert_array_equal(np.load(write_features(vectors, tmp_path / "v.npy")), vectors)
    table = pq.read_table(write_features(vectors, tmp_path / "v.parquet", ["a", "b", "c"]))
    assert table.column("text").to_pylist() == ["a", "b", "c"]
    np.testing.assert_array_equal(np.stack(table.column("embedding").to_numpy(zero_copy_only=False)), vectors)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.npy", "v.parquet"]  # no partial files left


def test_embed_cli_writes_one_row_per_text(classifier_dir, tmp_path, capsys):
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "features.npy"
    assert main(["embed", "--model", str(classifier_dir), "--data", str(data), "--out", str(out), "--quiet",
                 "--pooling", "mean", "--normalize", "--precision", "fp32"]) == 0
    assert np.load(out).shape == (len(TEXTS), 16)
    assert f"{len(TEXTS)} vectors of dimension 16 written to {out}" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--out", "{tmp}/f.csv"], "--out {tmp}/f.csv: unsupported output type '.csv'; use .npy or .parquet"),
    (["--out", "{tmp}/f.npy", "--model", "{tmp}/nowhere"],
     "{tmp}/nowhere: not a model directory; pass a directory with config.json"),
])
def test_embed_cli_refusals(classifier_dir, tmp_path, capsys, args, message):
    data = tmp_path / "texts.txt"
    data.write_text("one\ntwo\n", encoding="utf-8")
    argv = ["embed", "--model", str(classifier_dir), "--data", str(data), "--quiet"]
    argv += [a.format(tmp=tmp_path) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts.txt"]


def test_embed_cli_refuses_an_out_it_cannot_write_in_one_line_and_leaves_no_partial_file(classifier_dir, tmp_path,
                                                                                         capsys):
    data = tmp_path / "texts.txt"
    data.write_text("one\ntwo\n", encoding="utf-8")
    (tmp_path / "f.npy").mkdir()  # a directory where the file would go
    assert main(["embed", "--model", str(classifier_dir), "--data", str(data), "--quiet",
                 "--out", str(tmp_path / "f.npy")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"encoder-clf: error: --out {tmp_path / 'f.npy'}: cannot write it (Is a directory); pick another path"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["f.npy", "texts.txt"]
