"""Banded vs dense attention time (GPT-3's alternating layers), side by side in one run.

For each context T: dense causal SDPA (flash on GPU), banded as a masked SDPA (the dense cost plus a mask),
and banded through flex_attention with a block mask (gptkit.flex), which skips the tiles outside the band.
Forward + backward, bf16 on GPU (forward only on CPU, where flex_attention has no backward). Prints ms per call
and the speed-up of flex-banded over dense.

    python benchmarks/attention.py                       # GPU: contexts 2048 and 8192, band 256
    python benchmarks/attention.py --device cpu --contexts 512 1024 --dtype float32   # a CPU smoke run
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def bench(fn, iters: int, device: torch.device) -> float:
    for _ in range(3):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - t) / iters


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--contexts", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--band", type=int, default=256)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    from gptkit.flex import banded_attention

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, {dtype}, batch {args.batch}, heads {args.heads} x {args.head_size}, band {args.band}")
    print(f"{'T':>6} {'dense ms':>10} {'masked-band ms':>15} {'flex-band ms':>13} {'dense/flex':>11} {'max |diff|':>11}")
    grad = device.type == "cuda"
    for T in args.contexts:
        shape = (args.batch, args.heads, T, args.head_size)
        q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=grad) for _ in range(3))

        def run(out: torch.Tensor) -> None:
            if grad:
                out.sum().backward()
        pos = torch.arange(T, device=device)
        band_mask = (pos[None, :] <= pos[:, None]) & (pos[:, None] - pos[None, :] < args.band)

        def dense():
            run(F.scaled_dot_product_attention(q, k, v, is_causal=True))

        def masked():
            run(F.scaled_dot_product_attention(q, k, v, attn_mask=band_mask))

        def flex():
            run(banded_attention(q, k, v, args.band))

        with torch.no_grad():
            diff = (banded_attention(q, k, v, args.band).float()
                    - F.scaled_dot_product_attention(q, k, v, attn_mask=band_mask).float()).abs().max().item()
        t_dense, t_masked, t_flex = (bench(f, args.iters, device) for f in (dense, masked, flex))
        print(f"{T:>6} {t_dense:>10.2f} {t_masked:>15.2f} {t_flex:>13.2f} {t_dense / t_flex:>10.2f}x {diff:>11.2e}")


if __name__ == "__main__":
    main()
