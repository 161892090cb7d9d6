"""In-context learning: few-shot prompts (GPT-3 §2) and batched log-likelihood scoring.

Prompt of one example with K demonstrations (GPT-3 Fig. 2.1; the same layout as lm-eval's plain-text prompts):
    [description + fewshot_delimiter]
    demo_1.query + target_delimiter + demo_1.answer + fewshot_delimiter
    ...
    demo_K.query + target_delimiter + demo_K.answer + fewshot_delimiter
    query                                   <- context; each continuation is target_delimiter + choice

Demonstrations are drawn with ``random.Random(seed)`` in example order: ``sample(pool, K)`` from another split,
or ``sample(pool, K + 1)`` minus the scored example from the same split, which is lm-eval's sampler; so with the
same seed (lm-eval's default 1234) both harnesses build byte-identical prompts. Trailing whitespace of a context
moves to the front of its continuation (a byte-level BPE attaches a space to the following word).

Scoring (:func:`score_requests`) returns, for each (context ids, continuation ids), the summed log-probability of
the continuation and whether greedy decoding would produce it. Each distinct context is computed once for all
its continuations: one packed row holds ``context + cont_1 + cont_2 + ...``, every continuation restarting its
positions where the context ends and attending only to the context and to itself (a tree-shaped mask), and
rows are batched with padding. Only the positions that predict continuation tokens go through the output layer.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal, Sequence

import torch
import torch.nn.functional as F

from ..model import GPT, Block
from .tasks import Doc, EvalError, Task

if TYPE_CHECKING:
    import torch

    from ..model import GPT
    from ..tokenizer import Tokenizer

Overflow = Literal["drop-demos", "truncate"]


# --------------------------------------------------------------------------------------------- prompts
def sample_demonstrations(eval_docs: Sequence[Doc], pool: Sequence[Doc] | None, k: int, seed: int,
                          same_split: bool) -> list[list[int]]:
    """Indices into ``pool`` of the K demonstrations of each eval example (see the module docstring)."""
    if k == 0:
        return [[] for _ in eval_docs]
    if k < 0:
        raise EvalError(f"the number of shots must be >= 0, got {k}")
    need = k + 1 if same_split else k
    if pool is None or len(pool) < need:
        have = 0 if pool is None else len(pool)
        raise EvalError(f"K={k} shots needs {need} demonstration examples but the few-shot split has {have}")
    rng = random.Random(seed)
    out = []
    for doc in eval_docs:
        if not same_split:
            out.append(rng.sample(range(len(pool)), k))
            continue
        picked = [j for j in rng.sample(range(len(pool)), k + 1) if pool[j] != doc][:k]
        if len(picked) < k:  # the pool held copies of this example: draw again from the rest
            rest = [j for j in range(len(pool)) if pool[j] != doc]
            if len(rest) < k:
                raise EvalError(f"K={k} shots: only {len(rest)} demonstrations differ from an evaluated example")
            picked = rng.sample(rest, k)
        out.append(picked)
    return out


def build_context(task: Task, doc: Doc, demos: Sequence[Doc], description: str | None = None) -> str:
    """The prompt text of ``doc`` after ``demos`` (without the continuation)."""
    desc = task.description if description is None else description
    head = desc + task.fewshot_delimiter if desc else ""
    shots = "".join(d.query + task.target_delimiter + d.choices[d.gold] + task.fewshot_delimiter for d in demos)
    return head + shots + doc.query


def split_whitespace(context: str, continuation: str) -> tuple[str, str]:
    """Move the context's trailing whitespace to the start of the continuation."""
    n = len(context) - len(context.rstrip())
    return (context[:-n], context[-n:] + continuation) if n else (context, continuation)


