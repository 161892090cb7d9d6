"""Fast locally banded attention (GPT-3 §2.1's sparse layers) through torch's flex_attention.

A banded layer lets position i attend to i-w+1 .. i. Computed densely with a mask, it costs O(T²) however small
w is; flex_attention with a block mask skips every (query block, key block) tile that lies entirely outside the
band, so the cost is O(T·w). The block mask depends only on (T, S, w, device).

The model uses this for its banded layers when the attention backend is "flex", or "auto" on CUDA (see
`GPT.set_attention_backend`); the masked SDPA path stays the reference. Block masks and kernels:
- eager: each block mask is built once per shape and cached; on CUDA the kernel is a torch.compile'd
  flex_attention (compiled once per shape), on CPU the eager flex_attention is a correct reference.
- inside a torch.compile'd model: the block mask is built in the traced graph (the band predicate over the T×S
  grid, reduced to 128×128 blocks: a few fused elementwise ops per forward, once per window, not per layer), not
  taken from the cache: dynamo would ignore the lru_cache and trace the builder anyway, with a warning. So the
  model compiles with zero graph breaks, and flex_attention becomes part of the model's graph.

Limits of torch's flex_attention (2.13): no attention dropout (the model falls back to the masked SDPA path when
attention dropout is active) and, on CPU, no backward (forward only, eager or compiled).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch.nn.attention.flex_attention import create_block_mask
from torch.nn.attention.flex_attention import flex_attention as torch_flex_attention


def _band(offset: int, window: int):
    """mask_mod of causal banded attention where query index q sits at key position q + offset."""

    def band(b, h, q_idx, kv_idx):
        q_pos = q_idx + offset
        return (kv_idx <= q_pos) & (q_pos - kv_idx < window)

    return band


def _build_block_mask(q_len: int, kv_len: int, window: int, device: str):
    return create_block_mask(_band(kv_len - q_len, window), B=None, H=None, Q_LEN=q_len, KV_LEN=kv_len,
                             device=device)


_cached_block_mask = lru_cache(maxsize=64)(_build_block_mask)


def banded_block_mask(q_len: int, kv_len: int, window: int, device: str | torch.device):
    """Block mask for causal banded attention where the q_len queries are the last q_len of kv_len keys.

    Cached per (q_len, kv_len, window, device) in eager mode; built in the graph under torch.compile."""
    if torch.compiler.is_compiling():
        return _build_block_mask(q_len, kv_len, window, str(device))
    return _cached_block_mask(q_len, kv_len, window, str(device))


@lru_cache(maxsize=1)
def _compiled_flex():
    return torch.compile(torch_flex_attention, dynamic=False)


def flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask) -> torch.Tensor:
    """q (B, nh, T, hs), k/v (B, nh, S, hs) → (B, nh, T, hs) under `block_mask` (from banded_block_mask).

    Eager on CUDA this runs the compiled kernel (eager flex_attention there is a slow reference that
    materialises the scores); inside a compiled model the plain call is traced into the model's graph."""

    fn = _compiled_flex() if q.is_cuda and not torch.compiler.is_compiling() else torch_flex_attention
    return fn(q, k, v, block_mask=block_mask)


def banded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """q (B, nh, T, hs), k/v (B, nh, S, hs) → (B, nh, T, hs), attending within the causal band of `window`."""
    return flex_attention(q, k, v, banded_block_mask(q.size(2), k.size(2), window, q.device))
