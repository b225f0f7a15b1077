"""MLM pretraining and fine-tuning from a pretrained encoder."""

import json

import pytest
import torch

from encoder_clf.cli import main
from encoder_clf.metrics import read_log, records_of
from encoder_clf.model.classifier import TextClassifier
from encoder_clf.persistence.model_dir import load_model, load_saved_encoder
from encoder_clf.settings import with_overrides
from encoder_clf.training.optim import layerwise_adamw
from encoder_clf.training.pretraining import PretrainRunConfig, mask_tokens, pretrain

from conftest import tiny_config

SMALL = ["model.d_model=32", "model.n_heads=2", "model.n_layers=2", "model.d_ff=64", "tokenizer.vocab_size=300",
         "tokenizer.min_frequency=1", "pretrain.batch_size=32", "pretrain.lr=3e-3", "pretrain.precision=fp32"]


def test_masking_follows_80_10_10_and_spares_special_tokens():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (400, 50))
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    padding = torch.zeros_like(ids, dtype=torch.bool)
    padding[:200, 40:] = True
    special = torch.tensor([0, 2, 3, 4])
    corrupted, chosen = mask_tokens(ids, padding, special, 4, 1000, 0.15, generator)
    assert not chosen[:, 0].any() and not chosen[:, -1].any() and not chosen[padding].any()
    eligible = (~padding).sum() - 2 * len(ids)
    assert abs(chosen.sum() / eligible - 0.15) < 0.01
    masked = (corrupted[chosen] == 4).float().mean()
    kept = (corrupted[chosen] == ids[chosen]).float().mean()
    assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1) < 0.02  # (random ids rarely equal the original)
    assert torch.equal(corrupted[~chosen], ids[~chosen])


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    from conftest import toy_rows

    root = tmp_path_factory.mktemp("mlm")
    text = root / "corpus.txt"
    text.write_text("\n".join(t for t, _ in toy_rows(1500, 7)) + "\n", encoding="utf-8")
    config = with_overrides(PretrainRunConfig(), SMALL + [f"data.path={text}", "pretrain.epochs=4"])
    metrics = pretrain(config, root / "run", progress=False).metrics
    return root / "run", metrics


def test_short_mlm_run_lowers_masked_token_loss(pretrained):
    run, metrics = pretrained
    log = records_of(read_log(run / "log.jsonl"), "evaluation")
    assert len(log) == 4
    assert metrics["heldout_loss_final"] < 0.6 * metrics["heldout_loss_initial"], metrics
    encoder, config, _ = load_saved_encoder(run / "model")
    assert config.labels == [] and config.n_layers == 2


def test_fine_tuning_starts_from_the_pretrained_encoder(pretrained, tmp_path):
    from conftest import toy_rows, write_tsv

    data = tmp_path / "data"
    data.mkdir()
    for name, n, seed in [("train", 200, 0), ("validation", 40, 1)]:
        write_tsv(data / f"{name}.tsv", toy_rows(n, seed))
    out = tmp_path / "run"
    argv = ["train", "--init", str(pretrained[0] / "model"), "--data", str(data), "--out", str(out), "--quiet",
            "--precision", "fp32", "--set", "train.epochs=1", "--set", "train.freeze_layers=1"]
    assert main(argv) == 0
    start, _, start_tokenizer = load_saved_encoder(pretrained[0] / "model")
    tuned, tokenizer = load_model(out / "model")
    assert tokenizer.to_str() == start_tokenizer.to_str()
    assert tuned.config.pooling == "mean" and tuned.config.dropout == 0.1  # the fine-tuning preset
    frozen = ("embeddings.", "blocks.0.")
    start_state = start.state_dict()
    for name, tensor in tuned.encoder.state_dict().items():
        assert torch.equal(tensor, start_state[name]) == name.startswith(frozen), name
    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["train"]["lr"] == 1e-4 and run_config["train"]["init"] == str(pretrained[0] / "model")
    # the length by the data: short texts, so the pretrained encoder's own length when that is below 128
    assert run_config["tokenizer"]["max_length"] == min(128, start_tokenizer.truncation["max_length"])


def test_fine_tuning_cuts_long_texts_at_the_pretrained_encoders_own_length(pretrained, tmp_path):
    """Texts of 200 tokens would get 224 from scratch; the encoder pretrained at 128 keeps its 128."""
    from conftest import toy_rows, write_tsv

    long = [(" ".join(["the film was great"] * 50), 1), (" ".join(["the plot was dull"] * 50), 0)] * 10
    write_tsv(tmp_path / "train.tsv", toy_rows(60, 0) + long)
    _, _, start_tokenizer = load_saved_encoder(pretrained[0] / "model")
    assert start_tokenizer.truncation["max_length"] == 128
    out = tmp_path / "run"
    assert main(["train", "--init", str(pretrained[0] / "model"), "--data", str(tmp_path / "train.tsv"), "--out",
                 str(out), "--quiet", "--precision", "fp32", "--set", "train.max_steps=2"]) == 0
    assert json.loads((out / "run_config.json").read_text())["tokenizer"]["max_length"] == 128
    assert load_model(out / "model")[1].truncation["max_length"] == 128


