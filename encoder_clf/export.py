"""An exported model: ONNX Runtime's graph of a model, its tokenizer, and what its outputs mean.

:func:`export` writes a directory of three files: ``model.onnx`` (dynamic
batch and sequence axes; inputs ``input_ids``, ``attention_mask`` 1 at tokens
as BERT-family runtimes take it, and ``token_type_ids`` for a pair model;
outputs ``logits`` and ``pooled`` for a classifier, ``pooled`` for an
encoder), the model's ``tokenizer.json``, and ``config.json`` (the task, the
labels, a multi-label model's thresholds or a regression model's target
scale, and the checks made on export). :func:`load_exported` runs it with
ONNX Runtime behind the same interface :mod:`encoder_clf.inference` and
:mod:`encoder_clf.features` use for a PyTorch model, so ``predict``,
``evaluate`` and ``embed`` take either directory.

ONNX Runtime and the exporter's ``onnx``/``onnxscript`` come from the
``onnx`` extra; without them these functions say so in one line.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from .data.batching import sorted_batches
from .data.config import RunData, run_data
from .data.sources import find_splits
from .data.splits import Split, read_texts, validation_rows
from .data.tokenization import encode, pad_id, tokenizer_from_json
from .errors import UsageError
from .features import FeatureEncoder
from .files import published
from .metrics import SELECTION_METRICS
from .model.classifier import TextClassifier
from .model.config import ModelConfig
from .model.tasks import TASKS
from .persistence.encoders import is_bert_checkpoint, load_encoder, resolve
from .persistence.model_dir import CONFIG, EXPORTED_FORMAT, TOKENIZER, load_model, load_model_config
from .settings import from_dict

ONNX = "model.onnx"
FORMAT = EXPORTED_FORMAT
OPSET = 18
QUANTIZATIONS = ("int8",)
TOLERANCE = 1e-4  # fp32 ONNX against PyTorch, largest absolute difference of any output
CHECK_ROWS = 256
EXTRA_HINT = "pip install 'encoder-clf[onnx]'"

log = logging.getLogger(__name__)


def is_exported(directory: str | Path) -> bool:
    """Whether ``directory`` holds an exported model (``model.onnx`` beside its ``config.json``)."""
    return (Path(directory) / ONNX).is_file()


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise UsageError(f"running an exported model needs ONNX Runtime, in the onnx extra: {EXTRA_HINT}") from None
    onnxruntime.set_default_logger_severity(3)  # its warnings about unused initializers are not the user's
    return onnxruntime


class _Graph(nn.Module):
    """What ``model.onnx`` computes: the BERT-family inputs in (``attention_mask`` 1 at tokens), float32 out."""

    def __init__(self, classifier: TextClassifier | None, features: FeatureEncoder | None) -> None:
        super().__init__()
        self.classifier = classifier
        self.encoder = None if features is None else features.encoder
        self.pooling = None if features is None else features.pooling_module(None)

    @property
    def inputs(self) -> list[str]:
        """The names of :meth:`forward`'s inputs: token types only for a pair model."""
        pairs = self.classifier is not None and self.classifier.config.text_pairs
        return ["input_ids", "attention_mask"] + (["token_type_ids"] if pairs else [])

    @property
    def outputs(self) -> list[str]:
        """The names of what :meth:`forward` returns, in order."""
        return ["logits", "pooled"] if self.classifier is not None else ["pooled"]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        padding = attention_mask == 0
        if self.classifier is not None:
            out = self.classifier(input_ids, padding, token_type_ids)
            return out.logits.float(), out.pooled.float()
        states, _ = self.encoder(input_ids, padding, token_type_ids)
        return (self.pooling(states, padding).float(),)


