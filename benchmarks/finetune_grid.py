"""GPT-1 Table 5 in miniature: fine-tune one small pre-trained model on five real tasks, three ways.

    (a) pretrained   pre-trained weights, auxiliary LM loss λ = 0.5   (GPT-1's recipe)
    (b) scratch      the same architecture and tokenizer, random init, λ = 0.5
    (c) no-aux-lm    pre-trained weights, λ = 0

Each run is `gptkit finetune` (called in-process; the equivalent command line is printed and saved). The script
prints a markdown table beside GPT-1's numbers and writes every run's metrics and wall time to
OUT/TASK/CONFIG.json. The training sets can be subsampled and the epochs cut so the whole grid fits a CPU budget;
the defaults are the settings of docs/finetuning.md.

    python benchmarks/finetune_grid.py --ckpt /work/pretrained/small-bpe --out runs/ft-grid
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

# name: files in ../shared/data, the metric GPT-1 reports, its number (Radford et al. 2018, Tables 2 and 3)
TASKS = {
    "sst2": dict(format="sst2", train="sst2/stsa.binary.train", valid="sst2/stsa.binary.dev",
                 test="sst2/stsa.binary.test", report=("test", "accuracy"), paper=91.3, max_train=2000, epochs=2),
    "rte": dict(format="superglue", train="rte/superglue_rte_train.jsonl", valid="rte/superglue_rte_val.jsonl",
                report=("valid", "accuracy"), paper=56.0,  # the SuperGLUE test file has no labels
                max_train=1000, epochs=2),
    "mrpc": dict(format="mrpc", train="mrpc/train.txt", valid="mrpc/dev.txt", test="mrpc/test.txt",
                 report=("test", "f1"), paper=82.3, max_train=1000, epochs=1, max_eval=1000),
    "stsb": dict(format="stsb", train="stsb/train.tsv", valid="stsb/dev.tsv", test="stsb/test.tsv",
                 report=("test", "pearson"), paper=82.0, max_train=1500, epochs=2, max_eval=1000),
    # GPT-1 §4.2: trained on the Story Cloze validation set, reported on its test set
    "storycloze": dict(format="storycloze", train="story-cloze-2016/val.csv", valid_from_train=100,
                       test="story-cloze-2016/test.csv", report=("test", "accuracy"), paper=86.5, max_train=None,
                       epochs=1),
}
CONFIGS = {"pretrained": dict(lm_coef=0.5), "scratch": dict(lm_coef=0.5, from_scratch=True),
           "no-aux-lm": dict(lm_coef=0.0)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default="/work/pretrained/small-bpe", help="pre-trained model (run dir or checkpoint)")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--out", default="runs/ft-grid")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--epochs", type=float, default=None, help="epochs for every task (default: per task, below)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-train", type=int, default=None,
                    help="training examples for every task, a random subset (default: per task, below)")
    ap.add_argument("--max-eval", type=int, default=None, help="examples per valid/test split (default: per task)")
    ap.add_argument("--table-only", action="store_true", help="print the table of the runs found in --out")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--keep-models", action="store_true", help="keep each run's fine-tuned model directory")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from gptkit.finetune.loop import FinetuneConfig, finetune

    torch.set_num_threads(args.threads)
    data, out = Path(args.data), Path(args.out)
    if args.table_only:
        print(table(collect(out)))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    t_grid = time.perf_counter()
    for task in args.tasks:
        t = TASKS[task]
        for name in args.configs:
            key = f"{task}/{name}"
            opts = dict(ckpt=args.ckpt, format=t["format"], train=str(data / t["train"]),
                        valid=str(data / t["valid"]) if "valid" in t else None,
                        valid_from_train=t.get("valid_from_train"),
                        test=str(data / t["test"]) if "test" in t else None, out=str(out / task / name),
                        lr=args.lr, epochs=args.epochs or t["epochs"], batch_size=args.batch_size,
                        max_train_examples=args.max_train or t["max_train"],
                        max_eval_examples=args.max_eval or t.get("max_eval"), seed=args.seed,
                        threads=args.threads, overwrite=True, quiet=True, **CONFIGS[name])
            argv = ["gptkit", "finetune"]
            for k, v in opts.items():
                if v is None or v is False or k in ("quiet", "overwrite"):
                    continue
                argv += [f"--{k.replace('_', '-')}"] if v is True else [f"--{k.replace('_', '-')}", str(v)]
            cmd = shlex.join(argv)
            print(f"[{key}] {cmd}", flush=True)
            t0 = time.perf_counter()
            res = finetune(FinetuneConfig(**opts))
            wall = time.perf_counter() - t0
            split, metric = t["report"]
            value = res["metrics"][split][metric]
            record = {"command": cmd, "wall_s": round(wall, 1), "train_s": res["train_s"], "steps": res["steps"],
                      "train_examples": res["train_examples"], "metrics": res["metrics"],
                      "report": f"{split} {metric}", "value": value}
            print(f"[{key}] {split} {metric} {100 * value:.1f}  ({wall:.0f} s)", flush=True)
            (out / task / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
            if not args.keep_models:
                for f in ("model.safetensors", "head.safetensors"):
                    (out / task / name / f).unlink(missing_ok=True)
    print(f"grid wall time {time.perf_counter() - t_grid:.0f} s\n")
    print(table(collect(out)))
    return 0


def collect(out: Path) -> dict:
    """Every run's record, OUT/TASK/CONFIG.json (runs may come from several processes)."""
    return {f"{task}/{name}": json.loads((out / task / f"{name}.json").read_text())
            for task in TASKS for name in CONFIGS if (out / task / f"{name}.json").is_file()}


def table(results: dict) -> str:
    """Markdown: one row per task, one column per configuration, GPT-1's number beside."""
    lines = ["| task (metric, split) | GPT-1 | (a) pre-trained, λ=0.5 | (b) from scratch, λ=0.5 | (c) pre-trained, λ=0 |",
             "|---|---:|---:|---:|---:|"]
    for task, t in TASKS.items():
        cells = []
        for name in CONFIGS:
            r = results.get(f"{task}/{name}")
            cells.append(f"{100 * r['value']:.1f} ({r['wall_s']:.0f} s)" if r else "–")
        split, metric = t["report"]
        lines.append(f"| {task} ({metric}, {split}) | {t['paper']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