def test_fine_tuning_refuses_a_max_length_beyond_the_pretrained_positions(pretrained, tmp_path, capsys):
    """Cut silently at the encoder's 512 positions, the run would record 600 and its resume be refused."""
    from conftest import toy_rows, write_tsv

    write_tsv(tmp_path / "train.tsv", toy_rows(60, 0))
    argv = ["train", "--init", str(pretrained[0] / "model"), "--data", str(tmp_path / "train.tsv"), "--out",
            str(tmp_path / "run"), "--quiet", "--set", "model.max_positions=1024", "--set", "tokenizer.max_length=600"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "encoder-clf: error: tokenizer.max_length (600) exceeds the pretrained encoder's 512 positions; lower it, "
        "or leave it unset to follow the data"]
    assert not (tmp_path / "run").exists()


def test_a_pair_task_fine_tunes_an_encoder_pretrained_without_token_types(pretrained, tmp_path):
    """The MLM encoder has no token-type embeddings; a pair model gets them fresh and every other weight loaded."""
    from conftest import toy_rows

    data = tmp_path / "pairs.tsv"
    rows = zip(toy_rows(120, 0), toy_rows(120, 1))
    data.write_text("premise\thypothesis\tlabel\n" + "".join(f"{a}\t{b}\t{ya == yb:d}\n"
                                                               for (a, ya), (b, yb) in rows))
    out = tmp_path / "run"
    assert main(["train", "--init", str(pretrained[0] / "model"), "--data", str(data), "--out", str(out), "--quiet",
                 "--precision", "fp32", "--set", "train.epochs=1", "--set", "train.freeze_layers=1"]) == 0
    start, start_config, _ = load_saved_encoder(pretrained[0] / "model")
    tuned, _ = load_model(out / "model")
    assert start_config.type_vocab_size == 0 and tuned.config.type_vocab_size == 2 and tuned.config.text_pairs
    start_state = start.state_dict()
    for name, tensor in tuned.encoder.state_dict().items():
        if name != "embeddings.token_types.weight":
            assert torch.equal(tensor, start_state[name]) == name.startswith(("embeddings.", "blocks.0.")), name


def test_layerwise_learning_rates_cover_every_parameter_once():
    model = TextClassifier(tiny_config(n_layers=3))
    optimizer = layerwise_adamw(model, lr=1e-3, weight_decay=0.1, head_lr=1e-2, layer_lr_decay=0.5, freeze_layers=1)
    in_groups = [p for group in optimizer.param_groups for p in group["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(in_groups) == len(set(map(id, in_groups))) == len(trainable)
    assert not any(p.requires_grad for p in model.encoder.embeddings.parameters())
    assert not any(p.requires_grad for p in model.encoder.blocks[0].parameters())
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert lr_of[id(model.encoder.blocks[2].feed_forward[0].weight)] == pytest.approx(1e-3 * 0.5)
    assert lr_of[id(model.encoder.blocks[1].feed_forward[0].weight)] == pytest.approx(1e-3 * 0.25)
    assert lr_of[id(model.head.parts["encoder"].linear.weight)] == pytest.approx(1e-2)
    assert lr_of[id(model.encoder.final_norm.weight)] == pytest.approx(1e-3)


def test_weight_decay_spares_vectors_and_the_ngram_table():
    model = TextClassifier(tiny_config(ngram_buckets=64))
    decay_of = {id(p): group["weight_decay"] for group in layerwise_adamw(model, 1e-3, 0.1).param_groups
                for p in group["params"]}
    assert decay_of[id(model.encoder.blocks[0].feed_forward[0].weight)] == 0.1
    assert decay_of[id(model.encoder.embeddings.tokens.weight)] == 0.1
    assert decay_of[id(model.encoder.blocks[0].feed_forward[0].bias)] == 0.0
    assert decay_of[id(model.head.parts["ngrams"].table.weight)] == 0.0


def test_freezing_more_layers_than_the_model_has_is_refused(pretrained, tmp_path, capsys):
    from conftest import toy_rows, write_tsv

    write_tsv(tmp_path / "train.tsv", toy_rows(100, 0))
    argv = ["train", "--init", str(pretrained[0] / "model"), "--data", str(tmp_path / "train.tsv"),
            "--out", str(tmp_path / "run"), "--quiet", "--set", "train.freeze_layers=3"]
    assert main(argv) == 2
    assert "train.freeze_layers (3) exceeds the model's 2 layers; pick at most 2" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_pretraining_refuses_a_max_length_beyond_the_positions_before_writing(tmp_path, capsys):
    """As train does: a text longer than the positions would end the run halfway with a traceback."""
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(" ".join(["the film was fine"] * 10) for _ in range(20)) + "\n", encoding="utf-8")
    argv = ["pretrain", "--data", str(text), "--out", str(tmp_path / "run"), "--quiet",
            "--set", "model.max_positions=32", "--set", "tokenizer.max_length=128"]  # left unset, it would be 32
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "encoder-clf: error: tokenizer.max_length (128) exceeds model.max_positions (32); lower one or raise the other"]
    assert not (tmp_path / "run").exists()
