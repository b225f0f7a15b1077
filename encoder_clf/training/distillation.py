"""Distillation: a student learns a teacher model's outputs on more text than the labelled set.

The transfer set is the train split's texts, the texts of ``distill.unlabeled``
and ``distill.augment`` augmented copies of each train text
(:mod:`encoder_clf.data.augment`). The teacher (any saved or exported model
directory of the same task) labels it once: its outputs go to a file in the
token cache's directory, keyed by the teacher's weights and the texts, and are
memory-mapped from there by every later epoch, rank and resumed run. The student
trains on rows whose targets are the teacher's outputs followed by the hard
label where one is known (:func:`distillation_loss`); validation and test are
scored on their labels as in any run. The student starts from the teacher's
tokenizer and, reduced to its width, its token embeddings (:func:`seed_embeddings`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn
from torch.nn import functional
from tqdm.auto import tqdm

from ..data.augment import Augmentation, augmented
from ..data.columns import SETTING_HINTS
from ..data.splits import Split, Splits, read_texts
from ..data.tokenization import load_tokenizer
from ..data.tokenized import TokenizedSplit, texts_digest, tokenize_split
from ..errors import UsageError
from ..export import is_exported
from ..files import published, remove_abandoned
from ..inference import evaluate_texts, forward_texts, load_classifier, require_classifier, run_precision
from ..persistence.model_dir import WEIGHTS, read_weights
from ..settings import check_fields
from .distributed import World, barrier

log = logging.getLogger(__name__)

TEACHER_CHUNK = 4096  # texts per teacher call: the progress bar's step


@dataclass
class DistillConfig:
    """The teacher, the transfer set it labels, and how the student's loss weighs the teacher against the labels."""

    teacher: str = ""  # a saved or exported model directory of the same task; "" = no distillation
    unlabeled: str = ""  # more texts for the teacher to label: a .txt file (one per line) or a data file's texts
    unlabeled_column: str = ""  # the text column of a data file given as ``unlabeled`` ("" = detected)
    augment: int = 4  # augmented copies of each train text (distinct ones kept; 0 = none)
    mask_rate: float = 0.1  # per word: replaced by [MASK]
    replace_rate: float = 0.1  # per word: replaced by a word seen in the same context
    ngram_rate: float = 0.25  # per copy: cut to a run of 1-5 of its words
    init_embeddings: bool = True  # start from the teacher's tokenizer and its token embeddings, reduced by PCA
    alpha: float = 0.9  # weight of the teacher's term; 1 - alpha goes to the hard labels (where known)
    temperature: float = 2.0  # softens both models' class probabilities in the teacher's term
    batch_size: int = 256  # texts per teacher forward pass

    def __post_init__(self) -> None:
        check_fields("distill", self, [
            (self.augment >= 0, "augment", ">= 0 (0 = no augmented copies)"),
            (0 <= self.mask_rate < 1, "mask_rate", "in [0, 1)"),
            (0 <= self.replace_rate < 1, "replace_rate", "in [0, 1)"),
            (self.mask_rate + self.replace_rate < 1, "replace_rate", "below 1 - distill.mask_rate"),
            (0 <= self.ngram_rate <= 1, "ngram_rate", "in [0, 1]"),
            (0 <= self.alpha <= 1, "alpha", "in [0, 1] (1 = the teacher alone)"),
            (self.temperature > 0, "temperature", "positive"),
            (self.batch_size > 0, "batch_size", "a positive integer"),
        ])

    @property
    def augmentation(self) -> Augmentation:
        return Augmentation(self.augment, self.mask_rate, self.replace_rate, self.ngram_rate)


# The fixes a column or split of the unlabelled texts that cannot be read suggest: not the labelled data's settings.
UNLABELED_HINTS = {**SETTING_HINTS, "text": "--set distill.unlabeled_column=NAME", "split": "--unlabeled FILE"}

TOKEN_EMBEDDINGS = "encoder.embeddings.tokens.weight"  # in a model directory's weights

# The student of `encoder-clf distill`: the `make train` architecture as a self-attention encoder alone.
DISTILL_PRESET = ["model.ngram_buckets=0"]


