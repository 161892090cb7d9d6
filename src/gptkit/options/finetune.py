"""Options of `gptkit finetune` and `gptkit predict`, and the rule that sizes fine-tuning to the model and data.

GPT-1's recipe (§4.1: lr 6.25e-5, 3 epochs, warmup 0.2%) is for a 117 M-parameter model of width 768 on tens of
thousands of examples. `recipe` scales it: the learning rate with the model's width, the epochs with the data, the
warmup with the run's length; each explicit flag wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from ..finetune.tasks import TASKS, TaskError, check_format
from . import common
from .generator import flag_name, opt


FT_LR_WIDTH = 0.048
"""lr = FT_LR_WIDTH / width: GPT-1's 6.25e-5 at width 768 (§4.1), a tenth of the pre-training rule 0.5/width that
`gptkit scale` uses (GPT-3 Table 2.1), so a narrow model, whose pre-training lr was higher, moves as far."""
FT_EPOCHS = 3.0
"""GPT-1 §4.1: 3 epochs were enough for most tasks."""
FT_MIN_STEPS = 500
"""A small training set gets more epochs, up to this many optimizer steps (RTE's 2,490 examples at batch 32 make
78 steps an epoch: 3 epochs are 234 steps, too few for a head and a model to settle)."""
FT_MAX_EPOCHS = 20
FT_WARMUP = 0.06
"""Warmup over 6% of the steps (RoBERTa's GLUE recipe, Liu et al. 2019, App. C); GPT-1's 0.2% is a dozen steps of a
6,000-step run but less than one step of a 200-step run."""

FT_DTYPES = ("auto", "float32", "bfloat16")
"""Autocast dtypes of fine-tuning. No float16: without loss scaling its small gradients underflow."""


def check_dtype(dtype: str) -> None:
    """`--dtype` of finetune and predict: one of FT_DTYPES, else a one-line TaskError."""
    if dtype not in FT_DTYPES:
        raise TaskError(f"--dtype must be {', '.join(FT_DTYPES[:-1])} or {FT_DTYPES[-1]}, got {dtype!r}")


def recipe(cfg: FinetuneConfig, width: int, train_examples: int) -> tuple[FinetuneConfig, list[str]]:
    """The options with the unset lr, epochs and warmup filled in from the model's width and the training set's
    size; and one line per value chosen, saying why."""
    chosen, why = {}, []
    if cfg.lr is None:
        chosen["lr"] = FT_LR_WIDTH / width
        why.append(f"lr {chosen['lr']:.3g} ({FT_LR_WIDTH:g} / width {width})")
    if cfg.epochs is None:
        steps_per_epoch = max(1, math.ceil(train_examples / cfg.batch_size))
        chosen["epochs"] = float(min(FT_MAX_EPOCHS, max(FT_EPOCHS, math.ceil(FT_MIN_STEPS / steps_per_epoch))))
        why.append(f"{chosen['epochs']:g} epochs ({train_examples:,} examples, {steps_per_epoch} steps an epoch; at "
                   f"least {FT_EPOCHS:g} and {FT_MIN_STEPS} steps, at most {FT_MAX_EPOCHS})")
    if cfg.warmup is None:
        chosen["warmup"] = FT_WARMUP
        why.append(f"warmup {FT_WARMUP:.0%} of the steps")
    return replace(cfg, **chosen), why


@dataclass
class FinetuneConfig:
    """Options of `gptkit finetune`; each field is a `--flag`. lr, epochs and warmup left unset are sized by
    `recipe` once the model and the data are known; the others default to GPT-1's (§4.1)."""

    ckpt: str | None = common.ckpt("the pre-trained model: a gptkit checkpoint, a training run or a Hugging Face "
                                   "GPT directory")
    task: str | None = opt(None, f"GPT-1's input transform: {' | '.join(TASKS)} (default: the one --format holds)",
                           flag="--task-type", old={"--task": None})
    train: str | None = opt(None, "training file", required=True, metavar="FILE")
    valid: str | None = opt(None, "validation file, evaluated after every epoch (or --valid-from-train)",
                            metavar="FILE")
    test: str | None = opt(None, "test file (evaluated at the end; labels optional)", metavar="FILE")
    out: str | None = common.out_dir("output directory for the fine-tuned model, metrics and predictions")
    format: str | None = opt(None, "sst2, superglue, mrpc, stsb, storycloze, jsonl, csv, tsv (default: from the "
                                  "file extension)")
    regression: bool = opt(False, "predict a score (mean squared error) instead of classes, e.g. STS-B's 0-5")
    text_field: str | None = opt(None, "field(s) of the text / premise / sentence A / context (comma-separated "
                                      "fields are joined with a space)", flag="--text-fields",
                                 old={"--text-field": None}, metavar="NAMES")
    pair_field: str | None = opt(None, "field of the hypothesis / sentence B")
    choice_fields: str | None = opt(None, "comma-separated fields of the answers, or one field with a JSON list")
    label_field: str | None = opt(None, "field of the label (class, score, or answer index)")
    header: bool = opt(True, "csv/tsv: the first row names the columns (else name columns by number, 0-based)")
    index_base: int | None = opt(None, "multiple choice: the label of the first answer (default 0; storycloze 1)")
    positive_label: str | None = opt(None, "the class F1 is computed for (two-class tasks; default: the first of "
                                           "1, true, yes, entailment, positive that is a label, else the second)")
    lm_coef: float = opt(0.5, "λ, weight of the auxiliary language-modelling loss L1 (0 turns it off)")
    lr: float | None = opt(None, f"peak learning rate (default: {FT_LR_WIDTH:g} / the model's width: GPT-1's "
                                 "6.25e-5 at width 768, 2.5e-4 at 192)")
    batch_size: int = opt(32, "examples per step")
    epochs: float | None = opt(None, f"passes over the training set; a fraction stops part-way through the last "
                                     f"(default: {FT_EPOCHS:g}, or as many as make {FT_MIN_STEPS} steps, at most "
                                     f"{FT_MAX_EPOCHS})")
    warmup: float | None = opt(None, f"linear warmup over this share of the steps, then linear decay to 0 "
                                     f"(default: {FT_WARMUP:g})", flag="--warmup-fraction", old={"--warmup": None},
                                metavar="F")
    weight_decay: float = opt(0.01, "AdamW weight decay on weights (not biases or gains)")
    grad_clip: float = opt(1.0, "clip the gradient norm to this (0: off)")
    head_dropout: float = opt(0.1, "dropout before the task head W_y")
    dropout: float | None = opt(None, "dropout in the Transformer (default: the checkpoint's)")
    max_len: int | None = opt(None, "longest input sequence in tokens, special tokens included (default: the "
                                    "model's context); longer inputs are truncated")
    max_train_examples: int | None = common.limit("use a random subset of this many training examples",
                                                  flag="--train-limit", old={"--max-train-examples": None})
    max_eval_examples: int | None = common.limit("evaluate on a random subset of this many valid/test examples",
                                                 flag="--eval-limit", old={"--max-eval-examples": None})
    valid_from_train: float | None = opt(None, "no --valid: hold out this share (< 1) or number of training examples")
    from_scratch: bool = opt(False, "same architecture and tokenizer as --ckpt, random initial weights")
    seed: int = common.seed("head init, shuffling, dropout, subsets")
    eval_batch_size: int | None = opt(None, "examples per evaluation batch (default 2 × batch size)")
    threads: int | None = common.guarded_threads()
    device: str = common.device()
    dtype: str = opt("auto", "float32 or bfloat16 autocast (weights stay float32); auto: bfloat16 on GPUs that "
                             "have it, else float32. On CPUs with bf16 units (AMX, AVX512-BF16) bfloat16 is faster "
                             "(docs/benchmarks.md)")
    overwrite: bool = opt(False, "replace --out if it already holds files")
    quiet: bool = common.quiet(old={"--no-quiet": None})

    def validate(self) -> None:
        flag = {f.name: flag_name(f) for f in fields(self)}
        for name in ("ckpt", "train", "out"):
            if not getattr(self, name):
                raise TaskError(f"--{name} is required")
        if not self.valid and self.valid_from_train is None:
            raise TaskError("give --valid FILE, or --valid-from-train SHARE to hold out part of --train")
        if self.valid and self.valid_from_train is not None:
            raise TaskError("give either --valid or --valid-from-train, not both")
        if self.format is not None:
            check_format(self.format)  # before --task-type, which a format that holds one task does not need
        if self.task is not None and self.task not in TASKS:
            raise TaskError(f"unknown --task-type {self.task!r}; choose one of: {', '.join(TASKS)}")
        for name in ("batch_size",):
            if getattr(self, name) <= 0:
                raise TaskError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name, ok, want in (("lr", lambda v: 0 < v <= 1, "in (0, 1]"),  # gptkit train's ranges and words
                               ("weight_decay", lambda v: v >= 0, "finite and >= 0"),
                               ("grad_clip", lambda v: v >= 0, "finite and >= 0 (0: off)")):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and ok(v)):
                raise TaskError(f"{flag[name]} must be {want}, got {v}")
        for name in ("epochs", "lm_coef", "warmup", "head_dropout", "dropout", "valid_from_train"):
            v = getattr(self, name, None)
            if isinstance(v, float) and not math.isfinite(v):  # nan passes every comparison below
                raise TaskError(f"--{name.replace('_', '-')} must be a finite number, got {v}")
        if self.epochs is not None and not self.epochs > 0:
            raise TaskError(f"--epochs must be positive, got {self.epochs}")
        if not self.lm_coef >= 0:
            raise TaskError(f"--lm-coef must be >= 0, got {self.lm_coef}")
        if self.warmup is not None and not 0 <= self.warmup < 1:
            raise TaskError(f"--warmup is a share of the steps in [0, 1), got {self.warmup}")
        for name in ("head_dropout", "dropout"):
            v = getattr(self, name)
            if v is not None and not 0 <= v < 1:
                raise TaskError(f"--{name.replace('_', '-')} must be in [0, 1), got {v}")
        for name in ("max_len", "max_train_examples", "max_eval_examples", "eval_batch_size", "threads"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise TaskError(f"{flag[name]} must be positive, got {v}")
        if self.valid_from_train is not None and self.valid_from_train <= 0:
            raise TaskError("--valid-from-train must be positive")
        check_dtype(self.dtype)


@dataclass
class PredictOptions:
    """Options of `gptkit predict`: a fine-tuned model run over a data file."""

    ckpt: str = common.ckpt("the fine-tuned model: a directory written by `gptkit finetune --out`")
    input: str = opt(None, "data file", required=True, metavar="FILE")
    out: str = common.out_file("where the predictions go, one JSON line per example")
    format: str | None = opt(None, "file format (default: the one the model was fine-tuned on)")
    text_fields: str | None = opt(None, "field(s) of the first text (comma-separated)", metavar="NAMES",
                                  old={"--text-field": None})
    pair_field: str | None = opt(None, "field of the second text", metavar="NAME")
    choice_fields: str | None = opt(None, "comma-separated fields of the answers", metavar="NAMES")
    label_field: str | None = opt(None, "field of the label, when the file has one", metavar="NAME")
    header: bool | None = opt(None, "csv/tsv: the first row names the columns (default: as in fine-tuning)")
    batch_size: int = opt(64, "examples per batch")
    limit: int | None = common.limit("only the first N examples", old={"--max-examples": None})
    device: str = common.device()
    threads: int | None = common.threads()
    dtype: str = opt("auto", "float32 or bfloat16 autocast; auto: the dtype the model was fine-tuned in (its "
                             "task.json), so the predictions are the run's own")
