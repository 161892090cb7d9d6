"""nanoGPT itself against gptkit on nanoGPT's own README CPU recipe, side by side, alternating, in one run.

The recipe (nanoGPT README, "I only have a macbook"): character-level tinyshakespeare, 4 layers × 4 heads × 128
wide, context 64, batch 12, 2,000 iterations, lr 1e-3 → 1e-4 (cosine over 2,000), warmup 100, β2 0.99, dropout 0,
no biases, evaluation every 250 steps on 20 batches, `--device=cpu --compile=False`.

nanoGPT runs from a scratch copy of ../shared/anchors/nanoGPT (its own code, its own data preparation; nothing of
it is imported into gptkit). gptkit runs the same recipe through `gptkit train`. Each pair runs both commands
back to back (the order alternates between pairs) and prints the wall-time ratio gptkit / nanoGPT; the final
models of both are then scored the same way, on the whole validation split in consecutive windows of the context
(each model on its own tokenization of the same 10% tail of the text). Last, each of `--fast-args`' gptkit settings is
timed to nanoGPT's final validation loss, and the fastest that reaches it gives the time-to-loss ratio. By default
there are two, each the fastest found by a sweep on one kind of CPU: a shallower, wider model at a larger batch
(2 × 256, cheap where bf16 units make its products cheap) and a narrow one at a hotter learning rate (2 × 64, for
CPUs that compute in float32, where the products cost the most).

nanoGPT seeds its run with 1337, written into its train.py. A final loss is one draw: `--seeds 1337 1 2` runs pair
i of both with seed i (nanoGPT's scratch copy then reads its seed from a `--seed=` flag: the one line that sets it
is changed there to take it, and nothing else), so that the losses can be compared over several draws.

    python benchmarks/vs_nanogpt.py [--pairs 2] [--seeds 1337 ...] [--fast-args "--max-iters 1500 ..." ...] [--keep DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
NANOGPT_FLAGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                 "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
                 "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0",
                 "--always_save_checkpoint=True"]  # save the final model, not only the best, to score it
"""nanoGPT README's CPU command, verbatim, plus always_save_checkpoint so that its final model can be scored."""

GPTKIT_RECIPE = ["--preset", "gpt-micro", "--n-layer", "4", "--n-head", "4", "--n-embd", "128", "--block-size",
                 "64", "--batch-size", "12", "--max-iters", "2000", "--lr", "1e-3", "--min-lr", "1e-4",
                 "--warmup-iters", "100", "--beta2", "0.99", "--dropout", "0", "--no-bias", "--weight-decay", "0.1",
                 "--grad-clip", "1", "--eval-interval", "250", "--eval-iters", "20", "--log-interval", "1"]
"""The same recipe as gptkit flags (nanoGPT's config file sets lr, min_lr, β2, warmup; the rest are its
defaults: weight decay 0.1, grad clip 1, no gradient accumulation)."""

FAST_ARGS = ("--max-iters 550 --batch-size 24 --n-layer 2 --n-head 4 --n-embd 256 --lr 3e-3 --min-lr 3e-4 "
             "--warmup-iters 50 --eval-interval 550",
             "--max-iters 1000 --batch-size 32 --n-layer 2 --n-head 4 --n-embd 64 --lr 8e-3 --min-lr 3e-4 "
             "--warmup-iters 50 --eval-interval 1000")
"""The time-to-loss candidates, each on top of the recipe's flags: 2 × 256, swept on a Xeon with AMX (bf16);
2 × 64, swept on an AVX2-only EPYC (float32). See docs/benchmarks.md."""


NANOGPT_SEED_LINE = "torch.manual_seed(1337 + seed_offset)"


def setup_nanogpt(scratch: Path, seed_flag: bool) -> Path:
    src = SHARED / "anchors" / "nanoGPT"
    if not src.is_dir():
        sys.exit(f"vs_nanogpt: {src} is absent: this benchmark runs nanoGPT from ../shared/anchors")
    dst = scratch / "nanoGPT"
    shutil.copytree(src, dst)
    if seed_flag:  # make its seed a config key (its configurator overrides the globals defined before it)
        train = dst / "train.py"
        text = train.read_text()
        if NANOGPT_SEED_LINE not in text or "exec(open('configurator.py')" not in text:
            sys.exit(f"vs_nanogpt: {train} does not set its seed as expected; run without --seeds")
        text = text.replace(NANOGPT_SEED_LINE, "torch.manual_seed(seed + seed_offset)")
        text = text.replace("exec(open('configurator.py')", "seed = 1337\nconfig_keys.append('seed')\n"
                            "exec(open('configurator.py')", 1)
        train.write_text(text)
    data = dst / "data" / "shakespeare_char"
    shutil.copy(SHARED / "data" / "tinyshakespeare" / "input.txt", data / "input.txt")
    subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, stdout=subprocess.DEVNULL)
    return dst


