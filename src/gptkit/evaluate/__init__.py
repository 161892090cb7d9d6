"""Zero-, one- and few-shot evaluation (GPT-2 §3, GPT-3 §2-3) and the lm-eval bridge.

    from gptkit import GPT
    from gptkit.evaluate import evaluate
    report = evaluate(GPT.from_pretrained("runs/small"), ["lambada", "sst2"], shots=[0, 1, 8], limit=500)
    report.summary["results"]   # {"lambada@0": {"acc": ..., "perplexity": ...}, "sst2@0": {"acc": ...}, ...}

Modules: ``tasks`` (registry and readers of the built-in tasks), ``yaml_task`` (your own JSONL + YAML tasks),
``icl`` (few-shot prompts, batched prefix-sharing scoring), ``perplexity`` (sliding windows), ``runner``
(``evaluate``), ``lm_eval_tasks`` (tasks as lm-eval YAML + JSONL), ``lm_eval_adapter`` (the ``gptkit`` model
for lm-eval; imports lm-eval), ``report`` (the results table and plot; ``gptkit eval`` is gptkit.commands.evaluate).
Nothing heavy is imported until used.
"""

from __future__ import annotations

from typing import Any

from .tasks import BUILTIN_TASKS, Doc, EvalError, Task, get_task

__all__ = ["BUILTIN_TASKS", "Doc", "EvalError", "Task", "get_task", "evaluate", "score_requests"]


def __getattr__(name: str) -> Any:
    if name == "evaluate":
        from .runner import evaluate

        return evaluate
    if name == "score_requests":
        from .icl import score_requests

        return score_requests
    raise AttributeError(f"module 'gptkit.evaluate' has no attribute {name!r}")
