"""Language-modelling perplexity with a sliding window (GPT-2 §3.1 reports WikiText-2 perplexity zero-shot).

A document longer than the context is scored in windows of ``block_size`` tokens that advance by ``stride``:
each window scores only the tokens no earlier window scored, so every token is predicted exactly once, with at
least ``block_size - stride`` tokens of context after the first window (``stride == block_size`` gives disjoint
windows, the cheapest and least accurate choice). Each document starts with <|endoftext|> when the tokenizer has
one, so its first token is predicted too.

Reported per task: token-level perplexity (per model token), word-level perplexity (per whitespace-separated
token of the dataset's original text, the unit language-modelling papers and GPT-2 normalise by), byte-level
perplexity and bits per byte (per UTF-8 byte of the text the model read).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from .icl import _at_least_fp32
from .tasks import EvalError

if TYPE_CHECKING:
    from ..model import GPT


def sliding_windows(n_targets: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows over a sequence s whose targets are s[1..n_targets]: (a, b, done) means input s[a:b] (at most
    block_size tokens) scores targets s[done+1..b], i.e. window positions done-a .. b-1-a."""
    if not 1 <= stride <= block_size:
        raise EvalError(f"--stride must be between 1 and the context ({block_size}), got {stride}")
    windows = []
    done = 0
    while done < n_targets:
        b = min(n_targets, block_size if done == 0 else done + stride)
        windows.append((max(0, b - block_size), b, done))
        done = b
    return windows


def rolling_loglikelihood(model: GPT, docs: Sequence[Sequence[int]], *, stride: int | None = None,
                          bos: int | None = None, batch_size: int = 32,
                          progress: Callable[[int, int], None] | None = None) -> list[tuple[float, int]]:
    """(sum of log-probabilities, number of tokens scored) of each token sequence, through sliding windows."""

    L = model.config.block_size
    stride = L // 2 if stride is None else stride
    seqs = [([bos] if bos is not None else []) + list(d) for d in docs]
    jobs = []  # (doc, tokens of the window, first scored position, last scored position + 1)
    for i, s in enumerate(seqs):
        for a, b, done in sliding_windows(len(s) - 1, L, stride):
            jobs.append((i, s[a:b + 1], done - a, b - a))
    jobs.sort(key=lambda j: -len(j[1]))
    totals = [[0.0, 0] for _ in seqs]
    device = model.transformer.wte.weight.device
    with torch.inference_mode():
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start:start + batch_size]
            T = len(batch[0][1]) - 1
            idx = torch.zeros(len(batch), T, dtype=torch.long)
            rows, cols, tgt, owner = [], [], [], []
            for r, (doc, toks, lo, hi) in enumerate(batch):
                idx[r, :len(toks) - 1] = torch.tensor(toks[:-1])  # right padding never reaches earlier positions
                rows += [r] * (hi - lo)
                cols += range(lo, hi)
                tgt += toks[lo + 1:hi + 1]
                owner += [doc] * (hi - lo)
            h = model.transformer(idx.to(device))  # (B, T, C)
            h = h[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]
            logp = torch.log_softmax(_at_least_fp32(model.lm_head(h)), dim=-1)
            lp = logp.gather(1, torch.tensor(tgt, device=device).unsqueeze(1)).squeeze(1).double().cpu().tolist()
            for doc, v in zip(owner, lp):
                totals[doc][0] += v
                totals[doc][1] += 1
            if progress is not None:
                progress(min(start + batch_size, len(jobs)), len(jobs))
    return [(t[0], t[1]) for t in totals]


def perplexity_metrics(loglik: float, tokens: int, words: int, n_bytes: int) -> dict[str, float]:
    """Token-, word- and byte-level perplexity and bits per byte from a summed log-likelihood (natural log)."""
    nll = -loglik
    return {
        "token_perplexity": math.exp(nll / tokens) if tokens else float("nan"),
        "word_perplexity": math.exp(nll / words) if words else float("nan"),
        "byte_perplexity": math.exp(nll / n_bytes) if n_bytes else float("nan"),
        "bits_per_byte": nll / n_bytes / math.log(2) if n_bytes else float("nan"),
        "tokens": tokens, "words": words, "bytes": n_bytes,
    }
