"""Training throughput and MFU of `gpt2` (124M) at context 1024, bf16, torch.compile — through gptkit's own
model and training step, in one run. MFU = (training FLOPs/token × tokens/s) / the GPU's peak bf16 FLOP/s, with
FLOPs per token from GPTConfig.flops_per_token (6N + 12·L·d·T) and the peak from gptkit.train's table of known GPUs.

The model runs its real path: with a GPT-3 preset the banded layers use the model's attention backend ("auto":
flex_attention block masks on CUDA, compiled into the model's graph; `--attention-backend sdpa` for the masked
reference). 12·L·d·T counts every layer's attention as dense; for banded layers the script also prints MFU with
their attention counted as 12·d·w (the work a band of w keys needs).

    python benchmarks/mfu.py                          # GPU
    python benchmarks/mfu.py --batch 16 --no-compile  # variations
    python benchmarks/mfu.py --preset gpt3-small --block-size 2048 --batch 8   # banded layers through flex
    python benchmarks/mfu.py --preset gpt3-small --block-size 2048 --batch 8 --attention-backend sdpa
    python benchmarks/mfu.py --device cpu --preset gpt-mini --block-size 128 --batch 4 --steps 5 --dtype float32 \
        --no-compile                                  # CPU smoke run
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="gpt2")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--block-size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--activation-checkpointing", action="store_true")
    ap.add_argument("--attention-backend", default="auto", choices=["auto", "sdpa", "flex"],
                    help="kernel of the banded layers (auto: flex_attention on CUDA)")
    args = ap.parse_args()
    from gptkit import GPT, GPTConfig
    from gptkit.distributed import checkpoint_blocks
    from gptkit.optim import param_groups
    from gptkit.runtime import gpu_peak_flops

    device = torch.device(args.device)
    if args.attention_backend == "flex" and device.type != "cuda":
        ap.error("--attention-backend flex needs a CUDA device (torch's flex_attention has no backward on CPU)")
    dtype = getattr(torch, args.dtype)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    cfg = GPTConfig.from_preset(args.preset, block_size=args.block_size, embd_pdrop=0.0, attn_pdrop=0.0,
                                resid_pdrop=0.0)
    model = GPT(cfg).to(device).set_attention_backend(args.attention_backend)
    n_banded = sum(cfg.layer_is_banded(i) for i in range(cfg.n_layer))
    if n_banded == 0:
        banded = "no banded layers"
    else:  # what GPTBackbone.forward picks for a full-sequence training forward
        kernel = "flex_attention" if model.transformer.flex_banded(device) else "masked SDPA"
        banded = f"{n_banded} banded layers (w {cfg.band_width}) through {kernel}"
    if args.activation_checkpointing:
        checkpoint_blocks(model)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=6e-4, betas=(0.9, 0.95), fused=True)
    fwd = model if args.no_compile else torch.compile(model)
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.block_size), device=device)
    y = torch.randint(0, cfg.vocab_size, (args.batch, args.block_size), device=device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = fwd(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warm_s = time.perf_counter() - t0
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    dt = (time.perf_counter() - t) / args.steps
    tok_s = args.batch * args.block_size / dt
    fpt = cfg.flops_per_token(args.block_size)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = gpu_peak_flops(name) if device.type == "cuda" else None
    mfu = f"{100 * fpt * tok_s / peak:.1f}%" if peak else "n/a (no known peak for this device)"
    if peak and n_banded:  # the band's attention work: 12·d·w per banded layer instead of 12·d·T
        fpt_band = fpt - 12 * n_banded * cfg.n_embd * (args.block_size - min(cfg.band_width, args.block_size))
        mfu += f" ({100 * fpt_band * tok_s / peak:.1f}% counting the banded layers' attention as 12·d·w)"
    mem = f", peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else ""
    print(f"{args.preset} on {name}: batch {args.batch} x {args.block_size}, {args.dtype}, "
          f"compile={not args.no_compile}, {banded}: {dt * 1000:.1f} ms/step, {tok_s:,.0f} tokens/s, "
          f"{fpt * tok_s / 1e12:.1f} TFLOP/s, MFU {mfu}{mem} (warm-up incl. compile {warm_s:.0f} s)")


if __name__ == "__main__":
    main()
