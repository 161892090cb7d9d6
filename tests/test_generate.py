"""The generation core (gptkit.generate): batching changes nothing, and every feature has an oracle.

- Left-padded batches of prompts of different lengths give the tokens and logits each prompt gets alone,
  and the greedy tokens transformers' `generate` gives for the same left-padded batch.
- Continuous batching (generations joining and leaving between steps, each row at its own position) gives
  each generation the tokens it gets alone; a seed gives the same sample whatever the batch holds.
- Log-probabilities equal a float64 recomputation; penalties equal a hand-written decoding loop; per-row
  top-k/top-p equal `filter_logits`; the sampler's frequencies match the softmax.
- Stop sequences cut the text exactly where an unstopped run shows them, and a stream never shows them.
- The detokenizer never splits a UTF-8 character of GPT-2's byte-level BPE.

Weights are re-drawn with O(1) activations (as in test_model.py) so that a wrong mask or position would show.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses
import math

import pytest
import torch
import torch.nn as nn

from gptkit import GPT, GPTConfig, Tokenizer
from gptkit.generate import (Detokenizer, Engine, Generation, GenerationError, SamplingParams, complete,
                             filter_logits, generate, iter_generations)

pytestmark = pytest.mark.usefixtures("one_thread")

V = 61
TEXT = "the quick brown fox jumps over the lazy dog; ROMEO: o Juliet, wherefore art thou? 0123456789\n"


def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Weights with O(1) activations: linear N(0, 1/fan_in), embeddings N(0, 0.5²), LayerNorm 1 + N(0, 0.2²)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Embedding):
                mod.weight.copy_(0.5 * torch.randn(mod.weight.shape, generator=g))
            elif isinstance(mod, nn.LayerNorm):
                mod.weight.copy_(1 + 0.2 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
            elif isinstance(mod, nn.Linear):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) / math.sqrt(mod.weight.shape[1]))
                if mod.bias is not None:
                    mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
    return model


def tiny(seed: int = 0, vocab: int = V, **kw) -> GPT:
    cfg = GPTConfig(vocab_size=vocab, block_size=kw.pop("block_size", 32), n_layer=2, n_head=2, n_embd=24,
                    **kw)
    torch.manual_seed(seed)
    return randomize_(GPT(cfg), seed).eval()


def prompts(lengths, seed: int = 1, vocab: int = V) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, temperature=0.0, **kw)


def reference_greedy(model: GPT, prompt: list[int], n: int) -> list[int]:
    """Full forward over the whole sequence at every step, argmax: no cache, no batching."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt):]


VARIANTS = {
    "dense-pre-learned": dict(),
    "alternating-pre-sinusoidal": dict(attention="alternating", band_width=3, pos="sinusoidal"),
    "banded-post-learned": dict(norm="post", final_norm=False, attention="banded", band_width=4),
}


# ------------------------------------------------------------------------------------ the model's new inputs
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_left_padding_and_per_row_positions_equal_each_row_alone(variant):
    """model(idx, pos, start): left-padded rows (start) and rows at different cache indices (pos tensor) get
    the logits each row gets from a plain forward of its own sequence."""
    from gptkit.model import KVCache

    model = tiny(seed=2, **VARIANTS[variant])
    c = model.config
    seqs = prompts([5, 9, 2], seed=3)
    width = max(map(len, seqs))
    idx = torch.tensor([[0] * (width - len(s)) + s for s in seqs])
    start = torch.tensor([width - len(s) for s in seqs])
    with torch.no_grad():
        alone = [model(torch.tensor([s]))[0] for s in seqs]
        padded = model(idx, start=start)  # no cache: the mask alone must hide the padding
        for b, s in enumerate(seqs):
            torch.testing.assert_close(padded[b, width - len(s):], alone[b], rtol=0, atol=1e-5)
        # now through a cache, then one step with every row at its own index
        caches = [KVCache(3, c.n_head, 16, c.head_size) for _ in range(c.n_layer)]
        model.transformer(idx, caches, 0, start)
        nxt = [3, 7, 11]
        h = model.transformer(torch.tensor(nxt)[:, None], caches, torch.full((3,), width), start)
        step = model.lm_head(h[:, -1])
        for b, s in enumerate(seqs):
            ref = model(torch.tensor([s + [nxt[b]]]))[0, -1]
            torch.testing.assert_close(step[b], ref, rtol=0, atol=1e-5)
        # rows whose sequences start at index 0 but end at different indices (continuous batching)
        caches = [KVCache(3, c.n_head, 16, c.head_size) for _ in range(c.n_layer)]
        for b, s in enumerate(seqs):
            model.transformer(torch.tensor([s]), [k.rows(b, b + 1) for k in caches], 0)
        h = model.transformer(torch.tensor(nxt)[:, None], caches, torch.tensor([len(s) for s in seqs]))
        step = model.lm_head(h[:, -1])
        for b, s in enumerate(seqs):
            ref = model(torch.tensor([s + [nxt[b]]]))[0, -1]
            torch.testing.assert_close(step[b], ref, rtol=0, atol=1e-5)
        # a wrong start would be caught: padding that is attended to changes the logits
        wrong = model(idx, start=torch.zeros(3, dtype=torch.long))
        assert (wrong[0, -1] - alone[0][-1]).abs().max() > 1e-3


