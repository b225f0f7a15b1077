"""Distillation: the student's loss, the cached teacher outputs, the augmented copies and a student that learns
from a teacher what its labels alone do not teach it."""

import json
import os
import random
import time

import numpy as np
import pytest
import torch

from encoder_clf.data.augment import MAX_NGRAM, Augmentation, ContextWords, augmented
from encoder_clf.data.tokenization import MASK, TokenizerConfig, train_tokenizer
from encoder_clf.errors import UsageError
from encoder_clf.inference import evaluate, forward_texts
from encoder_clf.model.tasks import TASKS
from encoder_clf.persistence.model_dir import load_model
from encoder_clf.settings import with_overrides
from encoder_clf.training.config import RunConfig
from encoder_clf.training.distillation import (
    DISTILL_PRESET,
    DistillConfig,
    distillation_loss,
    seed_embeddings,
    teacher_outputs,
    teacher_vocabulary,
)
from encoder_clf.training.distributed import SOLO
from encoder_clf.training.run import train

from conftest import TINY, toy_rows, write_tsv

# --- the loss -------------------------------------------------------------------------------------------------


def _log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def test_single_label_loss_is_hinton_kl_plus_cross_entropy_on_the_labelled_rows():
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    hard = np.array([2, -1, 0, -1, 1, 1], dtype=np.float64)
    alpha, t = 0.7, 3.0
    p_teacher = np.exp(_log_softmax(teacher / t))
    kl = (p_teacher * (_log_softmax(teacher / t) - _log_softmax(student / t))).sum(axis=1).mean() * t * t
    known = hard >= 0
    ce = -_log_softmax(student[known])[np.arange(known.sum()), hard[known].astype(int)].mean()
    loss = distillation_loss(TASKS["single_label"](3), "single_label", alpha, t)(
        torch.tensor(student, dtype=torch.float32), torch.tensor(np.c_[teacher, hard], dtype=torch.float32))
    assert float(loss) == pytest.approx(alpha * kl + (1 - alpha) * ce, rel=1e-5)


def test_multi_label_loss_is_bce_against_the_teachers_softened_probabilities():
    rng = np.random.default_rng(1)
    student, teacher = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    hard = (rng.random((5, 4)) < 0.5).astype(np.float64)
    hard[[1, 3]] = np.nan
    alpha, t = 0.6, 2.0
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    bce = lambda z, y: -(y * np.log(sigmoid(z)) + (1 - y) * np.log(1 - sigmoid(z))).mean()  # noqa: E731
    known = ~np.isnan(hard).any(axis=1)
    expected = alpha * bce(student / t, sigmoid(teacher / t)) * t * t + (1 - alpha) * bce(student[known], hard[known])
    loss = distillation_loss(TASKS["multi_label"](4), "multi_label", alpha, t)(
        torch.tensor(student, dtype=torch.float32), torch.tensor(np.c_[teacher, hard], dtype=torch.float32))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_regression_loss_is_mse_on_the_standardised_teacher_value_and_label():
    task = TASKS["regression"](1)
    task.mean.fill_(2.0)
    task.std.fill_(0.5)
    student = np.array([0.1, -0.4, 1.2])
    teacher, hard = np.array([2.3, 1.5, 2.9]), np.array([2.0, np.nan, 3.1])
    standard = lambda v: (v - 2.0) / 0.5  # noqa: E731
    labelled = ((student[[0, 2]] - standard(hard[[0, 2]])) ** 2).mean()
    expected = 0.8 * ((student - standard(teacher)) ** 2).mean() + 0.2 * labelled
    loss = distillation_loss(task, "regression", 0.8, 5.0)(
        torch.tensor(student[:, None], dtype=torch.float32), torch.tensor(np.c_[teacher, hard], dtype=torch.float32))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_a_batch_without_labels_learns_the_teacher_alone():
    student, teacher = torch.randn(4, 2), torch.randn(4, 2)
    targets = torch.cat([teacher, torch.full((4, 1), -1.0)], dim=1)
    soft_only = distillation_loss(TASKS["single_label"](2), "single_label", 1.0, 2.0)(student, targets)
    assert float(distillation_loss(TASKS["single_label"](2), "single_label", 0.5, 2.0)(student, targets)) == \
        pytest.approx(0.5 * float(soft_only))


# --- the teacher's cached outputs ------------------------------------------------------------------------------


