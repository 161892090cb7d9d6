"""gptkit.cpu_attention: the bf16 attention backward against float64 SDPA, chunked and unchunked, its fallback."""

import logging

import pytest
import torch
import torch.nn.functional as F
from needs_compiler import needs_compiler

from gptkit import cpu_attention
from gptkit.compiled import CompiledOnUse
from gptkit.config import GPTConfig
from gptkit.model import GPT


def _qkv(b, h, t, hs, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, t, hs, generator=g).to(dtype).requires_grad_() for _ in range(3)]


def _grads(fn, q, k, v, grad_out):
    for x in (q, k, v):
        x.grad = None
    out = fn(q, k, v)
    out.backward(grad_out)
    return out.detach(), [x.grad.clone() for x in (q, k, v)]


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _rel_err(got, want):
    return ((got.double() - want).abs().max() / want.abs().max()).item()


@needs_compiler  # without one the first call falls back for good, and `wanted` says no from then on
@pytest.mark.parametrize("shape", [(2, 4, 64, 32), (1, 3, 100, 16)])
def test_bf16_gradients_match_float64_as_closely_as_sdpas_own(shape):
    q, k, v = _qkv(*shape)
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(1)).bfloat16()
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    _, want = _grads(_sdpa, q64, k64, v64, grad_out.double())
    assert cpu_attention.wanted(q, 0.0)
    out, got = _grads(cpu_attention.causal_attention, q, k, v, grad_out)
    ref_out, sdpa = _grads(_sdpa, q, k, v, grad_out)
    assert torch.equal(out, ref_out)  # the same flash forward
    for g, s, w in zip(got, sdpa, want):
        assert g.dtype == torch.bfloat16
        assert _rel_err(g, w) < 2e-2
        assert _rel_err(g, w) < 3 * _rel_err(s, w) + 2e-3  # no worse than SDPA's bf16 backward, to a margin


@needs_compiler
def test_chunks_of_rows_give_the_unchunked_gradients(monkeypatch):
    q, k, v = _qkv(3, 2, 16, 8)  # 6 rows of (16, 16) scores
    grad_out = torch.randn(3, 2, 16, 8).bfloat16()
    _, whole = _grads(cpu_attention.causal_attention, q, k, v, grad_out)
    monkeypatch.setattr(cpu_attention, "SCORES_PER_CHUNK", 4 * 16 * 16)  # chunks of 3 rows: 2 chunks
    _, chunked = _grads(cpu_attention.causal_attention, q, k, v, grad_out)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@needs_compiler
def test_where_it_is_not_wanted_sdpa_runs():
    q = _qkv(1, 2, 8, 4)[0]
    assert not cpu_attention.wanted(q, 0.1)  # attention dropout
    assert not cpu_attention.wanted(q.detach(), 0.0)  # no gradients
    with torch.no_grad():
        assert not cpu_attention.wanted(q, 0.0)
    assert not cpu_attention.wanted(_qkv(1, 2, 8, 4, dtype=torch.float32)[0], 0.0)  # float32: SDPA's is faster
    assert not cpu_attention.wanted(q[:, :, :1], 0.0)  # one query
    long = torch.zeros(1, 1, cpu_attention.MAX_CONTEXT + 1, 4, dtype=torch.bfloat16, requires_grad=True)
    assert not cpu_attention.wanted(long, 0.0)  # SDPA's backward is faster there
    assert cpu_attention.wanted(long[:, :, 1:], 0.0)


def test_a_compiler_failure_falls_back_once_with_one_warning(monkeypatch, caplog):
    def broken(*tensors):
        raise RuntimeError("no C++ compiler found\nmore detail")

    chunk = CompiledOnUse(cpu_attention._backward_rows, "the bf16 attention backward")
    chunk._compiled = {False: broken}  # the per-shape compile, as training calls it
    monkeypatch.setattr(cpu_attention, "_backward_chunk", chunk)
    q, k, v = _qkv(1, 2, 12, 8)
    grad_out = torch.randn(1, 2, 12, 8).bfloat16()
    with caplog.at_level(logging.WARNING, logger="gptkit.compiled"):
        _, got = _grads(cpu_attention.causal_attention, q, k, v, grad_out)
    assert [r.getMessage() for r in caplog.records] == [
        "gptkit: the bf16 attention backward not compiled (no C++ compiler found); running it eagerly"]
    eager = cpu_attention._backward_rows(*(x.detach().reshape(2, 12, 8) for x in (q, k, v)),
                                         *_out_and_lse(q, k, v), grad_out.reshape(2, 12, 8))
    for g, e in zip(got, eager):
        assert torch.equal(g.reshape(2, 12, 8), e)
    assert not cpu_attention.wanted(q, 0.0)  # from now on SDPA's backward