def test_per_row_positions_past_the_context_are_an_error():
    model = tiny()
    with pytest.raises(ValueError, match="longer than the context"):
        model(torch.zeros((2, 3), dtype=torch.long), pos=torch.tensor([0, 30]))


# ------------------------------------------------------------------------------------------ batching
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_batched_prompts_of_different_lengths_equal_each_alone(variant):
    model = tiny(seed=4, **VARIANTS[variant])
    ps = prompts([3, 11, 1, 7], seed=5)
    n = 12
    batched = complete(model, ps, greedy(n))
    for g, p in zip(batched, ps):
        assert g.tokens == reference_greedy(model, p, n)
        assert g.finish_reason == "length"
    assert len({t for g in batched for t in g.tokens}) >= 4  # not a degenerate constant output


def test_greedy_batch_matches_transformers_generate_with_left_padding():
    transformers = pytest.importorskip("transformers")
    from gptkit.interop.hf import export_hf

    model = tiny(seed=6)
    hf_dir = "hf"
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        export_hf(model, f"{d}/{hf_dir}")
        hf = transformers.GPT2LMHeadModel.from_pretrained(f"{d}/{hf_dir}").eval()
    ps = prompts([4, 9, 6], seed=7)
    width, n = 9, 10
    ids = torch.tensor([[0] * (width - len(p)) + p for p in ps])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ps])
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                          pad_token_id=0, eos_token_id=None)[:, width:]
    ours = complete(model, ps, greedy(n))
    assert [g.tokens for g in ours] == ref.tolist()


def test_continuous_batching_rows_join_and_leave():
    """Eight generations through a 3-row engine: they join as rows free up, each row at its own position,
    and every one gets exactly the tokens it gets alone."""
    model = tiny(seed=8, attention="alternating", band_width=5)
    ps = prompts([2, 9, 5, 1, 12, 3, 7, 4], seed=9)
    lengths = [5, 1, 9, 3, 6, 12, 2, 4]
    engine = Engine(model, max_batch=3)
    gens = [engine.submit(Generation(p, greedy(n))) for p, n in zip(ps, lengths)]
    ptrs = None
    rows_seen = set()
    for _ in engine.run():
        rows_seen.add(len(engine.rows))
        if engine.caches is not None:
            now = [c.k.data_ptr() for c in engine.caches]
            assert ptrs is None or now == ptrs  # preallocated once: never re-allocated or concatenated
            ptrs = now
    assert 3 in rows_seen and max(rows_seen) <= 3
    for g, p, n in zip(gens, ps, lengths):
        assert g.tokens == reference_greedy(model, p, n), (p, n)


def test_sliding_window_beyond_the_context():
    """The Python API keeps generating past block_size: the window slides, as a no-cache run does."""
    model = tiny(seed=10, block_size=16)
    ps = prompts([5, 20, 14], seed=11)
    cached = complete(model, ps, greedy(25))
    uncached = complete(model, ps, greedy(25), use_cache=False)
    assert [g.tokens for g in cached] == [g.tokens for g in uncached]
    # and the no-cache path is the plain recipe: argmax of a forward over the last block_size tokens
    seq = list(ps[1])
    with torch.no_grad():
        for _ in range(25):
            seq.append(int(model(torch.tensor([seq[-16:]]))[0, -1].argmax()))
    assert uncached[1].tokens == seq[20:]


def test_generate_contract_and_tensor_prompts():
    model = tiny(seed=12)
    idx = torch.tensor(prompts([6, 6], seed=13))
    out = generate(model, idx, 7, temperature=0.0)
    assert out.shape == (2, 13) and torch.equal(out[:, :6], idx)
    assert out[0, 6:].tolist() == reference_greedy(model, idx[0].tolist(), 7)
    assert torch.equal(generate(model, idx, 0), idx)


# ------------------------------------------------------------------------------------- sampling and seeds
def test_seed_gives_the_same_sample_whatever_the_batch_holds():
    model = tiny(seed=14)
    p = prompts([6], seed=15)[0]
    params = SamplingParams(max_new_tokens=20, temperature=1.3, top_p=0.95, seed=123)
    alone = complete(model, [p], params)[0].tokens
    others = [SamplingParams(max_new_tokens=n, temperature=t, top_k=k, seed=s)
              for n, t, k, s in ((5, 0.5, 3, 1), (30, 1.0, None, None), (2, 0.0, None, None))]
    mixed = complete(model, prompts([3, 9, 4], seed=16) + [p], [*others, params], max_batch=2)
    assert mixed[-1].tokens == alone
    assert complete(model, [p], dataclasses.replace(params, seed=124))[0].tokens != alone
    assert len(set(alone)) > 5  # really sampled