def test_cached_teacher_outputs_match_a_fresh_teacher_pass(tiny_model, tmp_path, monkeypatch, one_thread):
    from tokenizers import Tokenizer

    from encoder_clf.data.tokenization import TokenizerConfig, train_tokenizer

    tokenizer: Tokenizer = train_tokenizer([text for text, _ in toy_rows(50, 0)],
                                           TokenizerConfig(vocab_size=100, min_frequency=1))
    teacher = tiny_model(vocab_size=tokenizer.get_vocab_size())
    texts = [text for text, _ in toy_rows(300, 1)]
    fresh = forward_texts(teacher, tokenizer, texts, 64)
    abandoned, live = tmp_path / f".teacher-{'a' * 32}-k1ll3d_x.npy", tmp_path / f".teacher-{'b' * 32}-wr1t1ng_.npy"
    for file in (abandoned, live):
        file.write_bytes(b"partial")
    os.utime(abandoned, (time.time() - 3700,) * 2)  # a killed run's temporary, untouched for over an hour
    first = teacher_outputs(teacher, tokenizer, texts, b"key", str(tmp_path), 64, "fp32", SOLO, False)
    np.testing.assert_array_equal(first, fresh)
    assert len(list(tmp_path.glob("teacher-*.npy"))) == 1
    assert not abandoned.exists() and live.read_bytes() == b"partial"

    def no_pass(*args, **kwargs):
        raise AssertionError("the teacher ran again")

    monkeypatch.setattr("encoder_clf.training.distillation.forward_texts", no_pass)
    again = teacher_outputs(teacher, tokenizer, texts, b"key", str(tmp_path), 64, "fp32", SOLO, False)
    assert isinstance(again, np.memmap)
    np.testing.assert_array_equal(again, fresh)
    with pytest.raises(AssertionError, match="ran again"):  # another teacher (key) or other texts: no stale outputs
        teacher_outputs(teacher, tokenizer, texts, b"other", str(tmp_path), 64, "fp32", SOLO, False)
    with pytest.raises(AssertionError, match="ran again"):
        teacher_outputs(teacher, tokenizer, texts[:-1], b"key", str(tmp_path), 64, "fp32", SOLO, False)


# --- augmentation -------------------------------------------------------------------------------------------------

WORDS = ["the", "a", "film", "plot", "was", "great", "dull", "and", "cast", "superb"]
TEXTS = [" ".join(random.Random(i).choices(WORDS, k=3 + i % 12)) for i in range(400)]


def test_augmented_copies_are_never_longer_distinct_and_repeatable():
    copies = augmented(TEXTS, Augmentation(copies=5), seed=3)
    assert copies == augmented(TEXTS, Augmentation(copies=5), seed=3)
    assert copies != augmented(TEXTS, Augmentation(copies=5), seed=4)
    for text, made in zip(TEXTS, copies):
        assert len(made) <= 5 and len(set(made)) == len(made) and text not in made
        assert all(0 < len(copy.split()) <= len(text.split()) for copy in made)


def test_masking_and_replacing_keep_the_length_and_change_words_at_their_rates():
    masked = augmented(TEXTS, Augmentation(copies=1, mask_rate=0.3, replace_rate=0.0, ngram_rate=0.0), seed=0)
    pairs = [(a, b) for text, made in zip(TEXTS, masked) for copy in made
             for a, b in zip(text.split(), copy.split(), strict=True)]
    assert all(b in (a, MASK) for a, b in pairs)
    assert sum(b == MASK for _, b in pairs) / len(pairs) == pytest.approx(0.3, abs=0.03)
    context = ContextWords(TEXTS)
    replaced = augmented(TEXTS, Augmentation(copies=1, mask_rate=0.0, replace_rate=1.0, ngram_rate=0.0), 0, context)
    for text, made in zip(TEXTS, replaced):
        for copy in made:
            words, new = text.split(), copy.split()
            assert len(new) == len(words) and MASK not in new
            assert all(b in context.words for b in new)


def test_a_replacement_comes_from_the_same_context_when_there_is_one():
    context = ContextWords(["a good film", "a bad film", "a good film", "the plot"])
    rng = random.Random(0)
    assert {context.other("a", "good", "film", rng) for _ in range(20)} == {"bad"}
    assert context.other("\x02", "the", "plot", rng) in {"a"}  # no word shares both neighbours: after the same start


def test_ngram_samples_are_runs_of_at_most_five_words_of_the_text():
    made = augmented(TEXTS, Augmentation(copies=3, mask_rate=0.0, replace_rate=0.0, ngram_rate=1.0), seed=0)
    for text, copies in zip(TEXTS, made):
        for copy in copies:
            assert len(copy.split()) <= MAX_NGRAM and f" {copy} " in f" {text} "


