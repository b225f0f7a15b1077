"""Reading splits (formats, columns, labels, messages), carving validation, bucketing and collating."""

import logging
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
import torch

from encoder_clf.data.batching import bucket_batches, collate
from encoder_clf.data.config import DataConfig
from encoder_clf.data.sources import READERS, find_splits
from encoder_clf.data.splits import load_splits, read_split
from encoder_clf.errors import UsageError

TEXTS = ["a fine film", "dull and slow", "great acting", "weak plot", "loved it", "not again"]
LABELS = ["pos", "neg", "pos", "neg", "pos", "neg"]


pytestmark = pytest.mark.usefixtures("hermetic_datasets")


def write(path: Path, frame: pd.DataFrame) -> Path:
    """Write ``frame`` in the format named by the suffix (a .tsv is written raw: no quoting at all)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        rows = ["\t".join(frame.columns)] + ["\t".join(str(v) for v in row) for row in frame.itertuples(index=False)]
        path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    elif suffix in (".json", ".jsonl"):
        frame.to_json(path, orient="records", lines=suffix == ".jsonl")
    else:
        frame.to_parquet(path, index=False)
    return path


def frame(texts=TEXTS, labels=LABELS, text_column="text", label_column="label") -> pd.DataFrame:
    return pd.DataFrame({text_column: list(texts), label_column: list(labels)})


def assert_message(err: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(err.value)
    assert "\n" not in message, "usage errors are one line"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# --- reading splits ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", list(READERS))
def test_directory_of_splits_in_each_format(tmp_path, suffix):
    write(tmp_path / f"train{suffix}", frame())
    write(tmp_path / f"validation{suffix}", frame(TEXTS[:2], LABELS[:2]))
    write(tmp_path / f"test{suffix}", frame(TEXTS[2:], LABELS[2:]))
    splits = load_splits(DataConfig(path=str(tmp_path)))
    assert splits.label_names == sorted(set(LABELS))
    for split, (texts, labels) in [(splits.train, (TEXTS, LABELS)), (splits.validation, (TEXTS[:2], LABELS[:2])),
                                   (splits.test, (TEXTS[2:], LABELS[2:]))]:
        assert split.texts == texts
        assert [splits.label_names[i] for i in split.labels] == labels
        assert split.source.endswith(suffix)


@pytest.mark.parametrize("name", ["validation", "valid", "val", "dev"])
def test_validation_file_names(tmp_path, name):
    write(tmp_path / "train.csv", frame())
    write(tmp_path / f"{name}.csv", frame(TEXTS[:2], LABELS[:2]))
    splits = load_splits(DataConfig(path=str(tmp_path)))
    assert Path(splits.validation.source).name == f"{name}.csv"
    assert splits.validation.texts == TEXTS[:2]
    assert splits.test is None


@pytest.mark.parametrize("text_column", ["text", "sentence"])
@pytest.mark.parametrize("label_column", ["label", "labels"])
def test_columns_are_detected(tmp_path, text_column, label_column):
    data = frame(text_column=text_column, label_column=label_column).assign(idx=range(len(TEXTS)))
    write(tmp_path / "train.csv", data)
    write(tmp_path / "dev.csv", data)
    splits = load_splits(DataConfig(path=str(tmp_path)))
    assert splits.train.texts == TEXTS
    assert splits.label_names == ["neg", "pos"]  # the label column, not idx
    assert [splits.label_names[i] for i in splits.train.labels] == LABELS


def test_explicit_columns_win_over_detection(tmp_path):
    data = pd.DataFrame({"text": ["ignored"] * 6, "label": ["x"] * 6, "review_body": TEXTS, "stars": LABELS})
    write(tmp_path / "train.csv", data)
    write(tmp_path / "validation.csv", data)
    splits = load_splits(DataConfig(path=str(tmp_path), text_column="review_body", label_column="stars"))
    assert splits.train.texts == TEXTS
    assert splits.label_names == sorted(set(LABELS))
    assert [splits.label_names[i] for i in splits.train.labels] == LABELS


@pytest.mark.parametrize(
    ("config", "columns", "fragments"),
    [
        ({"text_column": "body"}, ("text", "label"), ["no text column 'body'", "columns found: text, label",
                                                      "data.text_column"]),
        ({"label_column": "y2"}, ("text", "label"), ["no label column 'y2'", "columns found: text, label",
                                                     "data.label_column"]),
        ({}, ("words", "label"), ["no text column found among words, label", "data.text_column",
                                  "(or --set data.text_columns=FIRST,SECOND for a sentence pair)"]),
        ({}, ("text", "stars", "source"), ["no label column found among text, stars, source", "data.label_column"]),
    ],
    ids=["explicit-text", "explicit-label", "no-text", "no-label"],
)
def test_missing_column_lists_the_columns_found(tmp_path, config, columns, fragments):
    words = [text.split()[0] for text in TEXTS]  # one word a row: no column holds free text
    table = frame(words, text_column=columns[0], label_column=columns[1])
    table = table.assign(**{name: "web" for name in columns[2:]})
    file = write(tmp_path / "train.csv", table)
    with pytest.raises(UsageError) as err:
        load_splits(DataConfig(path=str(file), **config))
    assert_message(err, str(file), *fragments)


@pytest.mark.parametrize(
    ("columns", "task", "labels", "text"),
    [
        ({"id": [f"0a{i}f9" for i in range(6)], "comment_text": TEXTS, "toxic": [0, 1, 0, 1, 0, 1],
          "insult": [0, 0, 0, 1, 0, 1]}, "multi_label", ["toxic", "insult"], TEXTS[0]),
        ({"id": range(100, 106), "tweet": TEXTS, "sentiment": LABELS}, "single_label", ["neg", "pos"], TEXTS[0]),
        ({"Text": TEXTS, "Label": LABELS}, "single_label", ["neg", "pos"], TEXTS[0]),
        ({"id": range(6), "qid1": [1, 3, 5, 7, 9, 11], "question1": TEXTS, "question2": TEXTS[::-1],
          "is_duplicate": [0, 1, 0, 1, 0, 1]}, "single_label", ["0", "1"], (TEXTS[0], TEXTS[-1])),
        ({"Premise": TEXTS, "Hypothesis": TEXTS[::-1], "gold_label": LABELS}, "single_label", ["neg", "pos"],
         (TEXTS[0], TEXTS[-1])),
        ({"question": TEXTS, "passage": TEXTS[::-1], "answer": [True, False] * 3}, "single_label", ["False", "True"],
         (TEXTS[0], TEXTS[-1])),
    ],
    ids=["ids-free-text-and-0/1-columns", "ids-free-text-and-a-label", "capitalised", "question-pairs", "nli",
         "yes/no-answers-are-labels-not-texts"],
)
def test_columns_are_found_as_datasets_ship_them(tmp_path, columns, task, labels, text):
    """Text and label columns named otherwise than usual, in any case, beside an id: a free-text column is the
    text, an id is never a label."""
    file = write(tmp_path / "train.csv", pd.DataFrame(columns))
    splits = load_splits(DataConfig(path=str(file), validation_fraction=0.5))
    assert (splits.task, splits.label_names) == (task, labels)
    assert text in splits.train.texts + splits.validation.texts


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_a_list_column_of_any_name_holds_multi_label_names(tmp_path, suffix):
    tags = [["joy"], [], ["joy", "anger"], ["anger"], ["joy"], ["anger"]]
    file = write(tmp_path / f"train{suffix}", pd.DataFrame({"id": range(6), "text": TEXTS, "tags": tags}))
    splits = load_splits(DataConfig(path=str(file), validation_fraction=0.5))
    assert (splits.task, splits.label_names) == ("multi_label", ["anger", "joy"])


def test_a_label_no_training_row_has_is_named_in_a_warning(tmp_path, caplog):
    columns = {"text": TEXTS, "joy": [1, 0, 1, 0, 0, 1], "fear": [0] * 6, "anger": [0, 1, 0, 1, 1, 0]}
    write(tmp_path / "train.csv", pd.DataFrame(columns))
    write(tmp_path / "validation.csv", pd.DataFrame({**columns, "fear": [1, 0, 0, 0, 0, 0]}))
    with caplog.at_level(logging.WARNING):
        splits = load_splits(DataConfig(path=str(tmp_path)))
    assert splits.label_names == ["joy", "fear", "anger"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"{tmp_path / 'train.csv'}: no training row has label(s) 'fear': the model cannot learn "
                        "them; add rows that have them, or leave them out"]


def test_two_columns_of_free_text_are_left_to_the_user(tmp_path):
    file = write(tmp_path / "train.csv", pd.DataFrame({"title": TEXTS, "description": TEXTS[::-1], "label": LABELS}))
    with pytest.raises(UsageError) as err:
        load_splits(DataConfig(path=str(file)))
    assert_message(err, f"{file}: columns 'title' and 'description' both hold free text; pick the text with "
                        "--set data.text_column=NAME (or --set data.text_columns=FIRST,SECOND for a sentence pair)")


def test_the_one_column_beside_the_text_holds_the_labels_whatever_its_name(tmp_path):
    file = write(tmp_path / "train.csv", frame(label_column="sentiment"))
    splits = load_splits(DataConfig(path=str(file), validation_fraction=0.5))
    assert splits.label_names == ["neg", "pos"] and splits.task == "single_label"
    ids = write(tmp_path / "ids.csv", frame(labels=list(range(100, 106)), label_column="id"))  # one value a row
    with pytest.raises(UsageError) as err:
        load_splits(DataConfig(path=str(ids)))
    assert_message(err, f"{ids}: no label column found among text, id; pass --set data.label_column=NAME")


# --- labels ------------------------------------------------------------------------------------------------------


def test_string_labels_are_sorted(tmp_path):
    labels = ["zebra", "apple", "mango", "apple", "zebra", "mango"]
    write(tmp_path / "train.jsonl", frame(labels=labels))
    write(tmp_path / "dev.jsonl", frame(labels=labels))
    splits = load_splits(DataConfig(path=str(tmp_path)))
    assert splits.label_names == sorted(set(labels))
    assert [splits.label_names[i] for i in splits.train.labels] == labels


def test_labels_config_fixes_the_order(tmp_path):
    order = ["pos", "neg", "neutral"]  # not sorted, and one class has no training rows
    write(tmp_path / "train.csv", frame())
    write(tmp_path / "dev.csv", frame())
    splits = load_splits(DataConfig(path=str(tmp_path), labels=order))
    assert splits.label_names == order
    assert [order[i] for i in splits.train.labels] == LABELS


def test_label_missing_from_labels_config_is_named(tmp_path):
    write(tmp_path / "train.csv", frame())
    with pytest.raises(UsageError) as err:
        load_splits(DataConfig(path=str(tmp_path), labels=["pos", "neutral"]))
    assert_message(err, "'neg'", "data.labels", "pos, neutral")


def test_repeated_name_in_labels_config_is_refused(tmp_path):
    write(tmp_path / "train.csv", frame())
    with pytest.raises(UsageError) as err:
        load_splits(DataConfig(path=str(tmp_path), labels=["pos", "neg", "pos"]))
    assert_message(err, "repeated")


def test_integer_labels_without_names(tmp_path):
    ids = [2, 0, 1, 2, 0, 1]
    write(tmp_path / "train.parquet", frame(labels=ids))
    write(tmp_path / "valid.parquet", frame(labels=ids))
    splits = load_splits(DataConfig(path=str(tmp_path)))
    assert splits.label_names == ["0", "1", "2"]
    assert splits.train.labels.tolist() == ids


def test_integer_labels_named_by_labels_config(tmp_path):
    names = ["World", "Sports", "Business", "Sci/Tech"]
    ids = [3, 0, 1, 2, 0, 3]
    write(tmp_path / "train.csv", frame(labels=ids))
    write(tmp_path / "dev.csv", frame(labels=ids))
    write(tmp_path / "test.csv", frame(labels=ids[::-1]))
    splits = load_splits(DataConfig(path=str(tmp_path), labels=names))
    assert splits.label_names == names
    assert splits.train.labels.tolist() == ids
    assert splits.test.labels.tolist() == ids[::-1]


@pytest.mark.parametrize(("train_labels", "bad"), [(LABELS, "surprise"), ([0, 1, 0, 1, 0, 1], 7)],
                         ids=["string", "integer"])
def test_unseen_validation_label_is_named(tmp_path, train_labels, bad):
    write(tmp_path / "train.csv", frame(labels=train_labels))
    dev = write(tmp_path / "dev.csv", frame(TEXTS[:3], [train_labels[0], bad, train_labels[1]]))
    with pytest.raises(UsageError) as err:
        load_splits(DataConfig(path=str(tmp_path)))
    known = ", ".join(sorted({str(v) for v in train_labels}))
    assert_message(err, str(dev), f"label {bad!r} (row 2)", "never occurs in training", f"known labels: {known}")


def test_row_without_label_is_refused(tmp_path):
    file = tmp_path / "train.csv"
    file.write_text("text,label\nfine,pos\nno label here,\nbad,neg\n", encoding="utf-8")
    with pytest.raises(UsageError) as err:
        load_splits(DataConfig(path=str(file)))
    assert_message(err, "row 2", "no value in label column 'label'")


def classlabel_parquet(directory: Path, names: list[str], texts: list[str], ids: list[int]) -> None:
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    table = datasets.Dataset.from_dict({"text": texts, "label": ids}, features=features)
    for split in ("train", "validation", "test"):
        table.to_parquet(str(directory / f"{split}.parquet"))


def test_class_names_come_from_a_classlabel_feature(tmp_path):
    classlabel_parquet(tmp_path, ["neg", "pos"], ["bad", "good", "great", "awful"], [0, 1, 1, 0])
    splits = load_splits(DataConfig(path=str(tmp_path)))
    assert splits.label_names == ["neg", "pos"]
    assert splits.train.labels.tolist() == [0, 1, 1, 0]


def test_a_list_of_classlabel_ids_gives_multi_label_names_in_their_order(tmp_path):
    """A multi-label column of ``ClassLabel`` ids (the Hub's GoEmotions; ``Dataset.to_parquet`` keeps the feature):
    the labels are the feature's names, in its order, not the ids."""
    item = datasets.ClassLabel(names=["joy", "anger", "fear"])
    features = datasets.Features({"text": datasets.Value("string"), "labels": datasets.Sequence(item)})
    ids = [[0], [], [0, 1], [1], [0], [1]]
    table = datasets.Dataset.from_dict({"text": TEXTS, "labels": ids}, features=features)
    table.to_parquet(str(tmp_path / "t.parquet"))
    splits = load_splits(DataConfig(path=str(tmp_path / "t.parquet"), validation_fraction=0.5))
    assert (splits.task, splits.label_names) == ("multi_label", ["joy", "anger", "fear"])
    by_text = dict(zip(splits.train.texts + splits.validation.texts,
                       np.concatenate([splits.train.labels, splits.validation.labels]).tolist()))
    assert [by_text[text] for text in TEXTS] == [[1 if i in row else 0 for i in range(3)] for row in ids]


def test_a_test_split_without_labels_is_not_scored(tmp_path, caplog):
    """The Hub's GLUE test splits hold -1 for every withheld label, GLUE's own test files no label column: the run
    goes on without a test split, saying so, and evaluating that split says there is nothing to score."""
    classlabel_parquet(tmp_path, ["neg", "pos"], ["bad", "good", "great", "awful"], [0, 1, 1, 0])
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    datasets.Dataset.from_dict({"text": ["fine", "poor"], "label": [-1, -1]}, features=features).to_parquet(
        str(tmp_path / "test.parquet"))
    with caplog.at_level(logging.WARNING):
        splits = load_splits(DataConfig(path=str(tmp_path)))
    assert splits.test is None and splits.label_names == ["neg", "pos"]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"{tmp_path / 'test.parquet'}: no labels to score (no label column, or -1 on every row: withheld, as in "
        "GLUE's test splits); the run reports validation only"]
    with pytest.raises(UsageError) as err:
        read_split(str(tmp_path), "test", ["neg", "pos"])
    assert_message(err, f"{tmp_path / 'test.parquet'}: every label in column 'label' is -1, the mark of a withheld "
                        "label (as in GLUE's test splits): there is nothing to learn from or score; label the rows, "
                        "or pick another split (--split NAME)")
    (tmp_path / "test.parquet").unlink()
    (tmp_path / "test.tsv").write_text("index\ttext\n0\tfine\n1\tpoor\n", encoding="utf-8")
    assert load_splits(DataConfig(path=str(tmp_path))).test is None


