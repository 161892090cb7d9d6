"""GPT-1 supervised fine-tuning: the L3 = L2 + λ·L1 loop, evaluation, prediction, the fine-tuned checkpoint.

GPT-1 §3.2: given a labelled dataset C of token sequences x¹..xᵐ with label y, the pre-trained model's final
extract state h_l^m goes through the added linear layer W_y; L2 = Σ log P(y | x¹..xᵐ). Including language
modelling as an auxiliary objective "improves generalization of the supervised model, and accelerates
convergence": L3(C) = L2(C) + λ·L1(C), λ = 0.5. §4.1 gives the recipe this module starts from: batch 32, linear
warmup then linear decay to 0, dropout 0.1 on the classifier, weight decay 0.01 on the weights (not biases or
gains); its lr 6.25e-5, 3 epochs and 0.2% warmup are for a model of width 768 and are scaled to the model and the
data by gptkit.options.finetune.recipe unless given.

A fine-tuned model directory (`--out`) is a gptkit checkpoint (the LM with its grown vocabulary, loadable by
`GPT.from_pretrained`) plus the head and the task:

    config.json, model.safetensors, tokenizer/   backbone + tied LM head, tokenizer with the added tokens
    head.safetensors                             W_y
    task.json                                    the TaskSpec: task, labels, special tokens, max_len, format
    metrics.json                                 {"valid": {...}, "test": {...}}
    log.jsonl                                    one line per epoch, then a summary line (wall time)
    finetune_config.json                         the resolved options
    predictions/{valid,test}.jsonl               one JSON line per example

Everything is written into a hidden sibling directory and renamed into place at the end, so `--out` never holds
a half-written result (a crash, Ctrl-C or bad input leaves it as it was).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..checkpoint import (
    build_model,
    load_model,
    model_state_dict,
    read_state_dict,
    resolve_checkpoint,
    write_model_files,
)
from ..compiled import compile_events, shapes_vary
from ..data.outputs import check_output_file, positive_int
from ..errors import CheckpointError
from ..io import atomic_write_text, new_tmp_dir, parse_json, publish_dir
from ..model import GPT
from ..optim import adamw, optimizer_step, set_lr, warmup_linear
from ..options.finetune import FT_DTYPES, FinetuneConfig, recipe
from ..runlock import LOCK_NAME, run_lock
from ..runtime import DeviceError, Progress, autocast, keep_freed_memory, pick_device, pick_dtype, set_threads
from ..threadguard import ThreadGuard
from . import metrics as M
from .heads import FinetuneModel, build_head
from .tasks import (
    FORMAT_TASKS,
    SPECIAL_TOKENS,
    TASKS,
    Columns,
    Encoded,
    Example,
    TaskError,
    TaskSpec,
    build_spec,
    check_format,
    default_columns,
    encode_examples,
    infer_format,
    min_len,
    read_examples,
    split_holdout,
    subsample,
)

if TYPE_CHECKING:
    import torch

    from ..model import GPT
    from ..tokenizer import Tokenizer
    from .heads import FinetuneModel

HEAD_WEIGHTS = "head.safetensors"
TASK_JSON = "task.json"
POSITIONAL_FORMATS = ("sst2", "mrpc", "stsb")


# ------------------------------------------------------------------------------------------- data setup
def resolve_format_task(fmt: str | None, task: str | None, path: str, regression: bool) -> tuple[str, str, bool]:
    """The file format, the task and whether it is a regression, from the flags and the format's defaults."""
    fmt = fmt or infer_format(path)
    check_format(fmt)
    if fmt in FORMAT_TASKS:
        if task is None:
            task = FORMAT_TASKS[fmt][0]
        elif task not in FORMAT_TASKS[fmt]:
            raise TaskError(f"--format {fmt} holds {' or '.join(FORMAT_TASKS[fmt])} data, not --task-type {task}")
    elif task is None:
        raise TaskError(f"--task-type is required with --format {fmt} ({', '.join(TASKS)})")
    if fmt == "stsb":
        regression = True  # STS-B's labels are similarity scores 0..5
    return fmt, task, regression


