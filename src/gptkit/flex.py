"""Fast locally banded attention (GPT-3 §2.1's sparse layers) through torch's flex_attention.

A banded layer lets position i attend to i-w+1 .. i. Computed densely with a mask, it costs O(T²) however small
w is; flex_attention with a block mask skips every (query block, key block) tile that lies entirely outside the
band, so the cost is O(T·w). The block mask depends only on (T, S, w, device) and is built once per shape.

On CUDA the kernel comes from torch.compile (flex_attention is compiled once per shape); on CPU the eager path is
a correct reference, used by the tests. Attention dropout is not supported by flex_attention: the model falls
back to the masked SDPA path when attention dropout is active.
"""

from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=64)
def banded_block_mask(q_len: int, kv_len: int, window: int, device: str):
    """Block mask for causal banded attention where the q_len queries are the last q_len of kv_len keys."""
    from torch.nn.attention.flex_attention import create_block_mask

    offset = kv_len - q_len

    def band(b, h, q_idx, kv_idx):
        q_pos = q_idx + offset
        return (kv_idx <= q_pos) & (q_pos - kv_idx < window)

    return create_block_mask(band, B=None, H=None, Q_LEN=q_len, KV_LEN=kv_len, device=device)


@lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def banded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """q (B, nh, T, hs), k/v (B, nh, S, hs) → (B, nh, T, hs), attending within the causal band of `window`."""
    from torch.nn.attention.flex_attention import flex_attention

    block_mask = banded_block_mask(q.size(2), k.size(2), window, str(q.device))
    fn = _compiled_flex() if q.is_cuda else flex_attention
    return fn(q, k, v, block_mask=block_mask)
