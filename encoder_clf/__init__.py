"""encoder-clf: self-attention text encoders for classification.

The public API, importable from the package itself::

    from encoder_clf import RunConfig, train, predict, EncoderClassifier

Names load on first use (so ``encoder-clf --help`` does not import scikit-learn
or the datasets library for nothing); each lives in the module listed in
:data:`_WHERE`, and ``docs/ARCHITECTURE.md`` maps the package.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public name -> the module (under encoder_clf) that defines it.
_WHERE = {
    # configs
    "RunConfig": "training.config", "ModelConfig": "model.config", "TokenizerConfig": "data.tokenization",
    "DataConfig": "data.config", "TrainConfig": "training.config", "PretrainRunConfig": "training.pretraining",
    "with_overrides": "settings", "load_json": "settings",
    # workflows
    "train": "training.run", "train_on_splits": "training.run", "resume": "training.run", "TrainResult": "training.run",
    "pretrain": "training.pretraining", "evaluate": "inference", "predict": "inference", "embed": "features",
    "explain": "explanations", "explain_text": "explanations", "load_splits": "data.splits", "Split": "data.splits",
    "Splits": "data.splits",
    # models and the saved directory
    "TextClassifier": "model.classifier", "load_model": "persistence.model_dir", "save_model": "persistence.model_dir",
    "load_encoder": "persistence.encoders", "load_exported": "export",
    # scikit-learn
    "EncoderClassifier": "sklearn", "EncoderRegressor": "sklearn", "SentenceEncoder": "sklearn",
    "UsageError": "errors",
}

__all__ = ["__version__", *_WHERE]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'encoder_clf' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