def columns_from_flags(fmt: str, task: str, text_field: str | None = None, pair_field: str | None = None,
                       choice_fields: str | None = None, label_field: str | None = None, header: bool = True,
                       index_base: int | None = None) -> Columns:
    """The format's default column mapping with the user's --*-field flags applied."""
    cols = default_columns(fmt, task)
    given = [f for f, v in (("--text-fields", text_field), ("--pair-field", pair_field),
                            ("--choice-fields", choice_fields), ("--label-field", label_field)) if v]
    if fmt in POSITIONAL_FORMATS and given:
        raise TaskError(f"{', '.join(given)} cannot be used with --format {fmt}, whose columns are fixed; use "
                        f"--format jsonl/csv/tsv to map your own columns")

    def split(v: str) -> tuple[str, ...]:
        parts = tuple(p.strip() for p in v.split(",") if p.strip())
        if not parts:
            raise TaskError(f"empty field list {v!r}")
        return parts

    if text_field:
        cols.text = split(text_field)
    if pair_field:
        cols.pair = pair_field.strip()
    if choice_fields:
        cols.choices = split(choice_fields)
    if label_field:
        cols.label = label_field.strip()
    if fmt in ("csv", "tsv"):
        cols.header = header
    if index_base is not None:
        cols.index_base = index_base
    return cols


@dataclass
class Data:
    spec: TaskSpec
    columns: Columns
    train: list[Example]
    splits: dict[str, list[Example]]  # "valid", and "test" when given


def load_data(cfg: FinetuneConfig) -> Data:
    """Read and check every file before any model is loaded (bad input fails fast, with FILE:LINE)."""
    fmt, task, regression = resolve_format_task(cfg.format, cfg.task, cfg.train, cfg.regression)
    if cfg.max_len is not None and cfg.max_len < min_len(task):
        raise TaskError(f"--max-len {cfg.max_len} leaves no room for the texts and special tokens of a {task} task "
                        f"(at least {min_len(task)})")
    cols = columns_from_flags(fmt, task, cfg.text_field, cfg.pair_field, cfg.choice_fields, cfg.label_field,
                              cfg.header, cfg.index_base)

    def read(path: str, need_labels: bool) -> list[Example]:
        return read_examples(path, fmt, task, cols, regression=regression, need_labels=need_labels)

    train = read(cfg.train, True)
    if cfg.valid:
        valid = read(cfg.valid, True)
    else:
        train, valid = split_holdout(train, cfg.valid_from_train, cfg.seed)
    splits = {"valid": valid}
    if cfg.test:
        splits["test"] = read(cfg.test, False)
    spec = build_spec(task, train, regression=regression, fmt=fmt, columns=cols, max_len=cfg.max_len or 0,
                      positive_label=cfg.positive_label)
    for examples in (train, *splits.values()):
        for ex in examples:
            spec.label_index(ex)  # an unknown label in valid/test: one line naming its file and line
    train = subsample(train, cfg.max_train_examples, cfg.seed)
    splits = {k: subsample(v, cfg.max_eval_examples, cfg.seed) for k, v in splits.items()}
    return Data(spec, cols, train, splits)


# ------------------------------------------------------------------------------------------ model setup
def grow_vocab(model: GPT, vocab_size: int, new_ids: list[int], generator: torch.Generator | None = None) -> GPT:
    """A copy of `model` with `vocab_size` embedding rows; the rows of `new_ids` (added tokens) are drawn from
    N(0, init_std) like every other weight at initialisation (GPT-1 §4.1). The tied LM head follows the
    embedding; an untied one grows the same way."""

    cfg = model.config
    new_cfg = dataclasses.replace(cfg, vocab_size=max(vocab_size, cfg.vocab_size))
    sd = model_state_dict(model)
    for name in ("transformer.wte.weight", "lm_head.weight"):
        if name not in sd:
            continue
        old = sd[name]
        grown = old.new_empty(new_cfg.vocab_size, old.size(1))
        grown[: old.size(0)] = old
        fresh = sorted(set(new_ids) | set(range(old.size(0), new_cfg.vocab_size)))
        rows = torch.empty(len(fresh), old.size(1), dtype=torch.float32).normal_(0.0, cfg.init_std,
                                                                                generator=generator)
        grown[fresh] = rows.to(grown.dtype).to(grown.device)
        sd[name] = grown
    return rebuild(model, new_cfg, sd)