def timed(cmd: list[str], cwd: Path, log: Path) -> float:
    t = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run(cmd, cwd=cwd, check=True, stdout=f, stderr=subprocess.STDOUT)
    return time.perf_counter() - t


@torch.no_grad()
def whole_split_loss(forward, ids: np.ndarray, block: int, batch: int = 64) -> float:
    """Mean next-token cross-entropy over every token of `ids`, in consecutive windows of `block` tokens (a
    shorter last window for the tail)."""
    ids = torch.from_numpy(ids.astype(np.int64))
    n = (len(ids) - 1) // block * block
    windows = [(ids[:n].view(-1, block), ids[1:n + 1].view(-1, block))]
    if n < len(ids) - 1:
        windows.append((ids[n:-1][None], ids[n + 1:][None]))
    total, count = 0.0, 0
    for xs, ys in windows:
        for i in range(0, len(xs), batch):
            logits = forward(xs[i:i + batch])
            y = ys[i:i + batch]
            total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
            count += y.numel()
    return total / count


def nanogpt_val_loss(ngpt: Path) -> float:
    spec = importlib.util.spec_from_file_location("nanogpt_model", ngpt / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ckpt = torch.load(ngpt / "out-shakespeare-char" / "ckpt.pt", map_location="cpu", weights_only=True)
    model = mod.GPT(mod.GPTConfig(**ckpt["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
    model.eval()
    val = np.fromfile(ngpt / "data" / "shakespeare_char" / "val.bin", dtype=np.uint16)

    def forward(x):  # nanoGPT returns only the last position's logits without targets: pass dummy targets
        logits, _ = model(x, targets=torch.zeros_like(x))
        return logits

    return whole_split_loss(forward, val, ckpt["model_args"]["block_size"])


def gptkit_val_loss(run: Path, data: Path) -> float:
    from gptkit.checkpoint import load_model
    from gptkit.data.loader import BatchLoader

    model = load_model(run, map_location="cpu").eval()
    val = np.asarray(BatchLoader(data, 1, model.config.block_size, seed=0).dataset("val")[:])
    return whole_split_loss(model, val, model.config.block_size)


def gptkit_train(data: Path, run: Path, flags: list[str], log: Path) -> float:
    """Wall seconds of `gptkit train` on the recipe with `flags` on top, from `data` into `run`."""
    return timed([sys.executable, "-m", "gptkit", "train", "--data", str(data), "--out", str(run), "--quiet",
                  "--device", "cpu", *GPTKIT_RECIPE, *flags], REPO, log)


def time_to_loss(candidates: list[str], data: Path, scratch: Path, target: float, nanogpt_wall: float) -> dict:
    """Each candidate's wall and whole-val loss; the fastest that reached `target` gives the time-to-loss ratio."""
    runs = []
    for i, args in enumerate(candidates):
        run = scratch / f"gptkit-fast-{i}"
        wall = gptkit_train(data, run, shlex.split(args), scratch / f"gptkit-fast-{i}.log")
        loss = gptkit_val_loss(run, data)
        runs.append({"args": args, "wall_s": wall, "val": loss, "reached": loss <= target,
                     "time_to_loss_ratio": wall / nanogpt_wall})
        print(f"time to nanoGPT's loss: gptkit {args!r}: {wall:.1f} s to whole-val {loss:.4f} "
              f"({'reached' if loss <= target else 'NOT reached'} {target:.4f}); "
              f"{wall / nanogpt_wall:.3f}× nanoGPT's median wall {nanogpt_wall:.1f} s", flush=True)
    reached = [r for r in runs if r["reached"]]
    best = min(reached, key=lambda r: r["wall_s"]) if reached else None
    print(f"time to loss: {best['time_to_loss_ratio']:.3f}× ({best['args']!r})" if best
          else "time to loss: no candidate reached nanoGPT's loss")
    return {"runs": runs, "best": best}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1337],
                    help="seed of pair i's two runs: seeds[i %% len(seeds)] (default: nanoGPT's own 1337)")
    ap.add_argument("--fast-args", nargs="+", default=list(FAST_ARGS),
                    help="gptkit settings to time to nanoGPT's loss, one quoted string each (default: two)")
    ap.add_argument("--no-fast", action="store_true", help="skip the time-to-loss runs")
    ap.add_argument("--iters", type=int, default=2000, help="steps of both runs (the recipe: 2000; fewer only to "
                    "check that the script works)")
    ap.add_argument("--keep", help="work in this directory and keep it (default: a temporary one, removed)")
    a = ap.parse_args()
    scratch = Path(a.keep or tempfile.mkdtemp(prefix="vs-nanogpt-"))
    scratch.mkdir(parents=True, exist_ok=True)
    gptkit = [sys.executable, "-m", "gptkit"]
    env_note = f"torch {torch.__version__}, {os.cpu_count()} cores"
    if a.iters != 2000:
        every = str(min(250, a.iters))
        NANOGPT_FLAGS[NANOGPT_FLAGS.index("--max_iters=2000"):][:2] = []
        NANOGPT_FLAGS.extend([f"--max_iters={a.iters}", f"--lr_decay_iters={a.iters}", f"--eval_interval={every}"])
        GPTKIT_RECIPE.extend(["--max-iters", str(a.iters), "--eval-interval", every])
    try:
        seeded = a.seeds != [1337]  # nanoGPT as shipped unless other seeds are asked for
        ngpt = setup_nanogpt(scratch, seed_flag=seeded)
        data = scratch / "gptkit-data"
        subprocess.run([*gptkit, "prepare", "--input", str(SHARED / "data/tinyshakespeare/input.txt"),
                        "--tokenizer-kind", "char", "--out", str(data)], check=True, stdout=subprocess.DEVNULL)
        rows = []
        for pair in range(a.pairs):
            run = scratch / f"gptkit-run-{pair}"
            seed = a.seeds[pair % len(a.seeds)]
            shutil.rmtree(ngpt / "out-shakespeare-char", ignore_errors=True)
            sides = {"nanogpt": lambda: timed([sys.executable, "train.py", *NANOGPT_FLAGS,
                                               *([f"--seed={seed}"] if seeded else [])], ngpt,
                                              scratch / f"nanogpt-{pair}.log"),
                     "gptkit": lambda: gptkit_train(data, run, ["--seed", str(seed)], scratch / f"gptkit-{pair}.log")}
            order = ["nanogpt", "gptkit"] if pair % 2 == 0 else ["gptkit", "nanogpt"]
            wall = {side: sides[side]() for side in order}
            row = {"pair": pair, "seed": seed, "order": order, "nanogpt_s": wall["nanogpt"],
                   "gptkit_s": wall["gptkit"], "ratio": wall["gptkit"] / wall["nanogpt"],
                   "nanogpt_val": nanogpt_val_loss(ngpt), "gptkit_val": gptkit_val_loss(run, data)}
            rows.append(row)
            print(f"pair {pair} (seed {seed}, {' then '.join(order)}): nanoGPT {row['nanogpt_s']:.1f} s, gptkit "
                  f"{row['gptkit_s']:.1f} s, ratio {row['ratio']:.3f}; whole-val loss nanoGPT "
                  f"{row['nanogpt_val']:.4f}, gptkit {row['gptkit_val']:.4f}", flush=True)
        ratio = statistics.median(r["ratio"] for r in rows)
        target = statistics.median(r["nanogpt_val"] for r in rows)
        summary = {"pairs": rows, "median_ratio": ratio, "nanogpt_val_median": target,
                   "gptkit_val_median": statistics.median(r["gptkit_val"] for r in rows), "env": env_note}
        print(f"median wall ratio gptkit/nanoGPT: {ratio:.3f}; whole-val loss nanoGPT {target:.4f}, gptkit "
              f"{summary['gptkit_val_median']:.4f}")
        if not a.no_fast:
            summary["fast"] = time_to_loss(a.fast_args, data, scratch, target,
                                           statistics.median(r["nanogpt_s"] for r in rows))
        print(json.dumps(summary))
    finally:
        if not a.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
