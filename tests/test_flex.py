"""gptkit.flex: banded attention through flex_attention block masks equals the dense masked path, and the model's
"flex" attention backend gives the SDPA backend's logits; cases flex cannot serve (left padding, KV-cache
decoding, attention dropout) take the masked path; torch.compile sees no graph break with flex in the graph."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from gptkit.model import attention_mask

# eager flex_attention on CPU (the reference here) warns that it is not the fused kernel
pytestmark = [pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile"),
              pytest.mark.usefixtures("one_thread")]


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


# ------------------------------------------------------------------ the model's attention backends
# A band (24) much narrower than the sequence (300): three 128-token blocks (the last one partial), so the last
# query block skips the first key block because of the band, not only because of causality.
T, BAND = 300, 24


def tiny(attention: str = "alternating", **kw):
    from gptkit import GPT

    torch.manual_seed(0)
    kw = {"embd_pdrop": 0.0, "attn_pdrop": 0.0, "resid_pdrop": 0.0, **kw}
    # init_std 0.2: O(1) attention scores, so the band visibly changes the logits
    return GPT.from_preset("gpt-nano", vocab_size=64, block_size=T, attention=attention, band_width=BAND,
                           init_std=0.2, **kw).eval()


def tokens(B: int = 2, n: int = T) -> torch.Tensor:
    return torch.randint(0, 64, (B, n), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def flex_calls(monkeypatch) -> list[int]:
    """Counts the model's calls of gptkit.flex.flex_attention (one per banded layer per forward)."""
    import gptkit.flex

    calls: list[int] = []
    real = gptkit.flex.flex_attention

    def spy(q, k, v, block_mask):
        calls.append(q.size(2))
        return real(q, k, v, block_mask)

    monkeypatch.setattr(gptkit.flex, "flex_attention", spy)
    return calls


def with_backend(model, backend: str, idx: torch.Tensor, **kw) -> torch.Tensor:
    model.set_attention_backend(backend)
    try:
        return model(idx, **kw)
    finally:
        model.set_attention_backend("auto")


@pytest.mark.parametrize("attention", ["alternating", "banded"])
def test_model_flex_backend_equals_sdpa(attention: str, flex_calls: list[int]) -> None:
    model, idx = tiny(attention), tokens()
    with torch.no_grad():
        ref = with_backend(model, "sdpa", idx)
        assert flex_calls == []
        got = with_backend(model, "flex", idx)
        banded_layers = sum(b.attn.window is not None for b in model.transformer.h)
        assert flex_calls == [T] * banded_layers  # every banded layer went through flex_attention
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
        # the band matters: the same weights with dense attention give other logits
        dense = tiny("dense")
        dense.load_state_dict(model.state_dict())
        assert (dense(idx) - ref).abs().max() > 1e-2
        # "auto" is SDPA on a CPU
        flex_calls.clear()
        torch.testing.assert_close(model(idx), ref, rtol=0, atol=0)
        assert flex_calls == []


def test_model_flex_gradients_equal_sdpa() -> None:
    model, idx = tiny(), tokens()
    model.train()  # no dropout configured: training mode may use flex
    model.set_attention_backend("sdpa")
    model(idx).logsumexp(-1).mean().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.set_attention_backend("flex")
    try:
        loss = model(idx).logsumexp(-1).mean()
    except NotImplementedError as e:  # torch 2.13: "FlexAttention does not support backward on CPU"
        pytest.skip(f"torch {torch.__version__}: {e}")
    loss.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=0, atol=1e-5, msg=n)


def test_left_padded_rows_take_the_masked_path(flex_calls: list[int]) -> None:
    model, idx = tiny(), tokens()
    start = torch.tensor([0, 37])  # row 1 is left-padded: its sequence begins at index 37
    with torch.no_grad():
        ref = with_backend(model, "sdpa", idx, start=start)
        got = with_backend(model, "flex", idx, start=start)
        assert flex_calls == []
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
        # and the padded row equals that sequence on its own
        alone = with_backend(model, "flex", idx[1:, 37:])
        torch.testing.assert_close(got[1:, 37:], alone, rtol=0, atol=1e-5)


def test_kv_cache_decoding_takes_the_masked_path(flex_calls: list[int]) -> None:
    model, idx = tiny(), tokens()
    with torch.no_grad():
        full = with_backend(model, "flex", idx)
        n_full = len(flex_calls)
        assert n_full > 0
        model.set_attention_backend("flex")
        model.setup_kv_cache(2)
        try:
            # prefill past the first block and the band, a chunk, then one token at a time
            for a, b in [(0, 130), (130, 140)] + [(p, p + 1) for p in range(140, T)]:
                step = model(idx[:, a:b], pos=a)
                torch.testing.assert_close(step, full[:, a:b], rtol=0, atol=1e-4)
        finally:
            model.clear_kv_cache()
            model.set_attention_backend("auto")
        assert len(flex_calls) == n_full  # decoding never called flex
        # generate (the KV-cache path) gives the same tokens with either backend
        prompt = idx[:, :30]
        a = model.set_attention_backend("sdpa").generate(prompt, 20, temperature=0.0)
        b = model.set_attention_backend("flex").generate(prompt, 20, temperature=0.0)
        model.set_attention_backend("auto")
        assert torch.equal(a, b)


