"""Pretrained encoders to start from or embed with: our model directories, BERT-family checkpoints, Hub ids.

:func:`load_encoder` takes any of them. A BERT-family checkpoint directory
(BERT, MiniLM, …) holds a BERT-style ``config.json``, ``model.safetensors`` and
``tokenizer.json``; a Hub name is downloaded to the local cache first. Its
weights are renamed onto :class:`~encoder_clf.model.encoder.Encoder` (post-LN
blocks, learned positions, token types, the checkpoint's LayerNorm epsilon and
activation) without ``transformers``, and loaded strictly: a missing or
mis-shaped weight is named, and a pickled ``pytorch_model.bin`` is refused,
never unpickled.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from tokenizers import Tokenizer

from ..data.tokenization import load_tokenizer, pad_id
from ..errors import UsageError
from ..model.attention import stack_projections
from ..model.config import ADDITIONS_OFF, ModelConfig
from ..model.encoder import Encoder
from .model_dir import CONFIG, TOKENIZER, WEIGHTS, load_saved_encoder, load_weights, refuse_run_directory

HUB_FILES = [CONFIG, WEIGHTS, TOKENIZER, "sentence_bert_config.json", "1_Pooling/config.json", "modules.json"]
ACTIVATION_NAMES = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}

# BERT's names → ours. Per-layer names are relative to ``encoder.layer.{i}.`` / ``blocks.{i}.``.
EMBEDDING_NAMES = {
    "embeddings.word_embeddings": "embeddings.tokens",
    "embeddings.position_embeddings": "embeddings.positions.embedding",
    "embeddings.token_type_embeddings": "embeddings.token_types",
    "embeddings.LayerNorm": "embeddings.norm",
}
LAYER_NAMES = {
    "attention.self.query": "attention.q_proj",
    "attention.self.key": "attention.k_proj",
    "attention.self.value": "attention.v_proj",
    "attention.output.dense": "attention.out_proj",
    "attention.output.LayerNorm": "attention_norm",
    "intermediate.dense": "feed_forward.0",
    "output.dense": "feed_forward.3",
    "output.LayerNorm": "feed_forward_norm",
}
# Task heads and buffers a BERT checkpoint may carry that a feature encoder does not use.
UNUSED = re.compile(r"^(pooler|cls|classifier|qa_outputs)\.|position_ids$")
PREFIXES = ("bert.", "model.")


@dataclass
class PretrainedEncoder:
    """An encoder to start from, its config and tokenizer, and how its authors make sentence vectors of it: the
    pooling, and whether the vectors are scaled to unit length."""

    encoder: Encoder
    config: ModelConfig
    tokenizer: Tokenizer
    pooling: str
    normalize: bool = False


def is_bert_checkpoint(directory: Path) -> bool:
    """A BERT-style ``config.json`` (``hidden_size``, ``num_hidden_layers``), as opposed to one of ours."""
    file = directory / CONFIG
    if not file.is_file():
        return False
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(raw, dict) and "hidden_size" in raw and "num_hidden_layers" in raw


def resolve(source: str | Path) -> Path:
    """A local directory as is; otherwise a Hub model id, downloaded (or found) in the Hugging Face cache."""
    path = Path(source)
    if path.is_dir():
        refuse_run_directory(path)
        return path
    name = str(source)
    if path.exists() or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name):
        raise UsageError(f"{source}: not a model directory; pass a directory with config.json, "
                         "model.safetensors and tokenizer.json, or a Hugging Face Hub model id")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=HUB_FILES))
    except Exception as err:  # network, auth and missing-repo errors all end the same way for the user
        raise UsageError(f"could not fetch {name!r} from the Hugging Face Hub ({type(err).__name__}); "
                         "check the name and your connection, or pass a local checkpoint directory") from None


def bert_model_config(raw: dict, where: str) -> ModelConfig:
    """Our :class:`ModelConfig` for a BERT-style ``config.json``."""
    model_type = raw.get("model_type", "bert")
    if model_type != "bert":
        raise UsageError(f"{where}: model_type {model_type!r} is not supported; encoder-clf imports "
                         "BERT-family checkpoints (model_type 'bert', e.g. BERT, MiniLM)")
    if raw.get("position_embedding_type", "absolute") != "absolute":
        raise UsageError(f"{where}: position_embedding_type {raw['position_embedding_type']!r} is not supported; "
                         "only absolute (learned) positions are")
    activation = raw.get("hidden_act", "gelu")
    if activation not in ACTIVATION_NAMES:
        raise UsageError(f"{where}: hidden_act {activation!r} is not supported; "
                         f"supported: {', '.join(ACTIVATION_NAMES)}")
    try:
        return ModelConfig(
            d_model=raw["hidden_size"], n_heads=raw["num_attention_heads"], n_layers=raw["num_hidden_layers"],
            d_ff=raw["intermediate_size"], attention="dot", norm="post", positions="learned", pooling="mean",
            **ADDITIONS_OFF, max_positions=raw["max_position_embeddings"],
            dropout=raw.get("hidden_dropout_prob", 0.1), attention_dropout=raw.get("attention_probs_dropout_prob", 0.1),
            activation=ACTIVATION_NAMES[activation], layer_norm_eps=raw.get("layer_norm_eps", 1e-12),
            type_vocab_size=raw.get("type_vocab_size", 2), vocab_size=raw["vocab_size"],
            pad_token_id=raw.get("pad_token_id") or 0,
        )
    except KeyError as err:
        raise UsageError(f"{where}: missing key {err.args[0]!r}; is this a BERT config.json?") from None


def rename(state: dict[str, torch.Tensor], n_layers: int) -> tuple[dict[str, torch.Tensor], list[str]]:
    """BERT weight names → :class:`Encoder` names; also return the names that have no place in it.

    Query, key and value are stacked into one projection, as :class:`Encoder` holds them. Task heads (pooler,
    MLM, classifier) and buffers are skipped silently: they are expected.
    """
    renamed, unknown = {}, []
    for name, tensor in state.items():
        key = next((name[len(p):] for p in PREFIXES if name.startswith(p)), name)
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        module, _, leaf = key.rpartition(".")
        layer = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", module)
        if module in EMBEDDING_NAMES:
            renamed[f"{EMBEDDING_NAMES[module]}.{leaf}"] = tensor
        elif layer and int(layer[1]) < n_layers and layer[2] in LAYER_NAMES:
            renamed[f"blocks.{layer[1]}.{LAYER_NAMES[layer[2]]}.{leaf}"] = tensor
        elif not UNUSED.search(key):
            unknown.append(name)
    return stack_projections(renamed), unknown


def import_bert(source: str | Path, max_length: int | None = None) -> PretrainedEncoder:
    """Load a BERT-family checkpoint directory (or Hub id) as an encoder in eval mode."""
    directory = resolve(source)
    if not is_bert_checkpoint(directory):
        raise UsageError(f"{directory}: no BERT-style {CONFIG} (with hidden_size, num_hidden_layers); "
                         "pass a BERT-family checkpoint directory")
    raw = json.loads((directory / CONFIG).read_text(encoding="utf-8"))
    config = bert_model_config(raw, str(directory / CONFIG))
    weights = directory / WEIGHTS
    if not weights.is_file():
        if (directory / "pytorch_model.bin").is_file():
            raise UsageError(f"{directory}: only pytorch_model.bin found; encoder-clf does not unpickle weights. "
                             "Convert it to model.safetensors (e.g. safetensors' convert script) and retry")
        raise UsageError(f"{weights} not found; the checkpoint needs its weights as model.safetensors")
    try:
        state, unknown = rename(load_file(str(weights)), config.n_layers)
    except (SafetensorError, OSError, ValueError) as err:
        raise UsageError(f"{weights} is corrupted ({err}); download the checkpoint again") from None
    if unknown:
        raise UsageError(f"{weights}: unexpected weights {', '.join(unknown[:5])}; "
                         "this is not a BERT-family encoder encoder-clf can import")
    encoder = Encoder(config)
    load_weights(encoder, weights, {name: tensor.float() for name, tensor in state.items()})
    tokenizer = load_tokenizer(directory / TOKENIZER, max_length or _max_length(directory, config))
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise UsageError(f"{directory / TOKENIZER} has {tokenizer.get_vocab_size()} tokens but the model only "
                         f"{config.vocab_size}; use the checkpoint's own tokenizer.json")
    if pad_id(tokenizer) != config.pad_token_id:
        raise UsageError(f"{directory / TOKENIZER}: [PAD] has id {pad_id(tokenizer)} but config.json says "
                         f"pad_token_id={config.pad_token_id}; use the checkpoint's own tokenizer.json")
    return PretrainedEncoder(encoder.eval(), config, tokenizer, _recommended_pooling(directory),
                             _normalizes(directory))


def load_encoder(source: str | Path, max_length: int | None = None) -> PretrainedEncoder:
    """Any encoder to start from: one of our model directories, a BERT-family directory, or a Hub id."""
    directory = resolve(source)
    if is_bert_checkpoint(directory):
        return import_bert(directory, max_length)
    encoder, config, tokenizer = load_saved_encoder(directory)
    if max_length is not None:
        tokenizer.enable_truncation(min(max_length, config.max_positions))
    return PretrainedEncoder(encoder, config, tokenizer, config.pooling, config.normalize)


def _max_length(directory: Path, config: ModelConfig) -> int:
    """sentence-transformers' ``max_seq_length`` if given, else the model's position limit."""
    file = directory / "sentence_bert_config.json"
    if file.is_file():
        return min(int(json.loads(file.read_text(encoding="utf-8")).get("max_seq_length", 512)),
                   config.max_positions)
    return config.max_positions


def _recommended_pooling(directory: Path) -> str:
    """The pooling named in a sentence-transformers ``1_Pooling/config.json``; ``cls`` for plain BERT."""
    file = directory / "1_Pooling" / "config.json"
    if not file.is_file():
        return "cls"
    modes = json.loads(file.read_text(encoding="utf-8"))
    for mode, name in (("pooling_mode_mean_tokens", "mean"), ("pooling_mode_cls_token", "cls"),
                       ("pooling_mode_max_tokens", "max")):
        if modes.get(mode):
            return name
    return "mean"


def _normalizes(directory: Path) -> bool:
    """Whether a sentence-transformers checkpoint's pipeline (``modules.json``) scales its vectors to unit length:
    all-MiniLM-L6-v2's ends in a ``Normalize`` module, so its ``encode()`` gives unit vectors."""
    file = directory / "modules.json"
    if not file.is_file():
        return False
    return any(str(module.get("type", "")).endswith(".Normalize")
               for module in json.loads(file.read_text(encoding="utf-8")))