@dataclass
class TeacherVocabulary:
    """What a student starts from with ``distill.init_embeddings``: the teacher's tokenizer and token embeddings."""

    tokenizer: Tokenizer
    embeddings: torch.Tensor  # (vocab, teacher's width)


def teacher_vocabulary(distill: DistillConfig, tokenizer_path: str, max_length: int | None
                       ) -> TeacherVocabulary | None:
    """The teacher's tokenizer and embedding table, or None where the student cannot start from them.

    A student trained from scratch learns each token's vector from the transfer set alone; the teacher's
    vectors already place words by meaning, as pretrained word vectors did for Tang et al.'s student. They are
    unavailable from an exported teacher (an ONNX graph), and unusable with another tokenizer set explicitly
    (``tokenizer.path``), which wins: the run then says so and the student's embeddings start at random.
    """
    if not (distill.teacher and distill.init_embeddings):
        return None
    if is_exported(distill.teacher):
        log.info("the teacher is an exported model: the student's embeddings start at random, with its own tokenizer")
        return None
    require_classifier(distill.teacher, "--teacher")  # before its tokenizer is read
    tokenizer = load_tokenizer(distill.teacher, max_length)  # with the student's truncation
    if tokenizer_path and load_tokenizer(tokenizer_path, max_length).get_vocab() != tokenizer.get_vocab():
        log.info("tokenizer.path is not the teacher's tokenizer: the student's embeddings start at random")
        return None
    # the one tensor needed, read without building the teacher (its name is the same in every format)
    return TeacherVocabulary(tokenizer, read_weights(Path(distill.teacher) / WEIGHTS)[TOKEN_EMBEDDINGS])


def seed_embeddings(embedding: nn.Embedding, table: torch.Tensor) -> None:
    """Set ``embedding`` to ``table`` ``(vocab, d)`` centred and projected on its principal directions.

    The top ``min(d, width)`` directions keep as much of the table's variance as a linear map to the student's
    width can; the values are scaled to the standard deviation of the student's initial weights, so that the
    embeddings start at the scale the rest of the student was initialised for. Columns beyond ``d`` and the
    padding row keep their initial values.
    """
    centred = table.double() - table.double().mean(dim=0)
    _, _, directions = torch.linalg.svd(centred, full_matrices=False)
    width = min(embedding.embedding_dim, len(directions))
    projected = centred @ directions[:width].T
    with torch.no_grad():
        scale = embedding.weight.std()
        keep = embedding.weight[embedding.padding_idx].clone() if embedding.padding_idx is not None else None
        embedding.weight[:, :width] = (projected / projected.std() * scale).to(embedding.weight.dtype)
        if keep is not None:
            embedding.weight[embedding.padding_idx] = keep


def distillation_loss(task: torch.nn.Module, task_name: str, alpha: float, temperature: float
                      ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The student's loss on ``(batch, outputs)`` logits against targets ``[teacher's outputs | hard label]``.

    ``alpha`` × the teacher's term + (1 - ``alpha``) × the task's own loss on the rows with a hard label
    (-1, or NaN, where none is known):
    - single-label: T² · KL(softmax(teacher / T) ‖ softmax(student / T)) (Hinton et al., 2015);
    - multi-label: T² · binary cross-entropy of the student's logits / T against sigmoid(teacher / T);
    - regression: mean squared error against the teacher's value, both standardised as the head learns them.
    """

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        width = logits.shape[1]
        teacher, hard = targets[:, :width].float(), targets[:, width:]
        if task_name == "single_label":
            log_student = functional.log_softmax(logits / temperature, dim=-1)
            soft = functional.kl_div(log_student, functional.log_softmax(teacher / temperature, dim=-1),
                                     log_target=True, reduction="batchmean") * temperature ** 2
            known = hard[:, 0] >= 0
            labelled = (logits[known], hard[known, 0])
        elif task_name == "multi_label":
            soft = functional.binary_cross_entropy_with_logits(
                logits / temperature, torch.sigmoid(teacher / temperature)) * temperature ** 2
            known = ~hard.isnan().any(dim=1)
            labelled = (logits[known], hard[known])
        else:
            soft = functional.mse_loss(logits[:, 0], task.standardise(teacher[:, 0]))
            known = ~hard[:, 0].isnan()
            labelled = (logits[known], hard[known, 0])
        if alpha == 1 or not known.any():
            return alpha * soft
        return alpha * soft + (1 - alpha) * task.loss(*labelled)

    return loss


@dataclass
class Transfer:
    """The student's train rows (``tokens``, whose labels are the targets) and what metrics.json records of them."""

    tokens: TokenizedSplit
    report: dict