def test_rows_whose_classlabel_is_minus_one_are_dropped_with_a_warning(tmp_path, caplog):
    """SNLI marks its pairs without a gold label -1: no label, not a fourth class."""
    classlabel_parquet(tmp_path, ["neg", "pos"], ["bad", "good", "so so", "great", "awful"], [0, 1, -1, 1, 0])
    with caplog.at_level(logging.WARNING):
        splits = load_splits(DataConfig(path=str(tmp_path)))
    assert splits.label_names == ["neg", "pos"] and splits.train.texts == ["bad", "good", "great", "awful"]
    assert splits.train.labels.tolist() == [0, 1, 1, 0] and len(splits.test) == 4
    assert f"{tmp_path / 'train.parquet'}: dropped 1 row(s) whose label is -1, a ClassLabel's mark for no label" in [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_labels_config_reorders_classlabel_names(tmp_path):
    classlabel_parquet(tmp_path, ["neg", "pos"], ["bad", "good", "great", "awful"], [0, 1, 1, 0])
    splits = load_splits(DataConfig(path=str(tmp_path), labels=["pos", "neg"]))
    assert [splits.label_names[i] for i in splits.train.labels] == ["neg", "pos", "pos", "neg"]


# --- rows and quoting --------------------------------------------------------------------------------------------


def test_rows_with_empty_text_are_dropped_with_a_warning(tmp_path, caplog):
    file = tmp_path / "train.csv"
    file.write_text("text,label\ngood one,pos\n,neg\n   ,pos\nbad one,neg\nfine,pos\nawful,neg\n", encoding="utf-8")
    write(tmp_path / "dev.csv", frame())
    with caplog.at_level(logging.WARNING, logger="encoder_clf.data.splits"):
        splits = load_splits(DataConfig(path=str(tmp_path)))
    assert splits.train.texts == ["good one", "bad one", "fine", "awful"]
    assert len(splits.train.labels) == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(file) in warnings[0] and "dropped 2 row(s)" in warnings[0] and "'text'" in warnings[0]


def test_tsv_keeps_quotes_verbatim(tmp_path):
    texts = ['he said "hi', '"quoted" at the start', 'it\'s a "mixed" bag', 'plain', '""', 'end"']
    file = tmp_path / "train.tsv"
    file.write_text("sentence\tlabel\n" + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(texts)), encoding="utf-8")
    write(tmp_path / "dev.tsv", frame(texts[:2], [0, 1], text_column="sentence"))
    splits = load_splits(DataConfig(path=str(tmp_path)))
    assert splits.train.texts == texts
    assert splits.validation.texts == texts[:2]
    assert splits.train.labels.tolist() == [i % 2 for i in range(len(texts))]


