"""`gptkit eval`: zero-, one- and few-shot evaluation from the command line (a shell over evaluate.runner)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..evaluate.report import PLOT_SUFFIXES, markdown_table, plot_accuracy_vs_shots
from ..evaluate.tasks import BUILTIN_TASKS, EvalError
from ..io import atomic_write_text
from ..options import from_args
from ..options.evaluate import EvalOptions
from . import add_command


def add_eval(sub: argparse._SubParsersAction) -> None:
    add_command(
        sub, "eval", EvalOptions, cmd_eval,
        help="zero-, one- and few-shot evaluation (LAMBADA, HellaSwag, PIQA, Story Cloze, SST-2, RTE, WikiText-2, "
             "your own JSONL+YAML tasks)",
        description="Evaluate a checkpoint in context, without gradient updates (GPT-2 §3, GPT-3 §2). Built-in "
                    f"tasks: {', '.join(BUILTIN_TASKS)}; or give a task YAML file (docs/evaluation.md).")


def _task_list(values: list[list[str]] | None) -> list[str]:
    names = [n for group in values or [] for v in group for n in v.split(",") if n]
    if not names:
        raise EvalError(f"give --task NAME (built-in: {', '.join(BUILTIN_TASKS)}; or a task YAML file)")
    return names


def task_data_files(tasks: list[str], data_dir: str | None) -> list[Path]:
    """The data files the tasks will read (outputs must not overwrite them). A built-in task's are under the data
    folder; where that folder cannot be found, evaluating will say so (none of its files can be overwritten)."""
    from ..evaluate.tasks import get_task, resolve_data_dir

    files: list[Path] = []
    for name in tasks:
        task = get_task(name)
        if name in BUILTIN_TASKS:
            try:
                root = resolve_data_dir(data_dir)
            except EvalError:
                continue
            files.extend(root / f for f in task.files)
        else:
            files.extend(Path(f) for f in task.files)
    return files


def cmd_eval(args: argparse.Namespace) -> int:
    args = from_args(EvalOptions, args)
    tasks = _task_list(args.task)
    if args.export_lm_eval:
        from ..evaluate.lm_eval_tasks import export_lm_eval_tasks

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

    inputs = [t for t in tasks if Path(t).is_file()] + [args.ckpt] + task_data_files(tasks, args.data_dir)
    outputs = {"--out": out, "--out (its .md table)": out.with_suffix(".md") if out is not None else None,
               "--write-samples": samples_path, "--plot": Path(args.plot) if args.plot else None}
    for flag, p in outputs.items():
        check_output_file(p, flag, inputs, EvalError)
    check_distinct_outputs(outputs, EvalError)
    if args.plot and Path(args.plot).suffix.lower() not in PLOT_SUFFIXES:
        raise EvalError(f"--plot {args.plot}: give a file name ending {', '.join(PLOT_SUFFIXES)} (the plot is "
                        f"drawn in the format its name says)")

    from ..checkpoint import load_model
    from ..evaluate.runner import evaluate
    from ..runtime import pick_device, set_threads

    device = pick_device(args.device)
    set_threads(args.threads)
    model = load_model(args.ckpt, map_location=device, tokenizer_dir=args.tokenizer_dir)
    report = evaluate(model, tasks, args.shots, data_dir=args.data_dir, limit=args.limit,
                      seed=args.seed, batch_size=args.batch_size, description=args.description,
                      unconditional=args.unconditional, overflow=args.overflow, stride=args.stride,
                      progress=not args.quiet, keep_samples=samples_path is not None)
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
