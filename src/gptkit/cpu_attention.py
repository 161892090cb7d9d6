"""Causal self-attention for bf16 training on the CPU: SDPA's flash forward, a backward of whole matrix products.

On the CPU, torch 2.13's flash-attention backward gains nothing from bf16 (AMX and AVX512-BF16 sit idle in it)
and at small head sizes it is several times slower in bf16 than in float32. This backward is the textbook one
that flash attention also computes, recomputing the probabilities from the forward's log-sum-exp:

    P = exp(Q Kᵀ·s − lse) (causal),  dV = Pᵀ dO,  dS = P ∘ (dO Vᵀ − rowsum(dO ∘ O)),  dQ = dS K·s,  dK = dSᵀ Q·s

but as batched products over whole (T, T) score tiles, which run in bf16 on the CPU's matrix units, with the
elementwise steps between them in float32, fused by torch.compile (inductor's C++ backend).
Scores are made `SCORES_PER_CHUNK` at a time (chunks of the batch × heads rows) so that long contexts do not
hold every layer's (T, T) tiles at once.

`causal_attention` is what the model calls; it takes this path only where it can pay (`wanted`): CPU, bf16
inputs, gradients wanted, no attention dropout, contexts up to `MAX_CONTEXT`. Whether it pays depends on the CPU
and the shape: at small heads and short contexts SDPA in float32 is as fast, and needs no compiler (importing
inductor and compiling cost a bf16 training start ~2-3 s on two cores). So a trainer asks `choose_path` once per
shape; it measures both (gptkit.autotune, remembered) and keeps float32 unless this path is clearly faster. If
the compiled backward cannot be built (no C++ compiler), the same arithmetic runs eagerly for that call and
SDPA's own backward is used from then on.
Inside a model that torch.compile traces whole, the forward and the backward are two opaque custom operators
(`gptkit::causal_attention`, `gptkit::causal_attention_backward`), so inductor keeps them. Speed side by side
with SDPA's backward: benchmarks/attention_backward.py, docs/benchmarks.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import autotune
from .compiled import CompiledOnUse

MAX_CONTEXT = 512
"""Longest context given this backward; beyond it SDPA's own was as fast or faster (docs/benchmarks.md)."""

MEASURED_SCORES = 1 << 21
"""Attention scores (batch × heads × context²) of one timed call of `choose_path`'s measurement: 2 M."""

SCORES_PER_CHUNK = 1 << 22
"""Scores of one backward chunk: 4 M float32 (16 MB), e.g. 64 rows of (256, 256) or 4 of (1,024, 1,024)."""

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def _backward_rows(q, k, v, out, lse, grad_out):
    """Gradients of causal attention for q, k, v (n, T, hs), from the output, its log-sum-exp (n, T) and the
    output's gradient. Products in the inputs' dtype, the softmax's arithmetic in float32. The scale is SDPA's,
    1/√hs, computed here from the shape: passed in as a float, torch.compile would make it a run-time symbol and
    its kernel 1.5× slower."""
    t, scale = q.shape[-2], q.shape[-1] ** -0.5
    scores = (q @ k.transpose(-2, -1)).float() * scale
    future = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
    p = torch.exp(scores.masked_fill(future, float("-inf")) - lse.unsqueeze(-1))
    grad_v = p.to(q.dtype).transpose(-2, -1) @ grad_out
    grad_p = (grad_out @ v.transpose(-2, -1)).float()
    row = (grad_out.float() * out.float()).sum(-1, keepdim=True)
    grad_s = ((grad_p - row) * p * scale).to(q.dtype)
    return grad_s @ k, grad_s.transpose(-2, -1) @ q, grad_v


_backward_chunk = CompiledOnUse(_backward_rows, "the bf16 attention backward")


