"""GPT-1 Table 5 in miniature: fine-tune one small pre-trained model on five real tasks, three ways.

    (a) pretrained   pre-trained weights, auxiliary LM loss λ = 0.5   (GPT-1's recipe)
    (b) scratch      the same architecture and tokenizer, random init, λ = 0.5
    (c) no-aux-lm    pre-trained weights, λ = 0

Each run is `gptkit finetune` (called in-process; the equivalent command line is printed and saved) on the whole
training set with gptkit's defaults (lr, epochs and warmup sized to the model and the data) unless told otherwise,
once per --seeds. A run whose record exists, made by the same command, is not trained again (a killed grid
continues; --redo retrains).
Every run's metrics, standard error and wall time go to OUT/TASK/CONFIG-sSEED.json; the script
prints a markdown table beside GPT-1's numbers: each configuration's mean over the seeds ± its standard error, and
(a) pre-trained's lead over (b) from scratch with a paired standard error (both scored on the same bootstrap
resamples of the test examples).

A run's standard error is a bootstrap over the reported split's examples (its predictions file); a mean over seeds
on one test set keeps that sampling error whole and adds the seeds' spread: SE² = mean(SE_run²) + var(seeds) / k.

    python benchmarks/finetune_grid.py --ckpt runs/english-1h --out runs/ft-grid --seeds 1337 1338
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

# name: files in ../shared/data, the metric GPT-1 reports, its number (Radford et al. 2018, Tables 2 and 3)
TASKS = {
    "sst2": dict(format="sst2", train="sst2/stsa.binary.train", valid="sst2/stsa.binary.dev",
                 test="sst2/stsa.binary.test", report=("test", "accuracy"), paper=91.3),
    "rte": dict(format="superglue", train="rte/superglue_rte_train.jsonl", valid="rte/superglue_rte_val.jsonl",
                report=("valid", "accuracy"), paper=56.0),  # the SuperGLUE test file has no labels
    "mrpc": dict(format="mrpc", train="mrpc/train.txt", valid="mrpc/dev.txt", test="mrpc/test.txt",
                 report=("test", "f1"), paper=82.3),
    "stsb": dict(format="stsb", train="stsb/train.tsv", valid="stsb/dev.tsv", test="stsb/test.tsv",
                 report=("test", "pearson"), paper=82.0),
    # GPT-1 §4.2: trained on the Story Cloze validation set, reported on its test set
    "storycloze": dict(format="storycloze", train="story-cloze-2016/val.csv", valid_from_train=100,
                       test="story-cloze-2016/test.csv", report=("test", "accuracy"), paper=86.5),
}
CONFIGS = {"pretrained": dict(lm_coef=0.5), "scratch": dict(lm_coef=0.5, from_scratch=True),
           "no-aux-lm": dict(lm_coef=0.0)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="pre-trained model (run dir or checkpoint)")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--out", default="runs/ft-grid")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[1337])
    ap.add_argument("--lr", type=float, default=None, help="default: gptkit finetune's (sized to the model)")
    ap.add_argument("--epochs", type=float, default=None, help="default: gptkit finetune's (sized to the data)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--train-limit", "--max-train", type=int, default=None,
                    help="a random subset of every training set (gptkit finetune's --train-limit)")
    ap.add_argument("--eval-limit", "--max-eval", type=int, default=None,
                    help="examples per valid/test split (gptkit finetune's --eval-limit)")
    ap.add_argument("--table-only", action="store_true", help="print the table of the runs found in --out")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                    help="autocast dtype of every run (default: gptkit finetune's, float32 on a CPU)")
    ap.add_argument("--redo", action="store_true", help="train runs again whose record is already in --out")
    ap.add_argument("--keep-models", action="store_true", help="keep each run's fine-tuned model directory")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.table_only:
        print(table(collect(out), out))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    t_grid = time.perf_counter()
    for task in args.tasks:
        for name in args.configs:
            for seed in args.seeds:
                run_one(args, task, name, seed, out)
    print(f"grid wall time {time.perf_counter() - t_grid:.0f} s\n")
    print(table(collect(out), out))
    return 0


def run_one(args: argparse.Namespace, task: str, name: str, seed: int, out: Path) -> None:
    """Fine-tune one (task, configuration, seed) and write its record OUT/TASK/CONFIG-sSEED.json."""
    from gptkit.finetune.loop import FinetuneConfig, finetune
    from gptkit.options.generator import flag_name

    t, data, key = TASKS[task], Path(args.data), f"{task}/{name}-s{seed}"
    opts = dict(ckpt=args.ckpt, format=t["format"], train=str(data / t["train"]),
                valid=str(data / t["valid"]) if "valid" in t else None, valid_from_train=t.get("valid_from_train"),
                test=str(data / t["test"]) if "test" in t else None, out=str(out / task / f"{name}-s{seed}"),
                lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, max_train_examples=args.train_limit,
                max_eval_examples=args.eval_limit, seed=seed, threads=args.threads, overwrite=True, quiet=True,
                **({"dtype": args.dtype} if args.dtype else {}), **CONFIGS[name])
    flags = {f.name: flag_name(f) for f in dataclasses.fields(FinetuneConfig)}  # the public spellings
    argv = ["gptkit", "finetune"]
    for k, v in opts.items():
        if v is None or v is False or k in ("quiet", "overwrite"):
            continue
        argv += [flags[k]] if v is True else [flags[k], str(v)]
    cmd = shlex.join(argv)
    done = out / task / f"{name}-s{seed}.json"
    if done.is_file() and not args.redo:
        if json.loads(done.read_text())["command"] != cmd:
            raise SystemExit(f"{done} was made by another command than this grid's ({cmd}): choose another --out, "
                             f"or pass --redo to train it again")
        print(f"[{key}] done before (its record is {done}; --redo trains it again)", flush=True)
        return
    print(f"[{key}] {cmd}", flush=True)
    t0 = time.perf_counter()
    res = finetune(FinetuneConfig(**opts))
    wall = time.perf_counter() - t0
    split, metric = t["report"]
    value = res["metrics"][split][metric]
    se = bootstrap_se(Path(opts["out"]), split, metric, seed)
    record = {"command": cmd, "seed": seed, "wall_s": round(wall, 1), "train_s": res["train_s"],
              "steps": res["steps"], "train_examples": res["train_examples"], "metrics": res["metrics"],
              "report": f"{split} {metric}", "value": value, "se": se}
    print(f"[{key}] {split} {metric} {100 * value:.1f} ± {100 * se:.1f}  ({wall:.0f} s)", flush=True)
    (out / task / f"{name}-s{seed}.json").write_text(json.dumps(record, indent=2) + "\n")
    if not args.keep_models:
        for f in ("model.safetensors", "head.safetensors"):
            (out / task / f"{name}-s{seed}" / f).unlink(missing_ok=True)


def scored(run_dir: Path, split: str, metric: str):
    """A run's predictions and labels on `split` (its predictions file) and the function that scores them."""
    from gptkit.finetune import metrics as M

    recs = [json.loads(line) for line in (run_dir / "predictions" / f"{split}.jsonl").read_text().splitlines()]
    if metric == "pearson":
        pred, gold, fn = [r["score"] for r in recs], [r["label"] for r in recs], M.pearson
    elif metric == "f1":  # 1 for the positive label, 0 for any other
        positive = str(json.loads((run_dir / "task.json").read_text())["positive_label"])
        pred, gold = ([int(str(r[k]) == positive) for r in recs] for k in ("prediction", "label"))
        fn = lambda p, g: M.f1_binary(p, g, 1)  # noqa: E731
    else:
        pred, gold, fn = [r["prediction"] for r in recs], [r["label"] for r in recs], M.accuracy
    return np.array(pred), np.array(gold), fn


