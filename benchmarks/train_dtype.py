"""float32 vs bf16 autocast for CPU training, side by side, and what `--dtype auto` chooses.

Runs the real command (`python -m gptkit train`) at one shape in alternating rounds of three runs (float32,
bfloat16, `--dtype auto`, or those `--sides` names; the order rotates from round to round) on the same prepared
data, and prints per round the training speed (median tokens/s over the logged steps after the first) and the
validation loss at the last step, then the median speed ratios to float32 (issue 14's bars: bf16 ≥ 2.5× float32
where the CPU has bf16 units, auto ≥ 0.95× float32 where it has not). All runs share a fresh decision cache: the
first bf16 run measures its attention and loss paths (gptkit.train.choose_bf16_paths) and the first auto run its
dtype, as gptkit does on a new machine, and say what they took.

    python benchmarks/train_dtype.py                      # 6 × 384, context 256, BPE-8k on tinyshakespeare, batch 8
    python benchmarks/train_dtype.py --n-layer 4 --n-embd 128 --block-size 64 --batch-size 12 --tokenizer-kind char
    python benchmarks/train_dtype.py --steps 10 --pairs 1   # a smoke run
    python benchmarks/train_dtype.py --sides float32 auto  # a CPU without bf16 units: auto against float32
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from train_runs import gptkit_train

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def prepare(work: Path, tokenizer: str, vocab_size: int) -> Path:
    out = work / f"data-{tokenizer}-{vocab_size}"
    if not (out / "manifest.json").exists():
        cmd = [sys.executable, "-m", "gptkit", "prepare", "--input", str(TEXT), "--tokenizer-kind", tokenizer,
               "--out", str(out)]
        if tokenizer == "bpe":
            cmd += ["--vocab-size", str(vocab_size)]
        subprocess.run(cmd, check=True)
    return out


def train(data: Path, out: Path, dtype: str, a: argparse.Namespace, env: dict) -> dict:
    return gptkit_train(["--data", str(data), "--preset", "gpt-micro", "--n-layer", str(a.n_layer), "--n-head",
                         str(a.n_head), "--n-embd", str(a.n_embd), "--block-size", str(a.block_size), "--batch-size",
                         str(a.batch_size), "--max-iters", str(a.steps), "--eval-interval", str(a.steps),
                         "--eval-iters", "10", "--log-interval", "5", "--dropout", "0", "--dtype", dtype], out, env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-layer", type=int, default=6)
    ap.add_argument("--n-head", type=int, default=6)
    ap.add_argument("--n-embd", type=int, default=384)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--tokenizer-kind", choices=["bpe", "char"], default="bpe")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--pairs", type=int, default=2, help="rounds (each runs every side once)")
    ap.add_argument("--sides", nargs="+", choices=["float32", "bfloat16", "auto"],
                    default=["float32", "bfloat16", "auto"], help="the runs of a round (float32 always; on a CPU "
                    "without bf16 units bf16 autocast is emulated and ~17× slower at the default shape: "
                    "--sides float32 auto)")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "gptkit-bench-dtype"))
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    data = prepare(work, a.tokenizer_kind, a.vocab_size)
    cache = tempfile.mkdtemp(prefix="gptkit-cache-")
    env = {**os.environ, "GPTKIT_AUTOTUNE": "on", "GPTKIT_CACHE_DIR": cache}
    sides = ["float32", *(d for d in a.sides if d != "float32")]
    ratios: dict[str, list[float]] = {d: [] for d in sides[1:]}
    for p in range(a.pairs):
        order = sides[p % len(sides):] + sides[:p % len(sides)]
        got = {d: train(data, Path(tempfile.mkdtemp(dir=work)) / "run", d, a, env) for d in order}
        for d in ratios:
            ratios[d].append(got[d]["tok_s"] / got["float32"]["tok_s"])
            for line in got[d]["stderr"].splitlines():
                if "measured once" in line:
                    print(f"  {line}")
        print(f"round {p + 1} ({', '.join(order)}): " + ", ".join(
            f"{d} {got[d]['tok_s']:,.0f} tok/s (val {got[d]['val']:.4f})" for d in sides)
            + (f"; auto computed in {got['auto']['dtype']}" if "auto" in got else "") + "; "
            + ", ".join(f"{d} / float32 = {r[-1]:.2f}×" for d, r in ratios.items()), flush=True)
    print(f"median over {a.pairs} round(s), tokens/s: "
          + ", ".join(f"{d} / float32 {statistics.median(r):.2f}×" for d, r in ratios.items()))


if __name__ == "__main__":
    main()
