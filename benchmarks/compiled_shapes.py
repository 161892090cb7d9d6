"""Compiling for shapes that vary (gptkit.compiled.shapes_vary) against once per shape, side by side.

Fine-tuning pads each batch to its own longest example, so in bf16 on a CPU the compiled loss softmax and attention
backward meet a new shape almost every step. This script times (1) the two kernels compiled once per shape and
compiled for varying sizes, alternating, at shapes neither was traced at; (2) a small bf16 fine-tune (the
tests' tiny model and sentiment task) with and without `shapes_vary`, each in a process of its own, in ABBA order,
with an empty inductor cache and then a warm one, counting the graphs each compiles.

    python benchmarks/compiled_shapes.py [--rounds 5] [--steps 64]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from gptkit import GPT, GPTConfig, Tokenizer, cpu_attention, lm_loss
from gptkit.checkpoint import save_model
from gptkit.cli import main as gptkit_main
from gptkit.compiled import shapes_vary
from gptkit.finetune import loop

SHARED = Path(__file__).resolve().parents[2] / "shared"
VOCAB = 50257


def per_call(f, args, reps: int) -> float:
    f(*args)
    t = time.perf_counter()
    for _ in range(reps):
        f(*args)
    return (time.perf_counter() - t) / reps


def kernels(name: str, fn, make, traced: list[tuple], timed: list[tuple], rounds: int, reps: int = 10) -> None:
    """`fn` compiled per shape and for varying shapes (which saw `traced` first), timed alternating at `timed`."""
    fixed, varying = torch.compile(fn, dynamic=False), torch.compile(fn, dynamic=None)
    for shape in traced:
        varying(*make(*shape))
    for shape in timed:
        args = make(*shape)
        a, b = [], []
        for _ in range(rounds):
            a.append(per_call(fixed, args, reps))
            b.append(per_call(varying, args, reps))
        print(f"{name} {shape}: per shape {min(a) * 1e3:.3f} ms, varying {min(b) * 1e3:.3f} ms, "
              f"ratio {min(b) / min(a):.3f}", flush=True)


def softmax_args(rows: int, n: int):
    return torch.randn(rows, VOCAB).bfloat16(), torch.randint(VOCAB, (rows,)), n


def attention_args(n: int, t: int, hs: int = 64):
    q, k, v, out, g = (torch.randn(n, t, hs).bfloat16() for _ in range(5))
    return q, k, v, out, torch.randn(n, t), g


def sentiment(path: Path, n: int, seed: int) -> None:
    words = "the a film story plot actor scene music moment character ending pace script".split()
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            label = rng.choice(("good", "bad"))
            text = [rng.choice(words) for _ in range(rng.randint(3, 10))]
            text.insert(rng.randrange(len(text) + 1), {"good": "wonderful", "bad": "dreadful"}[label])
            f.write(json.dumps({"text": " ".join(text), "label": label}) + "\n")


def finetune(d: Path, varying: bool, steps: int) -> None:
    """(In a child process) a bf16 fine-tune of `steps` steps at batch 16; prints seconds and graphs compiled."""
    loop.shapes_vary = shapes_vary if varying else contextlib.nullcontext
    counters = torch._dynamo.utils.counters["stats"]
    t = time.perf_counter()
    rc = gptkit_main(["finetune", "--ckpt", str(d / "ckpt"), "--task-type", "classification", "--train",
                      str(d / "train.jsonl"), "--valid", str(d / "valid.jsonl"), "--out", str(d / f"run-{varying}"),
                      "--overwrite", "--lr", "2e-3", "--epochs", str(steps * 16 // 256), "--batch-size", "16",
                      "--quiet", "--seed", "0", "--dtype", "bfloat16", "--threads", "1"])
    if rc != 0:
        sys.exit(rc)
    print(json.dumps({"seconds": time.perf_counter() - t, "graphs": counters["unique_graphs"]}))


def finetunes(steps: int) -> None:
    """Each side in a fresh process, ABBA: with an empty inductor cache (a first run), then with a warm one (the
    same shapes' kernels already built on disk, as in a rerun)."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        text = (SHARED / "data/tinyshakespeare/input.txt").read_text()[:200_000]
        tok = Tokenizer.train_bpe([text], vocab_size=512)
        model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32))
        save_model(model, d / "ckpt", tokenizer=tok)
        sentiment(d / "train.jsonl", 256, 0)
        sentiment(d / "valid.jsonl", 64, 1)
        for cache in ("cold", "warm"):
            for i, varying in enumerate((False, True, True, False)):  # each side once first and once last
                where = d / f"cache-{i if cache == 'cold' else int(varying)}"  # warm: the side's first cold run's
                env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(where), "GPTKIT_THREAD_GUARD": "off"}
                out = subprocess.run([sys.executable, __file__, "--child", str(d), "--varying", str(int(varying)),
                                      "--steps", str(steps)], env=env, capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.splitlines()[-1])
                print(f"bf16 fine-tune, {steps} steps, {cache} inductor cache, "
                      f"{'shapes_vary' if varying else 'per shape'}: {r['seconds']:.1f} s, {r['graphs']} graphs "
                      f"compiled", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="alternating timings of each kernel shape")
    ap.add_argument("--steps", type=int, default=64, help="steps of each fine-tune (a multiple of 16)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--varying", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return finetune(Path(a.child), bool(a.varying), a.steps)
    torch.manual_seed(0)
    kernels("loss softmax, rows of 50,257 logits", lm_loss._softmax_rows_to_compile, softmax_args,
            [(64, 100), (80, 120)], [(96, 1000), (48, 700)], a.rounds)
    kernels("attention backward, (rows, length)", cpu_attention._backward_rows, attention_args,
            [(32, 40), (48, 56)], [(64, 48), (128, 37)], a.rounds)
    finetunes(a.steps)


if __name__ == "__main__":
    main()