def bootstrap_se(run_dir: Path, split: str, metric: str, seed: int, resamples: int = 1000) -> float:
    """Standard error of a run's metric: the spread of the metric over resamples of the split's examples."""
    pred, gold, fn = scored(run_dir, split, metric)
    idx = np.random.default_rng(seed).integers(0, len(gold), size=(resamples, len(gold)))
    return float(np.std([fn(pred[i], gold[i]) for i in idx], ddof=1))


def paired_gap(a: Path, b: Path, split: str, metric: str, seed: int, resamples: int = 1000) -> tuple[float, float]:
    """Run a's metric minus run b's on the same examples, and its standard error: both runs scored on the same
    resamples of the examples (a paired bootstrap), so what the two get right or wrong together cancels."""
    (pa, ga, fn), (pb, gb, _) = scored(a, split, metric), scored(b, split, metric)
    if not np.array_equal(ga, gb):
        raise SystemExit(f"{a} and {b} were not scored on the same examples")
    idx = np.random.default_rng(seed).integers(0, len(ga), size=(resamples, len(ga)))
    gaps = [fn(pa[i], ga[i]) - fn(pb[i], ga[i]) for i in idx]
    return float(fn(pa, ga) - fn(pb, ga)), float(np.std(gaps, ddof=1))


def collect(out: Path) -> dict[str, list[dict]]:
    """Every run's record by TASK/CONFIG, one per seed (runs may come from several processes)."""
    return {f"{task}/{name}": [json.loads(f.read_text()) for f in sorted((out / task).glob(f"{name}-s*.json"))]
            for task in TASKS for name in CONFIGS}