def test_pairs_augment_both_texts_and_are_never_cut():
    pairs = [(a, b) for a, b in zip(TEXTS[::2], TEXTS[1::2])]
    made = augmented(pairs, Augmentation(copies=3, mask_rate=0.3, ngram_rate=1.0), seed=0)
    for (a, b), copies in zip(pairs, made):
        for first, second in copies:
            assert len(first.split()) == len(a.split()) and len(second.split()) == len(b.split())


def test_distill_settings_are_checked():
    with pytest.raises(UsageError, match=r"distill.alpha must be in \[0, 1\] \(1 = the teacher alone\); got 1.5"):
        DistillConfig(alpha=1.5)
    with pytest.raises(UsageError, match=r"distill.replace_rate must be below 1 - distill.mask_rate; got 0.6"):
        DistillConfig(mask_rate=0.5, replace_rate=0.6)


# --- the student's embeddings --------------------------------------------------------------------------------


def test_seeded_embeddings_keep_the_geometry_of_a_table_of_low_rank():
    """A table that varies in 3 directions keeps every pairwise distance up to one scale, at the initial scale."""
    torch.manual_seed(0)
    table = torch.randn(40, 3) @ torch.randn(3, 12) + 5.0  # 12 wide, rank 3 around a shared offset
    embedding = torch.nn.Embedding(40, 8, padding_idx=0)
    torch.nn.init.normal_(embedding.weight, std=0.02)
    pad, scale = embedding.weight[0].clone(), embedding.weight.std().item()
    seed_embeddings(embedding, table)
    seeded = embedding.weight.detach()[1:].double()
    ratio = torch.cdist(seeded, seeded) / torch.cdist(table[1:].double(), table[1:].double()).clamp_min(1e-12)
    off_diagonal = ~torch.eye(39, dtype=torch.bool)
    assert ratio[off_diagonal].std() / ratio[off_diagonal].mean() < 1e-5
    assert embedding.weight.std().item() == pytest.approx(scale, rel=0.1)
    assert torch.equal(embedding.weight[0], pad)  # the padding row is left as initialised


def test_a_student_wider_than_its_teacher_keeps_its_own_extra_columns():
    embedding = torch.nn.Embedding(30, 10)
    before = embedding.weight.detach().clone()
    seed_embeddings(embedding, torch.randn(30, 6))
    assert torch.equal(embedding.weight[:, 6:], before[:, 6:]) and not torch.equal(embedding.weight[:, :6],
                                                                                     before[:, :6])


