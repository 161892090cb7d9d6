"""GPT-1 supervised fine-tuning (Radford et al. 2018 §3.2-3.3).

Keep the pre-trained model, add one linear head W_y on the final hidden state of the *extract* token, and train
on labelled data with L3 = L2 (task) + λ·L1 (language modelling on the same inputs). Structured inputs become
token sequences with added start / delimiter / extract tokens (the four input transforms of Figure 1):

    classification    [s] text [e]                                 → W_y → softmax over the classes
    entailment        [s] premise [$] hypothesis [e]               → W_y → softmax over the labels
    similarity        [s] A [$] B [e]  and  [s] B [$] A [e]        → extract states added → W_y
    multiple-choice   [s] context [$] answer_k [e]  for each k     → W_y → one score each → softmax

Modules: `tasks` (file readers, the transforms, the truncation policy; no torch), `heads` (the heads over the
headless backbone), `metrics`, `loop` (the training loop, evaluation, prediction, the fine-tuned checkpoint);
the command shells are in gptkit.commands.finetune.
"""

from __future__ import annotations

from .tasks import TASKS, Example, TaskError, TaskSpec, read_examples


def __getattr__(name: str):
    # torch-backed names load on first use, so `import gptkit.finetune` stays light
    if name in ("FinetuneConfig", "finetune", "load_finetuned", "predict", "evaluate"):
        from . import loop

        return getattr(loop, name)
    if name in ("FinetuneModel", "build_head"):
        from . import heads

        return getattr(heads, name)
    raise AttributeError(f"module 'gptkit.finetune' has no attribute {name!r}")


__all__ = [
    "TASKS",
    "Example",
    "FinetuneConfig",
    "FinetuneModel",
    "TaskError",
    "TaskSpec",
    "build_head",
    "evaluate",
    "finetune",
    "load_finetuned",
    "predict",
    "read_examples",
]
