"""float32 vs bf16 autocast for CPU fine-tuning, side by side: speed and the task metric.

Runs the real command (`python -m gptkit finetune`) on one GPT-1 task in alternating pairs (float32, bfloat16,
float32, ...), same model, data subset and seed, and prints per pair the training time (log.jsonl's train_s: the
epochs, not loading or the final evaluation), the whole run's wall time and the reported metric, then the median
speed ratio. The weights stay float32 in both; bf16 autocast runs the products in bf16 (AMX / AVX512-BF16 units).

    python benchmarks/finetune_dtype.py --ckpt runs/english-3x192                       # SST-2, 1,000 examples
    python benchmarks/finetune_dtype.py --ckpt runs/english-3x192 --task storycloze --pairs 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from finetune_grid import TASKS  # the GPT-1 tasks' files and the metric each reports

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
WITH_TEST = [name for name, t in TASKS.items() if "test" in t]  # scored on a labelled test split (not RTE)


def finetune(a: argparse.Namespace, dtype: str, out: Path) -> dict:
    t = TASKS[a.task]
    metric = t["report"][1]
    cmd = [sys.executable, "-m", "gptkit", "finetune", "--ckpt", a.ckpt, "--format", t["format"],
           "--train", str(DATA / t["train"]), "--test", str(DATA / t["test"]), "--out", str(out), "--seed",
           str(a.seed), "--train-limit", str(a.train_limit), "--threads", str(a.threads), "--dtype", dtype, "--quiet"]
    cmd += ["--valid", str(DATA / t["valid"])] if "valid" in t else ["--valid-from-train", str(t["valid_from_train"])]
    if a.epochs:
        cmd += ["--epochs", str(a.epochs)]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False)
    if res.returncode:
        sys.exit(f"finetune failed ({dtype}):\n{res.stderr}")
    summary = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    value = json.loads((out / "metrics.json").read_text())["test"][metric]
    return {"train_s": summary["train_s"], "wall_s": summary["wall_s"], "value": value, "metric": metric}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="the pre-trained model (a run directory or checkpoint)")
    ap.add_argument("--task", choices=WITH_TEST, default="sst2")
    ap.add_argument("--train-limit", type=int, default=1000)
    ap.add_argument("--epochs", type=float, default=None, help="default: gptkit finetune's recipe")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=2)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gptkit-bench-ft-"))
    ratios = []
    for p in range(a.pairs):
        got = {d: finetune(a, d, work / f"{d}-{p}") for d in ("float32", "bfloat16")}
        f32, b16 = got["float32"], got["bfloat16"]
        ratios.append(f32["train_s"] / b16["train_s"])
        print(f"pair {p + 1}: float32 {f32['train_s']:.1f} s training ({f32['wall_s']:.1f} s wall), test "
              f"{f32['metric']} {100 * f32['value']:.1f}; bfloat16 {b16['train_s']:.1f} s ({b16['wall_s']:.1f} s), "
              f"{100 * b16['value']:.1f}: bf16 speed-up {ratios[-1]:.2f}×", flush=True)
    print(f"median bf16 / fp32 training speed: {statistics.median(ratios):.2f}× over {a.pairs} pair(s) "
          f"({a.task}, {a.train_limit} examples, {a.threads} thread(s))")


if __name__ == "__main__":
    main()