def _out_and_lse(q, k, v):
    out, lse = cpu_attention._flash(q.detach(), k.detach(), v.detach(), 0.0, True)
    return out.reshape(-1, *out.shape[2:]), lse.reshape(-1, lse.shape[-1])


def test_a_bf16_training_step_of_the_model_matches_the_sdpa_backward(monkeypatch):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32))
    x = torch.randint(0, 64, (4, 32))

    def grads():
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x, targets=x)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss, ours = grads()
    monkeypatch.setattr(cpu_attention, "wanted", lambda q, dropout: False)
    ref_loss, ref = grads()
    assert loss == ref_loss
    for name, g in ours.items():
        assert _rel_err(g, ref[name].double()) < 5e-2, name


@needs_compiler
def test_a_compiled_model_keeps_this_backward_as_custom_operators(monkeypatch):
    """Traced by torch.compile, the attention is the two custom operators, not SDPA (whose bf16 flash backward
    is the slow kernel this replaces): the same gradients as eagerly, computed by this module's backward."""
    q, k, v = _qkv(3, 2, 24, 8)
    grad_out = torch.randn(3, 2, 24, 8, generator=torch.Generator().manual_seed(2)).bfloat16()
    eager_out, eager = _grads(cpu_attention.causal_attention, q, k, v, grad_out)
    calls = []
    real = cpu_attention._backward
    monkeypatch.setattr(cpu_attention, "_backward", lambda *a: calls.append(1) or real(*a))
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, v: cpu_attention.causal_attention(q, k, v) * 1.0, fullgraph=True)
    out, got = _grads(compiled, q, k, v, grad_out)
    assert calls  # the backward ran through this module
    assert torch.equal(out, eager_out)
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_float32_path_is_float32_sdpa_and_needs_no_compiler(monkeypatch):
    """A shape chosen "float32" trains through SDPA in float32 even under bf16 autocast (which would otherwise
    cast it back to bf16): output and gradients are float32 SDPA's on the upcast inputs, rounded to bf16, and
    nothing here is compiled."""
    monkeypatch.setattr(cpu_attention, "_chosen", {})
    monkeypatch.setattr(cpu_attention, "_backward_chunk", lambda *a: pytest.fail("compiled backward called"))
    q, k, v = _qkv(2, 3, 20, 8)
    grad_out = torch.randn(2, 3, 20, 8, generator=torch.Generator().manual_seed(4)).bfloat16()
    assert cpu_attention.choose_path(2, 3, 20, 8, known="float32") == "float32"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, got = _grads(cpu_attention.causal_attention, q, k, v, grad_out)
    up = [x.detach().float().requires_grad_() for x in (q, k, v)]
    want_out, want = _grads(_sdpa, *up, grad_out.float())
    assert out.dtype == torch.bfloat16 and torch.equal(out, want_out.bfloat16())
    for g, w in zip(got, want):
        assert g.dtype == torch.bfloat16 and torch.equal(g, w.bfloat16())
    assert cpu_attention.choose_path(2, 3, 1, 8) is None  # one query: no choice, SDPA's own
    assert cpu_attention.choose_path(2, 3, cpu_attention.MAX_CONTEXT + 1, 8) is None


@pytest.mark.parametrize(("bf16_s", "expected"), [(0.7, "bfloat16"), (0.95, "float32")])
def test_the_path_is_measured_once_and_float32_kept_unless_clearly_slower(monkeypatch, tmp_path, bf16_s, expected):
    from gptkit import autotune

    monkeypatch.setenv("GPTKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("GPTKIT_AUTOTUNE", "on")
    monkeypatch.setattr(cpu_attention, "_chosen", {})
    calls = []

    def fake_measure(work, rounds, **kw):
        calls.append(sorted(work))
        return {"float32": [1.0] * rounds, "bfloat16": [bf16_s] * rounds}

    monkeypatch.setattr(autotune, "measure", fake_measure)
    assert cpu_attention.choose_path(4, 2, 16, 8) == expected
    assert cpu_attention._chosen == {(4, 2, 16, 8): expected}
    assert cpu_attention.choose_path(4, 2, 16, 8) == expected and calls == [["bfloat16", "float32"]]  # this process
    monkeypatch.setattr(cpu_attention, "_chosen", {})
    assert cpu_attention.choose_path(4, 2, 16, 8) == expected and len(calls) == 1  # remembered on disk
    assert cpu_attention.choose_path(4, 2, 32, 8, known="bfloat16") == "bfloat16" and len(calls) == 1  # a resume's