def test_per_row_filters_equal_filter_logits():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 50, generator=g) * 3
    params = [SamplingParams(top_k=k, top_p=p) for k, p in
              ((1, None), (5, None), (None, 0.3), (None, 0.9), (7, 0.5), (50, 0.999))]
    ours = Engine._filter(x.clone(), params)
    for r, sp in enumerate(params):
        ref = filter_logits(x[r:r + 1], sp.top_k, sp.top_p)[0]
        assert torch.equal(torch.isfinite(ours[r]), torch.isfinite(ref)), r
        assert torch.equal(ours[r][torch.isfinite(ours[r])], x[r][torch.isfinite(ref)])


def test_sampler_frequencies_follow_the_tempered_nucleus():
    model = tiny(vocab=5)
    engine = Engine(model)
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    temp, top_p = 0.7, 0.9
    probs = torch.softmax(logits / temp, -1)
    keep = (probs.cumsum(-1) - probs) < top_p  # (already sorted descending)
    expected = torch.where(keep, probs, torch.zeros(())) / probs[keep].sum()
    gen = Generation([0], SamplingParams(temperature=temp, top_p=top_p), generator=torch.Generator().manual_seed(0))
    N = 20000
    counts = torch.zeros(5)
    for _ in range(N // 100):
        toks, _ = engine._sample(logits.repeat(100, 1), [gen] * 100)
        counts += torch.bincount(torch.tensor(toks), minlength=5)
    freq = counts / N
    assert counts[~keep].sum() == 0
    assert (freq - expected).abs().max() < 0.015, (freq, expected)


def test_penalties_equal_a_hand_written_loop():
    model = tiny(seed=17)
    p = prompts([4], seed=18)[0]
    n, pres, freq = 24, 0.7, 0.9
    seq, counts = list(p), torch.zeros(V)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([seq]))[0, -1]
            logits = logits - freq * counts - pres * (counts > 0).float()
            t = int(logits.argmax())
            seq.append(t)
            counts[t] += 1
    got = complete(model, [p], greedy(n, presence_penalty=pres, frequency_penalty=freq))[0].tokens
    assert got == seq[len(p):]
    assert got != reference_greedy(model, p, n)  # the penalties did change something
    assert len(set(got)) > len(set(reference_greedy(model, p, n)))


def test_logprobs_equal_a_float64_recomputation():
    model = tiny(seed=19)
    p = prompts([5], seed=20)[0]
    g = complete(model, [p], SamplingParams(max_new_tokens=8, temperature=1.0, seed=3, logprobs=4,
                                             prompt_logprobs=True))[0]
    m64 = tiny(seed=19).double()
    seq = p + g.tokens
    with torch.no_grad():
        ref = torch.log_softmax(m64(torch.tensor([seq]))[0], dim=-1)  # (T, V)
    assert len(g.logprobs) == 8 and g.prompt_logprobs[0] is None and len(g.prompt_logprobs) == len(p)
    for i, lp in enumerate(g.logprobs):
        row = ref[len(p) - 1 + i]
        assert lp.token == g.tokens[i]
        assert abs(lp.logprob - row[lp.token].item()) < 1e-5
        top = torch.topk(row, 4)
        assert [t for t, _ in lp.top] == top.indices.tolist()
        assert max(abs(v - w) for (_, v), w in zip(lp.top, top.values.tolist())) < 1e-5
    for j in range(1, len(p)):
        assert abs(g.prompt_logprobs[j].logprob - ref[j - 1, p[j]].item()) < 1e-5
    # scoring only: no new token, the prompt's log-probs still come back
    scored = complete(model, [p], SamplingParams(max_new_tokens=0, prompt_logprobs=True, logprobs=0))[0]
    assert scored.tokens == [] and scored.finish_reason == "length"
    assert [x.logprob for x in scored.prompt_logprobs[1:]] == pytest.approx(
        [x.logprob for x in g.prompt_logprobs[1:]], abs=1e-6)


# ---------------------------------------------------------------------------------------------- text
@pytest.fixture(scope="module")
def char_model() -> GPT:
    tok = Tokenizer.train_char(TEXT)
    model = tiny(seed=21, vocab=tok.vocab_size, block_size=64)
    model.tokenizer = tok
    return model