class Encoder:
    """Tokenizer calls with a cache: verbalizers, demonstrations and shared prompts are encoded once."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[str, list[int]] = {}

    def __call__(self, texts: Sequence[str]) -> list[list[int]]:
        new = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if new:
            for t, ids in zip(new, self.tokenizer.encode_batch(new)):
                self.cache[t] = ids
        return [self.cache[t] for t in texts]

    def context(self, text: str) -> list[int]:
        """Ids of a context; an empty one becomes <|endoftext|>, the document boundary the model knows."""
        if text:
            return self([text])[0]
        if self.tokenizer.eot_id is None:
            raise EvalError("an empty prompt needs an <|endoftext|> token, which this tokenizer lacks")
        return [self.tokenizer.eot_id]


@dataclass
class Prompt:
    """One scored example: its context ids, the continuation ids of each candidate, and the shots used."""

    context: str
    context_ids: list[int]
    continuations: list[str]
    continuation_ids: list[list[int]]
    shots: int


def build_prompts(task: Task, docs: Sequence[Doc], demos: Sequence[Sequence[int]], pool: Sequence[Doc] | None,
                  encode: Encoder, block_size: int, description: str | None = None,
                  overflow: Overflow = "drop-demos", log: Callable[[str], None] = print) -> list[Prompt | None]:
    """Prompts of all eval docs, fitted to the context.

    GPT-3 §2.4 lets K go up to what the context window holds: with ``overflow="drop-demos"`` an
    example whose prompt is too long loses its last demonstrations until it fits (a warning counts them). What
    still does not fit (or everything, with ``overflow="truncate"``, lm-eval's behaviour) is left-truncated by
    the scorer: the model sees the last ``block_size`` tokens. An example with a candidate longer than the whole
    context cannot be scored at all: its entry is None (skipped, with a warning).
    """
    prompts: list[Prompt | None] = []
    capped = 0
    skipped = []
    for i, (doc, idx) in enumerate(zip(docs, demos)):
        shots = [pool[j] for j in idx] if pool is not None else []
        while True:
            pairs = [split_whitespace(build_context(task, doc, shots, description), task.target_delimiter + c)
                     for c in doc.choices]
            ctx = pairs[0][0]
            conts = [p[1] for p in pairs]
            ctx_ids = encode.context(ctx)
            cont_ids = encode(conts)
            longest = max(map(len, cont_ids))
            if overflow == "truncate" or not shots or len(ctx_ids) + longest - 1 <= block_size:
                break
            shots = shots[:-1]
        if len(shots) < len(idx):
            capped += 1
        if not all(cont_ids):
            raise EvalError(f"{task.name}: example {i}: a candidate continuation encodes to no tokens ({conts!r})")
        if longest > block_size:
            skipped.append(i)
            prompts.append(None)
            continue
        prompts.append(Prompt(ctx, ctx_ids, conts, cont_ids, len(shots)))
    if skipped:
        log(f"warning: {task.name}: {len(skipped)} of {len(docs)} examples have a candidate longer than the model's "
            f"whole context ({block_size} tokens) and are not scored (examples {', '.join(map(str, skipped[:5]))}"
            f"{', ...' if len(skipped) > 5 else ''}); the metrics are over the others")
    if len(skipped) == len(docs):
        raise EvalError(f"{task.name}: no example fits the model's context of {block_size} tokens")
    if capped:
        fewest = min(p.shots for p in prompts if p is not None)
        log(f"warning: {task.name}: K={len(demos[0])} demonstrations do not fit the context of {block_size} "
            f"tokens for {capped} of {len(docs)} examples; they got fewer (down to {fewest})")
    return prompts


# ------------------------------------------------------------------------------------------- scoring
def fit_to_context(context: Sequence[int], continuation: Sequence[int], block_size: int) -> tuple[list[int], bool]:
    """Left-truncate a context so that context + continuation[:-1] fits ``block_size`` positions (what lm-eval
    does too); returns (context, truncated?)."""
    if not continuation:
        raise EvalError("an empty continuation cannot be scored")
    if len(continuation) > block_size:
        raise EvalError(f"a continuation of {len(continuation)} tokens does not fit the model's context "
                        f"({block_size} tokens)")
    if not context:
        raise EvalError("a context needs at least one token (use <|endoftext|> for an empty prompt)")
    keep = block_size + 1 - len(continuation)
    return (list(context[-keep:]), True) if len(context) > keep else (list(context), False)


def _check_model(model: GPT) -> None:
    # packed_hidden_states re-plays the blocks of gptkit.model with its own masks: refuse anything else.

    if not isinstance(model, GPT) or not all(type(b) is Block for b in model.transformer.h):
        raise EvalError("batched scoring needs a gptkit GPT model")


def packed_hidden_states(model: GPT, idx: torch.Tensor, pos: torch.Tensor,
                         allowed: torch.Tensor | None) -> torch.Tensor:
    """Final hidden states (B, T, C) of packed rows: token ids ``idx`` (B, T) at positions ``pos`` (B, T), token i
    attending to token j where ``allowed[b, i, j]`` (None: plain causal attention, which SDPA's fused kernels
    compute without materialising a mask).

    The same computation as ``model.transformer(idx)``, with per-token positions and an arbitrary mask instead of
    positions 0..T-1 and the causal mask: the public forward has no way to pass those, and prefix sharing needs
    them. Equality with the public forward is tested for every architecture switch (pre/post-LN, final LN,
    learned/sinusoidal positions, dense/banded attention).
    """

    tr = model.transformer
    cfg = model.config
    x = tr.wte(idx) + (tr.wpe(pos) if cfg.pos == "learned" else tr.pos_table[pos])
    x = tr.drop(x)
    distance = pos.unsqueeze(2) - pos.unsqueeze(1)  # (B, T, T) query position minus key position
    B, T, C = x.shape
    for block in tr.h:
        attn = block.attn
        mask = allowed
        if attn.window is not None:  # banded layer (GPT-3 §2.1): also within `window` positions
            causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()  # by index: pads come last
            mask = (causal if mask is None else mask) & (distance < attn.window)
        mask = mask.unsqueeze(1) if mask is not None else None  # (B, 1, T, T), broadcast over heads

        def attend(h: torch.Tensor) -> torch.Tensor:
            q, k, v = attn.c_attn(h).split(C, dim=2)
            q, k, v = (t.view(B, T, attn.n_head, attn.head_size).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
            return attn.c_proj(y.transpose(1, 2).reshape(B, T, C))

        if block.pre_norm:
            x = x + attend(block.ln_1(x))
            x = x + block.mlp(block.ln_2(x))
        else:
            x = block.ln_1(x + attend(x))
            x = block.ln_2(x + block.mlp(x))
    return tr.ln_f(x)


@dataclass
class _Row:
    context: tuple[int, ...]
    conts: list[tuple[int, ...]]

    @property
    def length(self) -> int:
        # a continuation's last token is only predicted, never fed in: it takes no place in the row
        return len(self.context) + sum(len(c) - 1 for c in self.conts)


def _rows(requests: list[tuple[tuple[int, ...], tuple[int, ...]]], block_size: int) -> list[_Row]:
    """Group requests by context; each group's distinct continuations fill rows of at most ~2 contexts' length."""
    groups: dict[tuple[int, ...], dict[tuple[int, ...], None]] = {}
    for ctx, cont in requests:
        groups.setdefault(ctx, {})[cont] = None
    rows = []
    for ctx, conts in groups.items():
        row = _Row(ctx, [])
        budget = 0
        for cont in conts:
            if row.conts and budget + len(cont) > block_size:  # e.g. one shared 'Answer:' for all candidates
                rows.append(row)
                row, budget = _Row(ctx, []), 0
            row.conts.append(cont)
            budget += len(cont)
        rows.append(row)
    return rows


def score_requests(model: GPT, requests: Sequence[tuple[Sequence[int], Sequence[int]]], *, batch_size: int = 32,
                   progress: Callable[[int, int], None] | None = None) -> list[tuple[float, bool]]:
    """(sum of log P(continuation | context), greedy?) for each (context ids, continuation ids).

    Contexts longer than the model's context are left-truncated (:func:`fit_to_context`). ``greedy`` is True
    when every continuation token is the arg-max given what precedes it, i.e. greedy decoding reproduces it.
    ``progress(done, total)`` is called after each batch with the number of packed rows done and in all.
    """

    _check_model(model)
    if batch_size < 1:
        raise EvalError(f"--batch-size must be >= 1, got {batch_size}")
    L = model.config.block_size
    fitted = [(tuple(fit_to_context(c, x, L)[0]), tuple(x)) for c, x in requests]
    rows = sorted(_rows(fitted, L), key=lambda r: -r.length)  # similar lengths together: little padding
    results: dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[float, bool]] = {}
    device = model.transformer.wte.weight.device
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            T = batch[0].length
            idx = torch.zeros(len(batch), T, dtype=torch.long)
            pos = torch.zeros(len(batch), T, dtype=torch.long)
            seg = torch.full((len(batch), T), -1, dtype=torch.long)  # -1 pad, 0 context, j+1 continuation j
            where_b, where_t, targets, owner = [], [], [], []  # positions predicting continuation tokens
            for b, row in enumerate(batch):
                n = len(row.context)
                idx[b, :n] = torch.tensor(row.context)
                pos[b, :n] = torch.arange(n)
                seg[b, :n] = 0
                at = n
                for j, cont in enumerate(row.conts):
                    m = len(cont) - 1  # tokens fed in: all but the last
                    idx[b, at:at + m] = torch.tensor(cont[:-1], dtype=torch.long)
                    pos[b, at:at + m] = torch.arange(n, n + m)
                    seg[b, at:at + m] = j + 1
                    # token 0 is predicted by the last context position, token t by continuation token t-1
                    where_b += [b] * (m + 1)
                    where_t += [n - 1] + list(range(at, at + m))
                    targets += list(cont)
                    owner += [(b, j)] * (m + 1)
                    at += m
            if all(len(r.context) == r.length for r in batch):
                # no continuation token is fed in (all one-token continuations, e.g. verbalizers): each row is one
                # causal sequence, right padding never reaches real tokens, so no mask is needed
                allowed = None
            else:
                causal = torch.ones(T, T, dtype=torch.bool).tril()
                s_q, s_k = seg.unsqueeze(2), seg.unsqueeze(1)
                allowed = (causal & (s_k >= 0) & ((s_k == 0) | (s_k == s_q))).to(device)  # (B, T, T)
            h = packed_hidden_states(model, idx.to(device), pos.to(device), allowed)
            h = h[torch.tensor(where_b, device=device), torch.tensor(where_t, device=device)]  # (N, C)
            logp = torch.log_softmax(_at_least_fp32(model.lm_head(h)), dim=-1)  # (N, V)
            tgt = torch.tensor(targets, device=device)
            lp = logp.gather(1, tgt.unsqueeze(1)).squeeze(1).double().cpu().tolist()
            hit = (logp.argmax(dim=-1) == tgt).cpu().tolist()
            sums: dict[tuple[int, int], list] = {}
            for key, v, g in zip(owner, lp, hit):
                acc = sums.setdefault(key, [0.0, True])
                acc[0] += v
                acc[1] = acc[1] and g
            for (b, j), (v, g) in sums.items():
                results[(batch[b].context, batch[b].conts[j])] = (v, bool(g))
            if progress is not None:
                progress(min(start + batch_size, len(rows)), len(rows))
    return [results[r] for r in fitted]


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 logits are promoted before log_softmax; float64 stays float64 (for exact checks)."""

    return t.to(torch.promote_types(t.dtype, torch.float32))


# ------------------------------------------------------------------------------------------- metrics
def mean_stderr(values: Sequence[float]) -> float:
    """Standard error of a mean (sample standard deviation / sqrt(n)), as lm-eval reports it."""
    n = len(values)
    if n < 2:
        return float("nan")
    mu = sum(values) / n
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1) / n)


def argmax(values: Sequence[float]) -> int:
    """Index of the first maximum (ties go to the earlier choice, as numpy's argmax)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))
