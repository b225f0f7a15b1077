"""The settings of a training run: optimisation, evaluation, stopping, and the run config nesting every concern."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data.config import DataConfig
from ..data.tokenization import TokenizerConfig
from ..metrics import SELECTION_METRICS
from ..model.config import ModelConfig
from ..runtime import PRECISIONS
from ..settings import check_fields
from .distillation import DistillConfig
from .optim import SCHEDULES

METRICS = tuple(dict.fromkeys(name for names in SELECTION_METRICS.values() for name in names))


@dataclass
class TrainConfig:
    """Optimisation, evaluation and stopping."""

    init: str = ""  # start from this encoder (our model dir, a BERT-family dir or a Hub id); "" = from scratch
    epochs: int | None = None  # None = by the train split's size: enough epochs for min_steps (see loop.Plan)
    min_steps: int = 2000  # optimizer steps a run with epochs=None takes at least (in at least 2 epochs) ...
    max_epochs: int = 50  # ... and at most this many epochs
    batch_size: int = 64  # examples per forward pass (per process in a multi-process run)
    grad_accum: int = 1  # forward passes per optimizer step: the step sees batch_size x grad_accum x processes
    lr: float = 1e-3
    head_lr: float = 1e-2  # learning rate of the pooling, the classification head and the n-gram logits; 0 = lr
    layer_lr_decay: float = 1.0  # each block below the top learns at this factor times the one above
    freeze_layers: int = 0  # keep the embeddings and the first k blocks fixed (fine-tuning)
    weight_decay: float = 0.1
    warmup_ratio: float = 0.06
    schedule: str = "linear"
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    token_dropout: float = 0.0  # chance that a word piece is replaced by [UNK] during training
    ema_decay: float = 0.0  # evaluate and keep an exponential moving average of the weights; 0 = off
    max_steps: int = 0  # stop after this many optimizer steps (the schedule ends there); 0 = epochs decide
    eval_every: int = 0  # optimizer steps between evaluations; 0 = once per epoch (a stream: ten per run)
    log_every: int = 0  # optimizer steps between the step records of log.jsonl; 0 = about 100 per run
    metric: str = ""  # what selects the best model; "" = the task's: accuracy, macro-F1 (multi-label), Pearson
    patience: int = 5  # stop after this many evaluations improving neither the metric nor the loss; 0 = never
    precision: str = "auto"
    seed: int = 0
    max_minutes: float = 0.0  # wall-clock budget for the loop; 0 = none
    eval_batch_size: int = 256
    checkpoint_every: int = 0  # optimizer steps between checkpoints; 0 = at evaluations only
    keep_checkpoints: int = 2  # the newest K checkpoints are kept while the run goes on
    compile: bool = False  # torch.compile the training forward pass (pays off on long runs; first steps are slow)
    tensorboard: bool = False  # also write TensorBoard event files under RUN_DIR/tensorboard/ (the tensorboard extra)

    def __post_init__(self) -> None:
        checks = [
            (self.epochs is None or self.epochs > 0, "epochs", "a positive integer (or null: by the data's size)"),
            (self.min_steps >= 0, "min_steps", ">= 0"),
            (self.max_epochs > 0, "max_epochs", "a positive integer"),
            (self.batch_size > 0, "batch_size", "a positive integer"),
            (self.grad_accum > 0, "grad_accum", "a positive integer (1 = no accumulation)"),
            (self.eval_batch_size > 0, "eval_batch_size", "a positive integer"),
            (self.lr > 0, "lr", "positive"),
            (self.head_lr >= 0, "head_lr", ">= 0 (0 = same as lr)"),
            (0 < self.layer_lr_decay <= 1, "layer_lr_decay", "in (0, 1] (1 = no decay)"),
            (self.freeze_layers >= 0, "freeze_layers", ">= 0"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio", "in [0, 1)"),
            (0 <= self.label_smoothing < 1, "label_smoothing", "in [0, 1)"),
            (0 <= self.token_dropout < 1, "token_dropout", "in [0, 1)"),
            (0 <= self.ema_decay < 1, "ema_decay", "in [0, 1) (0 turns averaging off)"),
            (self.weight_decay >= 0, "weight_decay", ">= 0"),
            (self.grad_clip >= 0, "grad_clip", ">= 0 (0 turns clipping off)"),
            (self.max_steps >= 0, "max_steps", ">= 0 (0 = train.epochs decides)"),
            (self.eval_every >= 0, "eval_every", ">= 0 (0 = each epoch)"),
            (self.log_every >= 0, "log_every", ">= 0 (0 = about 100 records per run)"),
            (self.patience >= 0, "patience", ">= 0 (0 = no early stopping)"),
            (self.max_minutes >= 0, "max_minutes", ">= 0 (0 = no budget)"),
            (self.checkpoint_every >= 0, "checkpoint_every", ">= 0 (0 = at evaluations only)"),
            (self.keep_checkpoints >= 1, "keep_checkpoints", "a positive integer"),
            (self.schedule in SCHEDULES, "schedule", f"one of {', '.join(SCHEDULES)}"),
            (self.metric in ("", *METRICS), "metric", f"one of {', '.join(METRICS)} (or empty: the task's own)"),
            (self.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}"),
        ]
        check_fields("train", self, checks)


# What `train --init` starts from, before any config file or --set: the usual recipe for fine-tuning
# a pretrained BERT-family encoder (small learning rate with warmup, a faster head, little dropout). Its length
# follows the data, as from scratch: at least 1,000 optimizer steps in 2 to 5 epochs, the best epoch kept. SST-2's
# 67k rows get 2 epochs as before; MRPC's 3.7k (115 steps an epoch) get 5, where 2 left its test accuracy and F1
# 2.8 and 1.3 points lower over 5 seeds; STS-B, SST-2 2k and AG News small gain too (docs/BENCHMARKS.md, tasks).
FINETUNE_PRESET = [
    "model.pooling=mean", "model.dropout=0.1", "model.attention_dropout=0.1",
    "train.epochs=null", "train.min_steps=1000", "train.max_epochs=5", "train.batch_size=32", "train.lr=1e-4",
    "train.head_lr=1e-3", "train.weight_decay=0.01", "train.warmup_ratio=0.1",
]


@dataclass
class FewShotConfig:
    """Few-shot training in the SetFit way (``--few-shot``, :mod:`.fewshot`): a contrastive stage tunes the
    pretrained encoder on pairs of train rows, then a logistic regression on its sentence vectors becomes the head.

    The contrastive stage is optimised as ``train`` says (``epochs``, ``batch_size`` counted in pairs, ``lr``,
    ``weight_decay``, ``warmup_ratio``, ``schedule``, ``grad_clip``, ``seed``); ``FEWSHOT_PRESET`` sets SetFit's.
    """

    enabled: bool = False
    iterations: int = 20  # pairs: each iteration gives every train row one positive and one negative partner
    head_c: float = 1.0  # the logistic regression's inverse regularisation strength (scikit-learn's and SetFit's)

    def __post_init__(self) -> None:
        check_fields("fewshot", self, [(self.iterations > 0, "iterations", "a positive integer"),
                                       (self.head_c > 0, "head_c", "positive")])


# What `train --init --few-shot` starts from: the fine-tuning preset's model settings and SetFit's recipe for the
# contrastive stage (Tunstall et al., 2022; setfit's defaults): one epoch of pairs in batches of 16, lr 2e-5,
# weight decay 0.01, 10% warmup. The head reads unit-length sentence vectors: the cosine loss trains their
# directions only, and SetFit's head reads all-MiniLM-L6-v2's normalised outputs (see training/fewshot.py).
FEWSHOT_PRESET = [*FINETUNE_PRESET, "model.normalize=true", "train.epochs=1", "train.batch_size=16", "train.lr=2e-5",
                  "train.weight_decay=0.01", "train.warmup_ratio=0.1"]


@dataclass
class RunConfig:
    """Everything one run needs; saved as ``run_config.json`` in the run directory."""

    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fewshot: FewShotConfig = field(default_factory=FewShotConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)  # a teacher's outputs to learn (encoder-clf distill)