def transfer(config, tokenizer, splits: Splits, cache_dir: str, world: World, progress: bool) -> Transfer:
    """The transfer set in the student's tokens, with the teacher's outputs (computed once, then mapped) as targets.

    ``config`` is the run's :class:`~encoder_clf.training.config.RunConfig`.
    """
    distill, train = config.distill, splits.train
    teacher, teacher_tokenizer = load_classifier(distill.teacher, "--teacher")
    check_teacher(teacher.config, splits, distill.teacher)
    unlabeled = _unlabeled(distill.unlabeled, distill.unlabeled_column, splits.text_pairs)
    copies = augmented(train.texts, distill.augmentation, config.train.seed) if distill.augment else []
    texts = [*train.texts, *unlabeled, *(copy for row in copies for copy in row)]
    precision = run_precision(teacher, config.train.precision)
    started = time.perf_counter()
    outputs = teacher_outputs(teacher, teacher_tokenizer, texts, _teacher_key(distill.teacher), cache_dir,
                              distill.batch_size, precision, world, progress)
    seconds = time.perf_counter() - started
    if splits.task == "regression":  # the teacher's value in the target's units: the student standardises it its way
        outputs = teacher.task.scores(torch.from_numpy(np.array(outputs))).numpy()[:, None]  # a copy: mapped read-only
    targets = np.concatenate([outputs, _hard_labels(train.labels, len(texts), splits.task)], axis=1)
    tokens = tokenize_split(tokenizer, Split(texts, targets, f"{train.source} (transfer set)"), cache_dir,
                            config.data.num_proc)
    report = {"teacher": distill.teacher, "rows": len(texts), "labelled": len(train), "unlabeled": len(unlabeled),
              "augmented": len(texts) - len(train) - len(unlabeled), "teacher_seconds": round(seconds, 1),
              **{f"teacher_{name}": evaluate_texts(teacher, teacher_tokenizer, split.texts, split.labels,
                                                   distill.batch_size, precision)
                 for name, split in (("validation", splits.validation), ("test", splits.test)) if split is not None}}
    if world.main:
        log.info("transfer set: %d texts (%d labelled, %d unlabelled, %d augmented), the teacher's outputs in %.1fs",
                 report["rows"], report["labelled"], report["unlabeled"], report["augmented"], seconds)
    del teacher
    return Transfer(tokens, report)


def teacher_outputs(teacher, tokenizer, texts: list, key: bytes, cache_dir: str, batch_size: int, precision: str,
                    world: World, progress: bool) -> np.ndarray:
    """The teacher's outputs ``(n, outputs)`` for ``texts``: from ``cache_dir/teacher-<hash>.npy`` (memory-mapped)
    when present, else computed (rank 0, with a progress bar) and written there first.

    The hash covers the teacher's weights and every text, so a changed teacher or transfer set is never served stale
    outputs. Without ``cache_dir`` the outputs stay in memory.
    """
    file = Path(cache_dir).expanduser() / f"teacher-{_digest(key, texts)}.npy" if cache_dir else None
    if file is None or (world.main and not file.is_file()):
        outputs = _run_teacher(teacher, tokenizer, texts, batch_size, precision, progress and world.main)
        if file is None:
            return outputs
        _write_npy(file, outputs)
    barrier(world)
    log.info("teacher outputs from %s", file)
    return np.load(file, mmap_mode="r")


def _run_teacher(teacher, tokenizer, texts: list, batch_size: int, precision: str, progress: bool) -> np.ndarray:
    chunks = range(0, len(texts), TEACHER_CHUNK)
    with tqdm(total=len(texts), disable=not progress, unit="text", desc="teacher", dynamic_ncols=True) as bar:
        parts = []
        for start in chunks:
            parts.append(forward_texts(teacher, tokenizer, texts[start: start + TEACHER_CHUNK], batch_size,
                                       precision))
            bar.update(len(parts[-1]))
    return np.concatenate(parts).astype(np.float32)


