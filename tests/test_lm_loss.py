"""gptkit.lm_loss: the output projection and cross-entropy fused in row chunks give the plain loss and gradients.

The oracle is the plain computation in float64 (`F.linear` then `F.cross_entropy`), with every chunking from one
row per chunk to one chunk; under bf16 autocast, the plain way under the same autocast. Through the model:
`GPT.forward(idx, targets=...)` gives the loss of its logits, and trains to the same weights.
"""

import pytest
import torch
import torch.nn.functional as F
from needs_compiler import needs_compiler

from gptkit import GPT, GPTConfig
from gptkit import lm_loss as lm_loss_module
from gptkit.compiled import CompiledOnUse
from gptkit.lm_loss import chunk_rows, lm_loss, plain_lm_loss


def oracle(h, w, y):
    h64 = h.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    loss = F.cross_entropy(F.linear(h64, w64).reshape(-1, w.shape[0]), y.reshape(-1))
    loss.backward()
    return loss.detach(), h64.grad, w64.grad


@pytest.mark.parametrize("rows", [1, 7, 64, None, 10_000])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_loss_and_gradients_equal_the_plain_ones(rows, dtype):
    gen = torch.Generator().manual_seed(rows or 0)
    h = torch.randn(3, 45, 16, generator=gen, dtype=dtype).requires_grad_()  # 135 rows: chunks end unevenly
    w = torch.randn(301, 16, generator=gen, dtype=dtype).requires_grad_()
    y = torch.randint(301, (3, 45), generator=gen)
    loss = lm_loss(h, w, y, rows_per_chunk=rows)
    (2.5 * loss).backward()  # the incoming gradient scales the saved ones
    ref, gh, gw = oracle(h, w, y)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert loss.dtype == dtype
    torch.testing.assert_close(loss.double(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(h.grad.double(), 2.5 * gh, rtol=tol, atol=tol)
    torch.testing.assert_close(w.grad.double(), 2.5 * gw, rtol=tol, atol=tol)


def test_under_bf16_autocast_it_is_the_plain_way_under_autocast():
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(200, 32, generator=gen).requires_grad_()
    w = (0.1 * torch.randn(500, 32, generator=gen)).requires_grad_()
    y = torch.randint(500, (200,), generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = lm_loss(h, w, y, rows_per_chunk=64)
    fused.backward()
    fh, fw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = plain_lm_loss(h, w, y)
    plain.backward()
    assert fused.dtype == plain.dtype == torch.float32 and fh.dtype == fw.dtype == torch.float32
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-6)  # the same bf16 products, softmax in float32
    torch.testing.assert_close(fh, h.grad, rtol=0, atol=4e-3 * h.grad.abs().max().item())
    torch.testing.assert_close(fw, w.grad, rtol=0, atol=4e-3 * w.grad.abs().max().item())
    ref = oracle(h, w, y)[0]
    assert abs(fused.item() - ref.item()) < 2e-2  # and bf16's rounding away from float64, not more


@needs_compiler
@pytest.mark.parametrize("vocab", [500, 8192])
def test_the_compiled_softmax_is_the_eager_one(vocab):
    gen = torch.Generator().manual_seed(vocab)
    logits = (3 * torch.randn(37, vocab, generator=gen)).bfloat16()
    y = torch.randint(vocab, (37,), generator=gen)
    assert lm_loss_module.training_path("cpu", torch.bfloat16) == "compiled"  # no shape chosen: compiled
    assert lm_loss_module.training_path("cpu", torch.float32) == "eager"
    loss, grad = lm_loss_module._softmax_rows_compiled(logits, y, 100)
    ref_loss, ref_grad = lm_loss_module._softmax_rows(logits.clone(), y, 100)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=1e-2, atol=1e-7)  # a bf16 rounding apart


def test_where_compiling_fails_the_softmax_runs_eagerly_after_one_warning(monkeypatch, caplog):
    def no_compiler(fn, **kw):
        def raising(*args):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\ndetails")
        return raising

    broken = CompiledOnUse(lm_loss_module._softmax_rows_to_compile, "the bf16 loss's softmax")
    monkeypatch.setattr(lm_loss_module, "_softmax_rows_compiled", broken)
    monkeypatch.setattr(torch, "compile", no_compiler)
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(50, 16, generator=gen).requires_grad_()
    w = torch.randn(300, 16, generator=gen).requires_grad_()
    y = torch.randint(300, (50,), generator=gen)
    with caplog.at_level("WARNING", logger="gptkit.compiled"), torch.autocast("cpu", dtype=torch.bfloat16):
        first, second = lm_loss(h, w, y), lm_loss(h, w, y)
    assert [r.getMessage() for r in caplog.records] == [
        ("gptkit: the bf16 loss's softmax not compiled (InvalidCxxCompiler: No working C++ compiler found); "
         "running it eagerly")]
    assert broken.failed and lm_loss_module.training_path("cpu", torch.bfloat16) == "eager"
    torch.testing.assert_close(first, second, rtol=1e-6, atol=1e-6)


def test_without_grad_mode_nothing_is_kept_for_backward():
    h = torch.randn(10, 8, requires_grad=True)
    w = torch.randn(40, 8, requires_grad=True)
    y = torch.randint(40, (10,))
    with torch.no_grad():
        loss = lm_loss(h, w, y)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss.double(), oracle(h, w, y)[0], rtol=1e-6, atol=1e-6)


