"""``encoder-clf``: a thin command line over :mod:`training` and :mod:`inference`.

Each subcommand parses its flags and calls one workflow function. A
:class:`UsageError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .data.columns import FLAG_HINTS
from .data.splits import read_texts
from .errors import UsageError
from .explanations import TOKEN_WEIGHT_MEANINGS, explain_text, layer_index
from .features import FEATURE_POOLINGS, OUTPUT_FORMATS, embed, write_features
from .inference import evaluate, predict
from .metrics import format_report
from .runtime import PRECISIONS
from .settings import load_json, with_overrides
from .training.config import FINETUNE_PRESET, RunConfig
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
    config = _layered(RunConfig, args, FINETUNE_PRESET if args.init else [], flags)
    if not config.data.path:
        raise UsageError("no data given; pass --data PATH (a directory of splits, a file, or a Hub dataset name)")
    out = args.out or str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    out = Path(broadcast_text(out, world))  # rank 0's clock names the run directory
    _print_results(train(config, out, overwrite=args.overwrite, progress=not args.quiet).metrics, out, world)


def _resume(args: argparse.Namespace, world: World) -> None:
    """The run goes on with its own run_config.json: any other setting would break the exact replay."""
    given = [flag for flag, value in [("--data", args.data), ("--init", args.init), ("--config", args.config),
                                      ("--set", args.set), ("--precision", args.precision), ("--out", args.out),
                                      ("--overwrite", args.overwrite), ("--strict", args.strict),
                                      ("--streaming", args.streaming)] if value]
    if given:
        raise UsageError(f"--resume continues with the settings in the run's run_config.json; drop {', '.join(given)}")
    _print_results(resume(args.resume, progress=not args.quiet).metrics, Path(args.resume), world)


def _print_results(metrics: dict, out: Path, world: World = SOLO) -> None:
    if not world.main:
        return
    for split in ("validation", "test"):
        if split in metrics:
            print(format_report(metrics[split], split))
            print()
    print(f"model and metrics written to {out}")


def _evaluate(args: argparse.Namespace) -> None:
    metrics = evaluate(args.model, args.data, args.split, args.batch_size, args.precision,
                       args.text_column, args.label_column)
    print(json.dumps(metrics, indent=2) if args.json else format_report(metrics, args.split))


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


def _read_texts(args: argparse.Namespace) -> list[str]:
    texts = list(args.text)
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise UsageError(f"--file {path} not found; pass a text file with one text per line")
        try:
            texts += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as err:
            raise UsageError(f"--file {path} is not UTF-8 (byte {err.start}); re-encode it as UTF-8") from None
    if not texts and not args.file and not sys.stdin.isatty():
        texts = [line for line in sys.stdin.read().splitlines() if line.strip()]
    return texts


def _predict(args: argparse.Namespace) -> None:
    texts = _read_texts(args)
    labels, probabilities, names = predict(args.model, texts, args.batch_size, args.precision)
    for text, label, probs in zip(texts, labels, probabilities):
        scores = {name: round(float(p), 6) for name, p in zip(names, probs)}
        if args.json:
            print(json.dumps({"text": text, "label": label, "probabilities": scores}, ensure_ascii=False))
        else:
            shown = "  ".join(f"{name}={p:.3f}" for name, p in scores.items())
            print(f"{label}\t{shown}\t{text}")


def _explain(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if out.suffix.lower() != ".png":  # before loading the model
        raise UsageError(f"--out {out}: the heatmap is a PNG; name the file with .png")
    if args.top < 1:
        raise UsageError(f"--top {args.top}: pass a positive number of tokens to list")
    explanation = explain_text(args.model, " ".join(args.text))
    number = layer_index(args.layer, explanation.n_layers) + 1
    save(explanation_figure(explanation, number), out)
    shown = "  ".join(f"{name}={p:.3f}" for name, p in explanation.probabilities.items())
    print(f"{explanation.label}\t{shown}")
    if len(explanation.parts) > 1:
        print(f"what each part adds to the logit of {explanation.label!r} (centred over the labels):")
        for part in explanation.parts:
            print(f"  {part.name:<8} weight {part.weight:.2f}  {part.logit:+.3f}  ({part.share:+.0%})")
        print(f"n-grams that add most to the n-gram part's logit of {explanation.label!r}:")
        for rank, ngram in enumerate(explanation.ngrams[: args.top], 1):
            print(f"{rank:>3}. {ngram.name:<24} {ngram.logit:+.3f}  ({ngram.share:+.0%} of the n-gram part)")
    print(f"tokens the {explanation.pooling} pooling attends to most "
          f"({TOKEN_WEIGHT_MEANINGS[explanation.pooling]}):")
    for rank, (position, token, weight) in enumerate(explanation.top(args.top), 1):
        print(f"{rank:>3}. {token:<16} {weight:.3f}  (position {position})")
    print(f"attention heatmap of layer {number} of {explanation.n_layers} written to {out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="encoder-clf", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = argparse.ArgumentParser(add_help=False)  # what train and pretrain share
    run.add_argument("--out", help="run directory (default: runs/<timestamp>)")
    run.add_argument("--config", help="JSON file with one section per concern (see --set)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override one setting, e.g. --set model.d_model=256 (repeatable)")
    run.add_argument("--precision", choices=PRECISIONS, help="bf16 autocast or fp32 (default auto)")
    run.add_argument("--overwrite", action="store_true", help="reuse a non-empty run directory")
    run.add_argument("--quiet", action="store_true", help="no progress bar")

    p = commands.add_parser("train", parents=[run], help="train a classifier and write a run directory")
    p.add_argument("--data", help="directory of train/validation/test files, one file, or a Hub dataset name")
    p.add_argument("--init", metavar="DIR_OR_NAME",
                   help="fine-tune a pretrained encoder (our model dir, a BERT-family dir or a Hub id); "
                        "starts from the fine-tuning preset")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a stopped run from its newest checkpoint, with its own run_config.json")
    p.add_argument("--strict", action="store_true",
                   help="refuse rows with empty text instead of dropping them (data.strict)")
    p.add_argument("--streaming", action="store_true",
                   help="read the train split as a stream, one pool at a time (data.streaming; "
                        "needs --set train.max_steps=N and a validation file)")
    p.set_defaults(run=_train)

    p = commands.add_parser("pretrain", parents=[run], help="masked-language-model pretraining on unlabelled text")
    p.add_argument("--data", help="a .txt file (one text per line), a data file or a directory of splits")
    p.set_defaults(run=_pretrain)

    p = commands.add_parser("embed", help="sentence vectors of a dataset's texts, as .npy or .parquet")
    p.add_argument("--model", required=True,
                   help="our model directory, a BERT-family checkpoint directory or a Hub model id")
    p.add_argument("--data", required=True, help="a data file, a directory of splits, or a .txt file")
    p.add_argument("--out", required=True, help="FILE.npy (the matrix) or FILE.parquet (text + embedding)")
    p.add_argument("--split", default="train", help="which split of a directory (default train)")
    p.add_argument("--text-column")
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

    p = commands.add_parser("evaluate", parents=[common], help="score a saved model on a labelled split")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--text-column")
    p.add_argument("--label-column")
    p.set_defaults(run=_evaluate)

    p = commands.add_parser("predict", parents=[common], help="classify texts (arguments, --file, or stdin)")
    p.add_argument("text", nargs="*", help="texts to classify")
    p.add_argument("--file", help="a UTF-8 file with one text per line")
    p.set_defaults(run=_predict)

    p = commands.add_parser("explain", help="attention heatmap of one text and the tokens the pooling reads most")
    p.add_argument("--model", required=True, help="model directory (a run's model/ folder)")
    p.add_argument("text", nargs="+", help="the text to explain (several words are joined with spaces)")
    p.add_argument("--layer", type=int, help="which layer's attention to draw, from 1 (default: the last)")
    p.add_argument("--out", default="attention.png", help="PNG file for the heatmap (default attention.png)")
    p.add_argument("--top", type=int, default=5, help="how many tokens to list (default 5)")
    p.set_defaults(run=_explain)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="encoder-clf: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except UsageError as err:
        print(f"encoder-clf: error: {err}", file=sys.stderr)
        return 2
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