def test_stop_sequences_cut_where_an_unstopped_run_shows_them(char_model):
    tok = char_model.tokenizer
    prompt = tok.encode("ROMEO: ")
    free = complete(char_model, [prompt], greedy(40), tokenizer=tok)[0]
    text = free.text
    assert text == tok.decode(free.tokens) and len(text) == 40
    stop = text[17:20]  # a stop that appears in the free run
    first = text.find(stop)
    g = complete(char_model, [prompt], greedy(40, stop=("zzz-not-there", stop)), tokenizer=tok)[0]
    assert g.finish_reason == "stop" and g.text == text[:first]
    # streamed pieces join to the same text, and never show any part of the stop sequence
    events = list(iter_generations(char_model, [prompt], greedy(40, stop=(stop,)), tokenizer=tok))
    assert "".join(e.text for e in events) == text[:first]
    assert events[-1].finished and sum(e.finished for e in events) == 1
    # a stop token ends it too, and is not part of the text
    at = next(i for i, t in enumerate(free.tokens) if i > 0 and free.tokens.index(t) == i)  # a first occurrence
    g = complete(char_model, [prompt], greedy(40, stop_token_ids=(free.tokens[at],)), tokenizer=tok)[0]
    assert g.finish_reason == "stop" and g.tokens == free.tokens[:at + 1] and g.text == tok.decode(free.tokens[:at])