TEMPORARY_OUTPUTS = re.compile(r"\.teacher-[0-9a-f]{32}-\w{8}\.npy")  # _write_npy's temporary files


def _write_npy(file: Path, array: np.ndarray) -> None:
    """Write to a private file beside ``file``, then rename it into place: never a partial cache file (and the
    hour-old temporaries of killed runs are removed)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(file.parent, TEMPORARY_OUTPUTS)
    handle, temporary = tempfile.mkstemp(prefix=f".{file.stem}-", suffix=".npy", dir=file.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            np.save(out, array)
        os.replace(published(Path(temporary)), file)
    finally:
        Path(temporary).unlink(missing_ok=True)


def _teacher_key(directory: str) -> bytes:
    """A hash of the teacher directory's files (weights, config, tokenizer)."""
    digest = hashlib.blake2b(digest_size=16)
    for file in sorted(Path(directory).expanduser().iterdir()):
        if file.is_file():
            digest.update(file.name.encode())
            with file.open("rb") as handle:
                while block := handle.read(1 << 24):
                    digest.update(block)
    return digest.digest()


def _digest(key: bytes, texts: list) -> str:
    digest = hashlib.blake2b(key, digest_size=16)
    digest.update(texts_digest(texts))
    return digest.hexdigest()


def _hard_labels(labels: np.ndarray, rows: int, task: str) -> np.ndarray:
    """The train labels as float columns, padded to ``rows`` with -1 (a class id) or NaN (indicators, values)."""
    labels = np.asarray(labels, dtype=np.float32).reshape(len(labels), -1)
    hard = np.full((rows, labels.shape[1]), -1.0 if task == "single_label" else np.nan, dtype=np.float32)
    hard[: len(labels)] = labels
    return hard


def check_teacher(teacher, splits: Splits, where: str) -> None:
    """The teacher must answer the task the data asks: its task, its labels in order, pairs or single texts."""
    if teacher.task != splits.task:
        raise UsageError(f"--teacher {where} is a {teacher.task} model and the data is {splits.task}; "
                         "distil from a teacher trained on this task")
    if teacher.text_pairs != splits.text_pairs:
        raise UsageError(f"--teacher {where} takes {'pairs' if teacher.text_pairs else 'single texts'} and the data "
                         f"has {'pairs' if splits.text_pairs else 'single texts'}; distil from a teacher of this task")
    if splits.task == "regression" or list(teacher.labels) == list(splits.label_names):
        return
    missing = [name for name in splits.label_names if name not in teacher.labels]
    if missing:  # no order of the data's labels makes the teacher's outputs theirs
        raise UsageError(f"--teacher {where} has labels {', '.join(teacher.labels)}, without the data's "
                         f"{', '.join(missing)}; distil from a teacher trained on the data's labels")
    raise UsageError(f"--teacher {where} has labels {', '.join(teacher.labels)} and the data "
                     f"{', '.join(splits.label_names)}; pass the teacher's order with "
                     f"--set data.labels={','.join(teacher.labels)}")


def _unlabeled(path: str, column: str, pairs: bool) -> list:
    """The non-empty texts of ``distill.unlabeled``; a file that cannot be read is named as that setting, and a
    column is picked with ``distill.unlabeled_column`` (``data.text_column`` is the labelled data's)."""
    if not path:
        return []
    if pairs:
        raise UsageError(f"distill.unlabeled={path}: unlabelled texts are single texts and the task takes pairs; "
                         "drop it, or distil on the labelled pairs and their augmented copies")
    try:
        texts = [text for text in read_texts(path, text_column=column or None, hints=UNLABELED_HINTS) if text.strip()]
    except UsageError as err:
        raise UsageError(f"distill.unlabeled: {err}") from None  # err names the file
    if not texts:
        raise UsageError(f"distill.unlabeled={path}: no text in it; pass a file with one text per line")
    return texts
