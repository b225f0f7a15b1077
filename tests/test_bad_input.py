"""Every kind of bad input, through the command line: one line naming the file, column or row and the fix,
exit status 2, and nothing written. Plus the inputs that are accepted with a warning (empty rows, huge texts)."""

import io
import json
import logging
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from encoder_clf.cli import main
from encoder_clf.data.tokenization import TOKENIZER_MODELS, TokenizerConfig, encode, train_tokenizer
from encoder_clf.persistence.model_dir import save_model
from encoder_clf.training.config import RunConfig

from conftest import TINY, toy_rows, write_tsv

CORPUS = [f"the film number {i} was {'good' if i % 2 else 'bad'} and {'fun' if i % 3 else 'slow'}" for i in range(60)]


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def splits(root: Path, train: str, validation: str = "sentence\tlabel\ngood film\t1\nbad film\t0\n") -> Path:
    """A data directory whose validation split is fine unless given."""
    write(root / "data" / "train.tsv", train)
    write(root / "data" / "validation.tsv", validation)
    return root / "data"


GOOD_TRAIN = "sentence\tlabel\ngood film\t1\nbad film\t0\nfine cast\t1\ndull plot\t0\n"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small saved model (untrained: only its files matter here)."""
    import torch

    from encoder_clf.model.classifier import TextClassifier
    from encoder_clf.model.config import ModelConfig

    tokenizer = train_tokenizer(CORPUS, TokenizerConfig(vocab_size=100, min_frequency=1, max_length=16))
    torch.manual_seed(0)
    config = ModelConfig(d_model=16, n_heads=2, n_layers=1, d_ff=32, vocab_size=tokenizer.get_vocab_size(),
                         labels=["neg", "pos"], max_positions=32)
    model = TextClassifier(config)
    return save_model(tmp_path_factory.mktemp("model") / "model", model, tokenizer)


def broken_model(root: Path, model_dir: Path, how: str) -> Path:
    target = shutil.copytree(model_dir, root / "model")
    weights = target / "model.safetensors"
    if how == "missing":
        weights.unlink()
    elif how == "corrupted":
        weights.write_bytes(weights.read_bytes()[:100])
    else:  # a tokenizer with another vocabulary
        other = train_tokenizer(CORPUS[:5], TokenizerConfig(vocab_size=100, min_frequency=1))
        other.save(str(target / "tokenizer.json"))
    return target


def encoder_only(root: Path, model_dir: Path) -> Path:
    """A model directory as pretraining writes one: an encoder, no labels (only its config.json is read)."""
    target = shutil.copytree(model_dir, root / "encoder")
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, "labels": []}))
    return target


# Each case: (arguments, fragments the one error line must hold), built in a fresh directory `root`.
# "{out}" stands for the run directory that must not exist afterwards (or must be left as it was).
def case(name: str, root: Path, model_dir: Path) -> tuple[list[str], list[str]]:
    train = ["train", "--out", "{out}", "--quiet"]
    data = lambda path: train + ["--data", str(path)]  # noqa: E731
    if name == "missing path":
        return data(root / "nope" / "train.tsv"), ["data path", "nope/train.tsv does not exist"]
    if name == "unsupported extension":
        return data(write(root / "train.xml", "<a/>")), ["train.xml: unsupported file type '.xml'", "use one of .csv"]
    if name == "missing text column":
        return data(write(root / "train.csv", "words,label\nhi,1\n")), [
            "train.csv: no text column found among words, label", "--set data.text_column=NAME"]
    if name == "missing label column":
        return data(write(root / "train.csv", "text,stars,source\nhi,4,web\n")), [
            "train.csv: no label column found among text, stars, source", "--set data.label_column=NAME"]
    if name == "one class":
        return data(write(root / "train.csv", "text,label\nhi,pos\nho,pos\n")), [
            "train.csv: label column 'label' holds one class ('pos'); a classifier needs at least 2"]
    if name == "one class in a stream":
        write(root / "data" / "train.csv", "text,label\nhi,pos\nho,pos\n")
        write(root / "data" / "validation.csv", "text,label\nhi,pos\nho,pos\n")
        return data(root / "data") + ["--streaming", "--set", "train.max_steps=2"], [
            "validation.csv: label column 'label' holds one class ('pos'); a classifier needs at least 2"]
    if name == "two files for one split":
        write(root / "data" / "dev.csv", "text,label\nhi,pos\nho,neg\n")
        write(root / "data" / "validation.csv", "text,label\nhi,pos\nho,neg\n")
        write(root / "data" / "train.csv", "text,label\nhi,pos\nho,neg\n")
        return data(root / "data"), ["dev.csv and validation.csv could both be the validation split; keep one"]
    if name == "--out is a file":
        write(root / "afile", "")
        return ["train", "--data", str(splits(root, GOOD_TRAIN)), "--out", str(root / "afile"), "--quiet"], [
            "afile is a file, not a directory; pass a directory for the run"]
    if name == "ambiguous text column":
        return data(write(root / "train.csv", "text,sentence,label\na,b,1\nc,d,0\n")), [
            "train.csv: columns 'text' and 'sentence' could both be the text column", "--set data.text_column=NAME"]
    if name == "ambiguous label column":
        return data(write(root / "train.csv", "text,label,target\na,1,0\nc,0,1\n")), [
            "train.csv: columns 'label' and 'target' could both be the label column", "--set data.label_column=NAME"]
    if name == "empty text with --strict":
        path = splits(root, GOOD_TRAIN + " \t1\n\t0\nokay\t1\n")
        return data(path) + ["--strict"], [
            "train.tsv: row 5 has empty text in column 'sentence'", "drop --strict"]
    if name == "missing label":
        return data(splits(root, "sentence\tlabel\ngood\t1\nbad\t\nfine\t1\n")), [
            "train.tsv: row 2 has no value in label column 'label'", "fill it in or remove the row"]
    if name == "missing class name":  # perhaps multi-label data with a text of no label: the setting that reads it so
        return data(write(root / "train.csv", "text,label\nrates rise,economy\nnews,\ngoal,sport\nvote,economy\n")), [
            "train.csv: row 2 has no value in label column 'label'; fill it in or remove the row; if a text may have "
            "no label (multi-label data), --set data.task=multi_label"]
    if name == "label unseen in training":
        return data(splits(root, GOOD_TRAIN, "sentence\tlabel\ngood\t1\nodd\t7\n")), [
            "validation.tsv: label 7 (row 2) never occurs in training", "known labels: 0, 1"]
    if name == "non-UTF-8 bytes":
        return data(splits(root, GOOD_TRAIN.encode() + "caf\u00e9 noir\t1\n".encode("latin-1"))), [
            f"train.tsv: not UTF-8 at byte {len(GOOD_TRAIN) + 3} (line 6, byte 0xe9)", "re-encode the file as UTF-8"]
    if name == "invalid value":
        return data(splits(root, GOOD_TRAIN)) + ["--set", "train.lr=-1"], ["train.lr must be positive; got -1.0"]
    if name == "invalid choice":
        return data(splits(root, GOOD_TRAIN)) + ["--set", "model.attention=cosine"], [
            "model.attention must be one of additive, concat, concat_position, dot; got 'cosine'"]
    if name == "unknown key":
        return data(splits(root, GOOD_TRAIN)) + ["--set", "train.epoch=2"], ["unknown key 'train.epoch'", "epochs"]
    if name == "invalid checkpoint setting":
        return data(splits(root, GOOD_TRAIN)) + ["--set", "train.keep_checkpoints=0"], [
            "train.keep_checkpoints must be a positive integer; got 0"]
    if name == "config file not JSON":
        return data(splits(root, GOOD_TRAIN)) + ["--config", str(write(root / "c.json", "{model: 1"))], [
            "c.json is not valid JSON"]
    if name == "tokenizer file missing":
        return data(splits(root, GOOD_TRAIN)) + ["--set", f"tokenizer.path={root / 'tok.json'}"], [
            "tok.json not found"]
    if name == "init model with a mismatched tokenizer":
        return data(splits(root, GOOD_TRAIN)) + ["--init", str(broken_model(root, model_dir, "tokenizer"))], [
            "tokenizer.json has", "tokens but the model expects"]
    if name == "init from a run directory":
        run = shutil.copytree(model_dir, root / "pretrained-run" / "model").parent
        return data(splits(root, GOOD_TRAIN)) + ["--init", str(run)], [
            f"{run}: a run directory, not a model; pass its model/ folder ({run / 'model'})"]
    if name == "token cache directory is a file":
        cache = write(root / "cache", "not a directory")
        return data(splits(root, GOOD_TRAIN)) + ["--set", f"data.cache_dir={cache}"], [
            f"data.cache_dir {cache}: cannot write the token cache there (File exists)",
            "pass a directory you can write to"]
    if name == "existing run directory":
        write(root / "run" / "metrics.json", "{}")
        return data(splits(root, GOOD_TRAIN)), ["already exists and is not empty", "--overwrite"]
    if name == "resume a missing run":
        return ["train", "--resume", str(root / "run"), "--quiet"], ["no run_config.json there"]
    if name == "resume a finished run":
        write(root / "run" / "run_config.json", "{}")
        write(root / "run" / "metrics.json", "{}")
        return ["train", "--resume", str(root / "run")], ["the run already finished", "nothing to resume"]
    if name == "resume without checkpoints":
        write(root / "run" / "run_config.json", json.dumps(asdict(RunConfig())))
        return ["train", "--resume", str(root / "run")], ["no usable checkpoint to resume from", "--overwrite"]
    if name == "resume with new settings":
        return ["train", "--resume", str(root / "run"), "--set", "train.lr=1"], [
            "--resume continues with the settings in the run's run_config.json; drop --set"]
    if name == "evaluate: missing text column":  # evaluate and embed take flags, not settings: name the flag
        return ["evaluate", "--model", str(model_dir), "--data", str(write(root / "test.csv", "words,label\nhi,1\n")),
                "--split", "train"], ["test.csv: no text column found among words, label", "pass --text-column NAME"]
    if name == "evaluate: unknown label column":
        path = write(root / "test.csv", "text,label\nhi,1\n")
        return ["evaluate", "--model", str(model_dir), "--data", str(path), "--split", "train",
                "--label-column", "stars"], ["no label column 'stars'; columns found: text, label",
                                             "pass --label-column NAME"]
    if name == "embed: ambiguous text column":
        return ["embed", "--model", str(model_dir), "--data", str(write(root / "t.csv", "text,sentence\na,b\n")),
                "--out", str(root / "v.npy")], ["could both be the text column", "pick one with --text-column NAME"]
    if name == "embed: sentence pairs":
        return ["embed", "--model", str(model_dir), "--data", str(write(root / "nli.csv",
                "premise,hypothesis,label\na cat sits,an animal sits,entailment\n")), "--out", str(root / "v.npy")], [
            "nli.csv: its rows are sentence pairs (premise, hypothesis), and one text per row is read here",
            "pass --text-column premise (or hypothesis)"]
    if name == "embed: missing split":
        return ["embed", "--model", str(model_dir), "--data", str(splits(root, GOOD_TRAIN)), "--split", "test",
                "--out", str(root / "v.npy")], ["no 'test' split (splits found: train, validation)",
                                                "pick one with --split NAME"]
    if name == "pretrain: missing split":
        return ["pretrain", "--data", str(splits(root, GOOD_TRAIN)), "--out", "{out}", "--quiet", "--set",
                "data.split=test"], ["no 'test' split (splits found: train, validation)",
                                     "pick one with --set data.split=NAME"]
    pairs = "sentence1\tsentence2\tlabel\n"
    if name == "pair column missing in validation":
        return data(splits(root, pairs + "a good film\ta fine film\t1\na bad film\ta fine cast\t0\n",
                           "sentence1\tlabel\ngood\t1\n")), [
            "validation.tsv: no column 'sentence2', which", "train.tsv has as a text column", "add the column"]
    if name == "empty second text":
        return data(splits(root, pairs + "a good film\ta fine film\t1\na bad film\t \t0\n")), [
            "train.tsv: row 2 has empty text in column 'sentence2', the second text of the pair",
            "fill it in or remove the row"]
    if name == "multi-label name only in validation":
        return data(splits(root, "text\tlabels\nwow\tjoy,surprise\nmeh\tneutral\n",
                           "text\tlabels\nugh\tjoy,anger\n")), [
            "validation.tsv: label 'anger' (row 1) never occurs in training", "known labels: joy, neutral, surprise"]
    if name == "label columns mixing 0/1 with text":
        return data(write(root / "train.csv", "text,joy,anger,note\nwow,1,0,0\nugh,0,1,angry\n")) + [
            "--set", "data.label_columns=joy,anger,note"], [
            "train.csv: row 2 of label column 'note' holds 'angry'", "holds only 0 or 1"]
    if name == "0/1 label columns with a stray value":
        return data(write(root / "train.csv", "text,joy,anger\nwow,1,0\nugh,0,1\nhm,yes,0\n")), [
            "train.csv: column 'anger' holds only 0 and 1 and column 'joy' does not (row 3: 'yes')",
            "name them with --set data.label_columns=NAME,NAME,..."]
    if name == "0/1 label column only in validation":
        return data(splits(root, "text\tjoy\tanger\nwow\t1\t0\nugh\t0\t1\n",
                           "text\tjoy\tanger\tfear\nhm\t1\t0\t1\n")), [
            "validation.tsv: 0/1 column 'fear' is not a label column of", "train.tsv (its labels: joy, anger)"]
    if name == "regression target infinite":
        return data(write(root / "train.csv", "text,score\na,0.5\nb,inf\nc,2.5\n")), [
            "train.csv: row 2 of label column 'score' is inf, not a finite number", "fix or remove the row"]
    if name == "regression target missing":
        return data(write(root / "train.csv", "text,score\na,0.5\nb,\nc,2.5\n")), [
            "train.csv: row 2 has no value in label column 'score'"]
    if name == "regression target not a number":
        return data(write(root / "train.csv", "text,score\na,0.5\nb,high\nc,2.5\nd,1.5\n")), [
            "train.csv: label column 'score' holds numbers and text (row 2: 'high')", "data.task"]
    if name == "task contradicts the data":
        return data(splits(root, GOOD_TRAIN.replace("\t1", "\tpos").replace("\t0", "\tneg"))) + [
            "--set", "data.task=regression"], [
            "train.tsv: data.task=regression contradicts label column 'label', which holds text, not numbers "
            "(row 1: 'pos')", "drop data.task"]
    named = lambda: splits(root, GOOD_TRAIN.replace("\t1", "\tpos").replace("\t0", "\tneg"),  # noqa: E731
                           "sentence\tlabel\ngood film\tpos\nbad film\tneg\n")  # the labels of model_dir
    distill = lambda path, teacher: ["distill", "--out", "{out}", "--quiet", "--data", str(path),  # noqa: E731
                                     "--teacher", str(teacher)]
    if name == "distill: teacher is a run directory":
        run = shutil.copytree(model_dir, root / "teacher-run" / "model").parent
        return distill(named(), run), [f"--teacher {run}: a run directory, not a model; pass its model/ folder "
                                       f"({run / 'model'})"]
    if name == "distill: teacher is a pretrained encoder":
        encoder = encoder_only(root, model_dir)
        return distill(named(), encoder), [f"--teacher {encoder} is a pretrained encoder, without a classifier head",
                                           f"fine-tune it first (encoder-clf train --init {encoder} --data PATH)"]
    if name == "distill: teacher without the data's labels":
        return distill(splits(root, GOOD_TRAIN), model_dir), [
            f"--teacher {model_dir} has labels neg, pos, without the data's 0, 1",
            "distil from a teacher trained on the data's labels"]
    if name == "distill: teacher's labels in another order":
        return distill(named(), model_dir) + ["--set", "data.labels=pos,neg"], [
            "has labels neg, pos and the data pos, neg", "pass the teacher's order with --set data.labels=neg,pos"]
    if name == "distill: unlabeled file missing":
        return distill(named(), model_dir) + ["--unlabeled", str(root / "more.txt")], [
            "distill.unlabeled: data path", "more.txt does not exist"]
    if name == "distill: unlabeled file without a text column":
        return distill(named(), model_dir) + ["--unlabeled", str(write(root / "more.csv", "words\nhi\n"))], [
            "distill.unlabeled: ", "more.csv: no text column found among words",
            "pass --set distill.unlabeled_column=NAME"]
    predict = ["predict", "--model"]
    if name == "evaluate: a pretrained encoder":
        return ["evaluate", "--model", str(encoder_only(root, model_dir)), "--data", str(named())], [
            "encoder is a pretrained encoder, without a classifier head", "no labels to predict",
            "fine-tune it first (encoder-clf train --init"]
    if name == "predict: a run directory":
        run = shutil.copytree(model_dir, root / "a-run" / "model").parent
        return predict + [str(run), "hi"], [f"{run}: a run directory, not a model; pass its model/ folder "
                                           f"({run / 'model'})"]
    if name == "predict: a pretrained encoder":
        return predict + [str(encoder_only(root, model_dir)), "hi"], [
            "encoder is a pretrained encoder, without a classifier head", "fine-tune it first"]
    if name == "explain: a pretrained encoder":
        return ["explain", "--model", str(encoder_only(root, model_dir)), "hi", "--out", str(root / "a.png")], [
            "encoder is a pretrained encoder, without a classifier head", "fine-tune it first"]
    if name == "predict with no text":
        return predict + [str(model_dir)], ["no text to classify; pass TEXT arguments, --file PATH"]
    if name == "predict an empty text":
        return predict + [str(model_dir), "a fine film", "  "], ["text 2 is empty; every text needs a word"]
    if name == "model directory missing":
        return predict + [str(root / "nope"), "hi"], ["model directory", "nope not found"]
    if name == "model weights missing":
        return predict + [str(broken_model(root, model_dir, "missing")), "hi"], [
            "model.safetensors not found; the model directory is incomplete"]
    if name == "model weights corrupted":
        return predict + [str(broken_model(root, model_dir, "corrupted")), "hi"], [
            "model.safetensors is corrupted", "re-save or re-train the model"]
    if name == "tokenizer does not match the model":
        return predict + [str(broken_model(root, model_dir, "tokenizer")), "hi"], [
            "tokenizer.json has", "tokens but the model expects", "save the tokenizer the model was trained with"]
    raise KeyError(name)


CASES = ["missing path", "unsupported extension", "missing text column", "missing label column", "one class",
         "one class in a stream", "two files for one split", "--out is a file",
         "ambiguous text column", "ambiguous label column", "empty text with --strict", "missing label",
         "missing class name",
         "label unseen in training", "non-UTF-8 bytes", "invalid value", "invalid choice", "unknown key",
         "invalid checkpoint setting", "config file not JSON", "tokenizer file missing",
         "init model with a mismatched tokenizer", "token cache directory is a file", "existing run directory",
         "resume a missing run", "resume a finished run", "resume without checkpoints", "resume with new settings",
         "pair column missing in validation", "empty second text", "multi-label name only in validation",
         "label columns mixing 0/1 with text", "0/1 label columns with a stray value",
         "0/1 label column only in validation", "regression target infinite", "regression target missing",
         "regression target not a number", "task contradicts the data", "evaluate: missing text column",
         "evaluate: unknown label column", "embed: ambiguous text column", "embed: sentence pairs",
         "embed: missing split", "pretrain: missing split", "predict with no text", "predict an empty text",
         "model directory missing", "model weights missing", "model weights corrupted",
         "tokenizer does not match the model", "init from a run directory", "distill: teacher is a run directory",
         "distill: teacher is a pretrained encoder", "distill: teacher without the data's labels",
         "distill: teacher's labels in another order", "distill: unlabeled file missing",
         "distill: unlabeled file without a text column", "evaluate: a pretrained encoder",
         "predict: a pretrained encoder", "predict: a run directory", "explain: a pretrained encoder"]


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every directory (``None``) under ``root``: an empty directory left behind counts."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(name, tmp_path, model_dir, capsys, monkeypatch):
    args, fragments = case(name, tmp_path, model_dir)
    out = tmp_path / "run"
    args = [str(out) if a == "{out}" else a for a in args]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n   \n"))  # predict reads stdin when given no text
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("encoder-clf: error: "), err
    for fragment in fragments:
        assert fragment in err[0], f"{fragment!r} not in {err[0]!r}"
    assert snapshot(tmp_path) == before  # nothing written, nothing half-written
    assert out.exists() == ("run" in {Path(k).parts[0] for k in before})


def test_empty_rows_are_dropped_with_a_count_and_a_huge_text_is_truncated(tmp_path, caplog, one_thread):
    """Without --strict, blank texts are dropped (one warning with the count); a 1 MB text is cut at max_length."""
    rows = toy_rows(200, 0)
    huge = ("a long review of the film , " * 40000)[:1_000_000]
    (tmp_path / "data").mkdir()
    write_tsv(tmp_path / "data" / "train.tsv", rows[:100] + [("   ", 1), ("", 0), (huge, 1)] + rows[100:])
    write_tsv(tmp_path / "data" / "validation.tsv", toy_rows(40, 1))
    settings = TINY + ["train.epochs=1", "train.precision=fp32"]
    with caplog.at_level(logging.WARNING, logger="encoder_clf"):
        assert main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--quiet",
                     *[x for s in settings for x in ("--set", s)]]) == 0
    assert "train.tsv: dropped 2 row(s) with empty text in column 'sentence'" in caplog.text
    assert "train: 1 of 201 texts truncated at max_length=128 tokens" in caplog.text
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {key: metrics["data"]["train"][key] for key in ("rows", "truncated")} == {"rows": 201, "truncated": 1}


@pytest.mark.parametrize("model", list(TOKENIZER_MODELS))
@pytest.mark.parametrize("text", ["words", "one word"])
def test_a_1mb_text_tokenizes_in_linear_time(model, text):
    """Truncation happens after tokenizing the whole text: that must stay linear in its length, spaces or not.

    Ten times the text takes about ten times as long when linear and a hundred times when quadratic; the
    bar between them does not depend on how fast the machine is, and the fastest of five tries (as ``timeit``
    advises) is the one least disturbed by whatever else the machine runs.
    """
    tokenizer = train_tokenizer(CORPUS, TokenizerConfig(model=model, vocab_size=100, min_frequency=1,
                                                        max_length=128))
    unit = "the film was good and fun " if text == "words" else "goodfun"

    def seconds(size: int) -> float:
        huge = (unit * (size // len(unit) + 1))[:size]
        times = []
        for _ in range(5):
            start = time.perf_counter()
            ids = encode(tokenizer, [huge]).ids
            times.append(time.perf_counter() - start)
            assert len(ids[0]) <= 128
        return min(times)

    small, large = seconds(100_000), seconds(1_000_000)
    assert large / small < 30, (small, large)


def test_the_python_api_refuses_a_pretrained_encoder_in_one_line(model_dir, tmp_path):
    """predict, evaluate and explain_text name the fix, as the CLI does, instead of failing to build a classifier."""
    from encoder_clf import evaluate, explain_text, predict
    from encoder_clf.errors import UsageError

    encoder = encoder_only(tmp_path, model_dir)
    expected = (f"{encoder} is a pretrained encoder, without a classifier head: it embeds texts (encoder-clf embed) "
                f"and has no labels to predict; fine-tune it first (encoder-clf train --init {encoder} --data PATH)")
    for call in (lambda: predict(encoder, ["hi"]), lambda: evaluate(encoder, str(tmp_path)),
                 lambda: explain_text(encoder, "hi")):
        with pytest.raises(UsageError) as caught:
            call()
        assert str(caught.value) == expected