@dataclass
class ExportedModel:
    """An exported directory loaded into an ONNX Runtime session.

    ``config`` is the exported model's :class:`ModelConfig` and ``task`` its
    decision rule (thresholds, target scale), so inference code treats this as
    it treats a :class:`TextClassifier`; ``pooling`` names the pooling behind
    the ``pooled`` output.
    """

    session: object
    tokenizer: Tokenizer
    config: ModelConfig
    task: nn.Module | None
    info: dict

    @property
    def kind(self) -> str:
        return self.info["kind"]

    @property
    def pooling(self) -> str:
        return self.info["pooling"]

    def run(self, sequences: list[list[int]], pad: int, batch_size: int,
            segments: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Every output of the graph for every sequence, in input order, by output name."""
        return _run(self.session, sequences, pad, batch_size, segments, self.config.max_positions)


def _session(file: Path, threads: int | None = None):
    """An ONNX Runtime CPU session on ``threads`` threads (default: PyTorch's count, which follows
    ``OMP_NUM_THREADS`` and ``torch.set_num_threads``)."""
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ONNX Runtime raises its own types for a corrupt or foreign file
        raise UsageError(f"{file} cannot be loaded ({str(err).splitlines()[0]}); export the model again") from None


def _run(session, sequences: list[list[int]], pad: int, batch_size: int,
         segments: np.ndarray | None = None, limit: int | None = None) -> dict[str, np.ndarray]:
    """A session's outputs for sequences batched by length (little padding, at most ``limit`` wide), put back in
    input order."""
    names = [output.name for output in session.get_outputs()]
    pairs = "token_type_ids" in {i.name for i in session.get_inputs()}
    results: dict[str, np.ndarray] = {}
    for index, ids, mask, types in sorted_batches(sequences, pad, batch_size, segments, limit):
        feed = {"input_ids": ids.numpy(), "attention_mask": (~mask).long().numpy()}
        if pairs:
            feed["token_type_ids"] = (torch.zeros_like(ids) if types is None else types).numpy()
        for name, value in zip(names, session.run(names, feed)):
            if name not in results:
                results[name] = np.zeros((len(sequences), value.shape[1]), dtype=np.float32)
            results[name][index] = value
    return results


def load_exported(directory: str | Path, threads: int | None = None) -> ExportedModel:
    """An exported directory in an ONNX Runtime session on ``threads`` threads (default: PyTorch's count,
    which follows ``OMP_NUM_THREADS`` and ``--threads``)."""
    directory = Path(directory)
    info = _read_info(directory)
    session = _session(directory / ONNX, threads)
    tokenizer_file = directory / TOKENIZER
    if not tokenizer_file.is_file():
        raise UsageError(f"{tokenizer_file} not found; the exported directory is incomplete, export the model again")
    tokenizer = tokenizer_from_json(tokenizer_file.read_text(encoding="utf-8"), f"tokenizer file {tokenizer_file}")
    config = from_dict(ModelConfig, info["model"], where=str(directory / CONFIG))
    return ExportedModel(session, tokenizer, config, _decision(config, info) if info["kind"] == "classifier" else None,
                         info)


def _read_info(directory: Path) -> dict:
    file = directory / CONFIG
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{directory}: no {CONFIG}; pass a directory written by encoder-clf export") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{file} is not valid JSON ({err}); export the model again") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise UsageError(f"{file}: not an exported model of this version (format {FORMAT!r} expected, found "
                         f"{info.get('format') if isinstance(info, dict) else None!r}); export the model again")
    return info


def _decision(config: ModelConfig, info: dict) -> nn.Module:
    """The task module, with the values it learned from data (thresholds, target scale) from ``config.json``."""
    task = TASKS[config.task](config.num_labels)
    if config.task == "multi_label":
        task.thresholds.copy_(torch.tensor(info["thresholds"], dtype=torch.float32))
    elif config.task == "regression":
        task.mean.fill_(info["target_mean"])
        task.std.fill_(info["target_std"])
    return task


# --- export ---------------------------------------------------------------------------------------------------

@dataclass
class ExportReport:
    """What :func:`export` wrote and measured (also in the directory's ``config.json`` under ``checks``)."""

    directory: Path
    kind: str
    quantize: str | None
    checks: dict
    size_bytes: int


def _source(model_dir: str | Path) -> tuple[TextClassifier | None, FeatureEncoder, ModelConfig, Path]:
    """A classifier (with its features) or an encoder to embed with, from any model :func:`resolve` takes."""
    directory = resolve(model_dir)
    if not is_bert_checkpoint(directory) and load_model_config(directory).labels:
        model, tokenizer = load_model(directory)
        return model, FeatureEncoder.of_classifier(model, tokenizer), model.config, directory
    pretrained = load_encoder(directory)
    return None, FeatureEncoder.of_pretrained(pretrained), pretrained.config, directory


def export(model_dir: str | Path, out: str | Path, quantize: str | None = None, data: str | None = None,
           overwrite: bool = False) -> ExportReport:
    """Export a model directory (ours, a BERT-family checkpoint or a Hub id) to ``out`` for ONNX Runtime.

    The fp32 graph's outputs are checked against PyTorch to :data:`TOLERANCE` on ``CHECK_ROWS`` texts of
    ``data``'s validation split (else of random token sequences); ``quantize="int8"`` then quantizes the matrix
    products' weights and measures the agreement with fp32 (and, given labelled data, the change in the task's
    main metric on the validation split). Nothing is left at ``out`` unless every step succeeded.
    """
    if quantize not in (None, *QUANTIZATIONS):
        raise UsageError(f"--quantize {quantize}: choose {', '.join(QUANTIZATIONS)} (or leave it out for fp32)")
    out = Path(out)
    blocking = next((path for path in (out, *out.parents) if path.exists() and not path.is_dir()), None)
    if blocking is not None:  # else listing or creating it fails with a traceback
        raise UsageError(f"--out {out}: {blocking} is a file, not a directory; choose another directory")
    source = Path(model_dir).resolve()
    if Path(model_dir).exists() and (out.resolve() == source or out.resolve() in source.parents):
        raise UsageError(f"--out {out} holds the model being exported ({model_dir}), which --overwrite would delete; "
                         "choose another directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"--out {out} is not empty; pass --overwrite to replace it, or choose another directory")
    _onnxruntime()
    try:
        import onnx  # noqa: F401  (torch.onnx writes through it)
        import onnxscript  # noqa: F401
    except ImportError:
        raise UsageError(f"exporting needs the onnx and onnxscript packages, in the onnx extra: {EXTRA_HINT}") from None
    classifier, features, config, directory = _source(model_dir)
    labelled, texts = _check_data(data, run_data(directory), classifier is not None, config)
    graph = _Graph(classifier, None if classifier is not None else features).eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_graph(graph, staging / ONNX)
        sample = _sample(features.tokenizer, config, texts)
        reference = _torch_outputs(graph, *sample)
        checks = {"fp32": _agreement(reference, _exported_outputs(staging, sample), exact=True)}
        worst = checks["fp32"]["max_abs_diff"]
        if worst > TOLERANCE:
            raise UsageError(f"{directory}: the ONNX graph differs from PyTorch by {worst:.2e} (> {TOLERANCE:g}); "
                             "this model's options are not exportable, please report it")
        if quantize == "int8":
            _quantize_int8(staging / ONNX)
            checks["int8"] = _agreement(reference, _exported_outputs(staging, sample), exact=False)
        info = _info(config, features, graph, quantize, directory, checks)
        (staging / TOKENIZER).write_text(features.tokenizer.to_str(pretty=True), encoding="utf-8")
        (staging / CONFIG).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if labelled is not None:
            checks["validation"] = _score_change(classifier, features.tokenizer, staging, labelled)
            info["checks"] = checks
            (staging / CONFIG).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        published(staging)  # mkdtemp's 0700 would keep a server's other users out
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = sum(f.stat().st_size for f in out.iterdir())
    return ExportReport(out, "classifier" if classifier is not None else "encoder", quantize, checks, size)


def _check_data(data: str | None, run: RunData | None, classifier: bool, config: ModelConfig
                ) -> tuple[Split | None, list | None]:
    """A classifier's labelled rows that score the export, and the texts that check its outputs.

    Without ``data``, the run's own validation rows (carved out again with the run's seed where the run carved
    them); with ``data``, its validation split. Both are read with the run's column settings. Neither given nor
    found: random token sequences.
    """
    if data is None:
        if run is None:
            return None, None
        if not run.found:
            log.warning("the run's data %s is not found from here (a relative path is read from the current "
                        "directory): the export is checked on random token sequences; pass --data to score it",
                        run.config.path)
            return None, None
    columns = RunData.reading(run, data if data is not None else run.config.path)
    sources = find_splits(columns.path)
    if not classifier:  # an encoder has no labels to score; its texts check the vectors
        split = "validation" if "validation" in sources else "train"
        return None, read_texts(columns.path, split, columns.text_column)[:CHECK_ROWS]
    if data is not None and "validation" not in sources:
        raise UsageError(f"--data {data}: no validation split to score the export on; pass data with a validation "
                         "file, or leave --data out to use the run's own validation rows")
    labelled = validation_rows(columns, run.seed if run is not None else 0, config.labels, config.task,
                               config.text_pairs)
    return labelled, labelled.texts[:CHECK_ROWS]


def _write_graph(graph: _Graph, file: Path) -> None:
    """``graph`` to ``file`` at :data:`OPSET`, with the batch and sequence axes dynamic."""
    ids = torch.tensor([[2, 5, 6, 7, 3], [2, 8, 3, 0, 0]])
    inputs = (ids, (ids != 0).long(), (torch.arange(5) >= 3).long().expand(2, 5).contiguous())[: len(graph.inputs)]
    names = graph.inputs
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes.update({name: {0: "batch"} for name in graph.outputs})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracing warns at every shape check; the fp32 check after is the test
            # TorchScript tracing: torch.export (dynamo) stops at the data-dependent shapes of the n-gram part
            torch.onnx.export(graph, inputs, str(file), input_names=names, output_names=graph.outputs,
                              opset_version=OPSET, dynamic_axes=axes, dynamo=False)
    except Exception as err:  # the exporter's errors name the operator it could not translate
        raise UsageError(f"this model cannot be exported to ONNX ({str(err).splitlines()[0]}); "
                         "train it without the option that uses that operator") from None


def _sample(tokenizer: Tokenizer, config: ModelConfig, texts: list | None
            ) -> tuple[list[list[int]], int, np.ndarray | None]:
    """Token ids to check the export on: the texts', else random sequences of 2 to 64 tokens (pairs: two halves)."""
    pad = pad_id(tokenizer)
    if texts:
        encoded = encode(tokenizer, texts)
        return encoded.ids, pad, encoded.segments
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, min(64, config.max_positions) + 1, CHECK_ROWS)
    ids = [rng.integers(0, config.vocab_size, n).tolist() for n in lengths]
    for seq in ids:
        seq[:] = [pad + 1 if token == pad else token for token in seq]
    return ids, pad, (lengths // 2).astype(np.int64) if config.text_pairs else None


@torch.inference_mode()
def _torch_outputs(graph: _Graph, sequences: list[list[int]], pad: int, segments: np.ndarray | None
                   ) -> dict[str, np.ndarray]:
    names = graph.outputs
    results: dict[str, list] = {name: [None] * len(sequences) for name in names}
    for index, ids, mask, types in sorted_batches(sequences, pad, 32, segments):
        for name, value in zip(names, graph(ids, (~mask).long(), types)):
            for row, i in enumerate(index):
                results[name][i] = value[row].numpy()
    return {name: np.stack(rows) for name, rows in results.items()}


def _exported_outputs(directory: Path, sample: tuple) -> dict[str, np.ndarray]:
    sequences, pad, segments = sample
    return _run(_session(directory / ONNX), sequences, pad, 32, segments)


def _agreement(reference: dict[str, np.ndarray], exported: dict[str, np.ndarray], exact: bool) -> dict:
    """How closely the exported outputs follow PyTorch's: the largest difference, and for a quantized graph the
    share of equal decisions (the argmax of classifier logits) and the cosine of the pooled vectors."""
    result = {"rows": len(reference["pooled"]),
              "max_abs_diff": float(max(np.abs(reference[k] - exported[k]).max() for k in reference))}
    if exact:
        return result
    a, b = reference["pooled"], exported["pooled"]
    cosine = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    result.update({"pooled_cosine_min": float(cosine.min()), "pooled_cosine_mean": float(cosine.mean())})
    if "logits" in reference and reference["logits"].shape[1] > 1:
        same = reference["logits"].argmax(1) == exported["logits"].argmax(1)
        result["top_label_agreement"] = float(same.mean())
    return result


def _quantize_int8(file: Path) -> None:
    """Dynamic int8 quantization of the matrix products' weights, one scale per output channel (activations are
    quantized per batch at run time), and of the embedding tables, which hold most of a small model's bytes.
    On all-MiniLM-L6-v2 and SST-2 sentences, one scale per weight matrix gave a mean cosine to the fp32
    vectors of 0.958; one per channel, 0.992. The int8 tables cut the `make train` model from 30 to 9.5 MiB
    and were no slower (MiniLM) or faster (SST-2 model, which looks up a large n-gram table)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = file.with_name("fp32.onnx")
    os.replace(file, fp32)
    logging.disable(logging.WARNING)  # the quantizer logs to the root logger: notes on the graph, not the user's
    try:
        quantize_dynamic(str(fp32), str(file), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm", "Gather"])
    finally:
        logging.disable(logging.NOTSET)
    fp32.unlink()


def _score_change(classifier: TextClassifier, tokenizer: Tokenizer, directory: Path, labelled) -> dict:
    """The task's main metric on the validation split, PyTorch fp32 against the exported graph."""
    from .inference import evaluate_texts

    metric = SELECTION_METRICS[classifier.config.task][0]
    pytorch = evaluate_texts(classifier, tokenizer, labelled.texts, labelled.labels)[metric]
    exported = evaluate_texts(load_exported(directory), tokenizer, labelled.texts, labelled.labels)[metric]
    return {"split": "validation", "rows": len(labelled.texts), "metric": metric, "pytorch_fp32": pytorch,
            "exported": exported, "change": exported - pytorch}


def _info(config: ModelConfig, features: FeatureEncoder, graph: _Graph, quantize: str | None, source: Path,
          checks: dict) -> dict:
    from . import __version__

    classifier = graph.classifier
    kind = "classifier" if classifier is not None else "encoder"
    info = {"format": FORMAT, "kind": kind, "task": config.task if classifier is not None else None,
            "labels": list(config.labels) if classifier is not None else [], "text_pairs": config.text_pairs,
            "pooling": features.pooling, "normalized": features.normalized, "dim": features.dim,
            "precision": quantize or "fp32", "opset": OPSET,
            "inputs": graph.inputs, "outputs": graph.outputs,
            "source": str(source), "encoder_clf_version": __version__}
    if classifier is not None and config.task == "multi_label":
        info["thresholds"] = classifier.task.thresholds.tolist()
    if classifier is not None and config.task == "regression":
        info["target_mean"], info["target_std"] = float(classifier.task.mean), float(classifier.task.std)
    info["checks"] = checks
    info["model"] = asdict(config)
    return info