def test_a_tsv_quoted_as_pandas_writes_it_is_read_unquoted(tmp_path):
    texts = ['he said "hi" twice', '"quoted" at the start', "a text over\ntwo lines", "tab\there", "plain", "NA"]
    table = frame(texts, text_column="sentence")
    table.to_csv(tmp_path / "train.tsv", sep="\t", index=False)  # quotes fields holding quotes, tabs or newlines
    table.to_csv(tmp_path / "dev.tsv", sep="\t", index=False)
    splits = load_splits(DataConfig(path=str(tmp_path)))
    assert splits.train.texts == texts and splits.validation.texts == texts
    assert (tmp_path / "train.tsv").read_text().count('"') > 0  # the file was quoted; the texts are not


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_a_csv_split_at_another_delimiter_is_read_by_its_header(tmp_path, delimiter):
    """Spreadsheets write CSV with semicolons where the comma is the decimal mark; the texts keep their commas."""
    texts = [f"{text}, I think" for text in TEXTS]
    frame(texts).to_csv(tmp_path / "train.csv", sep=delimiter, index=False)
    frame(texts[:2], LABELS[:2]).to_csv(tmp_path / "validation.csv", sep=delimiter, index=False)
    splits = load_splits(DataConfig(path=str(tmp_path)))
    assert splits.train.texts == texts and splits.validation.texts == texts[:2]
    assert [splits.label_names[i] for i in splits.train.labels] == LABELS


