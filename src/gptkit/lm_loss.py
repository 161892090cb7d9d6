"""The language-model loss, its output projection and cross-entropy fused over chunks of rows.

The plain way, `F.cross_entropy(lm_head(h).float(), y)`, writes a (B·T, vocab) float32 logits tensor, reads it
back for the log-softmax, keeps that, writes the logits' gradient and reads it back for two matrix products: for
a small model over a large vocabulary these passes over memory cost more than the model's blocks, and under bf16
autocast they hold about 16 bytes per logit at once (GBs at GPT-2's 50,257 tokens). Here each chunk of rows is
projected and turned into its loss and its logits' gradient ((softmax − one-hot) / N) while it sits in cache;
only that gradient is kept, in the matmul dtype (2 bytes per logit under bf16), and it is multiplied back into
the hidden states' and the weight's gradients in the forward pass, so the backward pass only scales them.

The result is the plain loss (the mean over all rows) and its gradients, to the rounding of the dtype (float32,
float64), or under bf16/fp16 autocast to the rounding of that dtype: the products run in it and the softmax in
float32, as autocast runs the plain way. Speed side by side with the plain way: benchmarks/lm_loss.py,
docs/benchmarks.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import autotune
from .compiled import CompiledOnUse

LOGITS_PER_CHUNK = 1 << 20
"""Logits computed at once (rows × vocabulary): 4 MB of float32, 128 rows of an 8,192-token vocabulary; GPT-2's
50,257 get the floor of 64 rows (the fastest of 32-512 rows measured at both, docs/benchmarks.md)."""


COMPILED_ROWS_SCALE, COMPILED_ROWS_MIN = 4, 256
"""A compiled softmax (bf16 on the CPU) keeps no float32 copy of its chunk: 4× the rows, at least 256 — fewer,
larger products (512 rows at 8,192 tokens, 256 at 50,257: the fastest measured, docs/benchmarks.md)."""


PATHS = ("eager", "compiled", "plain")
"""How the bf16 training loss runs on the CPU, chosen per shape by `choose_path`: fused in chunks of rows with an
eager softmax (the default) or a compiled one, or the plain way (`plain_lm_loss` under autocast: the whole logits,
then F.cross_entropy). Each wins somewhere: over a small vocabulary the fused steps cost more than the passes over
memory they save (768 rows × 65 characters: plain 0.43 ms forward and backward, fused 0.70), at 8,192 tokens the
fused way is 1.3-2× faster, and compiling pays only at large chunks (and costs each process inductor's import
and compile)."""

MEASURED_LOGITS = 1 << 22
"""Logits (rows × vocabulary) of one timed call of `choose_path`'s measurement: 4 M, all of a small batch's."""

_chosen: dict[tuple[int, int], str] = {}
"""This process's choices, (rows, vocab) → one of PATHS; a shape never chosen is compiled."""


def training_path(device: str, dtype: torch.dtype, shape: tuple[int, int] | None = None) -> str:
    """The PATHS entry a training loss over `shape` (rows, vocab) logits takes. bf16 on the CPU: the one chosen for
    the shape (`choose_path`), compiled where none was (unless it could not be built); elsewhere, and inside a
    model that torch.compile traces whole (whose graph takes the eager code), eager."""
    if device != "cpu" or dtype != torch.bfloat16 or torch.compiler.is_compiling():
        return "eager"
    path = _chosen.get(shape, "compiled")
    return "eager" if path == "compiled" and _softmax_rows_compiled.failed else path


