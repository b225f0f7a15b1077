"""Config validation, JSON loading and ``--set`` overrides, on the nested ``RunConfig``."""

import dataclasses
import json

import pytest

from encoder_clf.errors import UsageError
from encoder_clf.model.attention import SCORE_RULES
from encoder_clf.model.config import ModelConfig
from encoder_clf.model.encoder import NORM_PLACEMENTS, POSITION_ENCODINGS
from encoder_clf.model.pooling import POOLINGS
from encoder_clf.settings import from_dict, load_json, with_overrides
from encoder_clf.training.config import RunConfig


def assert_refused(call, *fragments: str) -> str:
    with pytest.raises(UsageError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message, "usage errors are one line"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def get(config, dotted: str):
    for name in dotted.split("."):
        config = getattr(config, name)
    return config


# --- ModelConfig ---------------------------------------------------------------------------------------------------


def test_defaults_are_valid():
    config = ModelConfig()
    assert config.d_model % config.n_heads == 0
    assert config.num_labels == 0


def test_num_labels_counts_the_labels():
    assert ModelConfig(labels=["a", "b", "c"]).num_labels == 3


@pytest.mark.parametrize(("d_model", "n_heads"), [(10, 4), (256, 3), (64, 128)])
def test_d_model_must_be_divisible_by_n_heads(d_model, n_heads):
    assert_refused(lambda: ModelConfig(d_model=d_model, n_heads=n_heads),
                   f"model.d_model ({d_model})", f"model.n_heads ({n_heads})", "divisible")


@pytest.mark.parametrize("kernel", [2, 4, -3])
def test_conv_kernel_must_be_odd_or_zero(kernel):
    assert_refused(lambda: ModelConfig(conv_kernel=kernel), "model.conv_kernel must be 0", "odd", f"got {kernel}")


@pytest.mark.parametrize("buckets", [2, 7, -4])
def test_relative_buckets_must_be_even_and_at_least_four_or_zero(buckets):
    assert_refused(lambda: ModelConfig(relative_buckets=buckets), "model.relative_buckets must be 0", "even",
                   f"got {buckets}")


def test_ngram_buckets_cannot_be_negative():
    assert_refused(lambda: ModelConfig(ngram_buckets=-1), "model.ngram_buckets must be >= 0", "got -1")


@pytest.mark.parametrize("where", ["--set", "file"])
def test_a_retired_key_is_refused_saying_where_its_value_went(where, tmp_path):
    if where == "--set":
        call = lambda: with_overrides(RunConfig(), ["model.part_weights=0.3,1"])  # noqa: E731
    else:
        file = tmp_path / "config.json"
        file.write_text(json.dumps({"model": {"part_weights": [0.3, 1.0]}}))
        call = lambda: load_json(RunConfig, file)  # noqa: E731
    assert_refused(call, "'part_weights' is no longer a setting", "saved in model.safetensors as head.weights",
                   "drop it")


@pytest.mark.parametrize(
    ("field", "choices"),
    [("attention", SCORE_RULES), ("pooling", POOLINGS), ("norm", NORM_PLACEMENTS), ("positions", POSITION_ENCODINGS)],
)
def test_unknown_choice_lists_the_valid_ones(field, choices):
    message = assert_refused(lambda: ModelConfig(**{field: "bogus"}), f"model.{field} must be one of", "'bogus'")
    assert all(choice in message for choice in choices)


def test_attention_rules_are_named():
    message = assert_refused(lambda: ModelConfig(attention="dotted"))
    assert "additive, concat, concat_position, dot" in message


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"n_layers": 0}, "model.n_layers must be positive"),
        ({"d_ff": -1}, "model.d_ff must be positive"),
        ({"max_positions": 0}, "model.max_positions must be positive"),
        ({"dropout": 1.0}, "model.dropout must be in [0, 1)"),
        ({"attention_dropout": -0.1}, "model.attention_dropout must be in [0, 1)"),
        ({"vocab_size": -5}, "model.vocab_size must be >= 0"),
    ],
)
def test_out_of_range_values(values, fragment):
    assert_refused(lambda: ModelConfig(**values), fragment, str(next(iter(values.values()))))


# --- from_dict and load_json -------------------------------------------------------------------------------------


def test_from_dict_builds_nested_sections():
    raw = {"model": {"d_model": 64, "attention": "additive"}, "train": {"lr": 2, "epochs": 5},
           "data": {"labels": ["neg", "pos"], "text_column": None}}
    config = from_dict(RunConfig, raw, "cfg")
    assert config.model == ModelConfig(d_model=64, attention="additive")
    assert config.train.lr == 2.0 and isinstance(config.train.lr, float)  # an int is fine for a float
    assert config.train.epochs == 5
    assert config.data.labels == ["neg", "pos"]
    assert config.tokenizer == RunConfig().tokenizer  # sections left out keep their defaults