def test_chunk_rows_follow_the_vocabulary():
    assert chunk_rows(65) == 1024 and chunk_rows(8192) == 128 and chunk_rows(50257) == 64
    assert chunk_rows(8192, compiled=True) == 512 and chunk_rows(50257, compiled=True) == 256
    assert all(r & (r - 1) == 0 for r in map(chunk_rows, (100, 3000, 8192, 32000, 50257, 200_000)))


def test_the_model_returns_its_logits_loss_and_trains_the_same(monkeypatch):
    """Without autocast GPT.forward(targets=) is the plain loss of its logits (float64 here: exact); under bf16
    autocast it is the fused loss, equal to the plain way under the same autocast, gradients included."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=24)
    a, b = GPT(cfg), GPT(cfg)
    b.load_state_dict(a.state_dict())
    assert a.lm_head.weight is a.transformer.wte.weight  # tied: the head's gradient reaches the embedding
    x = torch.randint(97, (3, 16))
    y = torch.randint(97, (3, 16))
    a64 = GPT(cfg).double()
    a64.load_state_dict(a.state_dict())
    torch.testing.assert_close(a64(x, targets=y), F.cross_entropy(a64(x).reshape(-1, 97), y.reshape(-1)),
                               rtol=0, atol=0)
    import gptkit.model

    calls = []
    monkeypatch.setattr(gptkit.model, "lm_loss", lambda *a, **k: calls.append(1) or lm_loss(*a, **k))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = a(x, targets=y)
    assert calls == [1]  # the fused path, under autocast only
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = F.cross_entropy(b(x).float().reshape(-1, 97), y.reshape(-1))
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-6)
    fused.backward()
    plain.backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        scale = pb.grad.abs().max().item()
        torch.testing.assert_close(pa.grad, pb.grad, rtol=0, atol=1e-2 * scale, msg=name)


@pytest.mark.parametrize("path", ["eager", "plain"])
def test_a_shape_chosen_eager_or_plain_never_compiles_the_softmax(monkeypatch, path):
    """choose_path's "eager" or "plain" (a resumed run's here; measured otherwise) holds for that shape only: the
    training loss there takes that way, and the compiled softmax is not touched."""
    monkeypatch.setattr(lm_loss_module, "_chosen", {})
    monkeypatch.setattr(lm_loss_module, "_softmax_rows_compiled",
                        CompiledOnUse(lambda *a: pytest.fail("compiled softmax called"), "test"))
    fused = lm_loss_module._FusedLinearCrossEntropy.apply
    monkeypatch.setattr(lm_loss_module._FusedLinearCrossEntropy, "apply",
                        lambda *a: fused(*a) if path == "eager" else pytest.fail("fused loss called"))
    assert lm_loss_module.choose_path(50, 16, 300, known=path) == path
    assert lm_loss_module.training_path("cpu", torch.bfloat16, (50, 300)) == path
    assert lm_loss_module.training_path("cpu", torch.bfloat16, (51, 300)) == "compiled"  # another shape
    gen = torch.Generator().manual_seed(5)
    h = torch.randn(50, 16, generator=gen).requires_grad_()
    w = torch.randn(300, 16, generator=gen).requires_grad_()
    y = torch.randint(300, (50,), generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, ref = lm_loss(h, w, y), plain_lm_loss(h, w, y)
    torch.testing.assert_close(loss, ref, rtol=0, atol=2e-2 if path == "eager" else 0)  # the plain way, to bf16's


def test_the_loss_path_is_measured_once_and_remembered(monkeypatch, tmp_path):
    from gptkit import autotune

    monkeypatch.setenv("GPTKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("GPTKIT_AUTOTUNE", "on")
    monkeypatch.setattr(lm_loss_module, "_chosen", {})
    calls = []
    monkeypatch.setattr(autotune, "measure", lambda work, rounds, **kw: calls.append(sorted(work)) or
                        {"eager": [1.0] * rounds, "compiled": [0.8] * rounds, "plain": [0.5] * rounds})
    assert lm_loss_module.choose_path(64, 8, 500) == "plain"
    assert lm_loss_module.choose_path(64, 8, 500) == "plain" and calls == [["compiled", "eager", "plain"]]
    assert lm_loss_module._chosen == {(64, 500): "plain"}
    monkeypatch.setattr(lm_loss_module, "_chosen", {})
    assert lm_loss_module.choose_path(64, 8, 500) == "plain" and len(calls) == 1  # remembered on disk


def test_the_plain_loss_is_a_candidate_only_where_all_its_logits_are_measured(monkeypatch, tmp_path):
    """Beyond MEASURED_LOGITS the measurement would time the plain way on a part of its logits, where it looks
    faster than on all of them: only the fused ways are measured there."""
    from gptkit import autotune

    monkeypatch.setenv("GPTKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("GPTKIT_AUTOTUNE", "on")
    monkeypatch.setattr(lm_loss_module, "_chosen", {})
    monkeypatch.setattr(lm_loss_module, "MEASURED_LOGITS", 64 * 500)
    measured = []

    def measure(work, rounds, **kw):
        measured.append(sorted(work))
        return {name: [0.1 if name == "plain" else 1.0] * rounds for name in work}

    monkeypatch.setattr(autotune, "measure", measure)
    assert lm_loss_module.choose_path(64, 8, 500) == "plain"  # all 32,000 logits in one timed call
    assert lm_loss_module.choose_path(65, 8, 500) == "eager"  # 32,500: plain not measured, so not chosen
    assert measured == [["compiled", "eager", "plain"], ["compiled", "eager"]]


def test_each_loss_path_measures_the_loss_and_its_gradients(monkeypatch, tmp_path):
    """The workloads choose_path times are the three ways of the real loss: forward and backward, the fused ones
    equal to the plain one to bf16's rounding."""
    from gptkit import autotune

    monkeypatch.setenv("GPTKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("GPTKIT_AUTOTUNE", "on")
    monkeypatch.setattr(lm_loss_module, "_chosen", {})
    seen = {}

    def measure(work, rounds, **kw):
        for name, run in work.items():
            run()
            seen[name] = True
        return {name: [1.0] * rounds for name in work}

    monkeypatch.setattr(autotune, "measure", measure)
    # the compiled way's arithmetic, uncompiled: this test checks what is timed, not inductor
    monkeypatch.setattr(lm_loss_module, "_softmax_rows_compiled", lm_loss_module._softmax_rows_to_compile)
    assert lm_loss_module.choose_path(40, 8, 70) == "eager"  # a tie keeps the default
    assert set(seen) == set(lm_loss_module.PATHS)
    gen = torch.Generator().manual_seed(9)
    h = torch.randn(40, 8, generator=gen).requires_grad_()
    w = torch.randn(70, 8, generator=gen).requires_grad_()
    y = torch.randint(70, (40,), generator=gen)
    grads = {}
    for path in lm_loss_module.PATHS:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = lm_loss_module._training_loss(h, w, y, torch.bfloat16, path)
        loss.backward()
        grads[path] = (loss.detach(), h.grad, w.grad)
        h.grad = w.grad = None
    for path in ("eager", "compiled"):
        for got, ref in zip(grads[path], grads["plain"]):
            torch.testing.assert_close(got, ref, rtol=0, atol=2e-2 * max(1.0, ref.abs().max().item()))

