"""The optimisation pieces pre-training and fine-tuning share: AdamW's parameter groups, one optimizer step, and
the two learning-rate schedules of the papers.

- Pre-training (GPT-3 §B, after GPT-1 §4.1): linear warmup, then cosine decay to `min_lr` (GPT-3: 10% of peak).
- Fine-tuning (GPT-1 §4.1): linear warmup over 0.2% of the steps, then linear decay to 0.
"""

from __future__ import annotations

import math
import sys
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
    """Clip the gradient norm to `grad_clip` (0: no clipping), step, and drop the gradients.

    torch's fused AdamW over plain tensors (the trainers' optimizer) is stepped by `fused_adamw_step`: the same
    kernel with the clipping folded into it; anything else by clip_grad_norm_ and the optimizer's own step."""

    if fused_adamw_step(optimizer, grad_clip):
        return
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _fused_groups(optimizer) -> list[tuple[dict, list, list, list, list, list]] | None:
    """(group, params, grads, exp_avgs, exp_avg_sqs, steps) for each parameter group, where torch.optim.AdamW
    would make one fused call per group: fused, no options the kernel call below leaves out, no step hooks, every
    parameter with a gradient, one device and dtype, no DTensors; else None. Before the first step it makes the
    state as torch's AdamW does (zero moments, a float32 step count); a partial state is left to torch."""
    if type(optimizer) is not torch.optim.AdamW or getattr(optimizer, "_optimizer_step_pre_hooks", None) or \
            getattr(optimizer, "_optimizer_step_post_hooks", None):
        return None
    first = None
    for g in optimizer.param_groups:
        if not g.get("fused") or g["amsgrad"] or g["maximize"] or g["capturable"] or g["differentiable"] or \
                isinstance(g["lr"], torch.Tensor):
            return None
        for p in g["params"]:
            first = first or (p.device, p.dtype)
            if p.grad is None or type(p.grad) is not torch.Tensor or (p.device, p.dtype) != first or \
                    p.grad.dtype != p.dtype:
                return None
    if not optimizer.state:
        for g in optimizer.param_groups:
            for p in g["params"]:
                optimizer.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                                      "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                      "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
    groups = []
    for g in optimizer.param_groups:
        states = [optimizer.state.get(p) for p in g["params"]]
        if not all(states):
            return None
        groups.append((g, g["params"], [p.grad for p in g["params"]], [s["exp_avg"] for s in states],
                       [s["exp_avg_sq"] for s in states], [s["step"] for s in states]))
    return groups


def fused_adamw_step(optimizer, grad_clip: float) -> bool:
    """One AdamW step as torch's `step()` takes it with fused=True, calling the kernel it calls
    (`torch._fused_adamw_`) on the groups' lists directly, and the clipping inside it: the kernel divides each
    gradient by `grad_scale`, here max(1, ‖g‖ / grad_clip) — clip_grad_norm_'s factor, with its 1e-6, as a
    divisor, so equal to its multiplication up to rounding and bitwise equal when nothing is clipped. At the
    nanoGPT recipe's shape this is 0.74 ms a step against 1.33 for clip_grad_norm_, `step()` and `zero_grad()`
    (their per-parameter Python and a multiplication pass). False, having done nothing, where `_fused_groups`
    finds a case for torch's own step."""
    groups = _fused_groups(optimizer)
    if groups is None:
        return False
    grad_scale = None
    if grad_clip > 0:
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([g for grp in groups for g in grp[2]])))
        grad_scale = torch.clamp((total + 1e-6) / grad_clip, min=1.0)
    for g, params, grads, exp_avgs, exp_avg_sqs, steps in groups:
        torch._foreach_add_(steps, 1)
        torch._fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=g["lr"],
                            beta1=g["betas"][0], beta2=g["betas"][1], weight_decay=g["weight_decay"], eps=g["eps"],
                            maximize=False, grad_scale=grad_scale, found_inf=None)
        for p in params:
            p.grad = None
    return True


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

    defer_dynamo_import()
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, fused=fused,
                             foreach=False if fused else None)


DYNAMO_GUARDED = ("add_param_group", "state_dict", "load_state_dict", "zero_grad")
"""torch.optim.Optimizer's methods that torch wraps in `torch._disable_dynamo`."""


def defer_dynamo_import() -> None:
    """Keep torch.optim from importing torch._dynamo while nothing else has.

    torch wraps a few Optimizer methods (DYNAMO_GUARDED) in `_disable_dynamo`, which imports torch._dynamo at their
    first call (0.9 s on a 2-core Xeon: 2.3% of nanoGPT's whole CPU recipe, a third of a 20-step run) to build a
    version dynamo will not trace, and caches it on the function as `__dynamo_disable`. This puts a stand-in in
    that cache: while torch._dynamo is not imported nothing can be tracing, so it calls the method as it is; once
    something has imported it, its next call builds and caches what torch's would have. Together with
    `fused_adamw_step` (torch's own `step()` imports it too) a training process on the CPU never imports dynamo
    unless it compiles. Methods whose cache torch has already filled are left alone."""
    for name in DYNAMO_GUARDED:
        fn = getattr(getattr(torch.optim.Optimizer, name), "__wrapped__", None)
        if fn is not None and getattr(fn, "__dynamo_disable", None) is None:
            setattr(fn, "__dynamo_disable", _until_dynamo(fn))


def _until_dynamo(fn):
    def call(*args, **kwargs):
        if "torch._dynamo" not in sys.modules:
            return fn(*args, **kwargs)
        import torch._dynamo

        disabled = torch._dynamo.disable(fn, True, wrapping=False)  # what torch's first call would have cached
        setattr(fn, "__dynamo_disable", disabled)
        return disabled(*args, **kwargs)

    return call
