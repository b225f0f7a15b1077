"""Model directories: exact round-trip, and clear refusals for broken ones."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from encoder_clf.data.tokenization import TokenizerConfig, encode, pad_id, train_tokenizer
from encoder_clf.errors import UsageError
from encoder_clf.inference import forward_batches
from encoder_clf.model.config import ADDITIONS_OFF
from encoder_clf.persistence.model_dir import load_model, save_model

CORPUS = [f"the film number {i} was {'good' if i % 2 else 'bad'} and {'fun' if i % 3 else 'slow'}" for i in range(60)]


@pytest.fixture
def saved(tmp_path, tiny_model):
    tokenizer = train_tokenizer(CORPUS, TokenizerConfig(vocab_size=100, min_frequency=1, max_length=16))
    model = tiny_model(vocab_size=tokenizer.get_vocab_size(), attention="additive", pooling="attention", conv_kernel=3)
    save_model(tmp_path / "model", model, tokenizer)
    return tmp_path / "model", model, tokenizer


def test_round_trip_is_bit_identical(saved):
    directory, model, tokenizer = saved
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    loaded, loaded_tokenizer = load_model(directory)
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    assert loaded.config == model.config
    ids = torch.tensor([loaded_tokenizer.encode("the film was good").ids])
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert loaded_tokenizer.encode("the film was fun").ids == tokenizer.encode("the film was fun").ids


@pytest.mark.parametrize("key", sorted(ADDITIONS_OFF))
def test_directory_saved_before_a_key_existed_loads_without_it(tmp_path, tiny_model, key):
    tokenizer = train_tokenizer(CORPUS, TokenizerConfig(vocab_size=100, min_frequency=1, max_length=16))
    model = tiny_model(vocab_size=tokenizer.get_vocab_size(), **{key: ADDITIONS_OFF[key]})
    directory = save_model(tmp_path / "model", model, tokenizer)
    config = json.loads((directory / "config.json").read_text())
    del config[key]
    (directory / "config.json").write_text(json.dumps(config))
    loaded, _ = load_model(directory)
    assert getattr(loaded.config, key) == ADDITIONS_OFF[key]
    ids = torch.tensor([tokenizer.encode("the film was good").ids])
    assert torch.equal(loaded(ids).logits, model(ids).logits)


@pytest.mark.parametrize("options", [{"attention": "concat_position"}, {"attention_combine": True},
                                     {"attention": "concat_position", "attention_combine": True}])
def test_attention_options_round_trip(tmp_path, tiny_model, options):
    tokenizer = train_tokenizer(CORPUS, TokenizerConfig(vocab_size=100, min_frequency=1, max_length=16))
    model = tiny_model(vocab_size=tokenizer.get_vocab_size(), **options)
    loaded, _ = load_model(save_model(tmp_path / "model", model, tokenizer))
    assert loaded.config == model.config
    ids = torch.tensor([tokenizer.encode("the film was good").ids])
    assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_fitted_mixing_weights_are_saved_with_the_weights_not_the_config(tmp_path, tiny_model):
    tokenizer = train_tokenizer(CORPUS, TokenizerConfig(vocab_size=100, min_frequency=1, max_length=16))
    model = tiny_model(vocab_size=tokenizer.get_vocab_size(), ngram_buckets=64)
    torch.nn.init.normal_(model.head.parts["ngrams"].table.weight)
    model.head.weights.copy_(torch.tensor([0.3, 1.7]))
    directory = save_model(tmp_path / "model", model, tokenizer)
    assert "part_weights" not in json.loads((directory / "config.json").read_text())
    assert load_file(str(directory / "model.safetensors"))["head.weights"].tolist() == pytest.approx([0.3, 1.7])
    ids = torch.tensor([tokenizer.encode("the film was good").ids])
    assert torch.equal(load_model(directory)[0](ids).logits, model(ids).logits)


def test_a_format_1_directory_without_part_weights_takes_the_mean(tmp_path):
    """Format 1 kept the weights in config.json, and a directory saved before they existed had none."""
    directory = tmp_path / "model"
    shutil.copytree(FIXTURES / "model-ngrams", directory)
    config = json.loads((directory / "config.json").read_text())
    del config["part_weights"]
    (directory / "config.json").write_text(json.dumps(config))
    assert load_model(directory)[0].head.weights.tolist() == [0.5, 0.5]


def test_a_directory_of_an_unknown_format_is_refused_in_one_line(tmp_path):
    directory = tmp_path / "model"
    shutil.copytree(FIXTURES / "model-plain", directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "format": "encoder-clf/9"}))
    with pytest.raises(UsageError, match=r"format 'encoder-clf/9' was written by another version of encoder-clf "
                                         r"\(this one reads encoder-clf/3, encoder-clf/2, encoder-clf/1\); "
                                         r"load it with that version, or upgrade"):
        load_model(directory)


def test_saving_again_replaces_the_directory_whole(saved):
    directory, model, tokenizer = saved
    save_model(directory, model, tokenizer)
    assert sorted(p.name for p in directory.parent.iterdir()) == ["model"]  # no staging leftovers


def test_missing_directory(tmp_path):
    with pytest.raises(UsageError, match="model directory .*nope not found"):
        load_model(tmp_path / "nope")


def test_missing_weights_file(saved):
    directory, _, _ = saved
    (directory / "model.safetensors").unlink()
    with pytest.raises(UsageError, match="model.safetensors not found; the model directory is incomplete"):
        load_model(directory)


def test_corrupted_weights_file(saved):
    directory, _, _ = saved
    data = (directory / "model.safetensors").read_bytes()
    (directory / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match="model.safetensors is corrupted"):
        load_model(directory)


def test_missing_weight_is_named(saved):
    from safetensors.torch import load_file, save_file

    directory, _, _ = saved
    state = load_file(directory / "model.safetensors")
    del state["head.parts.encoder.linear.weight"]
    save_file(state, directory / "model.safetensors")
    with pytest.raises(UsageError, match="missing head.parts.encoder.linear.weight"):
        load_model(directory)


def test_tokenizer_that_does_not_match_the_model(saved):
    directory, _, _ = saved
    other = train_tokenizer(CORPUS[:5], TokenizerConfig(vocab_size=100, min_frequency=1))
    other.save(str(directory / "tokenizer.json"))
    with pytest.raises(UsageError, match="tokenizer.json has .* tokens but the model expects"):
        load_model(directory)


def test_invalid_config_value_in_saved_model(saved):
    directory, _, _ = saved
    raw = json.loads((directory / "config.json").read_text())
    raw["attention"] = "cosine"
    (directory / "config.json").write_text(json.dumps(raw))
    with pytest.raises(UsageError, match="model.attention must be one of additive, concat, concat_position, dot; "
                                         "got 'cosine'"):
        load_model(directory)


def test_tokenizer_file_is_plain_tokenizers_json(saved):
    directory, _, tokenizer = saved
    assert Tokenizer.from_file(str(directory / "tokenizer.json")).get_vocab() == tokenizer.get_vocab()


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("name", ["model-ngrams", "model-plain", "model-v2"])
def test_directory_saved_by_an_older_release_predicts_as_it_did(name):
    """tests/fixtures/model-*: saved by older code (README there), with the logits it gave then (on an AMD EPYC:
    another CPU's fp32 kernels round differently, by an ulp or so)."""
    directory = FIXTURES / name
    model, tokenizer = load_model(directory)
    texts = json.loads((directory / "expected.json").read_text())["texts"]
    expected = load_file(str(directory / "expected.safetensors"))
    ids = encode(tokenizer, texts).ids
    out = forward_batches(model, ids, pad_id(tokenizer), 2, "fp32")
    torch.testing.assert_close(torch.from_numpy(out.logits), expected["logits"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.from_numpy(out.pooled), expected["pooled"], rtol=1e-6, atol=1e-6)