def combine(runs: list[dict]) -> tuple[float, float]:
    """Mean over seeds and its standard error (one test set: the sampling error stays, the seeds' spread adds)."""
    values = np.array([r["value"] for r in runs])
    seed_var = values.var(ddof=1) / len(values) if len(values) > 1 else 0.0
    return float(values.mean()), float(np.sqrt(np.mean([r["se"] ** 2 for r in runs]) + seed_var))


def gap_cell(out: Path, task: str, results: dict[str, list[dict]]) -> str:
    """(a) − (b): the paired gap at each seed both ran, combined over seeds as `combine` does."""
    a = {r["seed"] for r in results.get(f"{task}/pretrained", [])}
    seeds = sorted(a & {r["seed"] for r in results.get(f"{task}/scratch", [])})
    if not seeds:
        return "–"
    split, metric = TASKS[task]["report"]
    gaps = [paired_gap(out / task / f"pretrained-s{s}", out / task / f"scratch-s{s}", split, metric, s)
            for s in seeds]
    m, se = combine([{"value": g, "se": e} for g, e in gaps])
    return f"{100 * m:+.1f} ± {100 * se:.1f} ({m / max(se, 1e-12):+.1f} SE)"


def table(results: dict[str, list[dict]], out: Path) -> str:
    """Markdown: one row per task, one column per configuration (mean ± SE, seeds), GPT-1's number beside, and
    pre-training's gap with its paired standard error."""
    header = ("| task (metric, split) | GPT-1 | (a) pre-trained, λ=0.5 | (b) from scratch, λ=0.5 "
              "| (c) pre-trained, λ=0 | (a) − (b), paired |")
    lines = [header, "|---|---:|---:|---:|---:|---:|"]
    for task, t in TASKS.items():
        cells = []
        for name in CONFIGS:
            runs = results.get(f"{task}/{name}", [])
            if not runs:
                cells.append("–")
                continue
            m, se = combine(runs)
            wall = np.mean([r["wall_s"] for r in runs])
            seeds = f"{len(runs)} seed" + "s" * (len(runs) > 1)
            cells.append(f"{100 * m:.1f} ± {100 * se:.1f} ({seeds}, {wall:.0f} s)")
        split, metric = t["report"]
        lines.append(f"| {task} ({metric}, {split}) | {t['paper']} | " + " | ".join(cells)
                     + f" | {gap_cell(out, task, results)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
