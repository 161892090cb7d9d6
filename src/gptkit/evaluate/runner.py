"""`evaluate(model, tasks, shots)`: zero-, one- and few-shot evaluation of a GPT on a list of tasks.

Everything is checked before the model runs (task names and files, K against the data), so a mistake costs
seconds, not an evaluation. Results are ``{"results": {task: {metric: value}}, "n-shot": …, "config": …}``;
with several K a result's key is ``task@K``.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .. import __version__
from ..runtime import Progress
from .icl import (
    Encoder,
    Overflow,
    Prompt,
    argmax,
    build_prompts,
    fit_to_context,
    mean_stderr,
    sample_demonstrations,
    score_requests,
)
from .perplexity import perplexity_metrics, rolling_loglikelihood
from .tasks import BUILTIN_TASKS, Doc, EvalError, Task, get_task, load_splits, resolve_data_dir

if TYPE_CHECKING:
    from ..model import GPT
    from ..tokenizer import Tokenizer

DEFAULT_SEED = 1234  # lm-eval's default few-shot seed, so both harnesses draw the same demonstrations


def _stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr)


@dataclass
class EvalReport:
    """What `evaluate` returns: the JSON-ready summary and, when asked for, one record per scored example."""

    summary: dict[str, Any]
    samples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Job:
    key: str
    task: Task
    shots: int
    docs: list[Doc]
    pool: list[Doc] | None
    demos: list[list[int]]


def _tracker(bar: Progress, label: str) -> Callable[[int, int], None] | None:
    """A bar of the shared display (gptkit.runtime) for one (task, K), as a callback (done, total); None when
    nothing is shown."""
    if not bar.live:
        return None
    tid = bar.add_task(label)

    def update(n: int, total: int) -> None:
        bar.update(tid, completed=n, total=total)

    return update


def _prepare(task_names: Sequence[str | Task], shots: Sequence[int], data_dir: str | Path | None,
             limit: int | None, seed: int, multi: bool) -> list[_Job]:
    if not shots:
        raise EvalError("give at least one number of shots")
    if any(k < 0 for k in shots):
        raise EvalError(f"the number of shots must be >= 0, got {min(shots)}")
    twice = sorted({k for k in shots if list(shots).count(k) > 1})
    if twice:
        raise EvalError(f"--shots {twice[0]} is given twice (each K is evaluated once)")
    if limit is not None and limit < 1:
        raise EvalError(f"--limit must be >= 1, got {limit}")
    tasks = [t if isinstance(t, Task) else get_task(t) for t in task_names]
    if not tasks:
        raise EvalError("give at least one task")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise EvalError(f"a task is given twice: {', '.join(names)}")
    # YAML tasks name their own files; the data folder is needed (and checked) for the built-in ones
    builtin = any(BUILTIN_TASKS.get(t.name) is t for t in tasks)
    root = resolve_data_dir(data_dir) if builtin or data_dir is not None else Path(".")
    jobs = []
    for task in tasks:
        docs, pool = load_splits(task, root)
        if limit is not None:
            docs = docs[:limit]
        if not docs:
            raise EvalError(f"{task.name}: no examples to evaluate")
        if task.kind == "perplexity":  # no demonstrations: scored once whatever K is
            jobs.append(_Job(task.name, task, 0, docs, None, [[] for _ in docs]))
            continue
        same = task.fewshot_split == task.eval_split
        for k in shots:
            key = f"{task.name}@{k}" if multi else task.name
            jobs.append(_Job(key, task, k, docs, pool, sample_demonstrations(docs, pool, k, seed, same)))
    return jobs


def evaluate(model: GPT, tasks: Sequence[str | Task], shots: Sequence[int] = (0,), *,
             tokenizer: Tokenizer | None = None, data_dir: str | Path | None = None, limit: int | None = None,
             seed: int = DEFAULT_SEED, batch_size: int = 32, description: str | None = None,
             unconditional: bool = False, overflow: Overflow = "drop-demos", stride: int | None = None,
             progress: bool = False, keep_samples: bool = False,
             log: Callable[[str], None] = _stderr_log) -> EvalReport:
    """Evaluate ``model`` on ``tasks`` (built-in names, YAML task paths or Task objects) at each K in ``shots``.

    ``limit`` scores the first N examples of each task; ``seed`` draws the demonstrations; ``description``
    overrides the tasks' own; ``unconditional`` adds GPT-3's P(completion | context) / P(completion | "Answer:")
    accuracy (``acc_uncond``); ``overflow`` says what happens to prompts longer than the context (see
    ``build_prompts``); ``stride`` is the perplexity window step (default: half the context).
    """
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tok is None:
        raise EvalError("the checkpoint has no tokenizer: pass one (--tokenizer-dir DIR)")
    if overflow not in ("drop-demos", "truncate"):
        raise EvalError(f"overflow must be 'drop-demos' or 'truncate', got {overflow!r}")
    jobs = _prepare(tasks, shots, data_dir, limit, seed, multi=len(set(shots)) > 1)
    L = model.config.block_size
    if stride is not None and not 1 <= stride <= L:
        raise EvalError(f"--stride must be between 1 and the context ({L}), got {stride}")
    model.eval()
    encode = Encoder(tok)
    results: dict[str, dict[str, float]] = {}
    n_shot: dict[str, int] = {}
    timing: dict[str, float] = {}
    samples: list[dict[str, Any]] = []
    warnings: list[str] = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        log(msg)

    with Progress(live=progress) as bar:
        for job in jobs:
            t0 = time.perf_counter()
            label = f"{job.key} ({job.shots}-shot)" if job.task.kind != "perplexity" else job.key
            track = _tracker(bar, label)
            if job.task.kind == "perplexity":
                metrics, recs = _run_perplexity(model, job, encode, stride, batch_size, track)
            else:
                built = build_prompts(job.task, job.docs, job.demos, job.pool, encode, L, description,
                                      overflow, warn)
                kept = [(i, d, p) for i, (d, p) in enumerate(zip(job.docs, built)) if p is not None]
                prompts = [p for _, _, p in kept]
                n_trunc = sum(fit_to_context(p.context_ids, max(p.continuation_ids, key=len), L)[1]
                              for p in prompts)
                if n_trunc:
                    warn(f"warning: {job.key}: {n_trunc} of {len(prompts)} prompts are longer than the context "
                         f"({L} tokens) and were left-truncated")
                if job.task.kind == "cloze":
                    metrics, recs = _run_cloze(model, kept, batch_size, track)
                else:
                    metrics, recs = _run_choice(model, job.task, kept, encode, batch_size, unconditional, track)
                metrics["shots_used_mean"] = sum(p.shots for p in prompts) / len(prompts)
                if len(kept) < len(job.docs):
                    metrics["skipped"] = len(job.docs) - len(kept)
            results[job.key] = metrics
            n_shot[job.key] = job.shots
            timing[job.key] = round(time.perf_counter() - t0, 3)
            if keep_samples:
                samples += [{"task": job.task.name, "shots": job.shots, **r} for r in recs]

    config = {
        "tasks": [j.task.name for j in jobs], "shots": list(shots), "limit": limit, "seed": seed,
        "batch_size": batch_size, "description": description, "unconditional": unconditional,
        "overflow": overflow, "stride": stride if stride is not None else L // 2, "block_size": L,
        "model": model.config.to_dict(), "tokenizer": getattr(tok, "kind", type(tok).__name__),
        "sources": {j.task.name: j.task.source for j in jobs}, "gptkit_version": __version__,
    }
    summary = {"results": results, "n-shot": n_shot, "config": config, "timing_s": timing, "warnings": warnings}
    return EvalReport(summary, samples)


def _run_choice(model: GPT, task: Task, kept: list[tuple[int, Doc, Prompt]], encode: Encoder, batch_size: int,
                unconditional: bool, track: Callable[[int, int], None] | None) -> tuple[dict, list[dict]]:
    prompts = [p for _, _, p in kept]
    requests = [(p.context_ids, c) for p in prompts for c in p.continuation_ids]
    n_cond = len(requests)
    if unconditional:
        # GPT-3 §2.4: normalise by P(completion | answer context), a generic prompt such as "Answer:"
        uncond_ctx = encode.context(task.uncond_context.rstrip())
        requests += [(uncond_ctx, c) for p in prompts for c in p.continuation_ids]
    scores = score_requests(model, requests, batch_size=batch_size, progress=track)
    cond = iter(scores[:n_cond])
    unc = iter(scores[n_cond:]) if unconditional else None
    hits: dict[str, list[float]] = {"acc": [], "acc_norm": [], "acc_per_token": []}
    if unconditional:
        hits["acc_uncond"] = []
    recs = []
    for i, doc, p in kept:
        ll = [next(cond)[0] for _ in p.continuation_ids]
        preds = {
            "acc": argmax(ll),
            # lm-eval's acc_norm: log-likelihood per character of the choice; GPT-3 §2.4 normalises per token
            "acc_norm": argmax([v / max(len(c), 1) for v, c in zip(ll, doc.choices)]),
            "acc_per_token": argmax([v / len(ids) for v, ids in zip(ll, p.continuation_ids)]),
        }
        rec: dict[str, Any] = {"index": i, "shots_used": p.shots, "context": p.context, "choices": list(doc.choices),
                               "gold": doc.gold, "loglikelihoods": ll}
        if unc is not None:
            llu = [next(unc)[0] for _ in p.continuation_ids]
            preds["acc_uncond"] = argmax([a - b for a, b in zip(ll, llu)])
            rec["uncond_loglikelihoods"] = llu
        for m, pred in preds.items():
            hits[m].append(float(pred == doc.gold))
        rec.update(pred=preds["acc"], correct=preds["acc"] == doc.gold)
        recs.append(rec)
    metrics: dict[str, float] = {}
    for m, v in hits.items():
        metrics[m] = sum(v) / len(v)
        metrics[f"{m}_stderr"] = mean_stderr(v)
    metrics["n"] = len(prompts)
    return metrics, recs


def _run_cloze(model: GPT, kept: list[tuple[int, Doc, Prompt]], batch_size: int,
               track: Callable[[int, int], None] | None) -> tuple[dict, list[dict]]:
    # LAMBADA (GPT-2 §3.3): right when greedy decoding reproduces every token of the target word; its
    # perplexity is exp of the mean negative log-likelihood of the target per example (lm-eval's definition).
    scores = score_requests(model, [(p.context_ids, p.continuation_ids[0]) for _, _, p in kept],
                            batch_size=batch_size, progress=track)
    acc = [float(g) for _, g in scores]
    ll = [v for v, _ in scores]
    recs = [{"index": i, "shots_used": p.shots, "context": p.context, "target": doc.choices[0],
             "loglikelihood": v, "correct": bool(g)} for (i, doc, p), (v, g) in zip(kept, scores)]
    return {"acc": sum(acc) / len(acc), "acc_stderr": mean_stderr(acc),
            "perplexity": math.exp(-sum(ll) / len(ll)), "n": len(kept)}, recs


def _run_perplexity(model: GPT, job: _Job, encode: Encoder, stride: int | None, batch_size: int,
                    track: Callable[[int, int], None] | None) -> tuple[dict, list[dict]]:
    ids = encode([d.query for d in job.docs])
    per_doc = rolling_loglikelihood(model, ids, stride=stride, bos=encode.tokenizer.eot_id,
                                    batch_size=batch_size, progress=track)
    ll = sum(v for v, _ in per_doc)
    ntok = sum(n for _, n in per_doc)
    words = sum(len((d.raw if d.raw is not None else d.query).split()) for d in job.docs)
    n_bytes = sum(len(d.query.encode("utf-8")) for d in job.docs)
    metrics = perplexity_metrics(ll, ntok, words, n_bytes)
    metrics["documents"] = len(job.docs)
    recs = [{"index": i, "loglikelihood": v, "tokens": n} for i, (v, n) in enumerate(per_doc)]
    return metrics, recs