def test_spaces_after_a_csv_comma_are_not_part_of_names_or_labels(tmp_path):
    file = tmp_path / "train.csv"
    file.write_text("text, label\na fine film, pos\ndull and slow, neg\ngreat acting, pos\nweak plot, neg\n",
                    encoding="utf-8")
    splits = load_splits(DataConfig(path=str(file), validation_fraction=0.5))
    assert splits.label_names == ["neg", "pos"]
    assert sorted(splits.train.texts + splits.validation.texts) == ["a fine film", "dull and slow", "great acting",
                                                                    "weak plot"]


def test_only_an_empty_cell_is_missing(tmp_path):
    """pandas reads NA, None, null and nan as missing by default: here they are a class and texts."""
    file = tmp_path / "train.csv"
    file.write_text("text,label\nNone,NA\nnull,EU\nnan,NA\nNA,EU\nN/A,NA\nfine,EU\n", encoding="utf-8")
    splits = load_splits(DataConfig(path=str(file), validation_fraction=0.34))
    assert splits.label_names == ["EU", "NA"]
    assert sorted(splits.train.texts + splits.validation.texts) == sorted(["None", "null", "nan", "NA", "N/A", "fine"])
    file.write_text("text,label\nfine,NA\ngood,\n", encoding="utf-8")
    with pytest.raises(UsageError) as err:
        load_splits(DataConfig(path=str(file)))
    assert_message(err, f"{file}: row 2 has no value in label column 'label'; fill it in or remove the row")


