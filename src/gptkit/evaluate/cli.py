"""`gptkit eval`: zero-, one- and few-shot evaluation from the command line (a shell over runner.evaluate)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from .tasks import BUILTIN_TASKS, EvalError

ACCURACY_METRICS = ("acc", "acc_norm", "acc_per_token", "acc_uncond")
SHOWN = {"choice": ("acc", "acc_norm", "acc_per_token", "acc_uncond"), "cloze": ("acc", "perplexity"),
         "perplexity": ("word_perplexity", "token_perplexity", "byte_perplexity", "bits_per_byte")}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


def markdown_table(summary: dict[str, Any]) -> str:
    """The results as a markdown table: one row per task, K and metric."""
    lines = ["| task | K | n | metric | value | stderr |", "|---|---:|---:|---|---:|---:|"]
    for key, metrics in summary["results"].items():
        task = key.split("@")[0]
        k = summary["n-shot"][key]
        used = metrics.get("shots_used_mean", k)
        if used < k:  # demonstrations dropped to fit the context: say how many were used on average
            k = f"{k} ({used:.2f} fit)"
        n = metrics.get("n", metrics.get("documents", ""))
        shown = [m for kind in SHOWN.values() for m in kind if m in metrics]
        for m in dict.fromkeys(shown):
            lines.append(f"| {task} | {k} | {n} | {m} | {_fmt(metrics[m])} | {_fmt(metrics.get(m + '_stderr', ''))} |")
    return "\n".join(lines)


def plot_accuracy_vs_shots(summary: dict[str, Any], path: Path) -> None:
    """Accuracy against K, one line per task (GPT-3 Fig. 1.2 in miniature)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float]]] = {}
    for key, metrics in summary["results"].items():
        if "acc" in metrics:
            series.setdefault(key.split("@")[0], []).append((summary["n-shot"][key], metrics["acc"]))
    fig, ax = plt.subplots(figsize=(6, 4))
    for task, pts in series.items():
        pts.sort()
        ax.plot([k for k, _ in pts], [100 * a for _, a in pts], marker="o", label=task)
    ax.set_xlabel("demonstrations in the context (K)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("In-context learning: accuracy vs K")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    from ..io import atomic_path

    try:
        with atomic_path(path, ".tmp.png") as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)


def _task_list(values: list[list[str]] | None) -> list[str]:
    names = [n for group in values or [] for v in group for n in v.split(",") if n]
    if not names:
        raise EvalError(f"give --task NAME (built-in: {', '.join(BUILTIN_TASKS)}; or a task YAML file)")
    return names


def cmd_eval(args: argparse.Namespace) -> int:
    from ..io import atomic_write_text

    tasks = _task_list(args.task)
    if args.export_lm_eval:
        from .lm_eval_tasks import export_lm_eval_tasks

        written = export_lm_eval_tasks(tasks, args.export_lm_eval, data_dir=args.data_dir, limit=args.limit,
                                       description=args.description)
        for name, path in written.items():
            print(f"wrote lm-eval task {name}: {path}")
        # gptkit's start-up hook (_gptkit_lm_eval) registers the model with lm-eval's own command
        print(f"run: lm_eval --model gptkit --model_args checkpoint=CKPT "
              f"--include_path {args.export_lm_eval} --tasks {','.join(written)} --num_fewshot K")
        print("(without gptkit installed in site-packages: python -m gptkit.evaluate.lm_eval_adapter, same "
              "arguments)")
        return 0
    if not args.ckpt:
        raise EvalError("--ckpt is required (a checkpoint, a training run or a Hugging Face directory)")
    out = Path(args.out) if args.out else None
    samples_path = Path(args.write_samples) if args.write_samples else None
    # every output checked before the model runs: a directory, a missing or read-only folder, or an input named
    # as an output would otherwise fail (or destroy the input) only after the whole evaluation
    from ..data.outputs import check_distinct_outputs, check_output_file

    inputs = [t for t in tasks if Path(t).is_file()] + [args.ckpt]
    outputs = {"--out": out, "--out (its .md table)": out.with_suffix(".md") if out is not None else None,
               "--write-samples": samples_path, "--plot": Path(args.plot) if args.plot else None}
    for flag, p in outputs.items():
        check_output_file(p, flag, inputs, EvalError)
    check_distinct_outputs(outputs, EvalError)

    import torch

    from ..checkpoint import load_model
    from .runner import evaluate

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(args.ckpt, map_location=device)
    tokenizer = None
    if args.tokenizer:
        from ..tokenizer import Tokenizer

        tokenizer = Tokenizer.from_pretrained(args.tokenizer)
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
        raise EvalError(f"the tokenizer has {tokenizer.vocab_size} ids but the model only {model.config.vocab_size}")
    report = evaluate(model, tasks, args.shots, tokenizer=tokenizer, data_dir=args.data_dir, limit=args.limit,
                      seed=args.seed, batch_size=args.batch_size, description=args.description,
                      unconditional=args.unconditional, overflow=args.overflow, stride=args.stride,
                      progress=not args.no_progress, keep_samples=samples_path is not None)
    summary = report.summary
    summary["config"]["checkpoint"] = str(args.ckpt)
    summary["config"]["data_dir"] = str(args.data_dir) if args.data_dir else None
    table = markdown_table(summary)
    print(table)
    # Written only now, after every task ran: a failed evaluation leaves no partial result files.
    if out is not None:
        atomic_write_text(out, json.dumps(summary, indent=2) + "\n")
        atomic_write_text(out.with_suffix(".md"), table + "\n")
        print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    if samples_path is not None:
        atomic_write_text(samples_path, "".join(json.dumps(s) + "\n" for s in report.samples))
        print(f"wrote {len(report.samples)} samples to {samples_path}", file=sys.stderr)
    plot = Path(args.plot) if args.plot else (out.with_suffix(".png") if out is not None else None)
    if len(set(args.shots)) > 1 and plot is not None:
        plot_accuracy_vs_shots(summary, plot)
        print(f"wrote {plot}", file=sys.stderr)
    return 0