def rebuild(model: GPT, config, state_dict: dict[str, torch.Tensor] | None = None) -> GPT:
    """A GPT of `config` holding `state_dict` (default: model's weights), keeping model's tokenizer and device."""

    device = model.transformer.wte.weight.device
    sd = state_dict if state_dict is not None else model_state_dict(model)
    new = build_model(config, sd, "fine-tuning", map_location=device)
    new.tokenizer = model.tokenizer
    return new


def prepare_model(cfg: FinetuneConfig, spec: TaskSpec, device: torch.device) -> tuple[FinetuneModel, Tokenizer]:
    """Load the pre-trained model (or its architecture, randomly initialised), add the task's special tokens to
    its tokenizer and embedding, and put the task head on it. Fills spec.special_ids and spec.max_len."""

    gpt = load_model(cfg.ckpt, map_location=device)
    tok = gpt.tokenizer
    if tok is None:
        raise CheckpointError(f"{cfg.ckpt} has no tokenizer; fine-tuning needs the one the model was trained with")
    g = torch.Generator().manual_seed(cfg.seed)
    if cfg.from_scratch:  # the ablation of GPT-1 Table 5: same architecture, no pre-training
        torch.manual_seed(cfg.seed)
        fresh = GPT(gpt.config).to(device)
        fresh.tokenizer = tok
        gpt = fresh
    if cfg.dropout is not None:
        d = cfg.dropout
        gpt = rebuild(gpt, dataclasses.replace(gpt.config, embd_pdrop=d, attn_pdrop=d, resid_pdrop=d))
    old_vocab = tok.vocab_size
    names = list(SPECIAL_TOKENS.values())
    ids = tok.add_special_tokens(names)
    spec.special_ids = dict(zip(SPECIAL_TOKENS, ids))
    added = [i for i in ids if i >= old_vocab]
    gpt = grow_vocab(gpt, tok.vocab_size, added, generator=g)
    block = gpt.config.block_size
    if cfg.max_len is not None and cfg.max_len > block:
        raise TaskError(f"--max-len {cfg.max_len} is longer than the model's context ({block})")
    spec.max_len = cfg.max_len or block
    torch.manual_seed(cfg.seed)
    head = build_head(spec, gpt.config.n_embd, cfg.head_dropout, gpt.config.init_std).to(device)
    return FinetuneModel(gpt, head, regression=spec.regression), tok


