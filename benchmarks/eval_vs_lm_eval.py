"""gptkit eval vs lm-eval through the bridge: same model, data, shots and prompts; accuracy and time.

    python benchmarks/eval_vs_lm_eval.py --ckpt /work/pretrained/small-bpe --tasks sst2,piqa,hellaswag \
        --shots 0 1 --limit 300

For each K, both harnesses score the same examples: gptkit's packed prefix-sharing scorer (each distinct context
computed once, the output layer only where a continuation token is predicted), and lm-eval 0.4.x's own request
building, sampling and metrics over the bridge's plain scorer (one full forward per context + continuation,
like its HF model). The tasks go to lm-eval as local YAML + JSONL (`gptkit eval --export-lm-eval`), offline.
Both run in this process on one thread, after imports and model loading, so the times compare the evaluation
itself; import and start-up costs are printed separately. Prompts that overflow the context are left-truncated
in both (gptkit's `--overflow truncate`), so the two see identical tokens.

Expected: identical acc/acc_norm on every task and K; log-likelihoods within float32 noise; gptkit >= 2x faster.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default="/work/pretrained/small-bpe")
    ap.add_argument("--task", "--tasks", default="sst2,piqa,hellaswag", help="comma list, as gptkit eval --task")
    ap.add_argument("--shots", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=None, help="write the measurements as JSON here")
    args = ap.parse_args()

    tmp_root = tempfile.TemporaryDirectory(prefix="gptkit-lm-eval-")
    tmp = Path(tmp_root.name)
    # lm-eval reads the exported JSONL through `datasets`, which keeps Arrow copies: keep them with the tasks
    os.environ.setdefault("HF_DATASETS_CACHE", str(tmp / "hf-datasets"))
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    from gptkit import GPT
    from gptkit.evaluate.runner import evaluate

    t_gptkit_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    import lm_eval
    from lm_eval.tasks import TaskManager

    from gptkit.evaluate.lm_eval_adapter import GptkitLM, export_lm_eval_tasks

    t_lm_eval_import = time.perf_counter() - t0

    model = GPT.from_pretrained(args.ckpt)
    tasks = args.task.split(",")
    export_lm_eval_tasks(tasks, tmp, data_dir=args.data_dir, limit=args.limit)
    t0 = time.perf_counter()
    tm = TaskManager(include_path=str(tmp), include_defaults=False)
    t_index = time.perf_counter() - t0
    bridge = GptkitLM(model=model, batch_size=args.batch_size)

    rows = []
    for k in args.shots:
        t0 = time.perf_counter()
        ours = evaluate(model, tasks, [k], data_dir=args.data_dir, limit=args.limit, batch_size=args.batch_size,
                        overflow="truncate", log=lambda m: None)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        theirs = lm_eval.simple_evaluate(model=bridge, tasks=[f"gptkit_{t}" for t in tasks], num_fewshot=k,
                                         limit=args.limit, task_manager=tm, bootstrap_iters=0, verbosity="ERROR")
        t_theirs = time.perf_counter() - t0
        for t in tasks:
            a, b = ours.summary["results"][t], theirs["results"][f"gptkit_{t}"]
            rows.append({"task": t, "shots": k, "n": a["n"],
                         "acc_gptkit": a["acc"], "acc_lm_eval": b["acc,none"],
                         "acc_norm_gptkit": a.get("acc_norm"), "acc_norm_lm_eval": b.get("acc_norm,none"),
                         "gptkit_task_s": ours.summary["timing_s"][t]})
        rows.append({"task": "ALL", "shots": k, "gptkit_s": round(t_ours, 2), "lm_eval_s": round(t_theirs, 2),
                     "speedup": round(t_theirs / t_ours, 2)})
        print(f"K={k}: gptkit {t_ours:.1f} s, lm-eval {t_theirs:.1f} s, gptkit {t_theirs / t_ours:.2f}x faster",
              file=sys.stderr)

    print(f"\nmodel {args.ckpt}: {model.num_params:,} parameters, context {model.config.block_size}; "
          f"limit {args.limit}, batch {args.batch_size}, {args.threads} thread(s)")
    print(f"imports: gptkit {t_gptkit_import:.1f} s, lm-eval + bridge {t_lm_eval_import:.1f} s; "
          f"lm-eval task index {t_index:.2f} s\n")
    print("| task | K | n | acc gptkit | acc lm-eval | acc_norm gptkit | acc_norm lm-eval | same |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if r["task"] == "ALL":
            continue
        same = r["acc_gptkit"] == r["acc_lm_eval"] and r["acc_norm_gptkit"] == r["acc_norm_lm_eval"]
        print(f"| {r['task']} | {r['shots']} | {r['n']} | {r['acc_gptkit']:.4f} | {r['acc_lm_eval']:.4f} | "
              f"{r['acc_norm_gptkit']:.4f} | {r['acc_norm_lm_eval']:.4f} | {'yes' if same else 'NO'} |")
    print("\n| K | gptkit eval (s) | lm-eval via bridge (s) | ratio |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        if r["task"] == "ALL":
            print(f"| {r['shots']} | {r['gptkit_s']:.1f} | {r['lm_eval_s']:.1f} | {r['speedup']:.2f}x |")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    tmp_root.cleanup()
    return 0 if all(r["acc_gptkit"] == r["acc_lm_eval"] for r in rows if r["task"] != "ALL") else 1


if __name__ == "__main__":
    sys.exit(main())