def test_detokenizer_never_splits_a_utf8_character(shared_data):
    tok = Tokenizer.from_pretrained(shared_data / "gpt2-bpe-vocab")
    text = "naïve café — 東京タワー 🙂👍🏽 and ünïcödé, ∑ x² ≤ ∞."
    ids = tok.encode(text)
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # some tokens really are pieces of a character
    context = tok.encode("Prompt:")
    d = Detokenizer(tok, context)
    pieces = [d.push(i) for i in ids] + [d.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_prompt_text_and_events(char_model):
    tok = char_model.tokenizer
    evs = list(iter_generations(char_model, ["to be", "or not"], greedy(6), tokenizer=tok))
    assert len(evs) == 12 and sum(e.finished for e in evs) == 2
    by = {}
    for e in evs:
        by.setdefault(id(e.generation), []).append(e.text)
    assert sorted(len("".join(v)) for v in by.values()) == [6, 6]


def test_cancel_frees_the_row(char_model):
    engine = Engine(char_model, char_model.tokenizer, max_batch=2)
    a = engine.submit(Generation([1, 2, 3], greedy(30)))
    b = engine.submit(Generation([4, 5], greedy(30)))
    c = engine.submit(Generation([6], greedy(3)))
    engine.step()
    assert engine.rows == [a, b] and list(engine.waiting) == [c]
    a.cancel()
    evs = engine.step()
    assert a.finish_reason == "cancelled" and any(e.generation is a and e.finished for e in evs)
    assert a not in engine.rows and c in engine.rows
    while engine.busy:
        engine.step()
    assert c.tokens == reference_greedy(char_model, [6], 3)
    assert b.tokens == reference_greedy(char_model, [4, 5], 30)


def test_inference_layout_changes_memory_order_not_results():
    from gptkit.generate import inference_layout_

    model = tiny(seed=25, block_size=64)
    idx = torch.tensor(prompts([20, 20], seed=26))
    with torch.no_grad():
        before = model(idx)
    ref = complete(model, idx.tolist(), greedy(10))
    inference_layout_(model)
    w = model.transformer.h[0].mlp.c_fc.weight  # (96, 24): more rows than columns, so flipped
    assert w.shape == (96, 24) and w.stride() == (1, 96)
    assert model.lm_head.weight is model.transformer.wte.weight and model.lm_head.weight.stride() == (1, V)
    assert model.transformer.h[0].mlp.c_proj.weight.is_contiguous()  # (24, 96): left alone
    with torch.no_grad():
        torch.testing.assert_close(model(idx), before, rtol=0, atol=1e-5)
    assert [g.tokens for g in complete(model, idx.tolist(), greedy(10))] == [g.tokens for g in ref]
    from gptkit.checkpoint import model_state_dict

    assert all(t.is_contiguous() for t in model_state_dict(model).values())  # saves as before


def test_numpy_blas_linears_give_the_same_results_over_the_same_parameters():
    from gptkit.checkpoint import model_state_dict
    from gptkit.generate import NumpyBlasLinear, prepare_for_inference, uses_numpy_blas

    model = tiny(seed=27, block_size=64)
    idx = torch.tensor(prompts([20, 20], seed=28))
    with torch.no_grad():
        before = model(idx)
    ref = [g.tokens for g in complete(model, idx.tolist(), greedy(10))]
    mixed = [[3], [5, 6, 7, 8, 9, 10]]  # one-row decode steps (BLAS gemv) and left-padded batches (gemm)
    ref_mixed = [g.tokens for g in complete(model, mixed, greedy(12))]
    names = list(model_state_dict(model))
    params = {n: p for n, p in model.named_parameters()}
    assert prepare_for_inference(model, blas="numpy") is model and uses_numpy_blas(model)
    assert type(model.transformer.h[0].attn.c_attn) is NumpyBlasLinear and not any(
        type(m) is nn.Linear for m in model.modules())
    # the same Parameter objects: names, the tied head, state_dict and saving are unchanged
    assert all(p is params[n] for n, p in model.named_parameters())
    assert model.lm_head.weight is model.transformer.wte.weight and list(model_state_dict(model)) == names
    with torch.inference_mode():
        torch.testing.assert_close(model(idx), before, rtol=0, atol=1e-5)  # float32 rounding only
        one = model(idx[:1, :1])  # the gemv path
    torch.testing.assert_close(one, before[:1, :1], rtol=0, atol=1e-5)
    assert [g.tokens for g in complete(model, idx.tolist(), greedy(10))] == ref
    assert [g.tokens for g in complete(model, mixed, greedy(12))] == ref_mixed
    assert torch.get_num_threads() == 1  # the engine restores torch's thread count after each step (fixture: 1)
    torch.set_num_threads(2)
    try:
        complete(model, mixed, greedy(3))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    # with autograd on it is F.linear: training through it gives nn.Linear's gradients
    x = torch.randn(3, 24, requires_grad=True)
    layer = model.transformer.h[0].mlp.c_fc
    layer(x).square().sum().backward()
    g = layer.weight.grad.clone()
    layer.weight.grad = None
    torch.nn.functional.linear(x, layer.weight, layer.bias).square().sum().backward()
    assert torch.equal(layer.weight.grad, g)


def test_numpy_blas_runs_on_the_threads_torch_was_given(monkeypatch):
    """OpenBLAS starts one thread per core; beside another busy process those threads wait on each other (26 ->
    3 tokens/s measured). Inside a decoding step numpy's BLAS gets torch's thread count (`--threads`), and its own
    count comes back after the step."""
    from threadpoolctl import threadpool_info

    from gptkit.generate import Engine, prepare_for_inference

    def blas_threads():
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    outside = blas_threads()
    if not outside or os.cpu_count() < 2:
        pytest.skip("needs numpy's BLAS with a pool of more than one thread (a machine with 2+ cores)")
    model = prepare_for_inference(tiny(seed=5), blas="numpy")
    seen = []
    real_step = Engine._step
    monkeypatch.setattr(Engine, "_step", lambda self: seen.append((blas_threads(), torch.get_num_threads()))
                        or real_step(self))
    assert torch.get_num_threads() == 1  # the suite's fixture
    complete(model, [[3, 4]], greedy(2))
    assert seen and all(s == ({1}, 1) for s in seen)
    assert blas_threads() == outside


def test_blas_auto_takes_the_measured_choice_and_remembers_it(tmp_path, monkeypatch, capsys):
    """--blas auto (the default) asks gptkit.autotune: the real workloads run once per machine and shape, the
    answer is remembered, and without measuring (GPTKIT_AUTOTUNE=off) the simpler torch path is kept."""
    from gptkit import autotune
    from gptkit.generate import _blas_workloads, prepare_for_inference, uses_numpy_blas

    assert not uses_numpy_blas(prepare_for_inference(tiny(seed=3)))  # the suite runs with autotuning off
    monkeypatch.setenv("GPTKIT_AUTOTUNE", "on")
    monkeypatch.setenv("GPTKIT_CACHE_DIR", str(tmp_path))
    seen = []

    def measure_fn(work, rounds, settle_s=0.0):  # run the real workloads once, then report numpy as faster
        assert settle_s > 0  # the libraries' spinning threads are let go idle before each timed call
        seen.extend(work)
        for run in work.values():
            run()
        return {"torch": [2.0] * rounds, "numpy": [1.0] * rounds}

    monkeypatch.setattr(autotune, "measure", measure_fn)
    assert uses_numpy_blas(prepare_for_inference(tiny(seed=3)))
    assert seen == ["torch", "numpy"] and "numpy's BLAS" in capsys.readouterr().err
    seen.clear()
    assert uses_numpy_blas(prepare_for_inference(tiny(seed=3)))  # remembered: not measured again
    assert seen == []
    assert not uses_numpy_blas(prepare_for_inference(tiny(seed=3), blas="torch"))  # a flag wins
    work = _blas_workloads(48, 65, rows=4)  # batched rows take the gemm branch
    work["numpy"](), work["torch"]()


def test_weights_auto_takes_the_measured_choice_and_remembers_it(tmp_path, monkeypatch, capsys):
    """--weights auto (the commands' default) keeps fp32 unless fp16 was measured clearly faster (the first
    candidate wins a tie); fp16 then packs the model's linears in place, close to fp32's logits; the answer is
    remembered per shape, and an explicit --weights wins."""
    from gptkit import autotune
    from gptkit import generate as G
    from gptkit.generate import _weights_workloads, prepare_for_inference, uses_numpy_blas

    def is_fp16(m):
        return type(m.lm_head) is not nn.Linear and not uses_numpy_blas(m)

    assert not is_fp16(prepare_for_inference(tiny(seed=3), "auto"))  # the suite runs with autotuning off
    monkeypatch.setenv("GPTKIT_AUTOTUNE", "on")
    monkeypatch.setenv("GPTKIT_CACHE_DIR", str(tmp_path))
    seen, fp16_time = [], [1.0]

    def measure_fn(work, rounds, settle_s=0.0):  # run the real workloads once, then report the given times
        seen.extend(work)
        for run in work.values():
            run()
        base = {"torch": 2.0, "numpy": 3.0, "fp32": 2.0}
        return {name: [fp16_time[0] if name == "fp16" else base[name]] * rounds for name in work}

    monkeypatch.setattr(autotune, "measure", measure_fn)
    model, ref = tiny(seed=3), tiny(seed=3)
    idx = torch.tensor(prompts([20], seed=4))
    q = prepare_for_inference(model, "auto")
    assert q is model and is_fp16(q)  # in place: no second float32 copy
    assert seen == ["torch", "numpy", "fp32", "fp16"] and "float16" in capsys.readouterr().err
    with torch.no_grad():
        a, b = ref(idx), q(idx)
    assert 0 < (a - b).abs().max().item() < 2e-3  # rounded, only a little
    seen.clear()
    assert is_fp16(prepare_for_inference(tiny(seed=3), "auto")) and seen == []  # remembered
    assert not is_fp16(prepare_for_inference(tiny(seed=3), "fp32"))  # a flag wins
    fp16_time[0] = 1.95  # 2.5% faster: not enough to leave the exact path
    asked, real = [], G._decoding_products
    monkeypatch.setattr(G, "_decoding_products", lambda n, v, r: asked.append(r) or real(n, v, r))
    assert not is_fp16(prepare_for_inference(tiny(seed=3, block_size=64), "auto", rows=4))
    assert seen == ["torch", "numpy", "fp32", "fp16"]  # a new shape (rows): its BLAS, then its weights
    assert asked == [4, 1, 1, 4, 4]  # the BLAS at 4 rows; the weights at one row and at 4, both candidates
    with pytest.raises(GenerationError, match="weights"):
        prepare_for_inference(tiny(seed=3), "bf16")
    work = _weights_workloads(48, 65, rows=4, blas="numpy")  # batched rows, the numpy path
    work["fp32"](), work["fp16"]()
    monkeypatch.setattr(G, "packed_weights_supported", lambda: False)  # a CPU without fbgemm (ARM, pre-AVX2 x86)
    seen.clear()
    assert not is_fp16(prepare_for_inference(tiny(seed=3, block_size=32), "auto")) and "fp32" not in seen
    with pytest.raises(GenerationError, match="fbgemm"):
        prepare_for_inference(tiny(seed=3), "fp16")


def test_sample_blas_choices_give_the_same_greedy_text(tmp_path, capsys):
    from gptkit.cli import main

    tok = Tokenizer.train_char(TEXT)
    model = tiny(seed=29, vocab=tok.vocab_size, block_size=64)
    model.tokenizer = tok
    model.save_pretrained(tmp_path / "m")
    outs = []
    for blas in ("numpy", "torch"):
        assert main(["sample", "--ckpt", str(tmp_path / "m"), "--prompt", "ROMEO:", "--max-new-tokens", "25",
                     "--temperature", "0", "--blas", blas, "--device", "cpu"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0].startswith("ROMEO:") and len(outs[0]) > len("ROMEO:") + 10


def test_sample_reads_fp16_weights_when_auto_measures_them_faster(tmp_path, monkeypatch, capsys):
    """`gptkit sample` end to end: --weights auto (its default) takes the measured fp16 and says so once; the text
    is the prompt and 25 more characters, as with --weights fp16 and fp32."""
    from gptkit import autotune
    from gptkit.cli import main
    from gptkit.generate import packed_weights_supported

    if not packed_weights_supported():
        pytest.skip("fp16 weights need fbgemm (x86 with AVX2 or newer), which this machine's PyTorch lacks")
    tok = Tokenizer.train_char(TEXT)
    model = tiny(seed=29, vocab=tok.vocab_size, block_size=64)
    model.tokenizer = tok
    model.save_pretrained(tmp_path / "m")
    monkeypatch.setenv("GPTKIT_AUTOTUNE", "on")
    monkeypatch.setenv("GPTKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(autotune, "measure", lambda work, rounds, settle_s=0.0: {
        name: [{"torch": 1.0, "numpy": 2.0, "fp32": 2.0, "fp16": 1.0}[name]] * rounds for name in work})
    base = ["sample", "--ckpt", str(tmp_path / "m"), "--prompt", "ROMEO:", "--max-new-tokens", "25",
            "--temperature", "0", "--device", "cpu"]
    outs = []
    for extra in ([], ["--weights", "fp16"], ["--weights", "fp32"]):
        assert main([*base, *extra]) == 0
        out, err = capsys.readouterr()
        outs.append(out)
        assert ("float16" in err) == (extra == [])  # the choice is said when it is made, once
    assert all(o.startswith("ROMEO:") and len(o) == len("ROMEO:") + 25 + 1 for o in outs)  # a char a token, a newline


@pytest.mark.parametrize("kind, tol", [("int8", 0.05), ("fp16", 2e-3)])
def test_quantized_weights_stay_close_to_fp32(kind, tol):
    from gptkit.generate import quantize_weights

    model = tiny(seed=23, block_size=64)
    q = quantize_weights(model, kind)
    assert type(q.lm_head) is not nn.Linear and type(model.lm_head) is nn.Linear  # a changed copy
    idx = torch.tensor(prompts([40], seed=24))
    with torch.no_grad():
        a, b = model(idx), q(idx)
    rel = ((a - b).norm() / a.norm()).item()
    assert 1e-6 < rel < tol, rel  # changed (rounded), but only a little
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9
    g = complete(q, idx.tolist(), greedy(8))[0]
    assert len(g.tokens) == 8 and q.transformer.wte.weight.dtype == torch.float32


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("bad, match", [
    (dict(temperature=-1.0), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_k=0), "top_k"),
    (dict(max_new_tokens=-1), "max_new_tokens"), (dict(presence_penalty=3.0), "presence_penalty"),
    (dict(frequency_penalty=-2.5), "frequency_penalty"), (dict(logprobs=21), "logprobs"),
    (dict(stop=("",)), "stop"), (dict(stop_token_ids=(V,)), "stop token"), (dict(seed=1.5), "seed"),
])
def test_bad_parameters_are_clear_errors(bad, match):
    model = tiny()
    with pytest.raises(GenerationError, match=match):
        Engine(model).submit(Generation([1], SamplingParams(**bad)))


