"""Causal attention forward + backward on the CPU: SDPA against gptkit.cpu_attention, side by side, alternating.

For each shape (batch, heads, context, head size) and dtype, times F.scaled_dot_product_attention(is_causal)
followed by its backward, and gptkit's `causal_attention` (SDPA's flash forward, the compiled backward) on the
same tensors, in alternating rounds; prints the median ms of each, the ratio, and each path's largest gradient
error against a float64 recomputation. gptkit takes its own path only for bf16 (`cpu_attention.wanted`), so the
float32 rows show SDPA against itself: the reason float32 keeps SDPA's backward.

    python benchmarks/attention_backward.py                          # nanoGPT's recipe shape and 6 × 384's
    python benchmarks/attention_backward.py --shapes 2x12x1024x64 --rounds 3
"""

from __future__ import annotations

import argparse
import functools
import statistics

import torch
import torch.nn.functional as F
from attention import bench  # ms per call after 3 untimed calls

from gptkit import cpu_attention
from gptkit.runtime import keep_freed_memory

SHAPES = ["12x4x64x32", "8x6x256x64", "16x4x256x64", "2x6x1024x64"]
"""nanoGPT's CPU recipe (batch 12, 4 × 128, context 64), 6 × 384 at batch 8, 4 × 256 at batch 16, a long context."""


def fwd_bwd(fn, q, k, v, grad_out):
    for x in (q, k, v):
        x.grad = None
    fn(q, k, v).backward(grad_out)


def worst_error(fn, q, k, v, grad_out) -> float:
    """The largest gradient error of fn against float64 SDPA, relative to the largest float64 gradient."""
    fwd_bwd(fn, q, k, v, grad_out)
    got = [x.grad.double() for x in (q, k, v)]
    ref = [x.detach().double().requires_grad_() for x in (q, k, v)]
    fwd_bwd(sdpa, *ref, grad_out.double())
    return max(((g - r.grad).abs().max() / r.grad.abs().max()).item() for g, r in zip(got, ref))


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=SHAPES, help="BxHxTxD")
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=10, help="calls per timing")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    keep_freed_memory()  # as gptkit train does: large (T, T) tiles come from the heap, not fresh pages
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for shape in a.shapes:
        b, h, t, d = (int(n) for n in shape.split("x"))
        for name in a.dtypes:
            dtype = getattr(torch, name)
            gen = torch.Generator().manual_seed(0)
            q, k, v = (torch.randn(b, h, t, d, generator=gen).to(dtype).requires_grad_() for _ in range(3))
            args = (q, k, v, torch.randn(b, h, t, d, generator=gen).to(dtype))
            paths = {"sdpa": sdpa, "gptkit": cpu_attention.causal_attention}
            times = {p: [] for p in paths}  # bench's untimed calls include gptkit's first, which compiles
            for r in range(a.rounds):
                for p in (list(paths) if r % 2 == 0 else list(paths)[::-1]):
                    times[p].append(bench(functools.partial(fwd_bwd, paths[p], *args), a.iters, q.device))
            med = {p: statistics.median(ts) for p, ts in times.items()}
            errs = {p: worst_error(fn, *args) for p, fn in paths.items()}
            print(f"{shape} {name}: SDPA {med['sdpa']:.2f} ms, gptkit {med['gptkit']:.2f} ms "
                  f"({med['sdpa'] / med['gptkit']:.2f}x); gradient error vs float64: SDPA {errs['sdpa']:.1e}, "
                  f"gptkit {errs['gptkit']:.1e}", flush=True)


if __name__ == "__main__":
    main()