@pytest.mark.parametrize(("labels", "message"), [
    (["Science, Technology", "Sports", "World", "Sports", "World", "Sports"],
     "labels in column 'label' are split at ',' into several per row (data.label_separator); set "
     "data.task=single_label if ',' is part of class names"),
    ([1, 2, 3, 4, 5, 3], "the integers in label column 'label' are taken as 5 classes; set data.task=regression "
                         "if they are scores"),
    ([1.0, 2.0, 3.0, 4.0, 5.0, 3.0], "the integers in label column 'label' are taken as 5 classes; set "
                                     "data.task=regression if they are scores"),
    (["joy|love", "anger", "joy", "anger", "love", "joy"],
     "label 'joy|love' holds '|'; if rows have several labels joined by it, set data.label_separator=|"),
], ids=["comma-in-a-name", "integer-ratings", "whole-number-floats", "pipe-joined"])
def test_a_task_the_data_could_mean_otherwise_is_stated_with_its_setting(tmp_path, caplog, labels, message):
    file = write(tmp_path / "train.csv", frame(labels=labels))
    write(tmp_path / "dev.csv", frame(labels=labels))
    with caplog.at_level(logging.INFO, logger="encoder_clf.data.targets"):
        load_splits(DataConfig(path=str(tmp_path)))
    assert f"{file}: {message}" in caplog.messages


