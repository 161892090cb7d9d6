"""Where a training step's time goes: torch.profiler over steps of the real trainer (gptkit.train's phases).

Builds the run as `gptkit train` does (runtime, model, dtype, data, optimizer, Trainer) without writing a run
directory, times `--steps` steps after `--warmup` untimed ones, then profiles `--profile-steps` more and prints
the operators by self CPU time. The default shape is nanoGPT's README CPU recipe (4 × 4 × 128, context 64,
batch 12, no biases, dropout 0), the one benchmarks/vs_nanogpt.py races.

    python benchmarks/profile_train.py --data DIR          # DIR: a `gptkit prepare` output, e.g. char tinyshakespeare
    python benchmarks/profile_train.py --data DIR --n-layer 6 --n-embd 384 --block-size 256 --batch-size 8
"""

from __future__ import annotations

import argparse
import tempfile
import time

from torch.profiler import ProfilerActivity, profile

from gptkit.optim import adamw
from gptkit.train import (
    TrainConfig,
    Trainer,
    build_or_restore_model,
    open_data,
    place_model,
    resume_or_start,
    settle_dtype,
    setup_runtime,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a prepared data directory")
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=12)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--profile-steps", type=int, default=30)
    ap.add_argument("--rows", type=int, default=18, help="operators shown")
    a = ap.parse_args()
    cfg = TrainConfig(data=a.data, out=tempfile.mkdtemp(prefix="gptkit-profile-"), preset="gpt-micro",
                      n_layer=a.n_layer, n_head=a.n_head, n_embd=a.n_embd, block_size=a.block_size,
                      batch_size=a.batch_size, max_iters=10_000, lr=1e-3, min_lr=1e-4, warmup_iters=100,
                      beta2=0.99, dropout=0.0, bias=False, dtype=a.dtype, quiet=True)
    rt = setup_runtime(cfg)
    cfg, _ = resume_or_start(cfg, rt)
    built = build_or_restore_model(cfg, rt, None)
    settle_dtype(cfg, rt, built.model.config, resumed=False)
    loader, splits = open_data(cfg, rt, built.model.config.block_size)
    wrapped = place_model(cfg, rt, built)
    optimizer = adamw(built.model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps, fused=True)
    t = Trainer(cfg, rt, built.model, wrapped, optimizer, loader, splits)
    step = 0
    for step in range(a.warmup):
        t.step(step)
    t0 = time.perf_counter()
    for step in range(a.warmup, a.warmup + a.steps):
        t.step(step)
    ms = (time.perf_counter() - t0) / a.steps * 1e3
    paths = f", bf16 paths {cfg.bf16_paths}" if cfg.bf16_paths else ""
    print(f"{ms:.1f} ms/step ({cfg.batch_size * cfg.block_size / ms * 1e3:,.0f} tokens/s), dtype {cfg.dtype}{paths}")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for step in range(step + 1, step + 1 + a.profile_steps):
            t.step(step)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows))


if __name__ == "__main__":
    main()