def _backward(q, k, v, out, lse, grad_out):
    """Gradients for q, k, v (B, nh, T, hs) from the forward's output and log-sum-exp: `_backward_chunk` over the
    batch × heads rows, SCORES_PER_CHUNK scores at a time."""
    b, h, t, hs = q.shape
    rows = [x.reshape(b * h, t, -1) for x in (q, k, v, out, grad_out.contiguous())]
    lse = lse.reshape(b * h, t)
    step = max(1, SCORES_PER_CHUNK // (t * t))
    if step >= b * h:  # one chunk
        grads = _backward_chunk(*rows[:4], lse, rows[4])
        return tuple(g.view(b, h, t, hs) for g in grads)
    step = math.ceil(b * h / math.ceil(b * h / step))  # equal chunks: one compiled shape (two at most)
    grads = [torch.empty(b * h, t, hs, dtype=q.dtype, device=q.device) for _ in range(3)]
    for s in range(0, b * h, step):
        part = [x[s:s + step] for x in rows]
        for g, piece in zip(grads, _backward_chunk(*part[:4], lse[s:s + step], part[4])):
            g[s:s + step] = piece
    return tuple(g.view(b, h, t, hs) for g in grads)


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        out, lse = _flash(q, k, v, 0.0, True)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        return _backward(*ctx.saved_tensors, grad_out)


# Inside a model that torch.compile traces whole, the same forward and backward as two opaque custom operators:
# traced as they are, inductor would take SDPA and its bf16 flash backward, the slow kernel this module replaces
# (48% of a compiled bf16 step at nanoGPT's recipe shape, docs/benchmarks.md).
@torch.library.custom_op("gptkit::causal_attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out, lse = _flash(q, k, v, 0.0, True)
    return out.transpose(1, 2).contiguous(), lse.contiguous()  # out as (B, T, nh, hs): the layout the model wants


@_attention_op.register_fake
def _(q, k, v):
    b, h, t, hs = q.shape
    return q.new_empty(b, t, h, hs), q.new_empty(b, h, t, dtype=torch.float32)


@torch.library.custom_op("gptkit::causal_attention_backward", mutates_args=())
def _attention_backward_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                           grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(q, k, v, out.transpose(1, 2), lse, grad_out.transpose(1, 2))


@_attention_backward_op.register_fake
def _(q, k, v, out, lse, grad_out):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _save_for_backward(ctx, inputs, output):
    ctx.save_for_backward(*inputs, *output)


def _attention_op_backward(ctx, grad_out, grad_lse):
    return _attention_backward_op(*ctx.saved_tensors, grad_out)


_attention_op.register_autograd(_attention_op_backward, setup_context=_save_for_backward)


def _bf16_training(q: torch.Tensor, dropout: float) -> bool:
    """Whether this is attention in bf16 training on the CPU that the paths here cover: gradients wanted, no
    attention dropout, a context of 2 to MAX_CONTEXT."""
    return (q.device.type == "cpu" and q.dtype == torch.bfloat16 and dropout == 0.0
            and 1 < q.shape[-2] <= MAX_CONTEXT and q.requires_grad and torch.is_grad_enabled())


def wanted(q: torch.Tensor, dropout: float) -> bool:
    """Whether the compiled backward can run here: bf16 training on the CPU (`_bf16_training`), and it has not
    failed to build."""
    return _bf16_training(q, dropout) and not _backward_chunk.failed


PATHS = ("float32", "bfloat16")
"""How causal attention trains in a bf16 step on the CPU, chosen per shape by `choose_path` (the first is kept
unless the other is clearly faster): "float32", SDPA in float32 (q, k, v cast up, the output cast back: no
compiler); "bfloat16", SDPA's bf16 flash forward and this module's compiled backward."""

_chosen: dict[tuple[int, ...], str] = {}
"""This process's choices, (B, nh, T, hs) → one of PATHS. A shape never chosen takes the bfloat16 path where
`wanted` (a caller that did not ask, e.g. a test of this module)."""


def _float32_attention(q, k, v):
    """Causal SDPA in float32 (outside any autocast, which would cast back to bf16), the output in q's dtype."""
    with torch.autocast(q.device.type, enabled=False):
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True).to(q.dtype)


def _path_workloads(batch: int, n_head: int, context: int, head_size: int):
    """One call per path: forward and backward passes of bf16 attention laid out as the model's (heads viewed out
    of one (B, T, 3C) projection), as many as make about MEASURED_SCORES scores."""
    reps = max(1, MEASURED_SCORES // (batch * n_head * context * context))
    gen = torch.Generator().manual_seed(0)  # draws nothing from the run's random stream
    width = n_head * head_size
    qkv = torch.randn(batch, context, 3 * width, generator=gen).bfloat16().requires_grad_()
    grad = torch.randn(batch, context, width, generator=gen).bfloat16()

    def run(attend):
        def once():
            for _ in range(reps):
                q, k, v = qkv.view(batch, context, 3, n_head, head_size).permute(2, 0, 3, 1, 4).unbind(0)
                attend(q, k, v).transpose(1, 2).reshape(batch, context, width).backward(grad)
            qkv.grad = None
        return once

    return {"float32": run(_float32_attention), "bfloat16": run(_CausalAttention.apply)}


def choose_path(batch: int, n_head: int, context: int, head_size: int, known: str | None = None) -> str | None:
    """The path (PATHS) bf16 training takes for attention of this shape, measured once on this CPU and remembered
    (gptkit.autotune), or `known` (a resumed run's); this process takes it from now on. None where there is no
    choice: a context of 1 or beyond MAX_CONTEXT (SDPA's own)."""
    if not 1 < context <= MAX_CONTEXT:
        return None
    shape = {"batch": batch, "n_head": n_head, "context": context, "head_size": head_size,
             "threads": torch.get_num_threads()}
    return autotune.choose_once(_chosen, (batch, n_head, context, head_size), known if known in PATHS else None,
                                "bf16 training attention", shape, PATHS,
                                lambda: _path_workloads(batch, n_head, context, head_size),
                                rounds=autotune.TRAINING_ROUNDS, min_gain=autotune.PATH_MIN_GAIN,
                                describe=lambda p: f"bf16 training computes attention in {p} at this shape")


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
    """Causal attention of q, k, v (B, nh, T, hs), T queries over the same T keys: F.scaled_dot_product_attention
    (is_causal) in value; in bf16 training the path `choose_path` chose for the shape: float32 SDPA, or the
    backward above where `wanted` (as custom operators inside torch.compile)."""
    if k.shape[-2] == q.shape[-2] and _bf16_training(q, dropout):
        if _chosen.get(tuple(q.shape)) == "float32":
            return _float32_attention(q, k, v)
        if wanted(q, dropout):
            if torch.compiler.is_compiling():
                return _attention_op(q, k, v)[0].transpose(1, 2)
            return _CausalAttention.apply(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=q.shape[-2] > 1)