@pytest.mark.parametrize(
    ("raw", "fragments"),
    [
        ({"model": {"d_model": "256"}}, ["cfg.model.d_model must be of type int", "'256'"]),
        ({"train": {"epochs": True}}, ["cfg.train.epochs must be of type int", "True"]),
        ({"train": {"epochs": 2.0}}, ["cfg.train.epochs must be of type int", "2.0"]),
        ({"train": {"lr": True}}, ["cfg.train.lr must be of type float", "True"]),
        ({"tokenizer": {"lowercase": "yes"}}, ["cfg.tokenizer.lowercase must be of type bool", "'yes'"]),
        ({"model": {"d_model": None}}, ["cfg.model.d_model may not be null"]),
        ({"data": {"labels": ["a", 1]}}, ["cfg.data.labels must be a list of strings"]),
        ({"data": {"labels": "a,b"}}, ["cfg.data.labels must be a list of strings"]),
        ({"model": 3}, ["cfg.model must be a JSON object", "3"]),
        ({"modle": {}}, ["cfg: unknown key 'modle'", "known keys: model, tokenizer, data, train"]),
        ({"model": {"heads": 4}}, ["cfg.model: unknown key 'heads'", "known keys: d_model, n_heads"]),
    ],
    ids=["str-for-int", "bool-for-int", "float-for-int", "bool-for-float", "str-for-bool", "null", "list-item",
         "str-for-list", "section-not-object", "unknown-section", "unknown-key"],
)
def test_from_dict_refuses_wrong_types_and_keys(raw, fragments):
    assert_refused(lambda: from_dict(RunConfig, raw, "cfg"), *fragments)


def test_from_dict_runs_each_section_validation():
    assert_refused(lambda: from_dict(RunConfig, {"model": {"d_model": 30, "n_heads": 4}}, "cfg"), "divisible")


def test_load_json_round_trips_a_saved_config(tmp_path):
    config = with_overrides(RunConfig(), ["model.d_model=64", "data.labels=a,b", "train.lr=0.5"])
    path = tmp_path / "run_config.json"
    path.write_text(json.dumps(dataclasses.asdict(config)), encoding="utf-8")
    assert load_json(RunConfig, path) == config


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (None, ["not found"]),
        ("{model: 1}", ["is not valid JSON"]),
        ('{"train": {"epochs": "3"}}', [".train.epochs must be of type int"]),
        ("[1, 2]", ["must be a JSON object"]),
    ],
    ids=["missing", "invalid-json", "wrong-type", "not-an-object"],
)
def test_load_json_refuses_bad_files(tmp_path, content, fragments):
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    assert_refused(lambda: load_json(RunConfig, path), str(path), *fragments)


# --- with_overrides ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("assignment", "key", "expected"),
    [
        ("model.d_model=128", "model.d_model", 128),
        ("train.lr=3e-4", "train.lr", 3e-4),
        ("train.lr=2", "train.lr", 2.0),
        ("tokenizer.lowercase=false", "tokenizer.lowercase", False),
        ("tokenizer.lowercase=Yes", "tokenizer.lowercase", True),
        ("tokenizer.lowercase=0", "tokenizer.lowercase", False),
        ("data.labels=neg, pos ,neutral", "data.labels", ["neg", "pos", "neutral"]),
        ('data.labels=["a,b", "c"]', "data.labels", ["a,b", "c"]),
        ("data.text_column=sentence", "data.text_column", "sentence"),
        ("data.text_column=none", "data.text_column", None),
        ("tokenizer.path=null", "tokenizer.path", None),
        ("data.class_weights=balanced", "data.class_weights", "balanced"),
        (" model.attention = concat ", "model.attention", "concat"),
    ],
)
def test_override_parses_the_field_type(assignment, key, expected):
    original = RunConfig()
    config = with_overrides(original, [assignment])
    value = get(config, key)
    assert value == expected and type(value) is type(expected)
    assert original == RunConfig(), "the input config is not modified"
    untouched = dataclasses.asdict(config)
    section, name = key.split(".")
    untouched[section][name] = get(original, key)
    assert untouched == dataclasses.asdict(original), "nothing else changes"


def test_optional_field_can_be_set_back_to_none():
    config = with_overrides(RunConfig(), ["data.labels=a,b"])
    assert with_overrides(config, ["data.labels=none"]).data.labels is None


def test_later_overrides_win():
    config = with_overrides(RunConfig(), ["train.epochs=2", "model.n_heads=8", "train.epochs=7"])
    assert (config.train.epochs, config.model.n_heads) == (7, 8)


@pytest.mark.parametrize(
    ("assignment", "fragments"),
    [
        ("model.foo=1", ["unknown key 'model.foo'", "known keys of model: d_model, n_heads"]),
        ("modle.d_model=1", ["unknown key 'modle'", "known keys: model, tokenizer, data, train"]),
        ("model=3", ["'model' is a section", "model.KEY=VALUE"]),
        ("model.d_model.x=1", ["'d_model' is not a section"]),
        ("model.d_model=abc", ["model.d_model", "expected int", "'abc'"]),
        ("train.epochs=2.5", ["train.epochs", "expected int", "'2.5'"]),
        ("train.lr=fast", ["train.lr", "expected float", "'fast'"]),
        ("tokenizer.lowercase=maybe", ["tokenizer.lowercase", "expected true or false", "'maybe'"]),
        ("data.labels=[oops", ["data.labels", "not a JSON list of strings"]),
        ("data.labels=[1, 2]", ["data.labels must be a list of strings"]),
        ("model.d_model", ["expected key=value"]),
        ("=3", ["expected key=value"]),
        ("model..d_model=3", ["expected key=value"]),
        ("model.n_heads=3", ["model.d_model (256)", "model.n_heads (3)"]),
        ("model.pooling=none", ["model.pooling must be one of", "'none'"]),
    ],
)
def test_override_errors(assignment, fragments):
    assert_refused(lambda: with_overrides(RunConfig(), [assignment]), *fragments)