def add_eval(sub: argparse._SubParsersAction) -> None:
    """Register `gptkit eval`."""
    p = sub.add_parser(
        "eval", help="zero-, one- and few-shot evaluation (LAMBADA, HellaSwag, PIQA, Story Cloze, SST-2, RTE, "
        "WikiText-2, your own JSONL+YAML tasks)",
        description="Evaluate a checkpoint in context, without gradient updates (GPT-2 §3, GPT-3 §2). Built-in "
        f"tasks: {', '.join(BUILTIN_TASKS)}; or give a task YAML file (docs/evaluation.md).")
    p.add_argument("--ckpt", help="gptkit checkpoint, training run (its latest checkpoint) or Hugging Face directory")
    p.add_argument("--task", action="append", nargs="+", metavar="NAME",
                   help="task name(s) or YAML file(s); repeat or separate by commas")
    p.add_argument("--shots", type=int, nargs="+", default=[0], metavar="K",
                   help="demonstrations per prompt; several values evaluate each (default: 0)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N examples of each task")
    p.add_argument("--seed", type=int, default=1234, help="seed of the demonstration draw (lm-eval's default 1234)")
    p.add_argument("--batch-size", type=int, default=32, help="packed rows per forward pass (default: 32)")
    p.add_argument("--out", help="write the results as JSON here (and a .md table, and a .png when several K)")
    p.add_argument("--write-samples", metavar="FILE.jsonl", help="write one JSON line per scored example")
    p.add_argument("--plot", metavar="FILE.png", help="where to draw accuracy vs K (default: beside --out)")
    p.add_argument("--data-dir", help="folder of the data sets (default: $GPTKIT_DATA, else ../shared/data)")
    p.add_argument("--description", help="task description put before the demonstrations (overrides the task's)")
    p.add_argument("--unconditional", action="store_true",
                   help="also report acc_uncond: GPT-3's normalisation by P(completion | 'Answer:')")
    p.add_argument("--overflow", choices=("drop-demos", "truncate"), default="drop-demos",
                   help="a prompt longer than the context: drop demonstrations until it fits (GPT-3), or keep "
                   "them and left-truncate (lm-eval). Either way a prompt still too long is left-truncated")
    p.add_argument("--stride", type=int, default=None, help="perplexity window step in tokens (default: context/2)")
    p.add_argument("--tokenizer", help="tokenizer directory, for a checkpoint that has none")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--export-lm-eval", metavar="DIR",
                   help="instead of evaluating, write the tasks as lm-eval task YAML + JSONL files into DIR")
    p.set_defaults(func=cmd_eval)