# --- a student and its teacher ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_and_data(tmp_path_factory):
    """A teacher trained on the whole toy task, and a student's data: 12 labelled rows that show only 'great'
    and 'awful' (of the task's eight keywords), unlabelled texts with all eight, and the usual test split."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("distill")
    for name, n, seed in [("train", 400, 0), ("validation", 60, 1), ("test", 200, 2)]:
        write_tsv(root / f"full-{name}.tsv", toy_rows(n, seed))
    full = root / "full"
    full.mkdir()
    for name in ("train", "validation", "test"):
        (root / f"full-{name}.tsv").rename(full / f"{name}.tsv")
    teacher = train(with_overrides(RunConfig(), [f"data.path={full}", *TINY, "train.epochs=6"]), root / "teacher",
                    progress=False)
    assert teacher.metrics["test"]["accuracy"] > 0.95
    few = root / "few"
    few.mkdir()
    shown = [row for row in toy_rows(2000, 5) if {"great", "awful"} & set(row[0].split())][:12]
    write_tsv(few / "train.tsv", shown)
    for name in ("validation", "test"):
        (few / f"{name}.tsv").write_text((full / f"{name}.tsv").read_text())
    (root / "unlabelled.txt").write_text("\n".join(text for text, _ in toy_rows(400, 7)) + "\n")
    yield root / "teacher" / "model", few, root / "unlabelled.txt"
    torch.set_num_threads(2)


def test_a_distilled_student_beats_the_same_student_trained_on_the_labels_alone(teacher_and_data, tmp_path):
    teacher, few, unlabelled = teacher_and_data
    student = [*DISTILL_PRESET, f"data.path={few}", *TINY, "tokenizer.path=" + str(teacher)]
    alone = train(with_overrides(RunConfig(), [*student, "train.epochs=100"]), tmp_path / "alone", progress=False)
    distilled = train(with_overrides(RunConfig(), [*student, f"distill.teacher={teacher}",
                                                   f"distill.unlabeled={unlabelled}", "distill.augment=1"]),
                      tmp_path / "distilled", progress=False)
    assert distilled.metrics["test"]["accuracy"] >= alone.metrics["test"]["accuracy"] + 0.15, \
        (distilled.metrics["test"]["accuracy"], alone.metrics["test"]["accuracy"])
    report = json.loads((tmp_path / "distilled" / "metrics.json").read_text())["distillation"]
    assert report["labelled"] == 12 and report["unlabeled"] == 400 and report["rows"] > 412
    assert report["teacher_test"]["accuracy"] > 0.95
    model, _ = load_model(tmp_path / "distilled" / "model")  # an ordinary model directory
    assert model.config.ngram_buckets == 0
    scored = evaluate(tmp_path / "distilled" / "model", str(few), "test", precision="fp32")
    assert scored["accuracy"] == pytest.approx(distilled.metrics["test"]["accuracy"])


def test_a_student_starts_from_the_teachers_tokenizer_and_embeddings_unless_told_otherwise(teacher_and_data,
                                                                                            tmp_path):
    teacher, few, _ = teacher_and_data
    own = tmp_path / "own.json"
    (own).write_text(train_tokenizer(["a few words of another vocabulary"] * 5,
                                     TokenizerConfig(vocab_size=100, min_frequency=1)).to_str())
    teachers = load_model(teacher)[1].get_vocab()
    vocabulary = teacher_vocabulary(DistillConfig(teacher=str(teacher)), "", 32)
    assert vocabulary.tokenizer.get_vocab() == teachers and vocabulary.embeddings.shape == (len(teachers), 16)
    assert teacher_vocabulary(DistillConfig(teacher=str(teacher)), str(teacher), 32) is not None
    assert teacher_vocabulary(DistillConfig(teacher=str(teacher)), str(own), 32) is None  # tokenizer.path wins
    assert teacher_vocabulary(DistillConfig(teacher=str(teacher), init_embeddings=False), "", 32) is None
    run = train(with_overrides(RunConfig(), [*DISTILL_PRESET, f"data.path={few}", *TINY, "train.max_steps=1",
                                             f"distill.teacher={teacher}", "distill.augment=0"]),
                tmp_path / "student", progress=False)
    assert run.metrics["steps"] == 1
    assert load_model(tmp_path / "student" / "model")[1].get_vocab() == teachers


def test_a_teacher_of_another_task_or_labels_is_refused(teacher_and_data, tmp_path):
    teacher, few, _ = teacher_and_data
    regression = tmp_path / "reg"
    regression.mkdir()
    (regression / "train.tsv").write_text("sentence\tscore\n" + "".join(f"text {i}\t{i / 7:.3f}\n" for i in range(30)))
    with pytest.raises(UsageError, match=rf"--teacher {teacher} is a single_label model and the data is regression; "
                                         "distil from a teacher trained on this task"):
        train(with_overrides(RunConfig(), [f"data.path={regression}", *TINY, f"distill.teacher={teacher}"]),
              tmp_path / "run", progress=False)
    with pytest.raises(UsageError, match=rf"--teacher {teacher} has labels 0, 1 and the data 1, 0; pass the "
                                         r"teacher's order with --set data.labels=0,1$"):
        train(with_overrides(RunConfig(), [f"data.path={few}", *TINY, f"distill.teacher={teacher}",
                                           "data.labels=1,0"]), tmp_path / "run2", progress=False)


def test_unlabelled_texts_are_read_from_the_column_distill_unlabeled_column_names(teacher_and_data, tmp_path):
    """data.text_column names the labelled data's column; the unlabelled file's has a setting of its own."""
    teacher, few, _ = teacher_and_data
    more = tmp_path / "more.csv"
    more.write_text("id,comment\n" + "".join(f"{i},a great film number {i}\n" for i in range(30)))
    run = train(with_overrides(RunConfig(), [*DISTILL_PRESET, f"data.path={few}", *TINY, "train.max_steps=1",
                                             f"distill.teacher={teacher}", "distill.augment=0",
                                             f"distill.unlabeled={more}", "distill.unlabeled_column=comment"]),
                progress=False)
    assert run.metrics["distillation"]["unlabeled"] == 30


def test_cli_distill_refuses_a_stream_with_one_line_and_writes_nothing(teacher_and_data, tmp_path, capsys):
    from encoder_clf.cli import main

    teacher, few, _ = teacher_and_data
    out = tmp_path / "student"
    code = main(["distill", "--teacher", str(teacher), "--data", str(few), "--out", str(out), "--quiet",
                 "--set", "data.streaming=true", "--set", "train.max_steps=10"])
    assert code == 2 and not out.exists()
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "distillation labels the whole train split with the teacher first, which a stream does not allow; "
        "turn data.streaming off")
