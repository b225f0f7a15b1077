"""The throughput suite's fine-tuning row: one training step in the all-MiniLM-L6-v2 shape, ours vs `transformers`.

The shape is all-MiniLM-L6-v2's (6 layers, width 384, 12 heads, FFN 1,536, vocabulary 30,522, post-LN,
learned positions, dropout 0.1, mean pooling, 2 labels), randomly initialised: the cost of a step does not
depend on the weights. Batches are 32 random sequences of 32 tokens, none padded (SST-2's fine-tuning batches
are 32 x 10-50 tokens), so this row measures the step alone, without the padding and fixed costs that
``finetune_minilm.py`` includes. Ours is ``TextClassifier`` with ``layerwise_adamw`` and ``clipped_step``, as
``encoder-clf train --init`` steps; the peer is ``BertModel`` (SDPA) + the same head with fused AdamW and
``clip_grad_norm_``, as the fine-tuning benchmark's peer. The process runs with ``reuse_freed_blocks`` for
both, so the ratio is the step's own work (the allocator's share is the fine-tuning benchmark's control row).
Called by ``throughput.py``, whose ``Timed`` cells and interleaved rounds it uses.
"""

from __future__ import annotations

import functools
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from encoder_clf.model.classifier import TextClassifier
from encoder_clf.model.config import ModelConfig
from encoder_clf.runtime import autocast, reuse_freed_blocks
from encoder_clf.training.optim import clipped_step, layerwise_adamw

from common import machine

LAYERS, WIDTH, HEADS, FFN, VOCAB, POSITIONS, DROPOUT = 6, 384, 12, 1536, 30522, 512, 0.1
SEQ, BATCH = 32, 32
CPU = torch.device("cpu")


def ours() -> tuple[nn.Module, torch.optim.Optimizer]:
    config = ModelConfig(d_model=WIDTH, n_heads=HEADS, n_layers=LAYERS, d_ff=FFN, attention="dot", norm="post",
                         positions="learned", pooling="mean", conv_kernel=0, ngram_buckets=0, max_positions=POSITIONS,
                         dropout=DROPOUT, attention_dropout=DROPOUT, activation="gelu", vocab_size=VOCAB,
                         labels=["0", "1"])
    model = TextClassifier(config).train()
    return model, layerwise_adamw(model, 1e-4, 0.01, 1e-3)


class BertClassifier(nn.Module):
    """``BertModel`` (SDPA) → mean over the tokens → dropout → linear, the fine-tuning benchmark's peer."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        self.bert = BertModel(BertConfig(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=LAYERS,
                                         num_attention_heads=HEADS, intermediate_size=FFN,
                                         max_position_embeddings=POSITIONS, hidden_dropout_prob=DROPOUT,
                                         attention_probs_dropout_prob=DROPOUT, attn_implementation="sdpa"),
                              add_pooling_layer=False)
        self.head = nn.Sequential(nn.Dropout(DROPOUT), nn.Linear(WIDTH, 2))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        keep = attention_mask[..., None].to(states.dtype)
        return self.head((states * keep).sum(1) / keep.sum(1))


def peer() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = BertClassifier().train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=True)


def step(model: nn.Module, optimizer: torch.optim.Optimizer, ids: torch.Tensor, labels: torch.Tensor,
         precision: str) -> None:
    """Forward under autocast, fp32 loss, backward, clip at 1.0, AdamW: each side as its loop does it."""
    padding = torch.zeros_like(ids, dtype=torch.bool)
    with autocast(precision, CPU):
        if isinstance(model, TextClassifier):
            logits = model(ids, padding, None).logits
        else:
            logits = model(ids, (~padding).long())
    loss = F.cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if isinstance(model, TextClassifier):
        clipped_step(optimizer, model.parameters(), 1.0)
    else:
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()


def measure(steps: int, warmup: int, rounds: int, precisions: tuple[str, ...], timed_cell, time_cells,
            count_flops, peaks: dict[str, float]) -> tuple[list[str], dict[str, float]]:
    """The section's lines and ``{precision: ours over the peer}``; ``timed_cell`` builds a throughput ``Timed``."""
    reuse_freed_blocks()
    generator = torch.Generator().manual_seed(2)
    data = [(torch.randint(1, VOCAB, (BATCH, SEQ), generator=generator),
             torch.randint(0, 2, (BATCH,), generator=generator)) for _ in range(4)]
    cells, flops = [], {}
    for name, build in (("ours", ours), ("peer", peer)):
        torch.manual_seed(0)
        model, optimizer = build()
        flops[name] = count_flops(functools.partial(step, model, optimizer, *data[0], "fp32"))
        for precision in precisions:
            cells.append(timed_cell(name, "train", precision,
                                    lambda i, m=model, o=optimizer, p=precision: step(m, o, *data[i % 4], p), []))
    time_cells(cells, steps, warmup, rounds)
    seconds = {(c.key, c.precision): statistics.median(c.times) for c in cells}
    ratios = {p: seconds["peer", p] / seconds["ours", p] for p in precisions}
    lines = ["## Fine-tuning step in the all-MiniLM-L6-v2 shape: encoder-clf vs `transformers`", "",
             f"Command: `python benchmarks/throughput.py` (this section), {time.strftime('%Y-%m-%d')}. "
             f"Machine: {machine()}.",
             f"Shape: {LAYERS} layers, width {WIDTH}, {HEADS} heads, FFN {FFN:,}, vocabulary {VOCAB:,}, post-LN, "
             f"dropout {DROPOUT}, mean pooling, 2 labels; batches of {BATCH} random sequences of {SEQ} tokens, "
             "none padded. Ours: `TextClassifier` + `layerwise_adamw` + `clipped_step`; peer: `BertModel` (SDPA) + "
             "the same head, fused AdamW, `clip_grad_norm_`; both in one process with `reuse_freed_blocks`. "
             f"Median of {len(cells[0].times)} timed steps per cell in {rounds} interleaved rounds after {warmup} "
             "warm-up steps; MFU is the counted FLOPs per second over the matmul peak measured in the throughput "
             "section.", "",
             "| training step | precision | ms / step | tokens/s | MFU | ours vs peer |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, label in (("peer", "BertModel (SDPA) + head, fused AdamW"), ("ours", "encoder-clf TextClassifier")):
        for p in precisions:
            s = seconds[name, p]
            lines.append(f"| {label} | {p} | {1000 * s:.1f} | {BATCH * SEQ / s:,.0f} | "
                         f"{100 * flops[name] / s / 1e9 / peaks[p]:.1f}% | "
                         + (f"**{ratios[p]:.2f}x**" if name == "ours" else "") + " |")
    return lines, ratios
