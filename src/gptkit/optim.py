"""The optimisation pieces pre-training and fine-tuning share: AdamW's parameter groups, one optimizer step, and
the two learning-rate schedules of the papers.

- Pre-training (GPT-3 §B, after GPT-1 §4.1): linear warmup, then cosine decay to `min_lr` (GPT-3: 10% of peak).
- Fine-tuning (GPT-1 §4.1): linear warmup over 0.2% of the steps, then linear decay to 0.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def param_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    """Decay every matrix (linear weights, embeddings); not biases or LayerNorm gains (GPT-1 §4.1)."""
    params = {id(p): p for p in model.parameters() if p.requires_grad}  # tied weights once
    decay = [p for p in params.values() if p.dim() >= 2]
    no_decay = [p for p in params.values() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def optimizer_step(model, optimizer, grad_clip: float) -> None:
    """Clip the gradient norm to `grad_clip` (0: no clipping), step, and drop the gradients."""

    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def cosine(progress: float, lr: float, min_lr: float) -> float:
    """The cosine decay from `lr` (progress 0) to `min_lr` (progress 1)."""
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def warmup_cosine(step: int, lr: float, min_lr: float, warmup: int, decay_steps: int) -> float:
    """Linear warmup to `lr` over `warmup` steps, then cosine decay to `min_lr` at `decay_steps` (GPT-3 §B)."""
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    if step >= decay_steps:
        return min_lr
    return cosine((step - warmup) / max(1, decay_steps - warmup), lr, min_lr)


def warmup_linear(step: int, total: int, warmup: int, lr: float) -> float:
    """Linear warmup over `warmup` steps, then linear decay to 0 at `total` (GPT-1 §4.1)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * max(0.0, (total - step) / max(1, total - warmup))


def adamw(model, lr: float, weight_decay: float, betas: tuple[float, float], eps: float, fused: bool = True):
    """AdamW over `param_groups`; fused (one kernel for all parameters) on plain tensors, the foreach path where
    the parameters are DTensors (FSDP)."""

    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, fused=fused,
                             foreach=False if fused else None)
