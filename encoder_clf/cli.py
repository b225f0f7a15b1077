"""``encoder-clf``: a thin command line over :mod:`training` and :mod:`inference`.

Each subcommand parses its flags and calls one workflow function. A
:class:`UsageError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
import time
from importlib import metadata
from pathlib import Path

from . import __version__
from .data.columns import FLAG_HINTS, pick_texts
from .data.config import run_data
from .data.splits import read_texts, text_lines
from .errors import UsageError
from .explanations import TOKEN_WEIGHT_MEANINGS, explain_text, layer_index
from .export import QUANTIZATIONS, export
from .features import FEATURE_POOLINGS, OUTPUT_FORMATS, embed, write_features
from .files import writing_out
from .inference import evaluate, model_config, predict, records
from .metrics import format_report
from .persistence.model_dir import load_model_config
from .runs import SORT_KEYS, as_jsonl, format_table, list_runs
from .runtime import PRECISIONS
from .settings import load_json, with_overrides
from .training.config import FEWSHOT_PRESET, FINETUNE_PRESET, RunConfig
from .training.distillation import DISTILL_PRESET
from .training.distributed import SOLO, World, broadcast_text, init_from_env, shutdown
from .training.pretraining import PretrainRunConfig, pretrain
from .training.run import resume, train
from .viz import explanation_figure, save


def _layered(cls: type, args: argparse.Namespace, preset: list[str], flags: list[str]):
    """Settings in order: defaults → preset → ``--config`` file → flags → ``--set``."""
    config = with_overrides(cls(), preset)
    if args.config:
        config = load_json(cls, args.config, base=config)
    return with_overrides(config, flags + list(args.set))


def _join_ranks() -> World:
    """Under torchrun, join the other processes; only rank 0 logs and prints."""
    world = init_from_env()
    if not world.main:
        logging.getLogger().setLevel(logging.ERROR)
    return world


def _train(args: argparse.Namespace) -> None:
    world = _join_ranks()
    if args.resume:
        return _resume(args, world)
    flags = [f"data.path={args.data}"] if args.data else []
    flags += [f"train.precision={args.precision}"] if args.precision else []
    flags += [f"train.init={args.init}"] if args.init else []
    flags += ["data.strict=true"] if args.strict else []
    flags += ["data.streaming=true"] if args.streaming else []
    flags += ["train.tensorboard=true"] if args.tensorboard else []
    flags += ["fewshot.enabled=true"] if args.few_shot else []
    preset = FEWSHOT_PRESET if args.few_shot else FINETUNE_PRESET if args.init else []
    config = _layered(RunConfig, args, preset, flags)
    if not config.data.path:
        raise UsageError("no data given; pass --data PATH (a directory of splits, a file, or a Hub dataset name)")
    out = args.out or str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    out = Path(broadcast_text(out, world))  # rank 0's clock names the run directory
    _print_results(train(config, out, overwrite=args.overwrite, progress=not args.quiet).metrics, out, world)


def _distill(args: argparse.Namespace) -> None:
    world = _join_ranks()
    flags = [f"data.path={args.data}", f"distill.teacher={args.teacher}"]
    flags += [f"distill.unlabeled={args.unlabeled}"] if args.unlabeled else []
    flags += [f"train.precision={args.precision}"] if args.precision else []
    config = _layered(RunConfig, args, DISTILL_PRESET, flags)
    out = Path(broadcast_text(args.out or str(Path("runs") / f"distill-{time.strftime('%Y%m%d-%H%M%S')}"), world))
    metrics = train(config, out, overwrite=args.overwrite, progress=not args.quiet).metrics
    if world.main:
        teacher = metrics["distillation"]
        split = "test" if "teacher_test" in teacher else "validation"
        report = format_report(teacher[f"teacher_{split}"], split, f"see {out / 'metrics.json'}")
        print(f"teacher on {split}:\n{report}\n\nstudent:")
    _print_results(metrics, out, world)


def _resume(args: argparse.Namespace, world: World) -> None:
    """The run goes on with its own run_config.json: any other setting would break the exact replay."""
    given = [flag for flag, value in [("--data", args.data), ("--init", args.init), ("--config", args.config),
                                      ("--set", args.set), ("--precision", args.precision), ("--out", args.out),
                                      ("--overwrite", args.overwrite), ("--strict", args.strict),
                                      ("--streaming", args.streaming), ("--tensorboard", args.tensorboard),
                                      ("--few-shot", args.few_shot)]
             if value]
    if given:
        raise UsageError(f"--resume continues with the settings in the run's run_config.json; drop {', '.join(given)}")
    _print_results(resume(args.resume, progress=not args.quiet).metrics, Path(args.resume), world)


def _print_results(metrics: dict, out: Path, world: World = SOLO) -> None:
    if not world.main:
        return
    print(f"task: {metrics['task']}{', sentence pairs' if metrics['text_pairs'] else ''}")
    for split in ("validation", "test"):
        if split in metrics:
            print(format_report(metrics[split], split, f"see {out / 'report.txt'} and metrics.json"))
            print()
    print(f"model and metrics written to {out}")


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _evaluate(args: argparse.Namespace) -> None:
    metrics = evaluate(args.model, args.data, args.split, args.batch_size, args.precision, args.text_column,
                       args.label_column, args.text_columns, args.label_columns, args.label_separator)
    print(json.dumps(metrics, indent=2) if args.json else format_report(metrics, args.split, "--json prints it"))


def _pretrain(args: argparse.Namespace) -> None:
    flags = [f"data.path={args.data}"] if args.data else []
    flags += [f"pretrain.precision={args.precision}"] if args.precision else []
    config = _layered(PretrainRunConfig, args, [], flags)
    out = Path(args.out) if args.out else Path("runs") / f"pretrain-{time.strftime('%Y%m%d-%H%M%S')}"
    metrics = pretrain(config, out, overwrite=args.overwrite, progress=not args.quiet).metrics
    print(f"held-out masked-token loss {metrics['heldout_loss_initial']:.3f} -> {metrics['heldout_loss_final']:.3f}")
    print(f"encoder written to {out / 'model'}; fine-tune it with: encoder-clf train --init {out / 'model'} --data ...")


def _embed(args: argparse.Namespace) -> None:
    output = Path(args.out)
    if output.suffix.lower() not in OUTPUT_FORMATS:  # before the slow part
        raise UsageError(f"--out {output}: unsupported output type {output.suffix or '(none)'!r}; "
                         f"use {' or '.join(OUTPUT_FORMATS)}")
    texts = read_texts(args.data, args.split, args.text_column, FLAG_HINTS)
    if not texts:
        raise UsageError(f"{args.data}: no texts to embed in split {args.split!r}")
    vectors = embed(args.model, texts, args.pooling, args.normalize, args.batch_size, args.precision,
                     progress=not args.quiet)
    write_features(vectors, output, texts if output.suffix.lower() == ".parquet" else None)
    print(f"{vectors.shape[0]} vectors of dimension {vectors.shape[1]} written to {output}")


def _read_lines(args: argparse.Namespace) -> list[str]:
    """The non-empty lines of ``--file``, else of standard input when it is not a terminal."""
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise UsageError(f"--file {path} not found; pass a text file with one text per line")
        try:  # a BOM (Notepad's) is no text; utf-8-sig would count error offsets from after it
            text = path.read_text(encoding="utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError as err:
            raise UsageError(f"--file {path} is not UTF-8 (byte {err.start}); re-encode it as UTF-8") from None
        return [line for line in text_lines(text) if line.strip()]
    if not args.text and not sys.stdin.isatty():
        return [line for line in text_lines(sys.stdin.read()) if line.strip()]
    return []


def _read_examples(args: argparse.Namespace, pairs: bool) -> list:
    """The texts to predict: arguments (``--pair A B``: one pair), then lines of ``--file`` or standard input.

    A line is a text, ``first<TAB>second`` for a pair model, or a JSON object with the text field(s).
    """
    where = f"--file {args.file}" if args.file else "standard input"
    if args.pair and len(args.text) != 2:
        raise UsageError(f"--pair takes exactly two texts, the first and the second of the pair; got {len(args.text)}")
    if pairs and args.text and not args.pair:
        raise UsageError("the model takes sentence pairs; pass --pair FIRST SECOND, or tab-separated lines")
    if args.pair and not pairs:
        raise UsageError("the model takes one text per example; drop --pair")
    examples: list = [tuple(args.text)] if args.pair else list(args.text)
    fields = _own_fields(args.model)
    for number, line in enumerate(_read_lines(args), 1):
        examples.append(_example(line, pairs, f"{where}, line {number}", fields))
    return examples


def _own_fields(model_dir: str) -> tuple[str, ...]:
    """The text column(s) the model's run was told to read (``data.text_columns``, ``data.text_column``), if any:
    JSON lines may name their fields as the training data did."""
    run = run_data(model_dir)
    if run is None:
        return ()
    return tuple(run.config.text_columns or ([run.config.text_column] if run.config.text_column else []))


def _example(line: str, pairs: bool, where: str, fields: tuple[str, ...]):
    """One input line as a text or a pair: JSON with the model's own ``fields`` or the columns' usual names (for
    one text, else its one string field, as a data file's one column of free text), tab-separated, or plain text."""
    if line.lstrip().startswith("{"):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UsageError(f"{where} is not valid JSON ({err.msg}); write one JSON object per line") from None
        columns = list(row)
        own = list(fields) if fields and all(name in row for name in fields) else None
        try:
            names = pick_texts(columns, own, None, where, FLAG_HINTS, pairs)
        except UsageError:
            strings = [name for name in columns if isinstance(row[name], str)]
            if not pairs and len(strings) == 1:
                return row[strings[0]]
            usual = "sentence1 and sentence2 (or text and text_pair)" if pairs else "text"
            named = f"{' and '.join(fields)}, or {usual}" if fields else usual
            raise UsageError(f"{where}: no {'pair of text fields' if pairs else 'text field'} among "
                             f"{', '.join(columns)}; name {'them' if pairs else 'it'} {named}") from None
        texts = tuple(str(row[name]) for name in names)
        return texts if pairs else texts[0]
    if not pairs:
        return line
    parts = line.split("\t")
    if len(parts) != 2 or not all(part.strip() for part in parts):
        raise UsageError(f"{where}: a pair is two non-empty texts separated by one tab; got {len(parts)} field(s)")
    return tuple(parts)


def _predict(args: argparse.Namespace) -> None:
    if args.top_k is not None and args.top_k < 1:
        raise UsageError(f"--top-k {args.top_k}: pass a positive number of labels to list")
    config = model_config(args.model)
    examples = _read_examples(args, config.text_pairs)
    results = predict(args.model, examples, args.batch_size, args.precision)
    for example, label, result in zip(examples, results.labels, records(results, config.task, args.top_k)):
        shown = {"text": example[0], "text_pair": example[1]} if config.text_pairs else {"text": example}
        if args.json:
            print(json.dumps({**shown, **result}, ensure_ascii=False))
            continue
        text = "\t".join(shown.values())
        if config.task == "regression":
            print(f"{label:.4f}\t{text}")
        else:
            values = result.get("probabilities", result.get("scores"))  # the listed labels, best first
            chosen = ",".join(name for name in values if name in label) if config.task == "multi_label" else label
            print(f"{chosen or '(none)'}\t{'  '.join(f'{n}={p:.3f}' for n, p in values.items())}\t{text}")


def _explain(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if out.suffix.lower() != ".png":  # before loading the model
        raise UsageError(f"--out {out}: the heatmap is a PNG; name the file with .png")
    if args.top < 1:
        raise UsageError(f"--top {args.top}: pass a positive number of tokens to list")
    if args.pair and len(args.text) != 2:
        raise UsageError(f"--pair takes exactly two texts, the first and the second of the pair; got {len(args.text)}")
    pairs = load_model_config(args.model).text_pairs
    if pairs != args.pair:
        raise UsageError("the model takes sentence pairs; pass --pair FIRST SECOND" if pairs else
                         "the model takes one text per example; drop --pair")
    explanation = explain_text(args.model, tuple(args.text) if args.pair else " ".join(args.text))
    number = layer_index(args.layer, explanation.n_layers) + 1
    with writing_out(out):
        save(explanation_figure(explanation, number), out)
    task, (quantity, meaning) = explanation.task, explanation.quantity
    shown = "  ".join(f"{name}={p:.3f}" for name, p in explanation.probabilities.items())
    print(f"{explanation.value:.4f}\t{explanation.label}" if task == "regression" else
          f"{','.join(explanation.labels) or '(none)'}\t{shown}")
    for section in explanation.sections:
        label = section.label
        if task == "multi_label":
            fallback = "" if section.predicted else " (no label reaches its threshold: the most probable)"
            print(f"label {label!r}{fallback}: p = {section.probability:.3f} {'>=' if section.predicted else '<'} "
                  f"threshold {section.threshold:.3f}, {quantity} {section.logit:+.3f}")
        elif task == "regression":
            print(f"{explanation.value:.4f} = mean {explanation.mean:.4f} + std {explanation.std:.4f} "
                  f"x {quantity} {section.logit:+.3f}")
        if len(section.parts) > 1:
            print(f"what each part adds to the {quantity} of {label!r} ({meaning}):")
            for part in section.parts:
                print(f"  {part.name:<8} weight {part.weight:.2f}  {part.logit:+.3f}  ({part.share:+.0%})")
            print(f"n-grams that add most to the n-gram part's {quantity} of {label!r}:")
            for rank, ngram in enumerate(section.ngrams[: args.top], 1):
                print(f"{rank:>3}. {ngram.name:<24} {ngram.logit:+.3f}  ({ngram.share:+.0%} of the n-gram part)")
    print(f"tokens the {explanation.pooling} pooling attends to most "
          f"({TOKEN_WEIGHT_MEANINGS[explanation.pooling]}):")
    second = explanation.second_start
    for rank, (position, token, weight) in enumerate(explanation.top(args.top), 1):
        where = "" if second is None else (", second text" if position >= second else ", first text")
        print(f"{rank:>3}. {token:<16} {weight:.3f}  (position {position}{where})")
    if second is not None:
        print("attention across the two texts (share of each text's attention on the other, mean over its tokens "
              "and the heads; even attention would give "
              + " and ".join(f"{v:.3f}" for v in explanation.uniform_cross_segment_attention()) + "):")
        for layer, (first, other) in enumerate(explanation.cross_segment_attention(), 1):
            print(f"  layer {layer}: first -> second {first:.3f}  second -> first {other:.3f}")
    print(f"attention heatmap of layer {number} of {explanation.n_layers} written to {out}")


DESCRIPTION = """Train self-attention text encoders for classification, and use the models they give.

A run reads a dataset (one text, or a pair, per row; one label, several, or
a number), trains a tokenizer and an encoder on it (or fine-tunes a
pretrained one), and writes a run directory: the model, its metrics and its
curves. The other commands load a saved model."""

EPILOG = """examples:
  encoder-clf train --data ../shared/datasets/sst2 --out runs/sst2
  encoder-clf predict --model runs/sst2/model "a gripping, beautifully acted film"

Each command has its own help: encoder-clf COMMAND --help."""

# One sentence on what each command is for, and one example (argparse's epilog).
COMMANDS = {
    "train": ("Train a classifier on a dataset and write a run directory: the best model on validation, its "
              "metrics.json, report.txt and curves.",
              "encoder-clf train --data ../shared/datasets/sst2 --out runs/sst2 --set train.epochs=3"),
    "distill": ("Train a small student on a teacher model's outputs for the train texts, unlabelled texts and "
                "augmented copies (the teacher runs once; its outputs are cached). The student is the train "
                "preset's encoder without the n-gram part, and its run directory is an ordinary one.",
                "encoder-clf distill --teacher runs/minilm/model --data ../shared/datasets/sst2 --out runs/student"),
    "pretrain": ("Pretrain an encoder by masked-token prediction on unlabelled text; train --init fine-tunes "
                 "the model it writes.",
                 "encoder-clf pretrain --data texts.txt --out runs/mlm"),
    "embed": ("Write a sentence vector for each text of a dataset, as a .npy matrix or a .parquet table.",
              "encoder-clf embed --model runs/sst2/model --data ../shared/datasets/sst2 --out train.parquet"),
    "evaluate": ("Score a saved model on a labelled split and print its report.",
                 "encoder-clf evaluate --model runs/sst2/model --data ../shared/datasets/sst2 --split test"),
    "predict": ("Predict the label (labels, or value) of each text given as an argument, in --file or on "
                "stdin.",
                'encoder-clf predict --model runs/sst2/model "a gripping film" "a dull plot"'),
    "runs": ("List run directories, one line each: when it started, the data, the task, the selection metric on "
             "validation and test, the minutes it trained, whether it finished, failed or can be resumed, and the "
             "settings that differ between the runs listed.",
             "encoder-clf runs runs/ --sort test"),
    "export": ("Export a model to ONNX for ONNX Runtime (the onnx extra), checked against PyTorch; with "
               "--quantize int8, its matrix products and embedding tables in int8, with the agreement and the "
               "validation score measured. predict, evaluate and embed take the exported directory.",
               "encoder-clf export --model runs/sst2/model --out exported/sst2 --quantize int8"),
    "serve": ("Serve a model over HTTP (the serve extra): POST /predict and /embed, GET /health and /info, "
              "OpenAPI pages at /docs and a page to try it at /. Concurrent requests share batches.",
              "encoder-clf serve --model exported/sst2-int8 --port 8000"),
    "explain": ("Draw one text's attention as a heatmap and list what its prediction rests on: the tokens "
                "pooled, and what each part of the head and each n-gram adds.",
                'encoder-clf explain --model runs/sst2/model "the plot was dull but the cast was great"'),
}


def _command(commands, name: str, help_line: str, parents: tuple = ()) -> argparse.ArgumentParser:
    description, example = COMMANDS[name]
    return commands.add_parser(name, parents=list(parents), help=help_line, description=textwrap.fill(description, 79),
                               epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)


def _export(args: argparse.Namespace) -> None:
    report = export(args.model, args.out, args.quantize, args.data, args.overwrite)
    checks = report.checks
    print(f"exported the {report.kind} to {report.directory} ({report.quantize or 'fp32'}, "
          f"{report.size_bytes / 2**20:.1f} MiB); largest difference from PyTorch fp32 on "
          f"{checks['fp32']['rows']} texts: {checks['fp32']['max_abs_diff']:.1e} (fp32)"
          + (f", {checks['int8']['max_abs_diff']:.3f} (int8)" if "int8" in checks else ""))
    if "int8" in checks:
        agreement = checks["int8"]
        same = agreement.get("top_label_agreement")
        print(f"int8 against fp32: pooled cosine >= {agreement['pooled_cosine_min']:.4f}"
              + (f", top label the same for {100 * same:.1f}%" if same is not None else ""))
    if "validation" in checks:
        score = checks["validation"]
        print(f"validation {score['metric']} ({score['rows']} rows): {score['pytorch_fp32']:.4f} in PyTorch, "
              f"{score['exported']:.4f} exported ({score['change']:+.4f})")


def _serve(args: argparse.Namespace) -> None:
    from .serve import ServeConfig, serve

    serve(args.model, ServeConfig(args.host, args.port, args.max_batch, args.max_wait_ms, args.max_texts,
                                  args.max_chars, args.precision))


def _runs(args: argparse.Namespace) -> None:
    rows = list_runs(args.dirs, args.sort)
    print(as_jsonl(rows) if args.json else format_table(rows))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="encoder-clf", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = argparse.ArgumentParser(add_help=False)  # what train and pretrain share
    run.add_argument("--out", help="run directory (default: runs/<timestamp>)")
    run.add_argument("--config", help="JSON file with one section per concern (see --set)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override one setting, e.g. --set model.d_model=256 (repeatable)")
    run.add_argument("--precision", choices=PRECISIONS, help="bf16 autocast or fp32 (default auto)")
    run.add_argument("--overwrite", action="store_true", help="reuse a non-empty run directory")
    run.add_argument("--quiet", action="store_true", help="no progress bar")

    p = _command(commands, "train", "train a classifier and write a run directory", (run,))
    p.add_argument("--data", help="directory of train/validation/test files, one file, or a Hub dataset name")
    p.add_argument("--init", metavar="DIR_OR_NAME",
                   help="fine-tune a pretrained encoder (our model dir, a BERT-family dir or a Hub id); "
                        "starts from the fine-tuning preset")
    p.add_argument("--few-shot", action="store_true",
                   help="for few labels (8-64 per class, e.g. --set data.per_class=8): tune the --init encoder on "
                        "pairs of train rows (same class: cosine 1, else 0), then fit a logistic-regression head on "
                        "its sentence vectors, as SetFit does (fewshot.enabled); starts from the few-shot preset")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a stopped run from its newest checkpoint, with its own run_config.json")
    p.add_argument("--strict", action="store_true",
                   help="refuse rows with empty text instead of dropping them (data.strict)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files under RUN_DIR/tensorboard/ (train.tensorboard; "
                        "the tensorboard extra)")
    p.add_argument("--streaming", action="store_true",
                   help="read the train split as a stream, one pool at a time (data.streaming; "
                        "needs --set train.max_steps=N and a validation file)")
    p.set_defaults(run=_train)

    p = _command(commands, "distill", "train a small student on a teacher's outputs", (run,))
    p.add_argument("--teacher", required=True, metavar="DIR",
                   help="a trained model directory (or an exported one) of the same task (distill.teacher)")
    p.add_argument("--data", required=True,
                   help="the labelled data: directory of train/validation/test files, one file, or a Hub name")
    p.add_argument("--unlabeled", metavar="FILE",
                   help="more texts for the teacher to label: .txt (one per line) or a data file (distill.unlabeled)")
    p.set_defaults(run=_distill)

    p = _command(commands, "pretrain", "masked-language-model pretraining on unlabelled text", (run,))
    p.add_argument("--data", help="a .txt file (one text per line), a data file or a directory of splits")
    p.set_defaults(run=_pretrain)

    p = _command(commands, "embed", "sentence vectors of a dataset's texts, as .npy or .parquet")
    p.add_argument("--model", required=True,
                   help="our model directory, a BERT-family checkpoint directory or a Hub model id")
    p.add_argument("--data", required=True, help="a data file, a directory of splits, or a .txt file")
    p.add_argument("--out", required=True, help="FILE.npy (the matrix) or FILE.parquet (text + embedding)")
    p.add_argument("--split", default="train", help="which split of a directory (default train)")
    p.add_argument("--text-column",
                   help="the column holding the texts (default: detected by name, else the one column of free text)")
    p.add_argument("--pooling", choices=FEATURE_POOLINGS,
                   help="default: the model's own (a classifier's pooling; the checkpoint's recommended one)")
    p.add_argument("--normalize", action="store_true", help="scale each vector to unit L2 norm")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_embed)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", required=True, help="model directory (a run's model/ folder)")
    common.add_argument("--batch-size", type=int, default=256)
    common.add_argument("--precision", choices=PRECISIONS, default="auto")
    common.add_argument("--json", action="store_true", help="machine-readable output")

    p = _command(commands, "evaluate", "score a saved model on a labelled split", (common,))
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--text-column",
                   help="the column holding the texts (default: detected by name, else the one column of free text)")
    p.add_argument("--label-column", help="the column holding the labels (default: detected by name)")
    p.add_argument("--text-columns", type=_names, metavar="FIRST,SECOND", help="the two text columns of pairs")
    p.add_argument("--label-columns", type=_names, metavar="NAME,...", help="one 0/1 column per label")
    p.add_argument("--label-separator", help="between the names of a multi-label row (default: the run's, else ,)")
    p.set_defaults(run=_evaluate)

    p = _command(commands, "predict", "classify texts (arguments, --file, or stdin)", (common,))
    p.add_argument("text", nargs="*", help="texts to classify (with --pair: the two texts of one pair)")
    p.add_argument("--file", help="a UTF-8 file with one text per line; for a pair model, FIRST<TAB>SECOND "
                                  "(any line may be a JSON object with the text fields instead)")
    p.add_argument("--pair", action="store_true", help="the two TEXT arguments are one sentence pair")
    p.add_argument("--top-k", type=int, metavar="K",
                   help="list the K best labels with their scores (default: every class; for a multi-label "
                        "model, the labels above their thresholds); a multi-label line starts with those of the K "
                        "at or above their thresholds")
    p.set_defaults(run=_predict)

    p = _command(commands, "explain", "attention heatmap of one text (or sentence pair) and what the prediction "
                                      "rests on")
    p.add_argument("--model", required=True, help="model directory (a run's model/ folder)")
    p.add_argument("text", nargs="+", help="the text to explain (several words are joined with spaces); "
                                           "with --pair, the two texts of one pair")
    p.add_argument("--pair", action="store_true", help="the two TEXT arguments are one sentence pair (pair models)")
    p.add_argument("--layer", type=int, help="which layer's attention to draw, from 1 (default: the last)")
    p.add_argument("--out", default="attention.png", help="PNG file for the heatmap (default attention.png)")
    p.add_argument("--top", type=int, default=5, help="how many tokens to list (default 5)")
    p.set_defaults(run=_explain)

    p = _command(commands, "export", "write an ONNX model directory for ONNX Runtime (fp32, or int8)")
    p.add_argument("--model", required=True,
                   help="our model directory, a BERT-family checkpoint directory or a Hub model id")
    p.add_argument("--out", required=True, help="directory for model.onnx, tokenizer.json and config.json")
    p.add_argument("--quantize", choices=QUANTIZATIONS,
                   help="int8: quantize the matrix products' weights and the embedding tables")
    p.add_argument("--data", help="labelled data whose validation split scores the export (default: the run's "
                                  "own data, when the model sits in a run directory)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out directory")
    p.set_defaults(run=_export)

    p = _command(commands, "serve", "an HTTP server for a model (FastAPI + uvicorn): /predict, /embed, /docs")
    p.add_argument("--model", required=True, help="a model directory, or an exported one (encoder-clf export)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-batch", type=int, default=64, help="texts run together in one forward pass (default 64)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a request waits for others to share its batch (default 5)")
    p.add_argument("--max-texts", type=int, default=256, help="texts per request (default 256; more: 413)")
    p.add_argument("--max-chars", type=int, default=10_000, help="characters per text (default 10000; more: 422)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="of a PyTorch model (default fp32)")
    p.set_defaults(run=_serve)

    p = _command(commands, "runs", "a table of run directories: settings that differ, scores, status")
    p.add_argument("dirs", nargs="*", default=["runs"], metavar="DIR",
                   help="run directories, or folders of them (default runs/)")
    p.add_argument("--sort", default="start", choices=SORT_KEYS, help="order of the lines (default start)")
    p.add_argument("--json", action="store_true", help="one JSON object per run (JSONL)")
    p.set_defaults(run=_runs)
    return parser


def version() -> str:
    """The installed distribution's version (the package's own when run from a source tree)."""
    try:
        return metadata.version("encoder-clf")
    except metadata.PackageNotFoundError:
        return __version__


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="encoder-clf: %(message)s", stream=sys.stderr)
    for library in ("datasets", "huggingface_hub"):  # they print through handlers of their own: once, not twice
        logging.getLogger(library).propagate = False
    args = build_parser().parse_args(argv)
    done = False
    try:
        args.run(args)
        done = True
    except UsageError as err:
        print(f"encoder-clf: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader stopped early (`encoder-clf runs | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit would raise
        return 0
    finally:
        shutdown(wait=done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