def choose_path(rows: int, width: int, vocab: int, known: str | None = None) -> str:
    """How the bf16 training loss over `rows` hidden states of `width` and `vocab` tokens runs (PATHS): measured
    once on this CPU (forward and backward of the whole loss, each way, as training calls it) and remembered
    (gptkit.autotune), or `known` (a resumed run's); this process takes it from now on. The plain way is a
    candidate only where all of the step's logits fit one timed call (MEASURED_LOGITS): the fused ways are timed
    on a few chunks' rows, which is all they show, but the plain way's whole logits leave the caches as they grow
    (at 8,192 tokens it measured level with the fused eager way on 512 rows, and was 2× slower on 2,048:
    docs/benchmarks.md), and it holds ~16 bytes a logit at once."""

    def workloads():
        # about 4 M logits a timed call: the fused loss goes chunk by chunk, so rows beyond a few chunks (GPT-2's
        # 50,257 tokens × 8,192 rows would take seconds a call) only repeat what those show
        n = min(rows, max(chunk_rows(vocab, compiled=True), MEASURED_LOGITS // vocab))
        gen = torch.Generator().manual_seed(0)  # draws nothing from the run's random stream
        h = (torch.randn(n, width, generator=gen) * width ** -0.5).requires_grad_()
        w = torch.randn(vocab, width, generator=gen).requires_grad_()
        y = torch.randint(vocab, (n,), generator=gen)
        reps = max(1, MEASURED_LOGITS // (n * vocab))

        def run(path: str):
            def once():
                for _ in range(reps):
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        loss = _training_loss(h, w, y, torch.bfloat16, path)
                    loss.backward()
                h.grad = w.grad = None
            return once
        return {path: run(path) for path in options}

    options = PATHS if rows * vocab <= MEASURED_LOGITS else PATHS[:2]
    shape = {"rows": rows, "width": width, "vocab": vocab, "threads": torch.get_num_threads()}
    return autotune.choose_once(_chosen, (rows, vocab), known if known in PATHS else None, "bf16 training loss",
                                shape, options, workloads, rounds=autotune.TRAINING_ROUNDS,
                                min_gain=autotune.PATH_MIN_GAIN,
                                describe=lambda p: f"the bf16 training loss runs {p} here")


def chunk_rows(vocab_size: int, compiled: bool = False) -> int:
    """Rows per chunk: the power of two at or below LOGITS_PER_CHUNK / vocab, between 64 and 1024; for a
    compiled softmax COMPILED_ROWS_SCALE times that, at least COMPILED_ROWS_MIN."""
    rows = max(1, LOGITS_PER_CHUNK // vocab_size)
    rows = max(64, 1 << (rows.bit_length() - 1))
    if compiled:
        rows = max(COMPILED_ROWS_MIN, COMPILED_ROWS_SCALE * rows)
    return min(1024, rows)


def _softmax_rows(logits, targets, n: int):
    """For a chunk of logit rows and their targets: the rows' summed cross-entropy, and the logits' gradient of
    the mean over n rows, (softmax − one-hot) / n, in the logits' dtype. Arithmetic in float32 (float64 stays).
    Eagerly: one log-softmax pass, then in place on its result (a log-sum-exp and a subtraction instead: the
    fused loss 1-11% slower, docs/benchmarks.md)."""
    x = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    loss = F.nll_loss(x, targets, reduction="sum")
    g = x.exp_()  # the softmax, in place of the log-probabilities
    g[torch.arange(len(targets), device=g.device), targets] -= 1.0
    return loss, g.div_(n).to(logits.dtype)


def _softmax_rows_to_compile(logits, targets, n: int):
    """`_softmax_rows` written for inductor, which fuses it into two passes over the chunk (no in-place steps)."""
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    top = x.amax(-1, keepdim=True)
    e = torch.exp(x - top)
    total = e.sum(-1, keepdim=True)
    loss = (top + total.log()).squeeze(-1) - x.gather(1, targets[:, None]).squeeze(1)
    onehot = torch.arange(x.shape[-1], device=x.device) == targets[:, None]
    return loss.sum(), ((e / total - onehot.to(x.dtype)) / n).to(logits.dtype)


_softmax_rows_compiled = CompiledOnUse(_softmax_rows_to_compile, "the bf16 loss's softmax")


def _loss_and_grads(hidden, weight, targets, dtype, rows, need_grad, compiled=False):
    """The mean loss over the rows, and with need_grad its gradients for hidden and weight. The softmax runs
    `rows` at a time; the logits' gradient is kept in the matmul dtype and multiplied back in two whole products
    (per-chunk products into the weight's gradient would add a vocab × width matrix per chunk). `compiled`
    (PATHS): each chunk's softmax compiled, two fused passes over the chunk instead of five."""
    n = hidden.shape[0]
    acc = torch.promote_types(dtype, torch.float32)  # softmax and sums: float32, or float64 for a float64 model
    h, w = hidden.to(dtype), weight.to(dtype)
    total = torch.zeros((), dtype=acc, device=hidden.device)
    if not need_grad:
        for s in range(0, n, rows):
            total += F.cross_entropy((h[s:s + rows] @ w.t()).to(acc), targets[s:s + rows], reduction="sum")
        return total / n, None, None
    softmax = _softmax_rows_compiled if compiled else _softmax_rows
    grad_logits = torch.empty(n, w.shape[0], dtype=dtype, device=h.device)
    for s in range(0, n, rows):
        loss, grad_logits[s:s + rows] = softmax(h[s:s + rows] @ w.t(), targets[s:s + rows], n)
        total += loss
    return total / n, (grad_logits @ w).to(hidden.dtype), (grad_logits.t() @ h).to(weight.dtype)


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """The loss in forward; its gradients, computed there too, only scaled by the incoming gradient in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, dtype, rows, compiled):
        loss, grad_h, grad_w = _loss_and_grads(hidden, weight, targets, dtype, rows, need_grad=True,
                                               compiled=compiled)
        ctx.save_for_backward(grad_h, grad_w)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        if grad_out.device.type == "cpu" and grad_out.item() == 1.0:  # a plain loss.backward(): x * 1 is x, bitwise;
            return grad_h, grad_w, None, None, None, None  # two passes over (N, C) and (vocab, C) spared
        return grad_h * grad_out, grad_w * grad_out, None, None, None, None


def _training_loss(h, weight, y, dtype, path, rows_per_chunk=None):
    """The loss of rows h (N, C) against y (N,) with gradients, the PATHS way `path` (plain: under the caller's
    autocast)."""
    if path == "plain":
        return plain_lm_loss(h, weight, y)
    with torch.autocast(h.device.type, enabled=False):
        compiled = path == "compiled"
        rows = rows_per_chunk or chunk_rows(weight.shape[0], compiled)
        return _FusedLinearCrossEntropy.apply(h, weight, y, dtype, rows, compiled)


def lm_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
            rows_per_chunk: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets`: hidden (..., C), weight (vocab, C), targets
    (...) token ids. Under autocast the products run in its dtype; gradients reach `hidden` and `weight` (a tied
    embedding gets its share) only when grad mode is on, the way `training_path` says. Rows per chunk:
    `chunk_rows` unless given."""
    h, y = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    device = h.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        path = training_path(device, dtype, (h.shape[0], weight.shape[0]))
        return _training_loss(h, weight, y, dtype, path, rows_per_chunk)
    with torch.autocast(device, enabled=False):
        rows = rows_per_chunk or chunk_rows(weight.shape[0])
        return _loss_and_grads(h, weight, y, dtype, rows, need_grad=False)[0]  # evaluation: no gradient work


def plain_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The same loss the plain way: the whole logits, then cross-entropy in float32 (or float64). GPT.forward's
    loss in float32, the oracle of the tests, the baseline of benchmarks/lm_loss.py."""
    logits = F.linear(hidden, weight)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 → float32; float64 stays
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