def test_attention_dropout_in_training_takes_the_masked_path(flex_calls: list[int]) -> None:
    model, idx = tiny(attn_pdrop=0.2), tokens()
    model.train()
    with torch.no_grad():
        torch.manual_seed(5)
        ref = with_backend(model, "sdpa", idx)
        torch.manual_seed(5)
        got = with_backend(model, "flex", idx)
        assert flex_calls == []  # flex_attention has no dropout
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
        model.eval()  # no dropout in eval mode: flex again
        with_backend(model, "flex", idx)
        assert flex_calls


def test_set_attention_backend_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="attention backend must be one of auto, sdpa, flex"):
        tiny().set_attention_backend("flash")


@pytest.mark.parametrize("attention", ["dense", "alternating"])
def test_compile_with_flex_has_no_graph_breaks(attention: str, recwarn) -> None:
    """With flex forced (as "auto" does on CUDA) the block mask is built inside the graph: one graph, no break,
    and no lru_cache that dynamo would bypass. No grad: torch 2.13 has no flex_attention backward on CPU.
    The captured graph runs as it is (inductor's CPU flex kernel takes a minute to compile: see the slow test)."""
    model, idx = tiny(attention), tokens()
    graphs = []

    def capture(gm: torch.fx.GraphModule, example_inputs) -> object:
        graphs.append(gm)
        return gm.forward

    with torch.no_grad():
        ref = with_backend(tiny(attention), "sdpa", idx)
        model.set_attention_backend("flex")
        torch._dynamo.reset()
        got = torch.compile(model, backend=capture, fullgraph=True)(idx)  # fullgraph: a graph break raises
        torch._dynamo.reset()
    assert len(graphs) == 1
    assert ("flex_attention" in graphs[0].code) == (attention != "dense")  # flex is in the graph, not skipped
    assert not [w for w in recwarn if "lru_cache" in str(w.message)]
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("GPTKIT_SLOW"), reason="inductor's CPU flex kernel takes ~50 s to compile; "
                    "GPTKIT_SLOW=1 runs it")
def test_inductor_compiled_flex_forward_equals_sdpa() -> None:
    model, idx = tiny(), tokens()
    with torch.no_grad():
        ref = with_backend(model, "sdpa", idx)
        model.set_attention_backend("flex")
        torch._dynamo.reset()
        got = torch.compile(model, fullgraph=True)(idx)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    torch._dynamo.reset()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compiled", [False, True])
def test_cuda_auto_uses_flex_with_the_same_logits_and_gradients(compiled: bool, flex_calls: list[int]) -> None:
    """On CUDA "auto" is flex for training: logits and gradients equal the masked SDPA path (float32)."""
    model, idx = tiny().cuda().train(), tokens().cuda()

    def grads(backend: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.set_attention_backend(backend)
        model.zero_grad(set_to_none=True)
        torch._dynamo.reset()
        fwd = torch.compile(model, fullgraph=True) if compiled else model
        logits = fwd(idx)
        logits.logsumexp(-1).mean().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    ref_logits, ref = grads("sdpa")
    assert flex_calls == []
    logits, got = grads("auto")
    assert flex_calls  # the banded layers went through flex_attention
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-4)
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-3, atol=1e-5, msg=n)
    torch._dynamo.reset()


def test_block_mask_is_cached_in_eager_mode() -> None:
    from gptkit.flex import banded_block_mask

    bm = banded_block_mask(T, T, BAND, "cpu")
    assert bm is banded_block_mask(T, T, BAND, torch.device("cpu"))
    tiles = bm.to_dense()[0, 0].bool()  # (3, 3) query block × key block: computed or skipped
    assert tiles.tolist() == [[True, False, False], [True, True, False], [False, True, True]]


# ---------------------------------------------------------------------------------- gptkit train flag
def test_train_rejects_a_bad_attention_backend(capsys, tmp_path) -> None:
    from gptkit.cli import main

    rc = main(["train", "--data", str(tmp_path), "--attention-backend", "flash"])
    err = capsys.readouterr().err
    assert rc == 2 and err == "gptkit: error: --attention-backend must be auto, sdpa or flex, got 'flash'\n"


def test_train_refuses_flex_on_cpu(capsys, tmp_path) -> None:
    from gptkit.cli import main
    from gptkit.data.prepare import prepare

    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question. " * 200)
    prepare([str(text)], tmp_path / "data", tokenizer="char")
    rc = main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--device", "cpu",
               "--attention-backend", "flex", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("gptkit: error: --attention-backend flex needs a CUDA device") \
        and err.count("\n") == 1, err