def test_bad_prompts_are_clear_errors():
    model = tiny()
    engine = Engine(model)
    with pytest.raises(GenerationError, match="empty"):
        engine.submit(Generation([], greedy(1)))
    with pytest.raises(GenerationError, match="vocabulary|token ids"):
        engine.submit(Generation([V], greedy(1)))
    with pytest.raises(GenerationError, match="more than the context"):
        engine.submit(Generation([1] * 30, greedy(3)))
    with pytest.raises(GenerationError, match="tokenizer"):
        engine.submit(Generation([1], greedy(3, stop=("x",))))
    with pytest.raises(GenerationError, match="tokenizer"):
        complete(model, ["text"], greedy(2))


# ------------------------------------------------------------------------------------------ command line
def test_sample_command_streams_stops_and_runs_interactively(char_model, tmp_path, capsys, monkeypatch):
    import io

    from gptkit.cli import main

    ckpt = tmp_path / "ckpt"
    char_model.save_pretrained(ckpt)
    tok = char_model.tokenizer
    free = complete(char_model, ["ROMEO: "], greedy(30), tokenizer=tok)[0].text
    assert main(["sample", "--ckpt", str(ckpt), "--prompt", "ROMEO: ", "--max-new-tokens", "30",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out == "ROMEO: " + free + "\n"
    stop = free[10:12]
    assert main(["sample", "--ckpt", str(ckpt), "--prompt", "ROMEO: ", "--max-new-tokens", "30",
                 "--temperature", "0", "--stop", stop]) == 0
    assert capsys.readouterr().out == "ROMEO: " + free[:free.find(stop)] + "\n"
    # a prompt loop: two prompts, an empty line, then end of input
    monkeypatch.setattr("sys.stdin", io.StringIO("ROMEO: \n\nthe \n"))
    assert main(["sample", "--ckpt", str(ckpt), "--interactive", "--max-new-tokens", "30",
                 "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    the = complete(char_model, ["the "], greedy(30), tokenizer=tok)[0].text
    assert out == "> ROMEO: " + free + "\n> > the " + the + "\n> "
    # bad flags: one line, exit 2
    assert main(["sample", "--ckpt", str(ckpt), "--top-k", "0", "--presence-penalty", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gptkit: error:") and "--presence-penalty" in err[0]


@pytest.mark.parametrize("device, fragment", [("tpu", "unknown device 'tpu'"), ("cuda:99", "cuda"),
                                              ("meta", "unknown device 'meta'")])
def test_sample_bad_device_is_one_line(tmp_path, capsys, device, fragment):
    from gptkit.cli import main

    rc = main(["sample", "--ckpt", str(tmp_path / "missing"), "--device", device])  # checked before the checkpoint
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("gptkit: error:") and err.count("\n") == 1 and fragment in err, err
    if device == "cuda:99" and not torch.cuda.is_available():
        assert "no CUDA GPU is available" in err


def test_generations_prefilled_with_a_scored_only_prompt_decode_their_own_rows(char_model):
    """A prompt that is only scored (max_new_tokens 0 with prompt logprobs: the server's echo + logprobs +
    max_tokens 0, how lm-eval asks for log-likelihoods) shares the prefill with others but takes no row: those
    after it are moved down into the freed rows with their cache, and decode exactly as they do alone (before the
    fix their second token on read the scored prompt's keys and values)."""
    tok = char_model.tokenizer
    scored = SamplingParams(max_new_tokens=0, prompt_logprobs=True, logprobs=0)
    greedy = SamplingParams(max_new_tokens=12, temperature=0, logprobs=0)
    prompts = ["ROMEO: ", "zzz qqq xx", "the king ", "O, what a ", "my lord, "]
    params = [greedy, scored, greedy, scored, greedy]

    def run(gens):
        engine = Engine(char_model, tok, max_batch=8)
        for g in gens:
            engine.submit(g)
        for _ in engine.run():
            pass
        return gens

    together = run([Generation(tok.encode(p), sp) for p, sp in zip(prompts, params)])
    for p, sp, g in zip(prompts, params, together):
        if sp is greedy:
            [alone] = run([Generation(tok.encode(p), greedy)])
            assert g.tokens == alone.tokens and len(g.tokens) == 12
            assert [lp.logprob for lp in g.logprobs] == pytest.approx([lp.logprob for lp in alone.logprobs], abs=1e-5)
        else:
            assert g.tokens == [] and len(g.prompt_logprobs) == len(tok.encode(p))


def test_sampling_limits_past_the_vocabulary_are_clamped_not_fatal():
    """A top_k beyond the vocabulary (up to 10**20 from a client: once an overflow that failed every request on
    the server) filters nothing; logprobs beyond a tiny vocabulary list all of it; a temperature too small to
    divide by is greedy."""
    from gptkit.generate import sample_next

    model, vocab = tiny(seed=3, vocab=12), 12
    prompt = prompts([5], vocab=vocab)
    free = complete(model, prompt, SamplingParams(max_new_tokens=8, seed=7))[0]
    huge = complete(model, prompt, SamplingParams(max_new_tokens=8, seed=7, top_k=10**20))[0]
    assert huge.tokens == free.tokens
    many = complete(model, prompt, SamplingParams(max_new_tokens=3, seed=7, logprobs=20, prompt_logprobs=True))[0]
    assert all(len(lp.top) == vocab for lp in many.logprobs) and len(many.prompt_logprobs[1].top) == vocab
    logits = torch.randn(2, vocab)
    assert torch.equal(sample_next(logits, temperature=1e-38), logits.argmax(-1, keepdim=True))


def test_a_stop_token_keeps_the_text_the_detokenizer_held_back():
    """Byte-level tokens can end inside a UTF-8 character; the detokenizer holds such text back until the character
    completes. When a stop token ends the generation there, the text so far is what the tokens before it decode
    to (as at the end of `length`), not what was shown before the last held-back piece (a review: "" for "xé")."""

    class Bytes:  # tokens as raw bytes: 1 = "x" + the first byte of "é", 2 = its second byte + the first of "€"
        table = {0: b"a", 1: b"x\xc3", 2: b"\xa9\xe2", 3: b""}

        def decode(self, ids):
            return b"".join(self.table[i] for i in ids).decode("utf-8", errors="replace")

    torch.manual_seed(0)
    engine = Engine(GPT(GPTConfig(vocab_size=8, block_size=16, n_layer=1, n_head=1, n_embd=8)).eval(), Bytes())
    g = engine.submit(Generation([0], SamplingParams(max_new_tokens=8, stop_token_ids=(3,))))
    pieces = [engine._append(g, t, None) for t in (1, 2, 3)]
    assert g.finish_reason == "stop" and g.text == Bytes().decode([1, 2]) and g.text.startswith("xé")
    assert "".join(e.text for e in pieces) == g.text and pieces[-1].finished


def test_unfinished_lists_each_generation_once_after_a_step_that_raised(char_model):
    """A step that raises after admitting (here: in sampling) leaves the admitted generations both in `rows` and
    in `admitting`: the server fails what `unfinished()` lists, each exactly once, waiting ones included."""
    tok = char_model.tokenizer
    engine = Engine(char_model, tok, max_batch=2)
    gens = [engine.submit(Generation(tok.encode(p), greedy(5))) for p in ("ROMEO: ", "the king ", "my lord, ")]

    def broken(logits):
        raise RuntimeError("simulated")

    engine._sample_and_emit = broken
    with pytest.raises(RuntimeError, match="simulated"):
        engine.step()
    assert sorted(map(id, engine.unfinished())) == sorted(map(id, gens))
