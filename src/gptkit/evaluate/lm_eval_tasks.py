"""gptkit tasks as lm-eval tasks: YAML specs over local JSONL files, so lm-eval runs offline on exactly the
examples, prompts and demonstrations gptkit scores. No lm-eval import is needed to write them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import yaml

from .tasks import BUILTIN_TASKS, Task, get_task, load_splits, resolve_data_dir


def export_lm_eval_tasks(task_names: Sequence[str], out_dir: str | Path, *, data_dir: str | Path | None = None,
                         limit: int | None = None, description: str | None = None) -> dict[str, Path]:
    """Write each task as ``DIR/gptkit_<task>.yaml`` + JSONL files that lm-eval reads offline.

    The JSONL rows are gptkit's Docs (``query``, ``choices``, ``gold``), so lm-eval sees the same prompts; the
    YAML keeps the same delimiters, description and splits (demonstrations from the same split exclude the
    scored example in both harnesses). ``limit`` writes only the first N evaluated examples of a task whose
    demonstrations come from another split (pass the same ``--limit`` to lm-eval either way).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [get_task(n) for n in task_names]
    builtin = any(BUILTIN_TASKS.get(t.name) is t for t in tasks)
    root = resolve_data_dir(data_dir) if builtin or data_dir is not None else Path(".")
    written = {}
    for task in tasks:
        docs, pool = load_splits(task, root)
        same = pool is None or task.fewshot_split == task.eval_split
        if limit is not None and not same:  # a split that is also the demonstration pool is written whole
            docs = docs[:limit]
        name = f"gptkit_{task.name}"
        files = {"test": out / f"{name}.test.jsonl"}
        _write_jsonl(files["test"], docs, task)
        if not same:
            files["train"] = out / f"{name}.fewshot.jsonl"
            _write_jsonl(files["train"], pool, task)
        desc = task.description if description is None else description
        spec: dict[str, Any] = {
            "task": name,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {split: str(p.resolve()) for split, p in files.items()}},
            "test_split": "test",
            "fewshot_split": "test" if same else "train",
            "target_delimiter": task.target_delimiter,
            "fewshot_delimiter": task.fewshot_delimiter,
        }
        if desc:
            spec["description"] = desc + task.fewshot_delimiter
        if task.kind == "choice":
            spec.update(output_type="multiple_choice", doc_to_text="query", doc_to_choice="choices",
                        doc_to_target="gold", metric_list=[_metric("acc"), _metric("acc_norm")])
        elif task.kind == "cloze":
            # lm-eval scores a loglikelihood target as written (no delimiter): the JSONL target carries it
            spec.update(output_type="loglikelihood", doc_to_text="query", doc_to_target="target", target_delimiter="",
                        metric_list=[_metric("perplexity", "perplexity", False), _metric("acc")])
        else:
            spec.update(output_type="loglikelihood_rolling", doc_to_text="", doc_to_target="query",
                        metric_list=[_metric(m, m, False) for m in ("word_perplexity", "byte_perplexity",
                                                                     "bits_per_byte")])
        path = out / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8")
        written[name] = path
    return written


def _metric(name: str, aggregation: str = "mean", higher: bool = True) -> dict[str, Any]:
    return {"metric": name, "aggregation": aggregation, "higher_is_better": higher}


def _write_jsonl(path: Path, docs: Sequence, task: Task) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            row: dict[str, Any] = {"query": d.query}
            if task.kind == "choice":
                row.update(choices=list(d.choices), gold=d.gold)
            elif task.kind == "cloze":
                row["target"] = task.target_delimiter + d.choices[0]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