def test_whole_numbers_stored_as_floats_are_classes_as_scikit_learn_reads_them(tmp_path):
    """pandas writes an integer column that had a missing value as 1.0, 0.0: classes 0 and 1, not a score."""
    write(tmp_path / "train.csv", frame(labels=[1.0, 0.0, 1.0, 0.0, 1.0, 0.0]))
    write(tmp_path / "dev.csv", frame(labels=[0, 1, 0, 1, 0, 1]))
    splits = load_splits(DataConfig(path=str(tmp_path)))
    assert (splits.task, splits.label_names) == ("single_label", ["0", "1"])
    assert splits.train.labels.tolist() == [1, 0, 1, 0, 1, 0] and splits.validation.labels.tolist() == [0, 1] * 3


def test_plain_labels_are_read_without_a_note(tmp_path, caplog):
    write(tmp_path / "train.csv", frame(labels=[0, 1, 0, 1, 0, 1]))
    write(tmp_path / "dev.csv", frame(labels=[1, 0, 1, 0, 1, 0]))
    with caplog.at_level(logging.INFO, logger="encoder_clf.data.targets"):
        load_splits(DataConfig(path=str(tmp_path)))
    assert caplog.messages == []


def test_integer_labels_scored_against_named_classes_say_which_id_is_which(tmp_path, caplog):
    file = write(tmp_path / "test.csv", frame(labels=[0, 1, 0, 1, 0, 1]))
    with caplog.at_level(logging.WARNING, logger="encoder_clf.data.columns"):
        split = read_split(str(file), "train", ["neg", "pos"])
    assert split.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert caplog.messages == ["integer labels read as the model's classes in order (0 = neg, 1 = pos); if the ids "
                               "mean other classes, label the rows with the class names"]


def test_a_text_column_of_numbers_or_a_json_file_written_by_columns_is_named_not_dropped(tmp_path):
    numbers = write(tmp_path / "numbers.csv", pd.DataFrame({"text": [3, 1, 4, 1], "label": ["a", "b", "a", "b"]}))
    with pytest.raises(UsageError) as err:
        load_splits(DataConfig(path=str(numbers)))
    assert_message(err, f"{numbers}: row 1: text column 'text' holds 3, not text; if another column holds the "
                        "texts, name it with data.text_column")
    by_columns = tmp_path / "columns.json"
    frame().to_json(by_columns)  # pandas' default orient: one object per column
    with pytest.raises(UsageError) as err:
        load_splits(DataConfig(path=str(by_columns)))
    assert_message(err, f"{by_columns}: row 1: column 'text' holds a dict, not text; write one JSON object per row "
                        "(pandas: to_json(path, orient='records', lines=True))")


def test_a_multi_label_balance_line_counts_labels_and_rows_without_one_apart():
    from encoder_clf.data.targets import describe_balance

    counts = {**{f"l{i}": 10 - i for i in range(10)}, "(no label)": 3}
    assert describe_balance(counts, 20, "multi_label") == (
        "l0 50.0%, l1 45.0%, l2 40.0%, l3 35.0%, l4 30.0%, l5 25.0%, l6 20.0%, l7 15.0%, … (2 more); no label 15.0%")


# --- carving validation from a single file -----------------------------------------------------------------------


def imbalanced_file(tmp_path: Path, counts=None) -> tuple[Path, list[str]]:
    counts = counts or {"common": 180, "middle": 90, "rare": 30}
    labels = [name for name, n in counts.items() for _ in range(n)]
    texts = [f"row {i} about {label}" for i, label in enumerate(labels)]
    return write(tmp_path / "all.csv", frame(texts, labels)), labels


@pytest.mark.parametrize("fraction", [0.1, 0.25])
def test_carved_validation_is_stratified_and_partitions_the_file(tmp_path, fraction):
    file, labels = imbalanced_file(tmp_path)
    splits = load_splits(DataConfig(path=str(file), validation_fraction=fraction), seed=3)
    train, validation = splits.train, splits.validation
    assert sorted(train.texts + validation.texts) == sorted(f"row {i} about {x}" for i, x in enumerate(labels))
    assert not set(train.texts) & set(validation.texts)
    assert len(validation) == pytest.approx(fraction * len(labels), abs=1)
    full = Counter(labels)
    carved = Counter(splits.label_names[i] for i in validation.labels)
    for name, n in full.items():
        assert carved[name] == pytest.approx(fraction * n, abs=1), name
    for split in (train, validation):  # texts and labels still belong together
        assert all(text.endswith(splits.label_names[i]) for text, i in zip(split.texts, split.labels))


def test_carving_is_reproducible_by_seed(tmp_path):
    file, _ = imbalanced_file(tmp_path)
    config = DataConfig(path=str(file))
    first, again, other = (load_splits(config, seed=s).validation.texts for s in (1, 1, 2))
    assert first == again
    assert first != other


