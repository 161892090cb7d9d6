"""glibc's default malloc against gptkit's (keep freed memory in the heap), side by side through `gptkit train`.

`gptkit train` on a CPU calls gptkit.runtime.keep_freed_memory: large tensors come from glibc's heap instead of
their own mmap, and what a step frees stays with the process. GPTKIT_KEEP_FREED_MEMORY=0 keeps glibc's default.
This runs the real command both ways in alternating pairs on the same prepared data and prints per run the
training speed (median tokens/s over the logged steps after the first) and the process's user and system CPU
time, then the median ratio of the speeds. Heads are 64 wide (n_head = n_embd // 64).

    python benchmarks/train_memory.py --data DIR                       # 3 × 192, context 256, batch 16, bf16
    python benchmarks/train_memory.py --data DIR --n-layer 6 --n-embd 384 --batch-size 8 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from train_runs import gptkit_train


def train(a: argparse.Namespace, out: Path, keep: bool) -> dict:
    env = dict(os.environ, GPTKIT_KEEP_FREED_MEMORY="1" if keep else "0")
    return gptkit_train(["--preset", "gpt-mini", "--data", a.data, "--n-layer", str(a.n_layer), "--n-head",
                         str(a.n_embd // 64), "--n-embd", str(a.n_embd), "--block-size", str(a.block_size),
                         "--batch-size", str(a.batch_size), "--dropout", "0", "--max-iters", str(a.steps),
                         "--eval-interval", "100000", "--eval-iters", "1", "--log-interval", str(a.steps // 4),
                         "--dtype", a.dtype, "--threads", str(a.threads)], out, env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a `gptkit prepare` output")
    ap.add_argument("--n-layer", type=int, default=3)
    ap.add_argument("--n-embd", type=int, default=192)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(a.pairs):
            runs = {}
            for keep in ((False, True) if pair % 2 == 0 else (True, False)):
                runs[keep] = train(a, Path(tmp) / f"run-{pair}-{keep}", keep)
            for keep, name in ((False, "glibc default"), (True, "keep freed memory")):
                r = runs[keep]
                print(f"pair {pair + 1}  {name:<18} {r['tok_s']:8.0f} tok/s   user {r['user']:6.1f} s   "
                      f"sys {r['sys']:5.1f} s")
            ratios.append(runs[True]["tok_s"] / runs[False]["tok_s"])
    print(f"keep freed memory / glibc default, tokens/s: median {statistics.median(ratios):.2f}x "
          f"({', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
