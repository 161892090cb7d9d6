"""Autoregressive sampling: pure logits → token rules, and the decoding loop over a KV cache."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import torch

if TYPE_CHECKING:
    from .model import GPT


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the nucleus of probability mass top_p
    (Holtzman et al. 2020). logits (B, V) → (B, V). The most likely token always survives."""
    if top_k is not None and top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # drop a token when the mass *before* it already reaches top_p
        drop_sorted = (cum - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token from the last-position logits (B, V) → ids (B, 1). temperature 0 means greedy."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if temperature == 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def stream(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
           use_cache: bool = True) -> Iterator[torch.Tensor]:
    """Yield the next token ids (B, 1) one step at a time.

    With the cache, the prompt is processed once (prefill) and each step feeds one token. When the sequence
    outgrows the context, the window slides: positions shift, so the cache is recomputed on the last block_size
    tokens (learned positions cannot be reused at a new offset).
    """
    block = model.config.block_size
    seq = idx
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            pos = 0  # number of tokens already in the cache
            if use_cache:
                model.setup_kv_cache(idx.size(0))
            for _ in range(max_new_tokens):
                if use_cache:
                    if seq.size(1) > block:  # the context is full: recompute on the last block tokens
                        seq = seq[:, -block:]
                        pos = 0
                    logits = model(seq[:, pos:], pos=pos)[:, -1, :]
                    pos = seq.size(1)
                else:
                    logits = model(seq[:, -block:])[:, -1, :]
                nxt = sample_next(logits, temperature, top_k, top_p, generator)
                seq = torch.cat([seq, nxt], dim=1)
                yield nxt
    finally:
        model.clear_kv_cache()
        model.train(was_training)


def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
             use_cache: bool = True) -> torch.Tensor:
    """Continue idx (B, T) by max_new_tokens tokens; returns (B, T + max_new_tokens)."""
    new = list(stream(model, idx, max_new_tokens, temperature, top_k, top_p, generator, use_cache))
    return torch.cat([idx, *new], dim=1) if new else idx