def test_carving_works_when_a_class_has_one_row(tmp_path):
    file, labels = imbalanced_file(tmp_path, {"a": 20, "b": 20, "lonely": 1})
    splits = load_splits(DataConfig(path=str(file), validation_fraction=0.2))
    assert len(splits.train) + len(splits.validation) == len(labels)
    assert splits.label_names == ["a", "b", "lonely"]


# --- refused inputs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["./nope/train.csv", "missing.csv", "nope/deeper/train.tsv", "~/absent-dir/x.jsonl"])
def test_missing_local_path_does_not_exist(tmp_path, monkeypatch, path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as err:
        load_splits(DataConfig(path=path))
    assert_message(err, f"data path {path} does not exist")


def test_no_path_is_refused():
    with pytest.raises(UsageError) as err:
        load_splits(DataConfig())
    assert_message(err, "no data path given")


@pytest.mark.parametrize("name", ["train.txt", "train.xlsx", "train"])
def test_unsupported_file_type_lists_the_supported_ones(tmp_path, name):
    file = tmp_path / name
    file.write_text("text,label\na,b\n", encoding="utf-8")
    with pytest.raises(UsageError) as err:
        load_splits(DataConfig(path=str(file)))
    assert_message(err, str(file), "unsupported file type", ", ".join(READERS))


@pytest.mark.parametrize("files", [[], ["notes.txt", "train.xlsx"]], ids=["empty", "no-readable-files"])
def test_directory_without_split_files_is_refused(tmp_path, files):
    for name in files:
        (tmp_path / name).write_text("x", encoding="utf-8")
    with pytest.raises(UsageError) as err:
        load_splits(DataConfig(path=str(tmp_path)))
    assert_message(err, str(tmp_path), "no split files found", ", ".join(READERS))


def test_directory_without_train_split_is_refused(tmp_path):
    write(tmp_path / "validation.csv", frame())
    write(tmp_path / "test.csv", frame())
    with pytest.raises(UsageError) as err:
        load_splits(DataConfig(path=str(tmp_path)))
    assert_message(err, "no train split found", "splits found: validation, test")


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", ".parquet"])
@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_empty_split_is_refused(tmp_path, split, suffix):
    for name in ("train", "validation", "test"):
        write(tmp_path / f"{name}{suffix}", frame().iloc[:0] if name == split else frame())
    with pytest.raises(UsageError) as err:
        load_splits(DataConfig(path=str(tmp_path)))
    assert_message(err, f"{split}{suffix}", "the split is empty")


def test_split_of_only_blank_texts_is_refused(tmp_path):
    write(tmp_path / "train.csv", frame())
    write(tmp_path / "dev.csv", frame([" ", "  "], ["pos", "neg"]))
    with pytest.raises(UsageError) as err:
        load_splits(DataConfig(path=str(tmp_path)))
    assert_message(err, "dev.csv", "the split is empty")


def test_single_file_of_only_blank_texts_is_refused(tmp_path):
    file = write(tmp_path / "train.csv", frame([" ", "  ", "   "], ["pos", "neg", "pos"]))
    with pytest.raises(UsageError, match="the split is empty"):
        load_splits(DataConfig(path=str(file)))


@pytest.mark.parametrize(
    ("config", "fragment"),
    [({"validation_fraction": 0.0}, "data.validation_fraction must be in (0, 1)"),
     ({"validation_fraction": 1.0}, "data.validation_fraction must be in (0, 1)"),
     ({"class_weights": "inverse"}, "data.class_weights must be balanced or null")],
)
def test_invalid_data_config(config, fragment):
    with pytest.raises(UsageError, match=r"^" + fragment.replace("(", r"\(").replace(")", r"\)")):
        DataConfig(**config)


# --- read_split --------------------------------------------------------------------------------------------------


def test_read_split_uses_the_model_classes(tmp_path):
    write(tmp_path / "train.csv", frame())
    write(tmp_path / "test.csv", frame(TEXTS[:3], LABELS[:3]))
    split = read_split(str(tmp_path), "test", ["pos", "neg"])
    assert split.texts == TEXTS[:3]
    assert split.labels.tolist() == [["pos", "neg"].index(x) for x in LABELS[:3]]


def test_read_split_names_the_splits_found(tmp_path):
    write(tmp_path / "train.csv", frame())
    write(tmp_path / "dev.csv", frame())
    with pytest.raises(UsageError) as err:
        read_split(str(tmp_path), "test", ["neg", "pos"])
    assert_message(err, "no 'test' split", "splits found: train, validation")


@pytest.mark.parametrize("named_by", ["labels-config", "classlabel"])
def test_read_split_of_integer_labels_with_class_names(tmp_path, named_by):
    names, ids = ["World", "Sports", "Business"], [0, 1, 2, 0, 1, 2]
    if named_by == "classlabel":
        classlabel_parquet(tmp_path, names, TEXTS, ids)
    else:
        for split in ("train", "dev", "test"):
            write(tmp_path / f"{split}.csv", frame(labels=ids))
    trained = load_splits(DataConfig(path=str(tmp_path), labels=names if named_by == "labels-config" else None))
    assert trained.label_names == names
    split = read_split(str(tmp_path), "test", trained.label_names)
    assert split.labels.tolist() == ids


# --- batching ----------------------------------------------------------------------------------------------------


def lengths_for(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 60, size=n)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize(("n", "batch_size", "pool"), [(1, 4, 50), (10, 3, 50), (257, 16, 2), (64, 64, 1)])
def test_bucket_batches_cover_every_index_once(n, batch_size, pool, shuffle):
    batches = bucket_batches(lengths_for(n), batch_size, shuffle, seed=5, bucket_batches=pool)
    assert all(1 <= len(b) <= batch_size for b in batches)
    assert sorted(np.concatenate(batches).tolist()) == list(range(n))
    if not shuffle:  # evaluation batches are all full but the last
        assert [len(b) for b in batches[:-1]] == [batch_size] * (len(batches) - 1)


def test_shuffled_batches_are_reproducible_by_seed():
    lengths = lengths_for(300)
    run = lambda seed: [b.tolist() for b in bucket_batches(lengths, 8, True, seed=seed, bucket_batches=4)]  # noqa: E731
    assert run(7) == run(7)
    assert run(7) != run(8)


def test_shuffled_batches_group_similar_lengths():
    lengths = lengths_for(200)
    batches = bucket_batches(lengths, 10, True, seed=1, bucket_batches=1000)  # one pool: a global sort
    spans = sorted((lengths[b].min(), lengths[b].max()) for b in batches)
    assert all(high <= next_low for (_, high), (next_low, _) in zip(spans, spans[1:]))


def test_eval_batches_are_sorted_by_length():
    lengths = lengths_for(101)
    order = np.concatenate(bucket_batches(lengths, 16, False))
    assert np.all(np.diff(lengths[order]) >= 0)


@pytest.mark.parametrize("pad_id", [0, 7])
@pytest.mark.parametrize("rows", ["lists", "arrays"])  # arrays: rows of the token cache
def test_collate_pads_and_masks(pad_id, rows):
    sequences = [[2, 11, 12, 3], [2, 3], [2, 21, 22, 23, 24, 3], [2, 5, 3]]
    ids, mask = collate(sequences if rows == "lists" else [np.array(s, dtype=np.int32) for s in sequences], pad_id)
    width = max(map(len, sequences))
    assert ids.shape == mask.shape == (len(sequences), width)
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    for row, seq in enumerate(sequences):
        assert ids[row, : len(seq)].tolist() == seq
        assert ids[row, len(seq):].eq(pad_id).all()
        assert mask[row].tolist() == [j >= len(seq) for j in range(width)]


@pytest.mark.parametrize("longest, limit, width", [
    (5, 512, 5), (128, 512, 128), (129, 512, 160), (160, 512, 160), (161, 512, 192), (500, 512, 512),
    (140, 150, 150), (150, 150, 150), (140, None, 140), (300, None, 300)])
def test_batches_wider_than_128_are_padded_to_a_multiple_of_32_within_the_limit(longest, limit, width):
    ids, mask = collate([[2] + [9] * (longest - 2) + [3], [2, 3]], 0, limit)
    assert ids.shape == (2, width) and (~mask[0]).sum() == longest and (~mask[1]).sum() == 2
    assert ids[0, longest:].eq(0).all()


def test_the_rounded_padding_changes_no_output(tiny_model):
    """A 140-token text alone (padded to 160) and beside a 10-token one: the same outputs, as unpadded."""
    model = tiny_model(max_positions=192).eval()
    long, short = [2] + [5 + i % 20 for i in range(138)] + [3], [2, 7, 8, 3]
    with torch.no_grad():
        alone = model(torch.tensor([long])).logits
        ids, mask = collate([long, short], 0, 192)
        assert ids.shape[1] == 160
        together = model(ids, mask).logits
    torch.testing.assert_close(together[0], alone[0], rtol=1e-5, atol=1e-5)


def test_a_mistyped_path_under_a_local_folder_is_not_looked_up_on_the_hub(tmp_path, monkeypatch):
    """``data/typo`` has the shape of a Hub id, but its folder exists here: it is a local path that is missing."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    monkeypatch.setattr(datasets, "get_dataset_split_names", lambda *a, **k: pytest.fail("asked the Hub"))
    with pytest.raises(UsageError, match=r"^data path data/typo does not exist; pass an existing file"):
        find_splits("data/typo")