# ------------------------------------------------------------------------------------------ batching
def collate(items: list[Encoded], device: torch.device, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a batch into idx (B, K, T) and lengths (B, K); a missing answer has length 0."""

    K = max(len(e.seqs) for e in items)
    T = max(len(s) for e in items for s in e.seqs)
    idx = torch.full((len(items), K, T), pad_id, dtype=torch.long)
    lengths = torch.zeros((len(items), K), dtype=torch.long)
    for b, e in enumerate(items):
        for k, s in enumerate(e.seqs):
            idx[b, k, : len(s)] = torch.tensor(s, dtype=torch.long)
            lengths[b, k] = len(s)
    return idx.to(device), lengths.to(device)


def _cost(e: Encoded) -> int:
    return max(len(s) for s in e.seqs)


def train_batches(n_items: list[Encoded], batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch of batches: shuffled, then sorted by length within windows of 50 batches so each batch pads
    little (much less compute on CPU), then the batches shuffled again."""
    order = list(range(len(n_items)))
    rng.shuffle(order)
    window = 50 * batch_size
    batches = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w: w + window], key=lambda i: _cost(n_items[i]))
        batches += [chunk[i: i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def task_loss(out: torch.Tensor, target: torch.Tensor, spec: TaskSpec) -> torch.Tensor:
    """L2: cross-entropy over the classes / answers, or mean squared error for a regression."""

    if spec.regression:
        return F.mse_loss(out.float(), target.float())
    return F.cross_entropy(out.float(), target)


# ------------------------------------------------------------------------------------------ evaluation
def run_model(model: FinetuneModel, encoded: list[Encoded], batch_size: int, device: torch.device,
              dtype: torch.dtype = torch.float32) -> list[Any]:
    """Task outputs (logits rows or scores) for every encoded example, in order; batches sorted by length; the
    forward passes under `dtype` autocast (float32: off)."""

    was_training = model.training
    model.eval()
    order = sorted(range(len(encoded)), key=lambda i: _cost(encoded[i]))
    outs: list[Any] = [None] * len(encoded)
    with torch.no_grad(), autocast(device, dtype):
        for s in range(0, len(order), batch_size):
            ids = order[s: s + batch_size]
            idx, lengths = collate([encoded[i] for i in ids], device)
            out, _ = model(idx, lengths, lm_loss=False)
            for i, row in zip(ids, out.float().cpu()):
                outs[i] = row
    model.train(was_training)
    return outs


def score(outs: list[Any], encoded: list[Encoded], spec: TaskSpec) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics (when every example has a label) and one prediction record per example."""

    records: list[dict[str, Any]] = []
    preds: list[Any] = []
    for i, (out, e) in enumerate(zip(outs, encoded)):
        rec: dict[str, Any] = {"index": i}
        if spec.regression:
            preds.append(float(out))
            rec["score"] = float(out)
            if e.target is not None:
                rec["label"] = float(e.target)
        else:
            probs = torch.softmax(out, dim=-1)
            k = int(torch.argmax(out))
            preds.append(k)
            if spec.task == "multiple-choice":
                base = spec.columns.get("index_base", 0)
                rec["prediction"] = k + base
                rec["probabilities"] = [round(float(p), 6) for p in probs]
                if e.target is not None:
                    rec["label"] = int(e.target) + base
            else:
                rec["prediction"] = spec.labels[k]
                rec["probabilities"] = {lab: round(float(p), 6) for lab, p in zip(spec.labels, probs)}
                if e.target is not None:
                    rec["label"] = spec.labels[int(e.target)]
        if e.truncated:
            rec["truncated"] = True
        records.append(rec)
    result: dict[str, Any] = {"n": len(encoded), "truncated": sum(e.truncated for e in encoded)}
    labelled = all(e.target is not None for e in encoded)
    if labelled:
        gold = [e.target for e in encoded]
        if spec.regression:
            result.update(M.regression_metrics(preds, gold))
        else:
            n_classes = len(spec.labels) if spec.labels else 0
            pos = spec.labels.index(spec.positive_label) if spec.positive_label is not None else None
            result.update(M.classification_metrics(preds, gold, n_classes, pos))
    else:
        result["labelled"] = False
    return result, records


def evaluate(model: FinetuneModel, encoded: list[Encoded], spec: TaskSpec, batch_size: int = 64,
             device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics and per-example predictions of a fine-tuned model on encoded examples."""

    return score(run_model(model, encoded, batch_size, torch.device(device), dtype), encoded, spec)


# ------------------------------------------------------------------------------------------ the loop
FINETUNE_CONFIG = "finetune_config.json"
"""The file by which an earlier `gptkit finetune` output is known (the only kind --overwrite replaces)."""


def check_out_dir(out: Path, overwrite: bool, inputs: dict[str, str | None] | None = None) -> None:
    """--out may be new, empty, or (with --overwrite) an earlier fine-tune output; never the directory of an
    input (`inputs`: flag → path, e.g. the --ckpt being fine-tuned or the --train file), which replacing --out
    would delete."""
    if out.exists() and not out.is_dir():
        raise TaskError(f"--out {out} is a file; give a directory")
    where = out.resolve()
    for flag, path in (inputs or {}).items():
        if path and (where == Path(path).resolve() or where in Path(path).resolve().parents):
            raise TaskError(f"--out {out} is or holds {flag} {path}: writing the fine-tuned model there would "
                            f"delete it; choose another directory")
    held = out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir())
    if held and not overwrite:
        raise TaskError(f"--out {out} already holds files; choose a new directory or pass --overwrite")
    if held and not (out / FINETUNE_CONFIG).is_file():
        raise TaskError(f"--out {out} holds files that are not a `gptkit finetune` output (no {FINETUNE_CONFIG}): "
                        f"--overwrite replaces only an earlier fine-tune; choose another directory")


def _fmt_metrics(m: dict[str, Any]) -> str:
    keys = [k for k in ("accuracy", "f1", "macro_f1", "pearson", "spearman", "mse") if k in m]
    return " ".join(f"{k} {m[k]:.4f}" for k in keys) or "(unlabelled)"


@dataclass
class FinetuneRun:
    """Everything the loop needs, set up from the options: the model, the encoded data, the schedule."""

    cfg: FinetuneConfig
    spec: TaskSpec
    model: FinetuneModel
    tok: Tokenizer
    device: torch.device
    train: list[Encoded]
    splits: dict[str, list[Encoded]]
    total: int  # optimizer steps
    warmup_steps: int
    log_every: int  # steps between plain log lines (about ten an epoch)
    optimizer: Any = None
    dtype: Any = torch.float32  # autocast dtype of the forward passes (float32: off); the weights stay float32
    guard: Any = None  # the ThreadGuard of the training steps (set by _finetune)

    @property
    def typical_tokens(self) -> float:
        """Tokens (B × K × T) of a batch of the training examples' mean size: the ThreadGuard judges each step's
        time scaled to it, since the batches, sorted by length, differ several-fold in size."""
        return self.cfg.batch_size * sum(len(e.seqs) * _cost(e) for e in self.train) / max(1, len(self.train))


def setup_finetune(cfg: FinetuneConfig) -> FinetuneRun:
    """Read the data, load and extend the model, encode, and size the schedule (GPT-1 §4.1: warmup over a share
    of the steps)."""

    data = load_data(cfg)
    device = pick_device(cfg.device)
    set_threads(cfg.threads)
    if device.type == "cpu":
        keep_freed_memory()
    model, tok = prepare_model(cfg, data.spec, device)
    enc_train = encode_examples(data.train, tok, data.spec)
    enc_splits = {k: encode_examples(v, tok, data.spec) for k, v in data.splits.items()}
    cfg, chosen = recipe(cfg, model.gpt.config.n_embd, len(enc_train))
    dtype = pick_dtype(cfg.dtype, device)
    cfg = dataclasses.replace(cfg, dtype=str(dtype).removeprefix("torch."))  # recorded as resolved
    if chosen and not cfg.quiet:
        print(f"gptkit: fine-tuning recipe for this model and data: {'; '.join(chosen)}", file=sys.stderr)
    steps_per_epoch = math.ceil(len(enc_train) / cfg.batch_size)
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    run = FinetuneRun(cfg, data.spec, model, tok, device, enc_train, enc_splits, total,
                      warmup_steps=math.ceil(cfg.warmup * total), log_every=max(1, steps_per_epoch // 10),
                      dtype=dtype)
    run.optimizer = adamw(model, cfg.lr, cfg.weight_decay, (0.9, 0.999), 1e-8)
    return run


def train_epoch(run: FinetuneRun, epoch: int, step: int, rng: random.Random, progress, bar: int
                ) -> tuple[int, dict[str, float]]:
    """One pass over the shuffled training batches (stopping at run.total steps); returns the step reached and
    the summed losses {loss, task_loss, lm_loss, n}."""

    cfg, spec = run.cfg, run.spec
    use_lm = cfg.lm_coef > 0
    sums = {"loss": 0.0, "task_loss": 0.0, "lm_loss": 0.0, "n": 0}
    typical = run.typical_tokens
    for batch in train_batches(run.train, cfg.batch_size, rng):
        if step >= run.total:
            break
        t_step, compiles = time.perf_counter(), compile_events()
        lr = warmup_linear(step, run.total, run.warmup_steps, cfg.lr)
        set_lr(run.optimizer, lr)
        items = [run.train[i] for i in batch]
        idx, lengths = collate(items, run.device)
        target = torch.tensor([e.target for e in items],
                              dtype=torch.float32 if spec.regression else torch.long, device=run.device)
        with autocast(run.device, run.dtype):
            out_t, lm = run.model(idx, lengths, lm_loss=use_lm)
            l2 = task_loss(out_t, target, spec)
            loss = l2 + cfg.lm_coef * lm if use_lm else l2  # L3 = L2 + λ·L1 (GPT-1 eq. 5)
        loss.backward()
        optimizer_step(run.model, run.optimizer, cfg.grad_clip)
        step += 1
        if not math.isfinite(value := loss.item()):  # never evaluate on, or save, a diverged head
            raise TaskError(f"fine-tuning diverged at step {step}: the loss is {value} (try a lower --lr or "
                            f"--lm-coef, or --grad-clip 1); nothing was written")
        sums["loss"] += value
        sums["task_loss"] += l2.item()
        sums["lm_loss"] += lm.item() if use_lm else 0.0
        sums["n"] += 1
        if len(batch) == cfg.batch_size and compile_events() == compiles:  # a partial batch's time, scaled up by
            # typical / its size, would mostly be its fixed costs; a step that compiled would pass for a busy CPU
            run.guard.after_step((time.perf_counter() - t_step) * typical / idx.numel(), step)
        progress.update(bar, step, info=f"epoch {epoch} loss {loss.item():.4f} lr {lr:.2e}",
                        line=step % run.log_every == 0)
    return step, sums


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune a pre-trained GPT on one task (GPT-1 §3.2) and write the result to cfg.out, holding the
    directory's lock (gptkit.runlock) throughout.

    Returns {"metrics": {split: {...}}, "out": path, "wall_s": seconds, "steps": n, ...}.
    """

    t0 = time.perf_counter()
    cfg.validate()
    out = Path(cfg.out)
    inputs = {"--ckpt": cfg.ckpt, "--train": cfg.train, "--valid": cfg.valid, "--test": cfg.test}
    check_out_dir(out, cfg.overwrite, inputs)
    with run_lock(out):
        check_out_dir(out, cfg.overwrite, inputs)  # again: a run that held the lock may have just published here
        return _finetune(setup_finetune(cfg), out, t0)


def _finetune(run: FinetuneRun, out: Path, t0: float) -> dict[str, Any]:
    """The epochs (each evaluated on valid), the final evaluation, and the files, published at once."""

    cfg, spec = run.cfg, run.spec
    rng = random.Random(cfg.seed)
    tmp = new_tmp_dir(out)  # an ordinary directory (the usual umask mode), published by rename at the end
    progress = Progress(quiet=cfg.quiet)
    bar = progress.add_task("finetune", total=run.total)
    log = open(tmp / "log.jsonl", "w", buffering=1)  # noqa: SIM115 - closed below, before the directory is published
    try:
        n_cut = sum(e.truncated for e in run.train)
        progress.print(f"fine-tuning {spec.task}{' (regression)' if spec.regression else ''} on "
                       f"{len(run.train)} examples ({n_cut} truncated to {spec.max_len} tokens), "
                       f"{run.total} steps of {cfg.batch_size}, λ={cfg.lm_coef}, lr {cfg.lr:g}"
                       f"{', from scratch' if cfg.from_scratch else ''}")
        run.model.train()
        run.guard = ThreadGuard(run.device.type == "cpu" and cfg.threads is None, progress.print)
        step, epoch = 0, 0
        last_valid: tuple[int, dict[str, Any], list[dict[str, Any]]] = (-1, {}, [])
        t_train = time.perf_counter()
        while step < run.total:
            epoch += 1
            with shapes_vary():  # each batch is padded to its own longest example: compile once for all lengths
                step, sums = train_epoch(run, epoch, step, rng, progress, bar)
            last_valid = (step, *run_eval(run, "valid"))
            record = epoch_record(epoch, step, sums, last_valid[1], cfg.lm_coef > 0, t0)
            if run.guard.now != run.guard.full:
                record["threads"] = run.guard.now
            log.write(json.dumps(record) + "\n")
            progress.print(f"epoch {epoch}: train loss {record['train_loss']:.4f} (task {record['train_task_loss']:.4f}"
                           + (f", lm {record['train_lm_loss']:.4f}" if cfg.lm_coef > 0 else "") + f"); valid "
                           f"{_fmt_metrics(last_valid[1])}")
        train_s = time.perf_counter() - t_train
        results = final_eval(run, tmp, step, last_valid, progress)
        summary = {"summary": True, "steps": step, "epochs": cfg.epochs, "train_examples": len(run.train),
                   "train_truncated": n_cut, "train_s": round(train_s, 2), "wall_s": round(time.perf_counter() - t0, 2),
                   "threads": run.guard.full, "device": str(run.device)}
        log.write(json.dumps(summary) + "\n")
        log.close()
        save_finetuned(tmp, run.model, run.tok, spec, cfg.head_dropout, cfg.dtype)
        (tmp / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
        (tmp / FINETUNE_CONFIG).write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if run.guard is not None:
            run.guard.close()
        log.close()
        progress.close()
    return {"metrics": results, "out": str(out), **{k: v for k, v in summary.items() if k != "summary"}}


def run_eval(run: FinetuneRun, split: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return evaluate(run.model, run.splits[split], run.spec, run.cfg.eval_batch_size or 2 * run.cfg.batch_size,
                    run.device, run.dtype)


def epoch_record(epoch: int, step: int, sums: dict[str, float], valid: dict[str, Any], use_lm: bool,
                 t0: float) -> dict[str, Any]:
    """One log.jsonl line: the epoch's mean losses and its validation metrics."""
    n = max(1, sums["n"])
    return {"epoch": epoch, "step": step, "train_loss": sums["loss"] / n, "train_task_loss": sums["task_loss"] / n,
            "train_lm_loss": sums["lm_loss"] / n if use_lm else None, "valid": valid,
            "elapsed_s": round(time.perf_counter() - t0, 2)}


def final_eval(run: FinetuneRun, tmp: Path, step: int, last_valid: tuple, progress) -> dict[str, dict[str, Any]]:
    """Metrics of every split and predictions/{split}.jsonl (the last epoch's validation when it is of this very
    model)."""
    results: dict[str, dict[str, Any]] = {}
    (tmp / "predictions").mkdir()
    for split in run.splits:
        if split == "valid" and last_valid[0] == step:
            m, records = last_valid[1:]
        else:
            m, records = run_eval(run, split)
        results[split] = m
        with open(tmp / "predictions" / f"{split}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        progress.print(f"{split}: {_fmt_metrics(m)} ({m['n']} examples)")
    return results


# ------------------------------------------------------------------------------------ save / load / predict
def save_finetuned(directory: Path, model: FinetuneModel, tokenizer: Tokenizer, spec: TaskSpec,
                   head_dropout: float, dtype: str = "float32") -> None:
    """Write the files of a fine-tuned model into `directory` (the caller makes it atomic); `dtype` is the
    autocast dtype it was trained and evaluated in, which `gptkit predict` uses by default."""

    write_model_files(directory, model.gpt, tokenizer, extra={"finetune": {"task": spec.task, "head": HEAD_WEIGHTS,
                                                                           "spec": TASK_JSON}})
    save_file({k: v.detach().contiguous() for k, v in model.head.state_dict().items()}, str(directory / HEAD_WEIGHTS),
              metadata={"format": "pt"})
    (directory / TASK_JSON).write_text(json.dumps({**spec.to_dict(), "head_dropout": head_dropout, "dtype": dtype},
                                                indent=2) + "\n")


def read_task_json(path: Path) -> tuple[TaskSpec, float, torch.dtype]:
    """The task spec, head dropout and autocast dtype a fine-tuned model's task.json holds; a bad file or field
    is one CheckpointError naming the file (and the field)."""

    head_dropout, dtype = 0.1, "float32"  # the defaults of files written before they were recorded
    try:
        d = parse_json(path.read_text(encoding="utf-8"))
        if isinstance(d, dict):
            d = dict(d)
            head_dropout, dtype = d.pop("head_dropout", head_dropout), d.pop("dtype", dtype)
        spec = TaskSpec.from_dict(d)
        if not isinstance(head_dropout, (int, float)) or isinstance(head_dropout, bool) \
                or not 0 <= head_dropout < 1:
            raise TaskError(f"head_dropout must be a number in [0, 1), got {json.dumps(head_dropout)}")
        if dtype not in FT_DTYPES[1:]:  # recorded as resolved: never auto
            raise TaskError(f"dtype must be {' or '.join(FT_DTYPES[1:])}, got {json.dumps(dtype)}")
    except (OSError, ValueError) as e:  # ValueError: not UTF-8, not JSON, a TaskError
        why = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise CheckpointError(f"{path} is not a valid task spec ({why})") from None
    return spec, float(head_dropout), pick_dtype(dtype, torch.device("cpu"))


def check_spec_fits(spec: TaskSpec, gpt: GPT, tok: Tokenizer, path: Path) -> None:
    """The task.json at `path` fits its model: special token ids in the vocabulary (the tokenizer's own ids when
    it knows the tokens) and max_len within the context."""

    known = tok.special_tokens
    for name, i in spec.special_ids.items():
        token = spec.special_tokens[name]
        if i >= gpt.config.vocab_size:
            raise CheckpointError(f"{path}: special_ids.{name} {i} is outside the model's vocabulary "
                                  f"({gpt.config.vocab_size} tokens)")
        if token in known and known[token] != i:
            raise CheckpointError(f"{path}: special_ids.{name} is {i}, but the tokenizer's {token} is "
                                  f"{known[token]}")
    if spec.max_len > gpt.config.block_size:
        raise CheckpointError(f"{path}: max_len {spec.max_len} is longer than the model's context "
                              f"({gpt.config.block_size})")


def check_head_fits(head: torch.nn.Module, sd: dict[str, torch.Tensor], spec: TaskSpec, path: Path) -> None:
    """The weights in head.safetensors are the tensors the task's head has, of its shapes; else one line naming
    the first tensor that differs."""

    want = head.state_dict()
    outputs = ("one output" if spec.n_outputs == 1 else f"{spec.n_outputs} outputs, one per label")
    for name, t in want.items():
        if name not in sd:
            raise CheckpointError(f"{path} has no tensor {name}; the {spec.task} head in {TASK_JSON} needs it")
        if tuple(sd[name].shape) != tuple(t.shape):
            raise CheckpointError(f"{path}: {name} has shape {list(sd[name].shape)}, the {spec.task} head in "
                                  f"{TASK_JSON} needs {list(t.shape)} ({outputs}, width {head.linear.in_features})")
    extra = sorted(set(sd) - set(want))
    if extra:
        raise CheckpointError(f"{path} has tensors the {spec.task} head in {TASK_JSON} does not: "
                              f"{', '.join(extra)}")


def load_finetuned(path: str | Path, map_location: str | torch.device = "cpu"
                   ) -> tuple[FinetuneModel, TaskSpec, Tokenizer]:
    """Load a directory written by `gptkit finetune`: (model in eval mode, task spec, tokenizer). The model's
    `autocast_dtype` is the dtype it was fine-tuned in (float32 for directories written before it was recorded)."""

    p = resolve_checkpoint(path)
    if not (p / TASK_JSON).is_file() or not (p / HEAD_WEIGHTS).is_file():
        raise CheckpointError(f"{p} is not a fine-tuned model (no {TASK_JSON} / {HEAD_WEIGHTS}); "
                              f"`gptkit finetune --out` writes one")
    spec, head_dropout, dtype = read_task_json(p / TASK_JSON)
    gpt = load_model(p, map_location=map_location)
    if gpt.tokenizer is None:
        raise CheckpointError(f"{p} has no tokenizer")
    check_spec_fits(spec, gpt, gpt.tokenizer, p / TASK_JSON)
    head = build_head(spec, gpt.config.n_embd, head_dropout, gpt.config.init_std)
    sd = read_state_dict(p / HEAD_WEIGHTS, map_location)
    check_head_fits(head, sd, spec, p / HEAD_WEIGHTS)
    head.load_state_dict(sd)
    model = FinetuneModel(gpt, head.to(map_location), regression=spec.regression).eval()
    model.autocast_dtype = dtype
    return model, spec, gpt.tokenizer


def predict(ckpt: str | Path, input: str | Path, out: str | Path, fmt: str | None = None,
            columns: dict[str, Any] | None = None, batch_size: int = 64, device: str = "cpu",
            max_examples: int | None = None, dtype: str = "auto") -> dict[str, Any]:
    """`gptkit predict`: one JSON line per input example (prediction + probabilities, or score) in `out`;
    returns the metrics when the input has labels. dtype auto: the one the model was fine-tuned in."""

    positive_int(batch_size, "--batch-size", TaskError, allow_none=False)
    positive_int(max_examples, "--limit", TaskError)
    check_output_file(out, "--out", [input, ckpt], TaskError)  # its directory must exist, as for eval's and data's
    if fmt is not None:
        check_format(fmt)  # before the model loads
    model, spec, tok = load_finetuned(ckpt, map_location=device)
    fmt = fmt or spec.format
    cols = Columns.from_dict(spec.columns) if fmt == spec.format else default_columns(fmt, spec.task)
    if columns:
        cols = dataclasses.replace(cols, **columns)
    examples = read_examples(input, fmt, spec.task, cols, regression=spec.regression, need_labels=False,
                             limit=max_examples)
    if any(e.label is not None for e in examples) and not all(e.label is not None for e in examples):
        examples = [dataclasses.replace(e, label=None) for e in examples]  # partly labelled: predictions only
    encoded = encode_examples(examples, tok, spec)
    autocast = model.autocast_dtype if dtype == "auto" else pick_dtype(dtype, torch.device(device))
    metrics, records = evaluate(model, encoded, spec, batch_size, torch.device(device), autocast)
    atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in records))
    return metrics
