"""gptkit.flex: banded attention through flex_attention block masks equals the dense masked path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gptkit.model import attention_mask


@pytest.mark.parametrize("q_len,kv_len,window", [(128, 128, 16), (100, 100, 33), (1, 77, 20), (24, 90, 40)])
def test_flex_banded_equals_masked_sdpa(q_len: int, kv_len: int, window: int) -> None:
    from gptkit.flex import banded_attention

    torch.manual_seed(0)
    q = torch.randn(2, 3, q_len, 16)
    k, v = torch.randn(2, 3, kv_len, 16), torch.randn(2, 3, kv_len, 16)
    # the model's own mask: the q_len queries are the last q_len of the kv_len positions
    q_idx = torch.arange(kv_len - q_len, kv_len)[None]
    mask = attention_mask(q_idx, kv_len, window)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    got = banded_attention(q, k, v, window)
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-6)
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask(q_idx, kv_len, None))
    if kv_len > window:
        assert (got - dense).abs().max() > 1e-3  # the band matters: not the dense result


def test_block_mask_skips_blocks_outside_the_band() -> None:
    from gptkit.flex import banded_block_mask

    bm = banded_block_mask(2048, 2048, 256, "cpu")
    # 128-token blocks: a query block sees its own block and at most two before it (256-token band)
    assert bm.sparsity() > 80.0
