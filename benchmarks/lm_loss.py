"""The language-model loss, fused in row chunks (gptkit.lm_loss) against the plain way, side by side.

Forward and backward of the output projection and cross-entropy, as a training step runs them: hidden states
(batch × context, width) from the blocks, the tied embedding as the projection, under bf16 autocast and in float32.
Rounds alternate between the ways (gptkit.lm_loss.PATHS: fused with an eager or, in bf16, a compiled softmax, and
plain); the ratio to plain is taken per round and the median printed, with the largest relative difference of the
gradients from plain's. `--rows-per-chunk` also times fixed chunk sizes (the default is gptkit.lm_loss.chunk_rows).

    python benchmarks/lm_loss.py                      # the shapes below, bf16 autocast and float32, 2 threads
    python benchmarks/lm_loss.py --threads 1 --rows-per-chunk 64 128 256 512
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

from gptkit import lm_loss as L

SHAPES = {"128 wide, characters (65), 12 x 64 rows": (768, 128, 65),
          "160 wide, characters (65), 16 x 128 rows": (2048, 160, 65),
          "384 wide, BPE-8k, 8 x 256 rows": (2048, 384, 8192),
          "768 wide, GPT-2's 50,257 tokens, 4 x 256 rows": (1024, 768, 50257),
          "128 wide, GPT-2's 50,257 tokens, 12 x 64 rows": (768, 128, 50257)}


def timed(fn, h, w, y, dtype) -> tuple[float, torch.Tensor, torch.Tensor]:
    h.grad = w.grad = None
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        loss = fn(h, w, y)
    loss.backward()
    return time.perf_counter() - t, h.grad, w.grad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows-per-chunk", type=int, nargs="*", default=[])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} threads")
    for name, (n, c, v) in SHAPES.items():
        gen = torch.Generator().manual_seed(0)
        h = torch.randn(n, c, generator=gen).requires_grad_()
        w = (torch.randn(v, c, generator=gen) * 0.02).requires_grad_()
        y = torch.randint(v, (n,), generator=gen)
        for dtype in (torch.bfloat16, torch.float32):
            paths = ("eager", "compiled") if dtype == torch.bfloat16 else ("eager",)
            ways = {"plain": L.plain_lm_loss}
            ways |= {f"fused {p} ({L.chunk_rows(v, p == 'compiled')} rows)":
                     functools.partial(L._training_loss, dtype=dtype, path=p) for p in paths}
            ways |= {f"fused, {r} rows": functools.partial(L._training_loss, dtype=dtype, path="eager",
                                                            rows_per_chunk=r) for r in a.rows_per_chunk}
            times = {k: [] for k in ways}
            grads = {}
            for _ in range(a.rounds + 1):  # the first round warms up and is not counted
                for k, fn in ways.items():
                    t, gh, gw = timed(fn, h, w, y, dtype)
                    times[k].append(t)
                    grads[k] = (gh.clone(), gw.clone())
            ref_t, (rh, rw) = times["plain"][1:], grads["plain"]
            print(f"{name}, {str(dtype).removeprefix('torch.')}:")
            for k, ts in times.items():
                ratio = statistics.median(p / q for p, q in zip(ref_t, ts[1:]))
                err = max(((grads[k][0] - rh).abs().max() / rh.abs().max()).item(),
                          ((grads[k][1] - rw).abs().max() / rw.abs().max()).item())
                print(f"  {k:<27} {statistics.median(ts[1:]) * 1e3:8.2f} ms   {ratio:5.2f}x plain"
                      f"   gradients within {err:.1e} of plain's")


if __name__ == "__main__":
    main()
