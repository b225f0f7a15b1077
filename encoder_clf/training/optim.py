"""AdamW parameter groups and the warmup-then-decay schedule, shared by training and pretraining.

Weight decay applies to matrices only (not biases, LayerNorm gains or the 1-D
score vectors); each module carries its own learning rate and decay, which is
how fine-tuning gives the head, the top blocks and the embeddings different
rates, and how the n-gram table escapes decay (see ``layerwise_adamw``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from ..model.classifier import TextClassifier

SCHEDULES = {
    "linear": lambda progress: max(0.0, 1.0 - progress),
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))),
    "constant": lambda progress: 1.0,
}


def adamw(modules: Iterable[tuple[nn.Module, float, float]]) -> torch.optim.AdamW:
    """AdamW over ``(module, learning rate, weight decay)`` triples, decaying only the trainable matrices."""
    groups = []
    for module, lr, weight_decay in modules:
        params = [p for p in module.parameters() if p.requires_grad]
        for decay in (True, False):
            chosen = [p for p in params if (p.ndim >= 2) == decay]
            if chosen:
                groups.append({"params": chosen, "lr": lr, "weight_decay": weight_decay if decay else 0.0})
    # The fused kernel updates every tensor in one pass, the fastest form on CPU, and it exists for CUDA too.
    return torch.optim.AdamW(groups, betas=(0.9, 0.98), eps=1e-6, fused=True)


def layerwise_adamw(model: TextClassifier, lr: float, weight_decay: float, head_lr: float = 0.0,
                    layer_lr_decay: float = 1.0, freeze_layers: int = 0) -> torch.optim.AdamW:
    """AdamW with layer-wise learning rates for a classifier.

    The head (pooling + classifier) learns at ``head_lr`` (``lr`` if 0); block
    ``i`` of ``L`` at ``lr · layer_lr_decay^(L-i)`` and the embeddings at
    ``lr · layer_lr_decay^(L+1)``: lower layers of a pretrained encoder hold
    general features worth keeping. The embeddings and the first
    ``freeze_layers`` blocks are not trained at all.

    The n-gram table is not decayed: decoupled decay shrinks every row at every
    step, while a rare bigram's row is pushed back only in the few batches that
    hold it, so its weight would drift to zero (measured in docs/BENCHMARKS.md).
    """
    encoder = model.encoder
    layers = [encoder.embeddings, *encoder.blocks]
    for module in layers[: freeze_layers + 1 if freeze_layers else 0]:
        module.requires_grad_(False)
    depth = len(layers)
    scaled = [(module, lr * layer_lr_decay ** (depth - i)) for i, module in enumerate(layers)]
    scaled += [(encoder.final_norm, lr), (model.pooling, head_lr or lr), (model.head.parts["encoder"], head_lr or lr)]
    groups = [(module, module_lr, weight_decay) for module, module_lr in scaled]
    if "ngrams" in model.head.parts:
        groups.append((model.head.parts["ngrams"], head_lr or lr, 0.0))
    return adamw(groups)


def clipped_step(optimizer: torch.optim.Optimizer, parameters: Iterable[nn.Parameter], max_norm: float) -> float | None:
    """``optimizer.step()`` with the gradients of ``parameters`` clipped to a total L2 norm of ``max_norm``, as
    ``clip_grad_norm_`` clips them; return the norm before clipping (``None`` when ``max_norm`` is 0: no clip).

    An infinite bound only measures the norm. The fused AdamW divides each gradient by the optimizer's
    ``grad_scale`` as it reads it (the attribute ``GradScaler`` sets), so clipping costs the norm's one pass
    over the gradients, not a second one that multiplies them all (an unfused optimizer gets that second pass).
    """
    if not max_norm:
        optimizer.step()
        return None
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = float(nn.utils.get_total_norm(grads)) if grads else 0.0
    scale = (norm + 1e-6) / max_norm  # clip_grad_norm_'s coefficient, inverted
    folded = scale > 1.0 and optimizer.defaults.get("fused")  # only the fused kernels read grad_scale
    if folded:
        optimizer.grad_scale = torch.tensor(scale, dtype=torch.float32, device=grads[0].device)
    elif scale > 1.0:
        torch._foreach_div_(grads, scale)
    try:
        optimizer.step()
    finally:
        if folded:
            del optimizer.grad_scale
    return norm


def warmup_then_decay(optimizer: torch.optim.Optimizer, warmup_ratio: float, total_steps: int,
                      schedule: str = "linear") -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_ratio`` of the steps, then the named decay to the end."""
    warmup = max(1, int(warmup_ratio * total_steps))
    decay = SCHEDULES[schedule]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return decay((step - warmup) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
