"""Zero-/few-shot evaluation: scoring against Hugging Face and a float64 recomputation, prompts, the built-in
tasks on the real data, users' YAML tasks, bad input, and agreement with lm-eval through the bridge."""

from __future__ import annotations

import copy
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptkit import GPT, GPTConfig, Tokenizer
from gptkit.cli import main
from gptkit.evaluate.icl import (build_context, fit_to_context, sample_demonstrations, score_requests,
                                 split_whitespace)
from gptkit.evaluate.perplexity import rolling_loglikelihood, sliding_windows
from gptkit.evaluate.runner import evaluate
from gptkit.evaluate.tasks import BUILTIN_TASKS, Doc, EvalError, load_splits, wikitext_detokenize

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
EXAMPLE_TASK = REPO / "configs" / "tasks" / "tiny_sentiment.yaml"


def reference_scores(model: torch.nn.Module, requests, block_size: int, logits_of=None):
    """Plain recomputation: one forward of the left-truncated context + continuation per request."""
    out = []
    for ctx, cont in requests:
        whole = (list(ctx) + list(cont))[-(block_size + 1):]
        with torch.no_grad():
            logits = logits_of(whole[:-1]) if logits_of else model(torch.tensor([whole[:-1]]))[0]
        n, c = len(whole) - 1, len(cont)
        lp = torch.log_softmax(logits[n - c:n].double(), dim=-1)
        tgt = torch.tensor(cont)
        out.append((lp.gather(1, tgt[:, None]).sum().item(), bool((lp.argmax(-1) == tgt).all())))
    return out


def random_requests(vocab: int, seed: int, greedy_from=None, n_ctx: int = 12, max_ctx: int = 45):
    """Requests with shared contexts (several continuations each), some longer than the context window, and
    (when greedy_from is given) some continuations that are the model's own greedy choice."""
    rng = random.Random(seed)
    reqs = []
    for _ in range(n_ctx):
        ctx = [rng.randrange(vocab) for _ in range(rng.randint(1, max_ctx))]
        for _ in range(rng.randint(1, 4)):
            reqs.append((ctx, [rng.randrange(vocab) for _ in range(rng.randint(1, 6))]))
        if greedy_from is not None:
            reqs.append((ctx, greedy_from(ctx, rng.randint(1, 4))))
    return reqs


# ------------------------------------------------------------------------------------ model fixtures
@pytest.fixture(scope="module", autouse=True)
def _datasets_cache(tmp_path_factory):
    """lm-eval reads the exported JSONL through `datasets`, which keeps Arrow copies: not in ~/.cache."""
    os.environ.setdefault("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf-datasets")))


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A random gptkit GPT with a byte-level BPE tokenizer, saved as a checkpoint. init_std 0.2 makes the
    output distributions peaked, so candidates differ by far more than float rounding."""
    torch.manual_seed(0)
    text = "\n".join(p.read_text() for p in sorted(EXAMPLE_TASK.parent.glob("*.jsonl"))) * 20
    tok = Tokenizer.train_bpe(text, 300)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=2, n_head=2, n_embd=32, init_std=0.2,
                    gelu="exact")
    model = GPT(cfg)
    model.tokenizer = tok
    path = tmp_path_factory.mktemp("evalmodel") / "ckpt"
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_model(tiny_ckpt) -> GPT:
    return GPT.from_pretrained(tiny_ckpt)


# ---------------------------------------------------------------------------------- scoring parity
def test_loglikelihoods_equal_hf_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    V, L = 97, 32
    # GPT2Config defaults bos/eos to 50256, outside this vocabulary
    hf_cfg = transformers.GPT2Config(vocab_size=V, n_positions=L, n_embd=32, n_layer=2, n_head=4,
                                     bos_token_id=V - 1, eos_token_id=V - 1, initializer_range=0.3)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    hf.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(tmp_path)

    def hf_greedy(ctx, n):
        ids = ctx[-(L - n):]
        for _ in range(n):
            with torch.no_grad():
                ids = ids + [int(hf(torch.tensor([ids])).logits[0, -1].argmax())]
        return ids[-n:]

    reqs = random_requests(V, seed=1, greedy_from=hf_greedy)
    got = score_requests(ours, reqs, batch_size=3)
    want = reference_scores(hf, reqs, L, logits_of=lambda ids: hf(torch.tensor([ids])).logits[0])
    assert any(g for _, g in want) and not all(g for _, g in want)  # both outcomes are exercised
    assert [g for _, g in got] == [g for _, g in want]
    assert max(abs(a - b) for (a, _), (b, _) in zip(got, want)) < 1e-5
    assert any(len(c) + len(x) - 1 > L for c, x in reqs)  # left truncation was exercised


@pytest.mark.parametrize("overrides", [
    dict(),
    dict(norm="post", final_norm=False),
    dict(pos="sinusoidal"),
    dict(attention="alternating", band_width=5),
    dict(attention="banded", band_width=3, gelu="tanh"),
], ids=["pre-ln", "post-ln", "sinusoidal", "alternating", "banded"])
def test_packed_scoring_equals_float64_recomputation(overrides):
    """The packed prefix-sharing forward replays the blocks with its own masks and positions: it must equal
    the model's public forward, in float64, for every architecture switch."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=61, block_size=24, n_layer=3, n_head=2, n_embd=16, init_std=0.3, **overrides)
    model = GPT(cfg).eval()
    model64 = copy.deepcopy(model).double()
    reqs = random_requests(cfg.vocab_size, seed=2, max_ctx=30)
    got = score_requests(model, reqs, batch_size=4)
    want = reference_scores(model64, reqs, cfg.block_size)
    assert max(abs(a - b) for (a, _), (b, _) in zip(got, want)) < 1e-4
    got64 = score_requests(model64, reqs, batch_size=5)
    assert max(abs(a - b) for (a, _), (b, _) in zip(got64, want)) < 1e-9
    assert [g for _, g in got64] == [g for _, g in want]
    # one-token continuations only (verbalizers): the rows need no mask and take the plain causal path
    one = [(c, x[:1]) for c, x in reqs]
    got1 = score_requests(model64, one, batch_size=5)
    assert max(abs(a - b) for (a, _), (b, _) in zip(got1, reference_scores(model64, one, cfg.block_size))) < 1e-9


def test_each_context_is_computed_once():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=64, n_layer=1, n_head=1, n_embd=8)).eval()
    seen = []
    hook = model.transformer.wte.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape))
    ctx = list(range(30))
    score_requests(model, [(ctx, [1, 2, 3]), (ctx, [4]), (ctx, [5, 6])], batch_size=8)
    hook.remove()
    # one row: 30 context tokens + 2 + 0 + 1 fed continuation tokens (a last token is only predicted)
    assert seen == [torch.Size([1, 33])]


def test_sliding_window_perplexity_matches_bruteforce():
    torch.manual_seed(0)
    L = 16
    model = GPT(GPTConfig(vocab_size=40, block_size=L, n_layer=2, n_head=2, n_embd=16, init_std=0.3)).eval()
    docs = [[random.Random(i).randrange(39) for _ in range(n)] for i, n in enumerate((50, 7, 16, 33))]
    for stride in (1, 5, L):
        got = rolling_loglikelihood(model, docs, stride=stride, bos=39, batch_size=3)
        for doc, (ll, n) in zip(docs, got):
            s = [39] + doc
            want = 0.0
            for a, b, done in sliding_windows(len(s) - 1, L, stride):
                with torch.no_grad():
                    lp = torch.log_softmax(model(torch.tensor([s[a:b]]))[0].double(), -1)
                want += sum(lp[t - 1 - a, s[t]].item() for t in range(done + 1, b + 1))
            assert n == len(doc) and abs(ll - want) < 1e-4
    # stride 1: every token sees min(t, L) tokens before it, the most context a window allows
    s = [39] + docs[0]
    windows = sliding_windows(len(s) - 1, L, 1)
    assert all(b - a == min(b, L) for a, b, _ in windows)
    with pytest.raises(EvalError, match="stride"):
        sliding_windows(10, L, L + 1)


# --------------------------------------------------------------------------------------- prompts
def test_prompt_layout_and_whitespace():
    from gptkit.evaluate.tasks import Task

    task = Task("t", "choice", lambda d: {}, description="Decide.")
    demos = [Doc("Q: a\nA:", ("no", "yes"), 1), Doc("Q: b\nA:", ("no", "yes"), 0)]
    ctx = build_context(task, Doc("Q: c\nA:", ("no", "yes"), 0), demos)
    assert ctx == "Decide.\n\nQ: a\nA: yes\n\nQ: b\nA: no\n\nQ: c\nA:"
    assert build_context(task, demos[0], [], description="") == "Q: a\nA:"
    assert split_whitespace("Answer: ", "yes") == ("Answer:", " yes")
    assert split_whitespace("Answer:", " yes") == ("Answer:", " yes")


def test_demonstrations_never_include_the_scored_example_and_follow_the_seed():
    pool = [Doc(f"q{i}", ("a", "b"), i % 2) for i in range(12)]
    demos = sample_demonstrations(pool, pool, 5, seed=3, same_split=True)
    assert all(i not in d and len(d) == 5 == len(set(d)) for i, d in enumerate(demos))
    assert demos == sample_demonstrations(pool, pool, 5, seed=3, same_split=True)
    assert demos != sample_demonstrations(pool, pool, 5, seed=4, same_split=True)
    # duplicates of the scored example are excluded too (compared by content, as lm-eval does)
    dup = pool + [Doc("q0", ("a", "b"), 0)] * 3
    assert all(dup[j] != dup[0] for j in sample_demonstrations(dup[:1], dup, 9, seed=0, same_split=True)[0])
    with pytest.raises(EvalError, match="K=12 shots needs 13"):
        sample_demonstrations(pool, pool, 12, seed=0, same_split=True)


def test_fit_to_context_left_truncates():
    assert fit_to_context(list(range(10)), [7, 8], 8) == ([3, 4, 5, 6, 7, 8, 9], True)
    assert fit_to_context([1, 2], [3], 8) == ([1, 2], False)
    with pytest.raises(EvalError, match="does not fit"):
        fit_to_context([1], list(range(9)), 8)


# -------------------------------------------------------------------------------- real data
def test_builtin_tasks_read_the_real_files(shared_data):
    sizes = {"lambada": (5153, 5153), "hellaswag": (10042, 10042), "piqa": (1838, 1838),
             "storycloze": (1871, 1871), "sst2": (872, 6920), "rte": (277, 2490)}
    for name, (n_eval, n_pool) in sizes.items():
        docs, pool = load_splits(BUILTIN_TASKS[name], shared_data)
        assert (len(docs), len(pool)) == (n_eval, n_pool), name
        assert all(0 <= d.gold < len(d.choices) and d.query for d in docs), name
    lam, _ = load_splits(BUILTIN_TASKS["lambada"], shared_data)
    assert lam[0].choices == ("signs",) and lam[0].query.endswith("I don't care about")
    sc, _ = load_splits(BUILTIN_TASKS["storycloze"], shared_data)
    assert sc[0].gold == 1 and sc[0].query.startswith("My friends all love to go to the club to dance.")
    wiki, pool = load_splits(BUILTIN_TASKS["wikitext2"], shared_data)
    assert pool is None and len(wiki) > 50 and wiki[0].query.startswith("= Robert Boulter =")
    assert " @-@ " not in "".join(d.query for d in wiki) and " @-@ " in wiki[0].raw


def test_wikitext_detokenizer():
    assert wikitext_detokenize(" He had a guest @-@ starring role , in 2000 . ") == \
        "He had a guest-starring role, in 2000."
    assert wikitext_detokenize('1 @,@ 000 people ( about half ) said " no " .') == '1,000 people (about half) said "no".'
    assert wikitext_detokenize("it does n't work") == "it doesn't work"


def test_eval_cli_on_real_tasks(tiny_ckpt, shared_data, tmp_path, capsys):
    out = tmp_path / "res.json"
    rc = main(["eval", "--ckpt", str(tiny_ckpt), "--task", "sst2,lambada", "--task", "piqa", "--shots", "0", "2",
               "--limit", "8", "--data-dir", str(shared_data), "--out", str(out), "--no-progress",
               "--write-samples", str(tmp_path / "s.jsonl"), "--unconditional", "--batch-size", "5"])
    assert rc == 0
    table = capsys.readouterr().out
    assert "| sst2 | 2" in table and "| lambada | 0 | 8 | perplexity |" in table
    res = json.loads(out.read_text())
    assert set(res["results"]) == {"sst2@0", "sst2@2", "lambada@0", "lambada@2", "piqa@0", "piqa@2"}
    assert res["n-shot"]["sst2@2"] == 2 and res["config"]["seed"] == 1234
    assert {"acc", "acc_norm", "acc_per_token", "acc_uncond"} <= set(res["results"]["sst2@0"])
    assert {"acc", "perplexity"} <= set(res["results"]["lambada@0"])
    assert out.with_suffix(".md").read_text().startswith("| task |") and out.with_suffix(".png").stat().st_size
    samples = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(samples) == 6 * 8
    two_shot = [s for s in samples if s["task"] == "sst2" and s["shots"] == 2]
    assert all(s["context"].count("\nAnswer: ") == s["shots_used"] for s in two_shot)


def test_wikitext2_perplexity(tiny_model, shared_data):
    rep = evaluate(tiny_model, ["wikitext2"], [0, 1], data_dir=shared_data, limit=1, stride=256, log=lambda m: None)
    wt = rep.summary["results"]["wikitext2"]  # no demonstrations: scored once whatever K is
    assert set(rep.summary["results"]) == {"wikitext2"} and wt["documents"] == 1
    # a word spans several tokens of a 300-token vocabulary, so it is harder to predict than one token
    assert wt["word_perplexity"] > wt["token_perplexity"] > 1
    assert math.isclose(wt["bits_per_byte"], math.log2(wt["byte_perplexity"]))
    assert wt["tokens"] > wt["words"] == len(load_splits(BUILTIN_TASKS["wikitext2"], shared_data)[0][0].raw.split())


def test_prompt_longer_than_context_is_left_truncated(tiny_model, shared_data):
    logs = []
    rep = evaluate(tiny_model, ["rte"], [0], data_dir=shared_data, limit=20, keep_samples=True, log=logs.append)
    assert any("left-truncated" in m for m in logs)
    tok, L = tiny_model.tokenizer, tiny_model.config.block_size
    long = [s for s in rep.samples if len(tok.encode(s["context"])) + 1 > L]
    assert long
    s = long[0]
    ctx = tok.encode(s["context"])
    # the same as scoring only the last tokens that fit
    reqs = [(ctx[-(L + 1 - len(c)):], c) for c in (tok.encode(" " + ch) for ch in s["choices"])]
    want = reference_scores(tiny_model, reqs, L)
    assert max(abs(a - b) for a, (b, _) in zip(s["loglikelihoods"], want)) < 1e-4


def test_candidate_longer_than_the_context_is_skipped(tiny_model, tmp_path):
    long = "word " * 400
    rows = [{"q": "a", "c": ["yes", "no"], "y": 0}, {"q": "b", "c": ["yes", long], "y": 1},
            {"q": "c", "c": ["no", "yes"], "y": 1}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = tmp_path / "t.yaml"
    spec.write_text("data: d.jsonl\ntemplate: '{q}'\nchoices_field: c\nanswer_field: y\n")
    logs = []
    rep = evaluate(tiny_model, [str(spec)], [0], keep_samples=True, log=logs.append)
    assert rep.summary["results"]["t"]["n"] == 2 and rep.summary["results"]["t"]["skipped"] == 1
    assert [s["index"] for s in rep.samples] == [0, 2] and any("not scored (examples 1)" in m for m in logs)
    (tmp_path / "d.jsonl").write_text(json.dumps(rows[1]) + "\n")
    with pytest.raises(EvalError, match="no example fits"):
        evaluate(tiny_model, [str(spec)], [0], log=logs.append)


def test_demonstrations_that_do_not_fit_are_dropped(tiny_model, shared_data, capsys):
    logs = []
    rep = evaluate(tiny_model, ["hellaswag"], [6], data_dir=shared_data, limit=8, log=logs.append, progress=True)
    assert "hellaswag (6-shot)" in capsys.readouterr().err  # the progress bar
    assert any("do not fit the context" in m for m in logs)
    assert rep.summary["results"]["hellaswag"]["shots_used_mean"] < 6


# ----------------------------------------------------------------------------- users' YAML tasks
def test_yaml_example_task(tiny_model):
    rep = evaluate(tiny_model, [str(EXAMPLE_TASK)], [0, 2], keep_samples=True, log=lambda m: None)
    assert rep.summary["results"]["tiny_sentiment@0"]["n"] == 8
    first = rep.samples[0]
    assert first["context"].startswith("Say whether each review is positive or negative.\n\nReview: The soup")
    assert first["choices"] == ["negative", "positive"] and first["gold"] == 0
    two = [s for s in rep.samples if s["shots"] == 2]
    assert all(s["context"].count("Sentiment: ") == 2 for s in two)  # demos from tiny_sentiment_train.jsonl
    assert all("Terrible service" in s["context"] or "delightful" in s["context"] or "shoes" in s["context"]
               or "Simple, honest" in s["context"] for s in two)


def test_export_lm_eval_needs_no_model(tmp_path, capsys):
    assert main(["eval", "--task", str(EXAMPLE_TASK), "--export-lm-eval", str(tmp_path)]) == 0
    spec = (tmp_path / "gptkit_tiny_sentiment.yaml").read_text()
    assert "dataset_path: json" in spec and "fewshot_split: train" in spec
    rows = [json.loads(x) for x in (tmp_path / "gptkit_tiny_sentiment.test.jsonl").read_text().splitlines()]
    assert rows[0] == {"query": "Review: The soup was cold and the waiter ignored us for an hour.\nSentiment:",
                       "choices": ["negative", "positive"], "gold": 0}
    out = capsys.readouterr().out
    assert "run: lm_eval --model gptkit --model_args checkpoint=CKPT" in out
    assert "python -m gptkit.evaluate.lm_eval_adapter" in out


BAD_TASKS = {
    "syntax": ("name: x\ntemplate: [unclosed\n", "not valid YAML at line"),
    "not a mapping": ("- a\n- b\n", "expected a YAML mapping"),
    "unknown key": ("data: d.jsonl\ntemplate: '{text}'\nchoices: [a, b]\nanswer_field: y\ncolour: red\n",
                    "unknown key(s) colour"),
    "two choice sources": ("data: d.jsonl\ntemplate: '{text}'\nchoices: [a, b]\nchoices_field: c\n"
                           "answer_field: y\n", "exactly one of choices"),
    "missing field": ("data: d.jsonl\ntemplate: '{txt}'\nchoices: [a, b]\nanswer_field: y\n",
                      "needs field 'txt'"),
    "answer not a choice": ("data: d.jsonl\ntemplate: '{text}'\nchoices: [a, b]\nanswer_field: text\n",
                            "neither a choice index nor one of the choices"),
    "missing data": ("data: nope.jsonl\ntemplate: '{text}'\nchoices: [a, b]\nanswer_field: y\n",
                     "nope.jsonl not found"),
    **{f"template {t}": (f"data: d.jsonl\ntemplate: '{t}'\nchoices: [a, b]\nanswer_field: y\n",
                         "which is not a field")
       for t in ("{text", "{text.upper}", "{text!z}", "{text:>zz}", "x } y", "{}")},
}


@pytest.mark.parametrize("case", list(BAD_TASKS))
def test_bad_task_files_give_one_clear_line(case, tiny_ckpt, tmp_path, capsys):
    body, message = BAD_TASKS[case]
    (tmp_path / "d.jsonl").write_text('{"text": "good day", "y": 1}\n{"text": "bad day", "y": 0}\n')
    spec = tmp_path / "task.yaml"
    spec.write_text(body)
    out = tmp_path / "res.json"
    rc = main(["eval", "--ckpt", str(tiny_ckpt), "--task", str(spec), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("gptkit: error: ") and message in err and "\n" not in err
    assert not out.exists()


def test_bad_requests_give_one_clear_line(tiny_ckpt, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "good day", "y": 1}\n{"text": "bad day", "y": 0}\nnot json\n')
    spec = tmp_path / "task.yaml"
    spec.write_text(f"data: {data}\ntemplate: '{{text}}'\nchoices: [a, b]\nanswer_field: y\n")
    out = tmp_path / "res.json"
    cases = [
        (["--task", "sqaud"], "unknown task 'sqaud'"),
        (["--task", str(spec)], "d.jsonl:3: not valid JSON"),
        (["--task", str(EXAMPLE_TASK), "--shots", "5"], "K=5 shots needs 5 demonstration examples but the few-shot split has 4"),
        (["--task", str(EXAMPLE_TASK), "--shots", "-1"], "must be >= 0"),
        (["--task", "sst2", "--data-dir", str(tmp_path / "nowhere")], "data folder"),
    ]
    for extra, message in cases:
        rc = main(["eval", "--ckpt", str(tiny_ckpt), "--out", str(out), "--no-progress", *extra])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and message in err and err.count("\n") == 0, (extra, err)
        assert not out.exists()


# ------------------------------------------------------------------------------------- lm-eval
@pytest.fixture(scope="module")
def lm_eval_api():
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from gptkit.evaluate import lm_eval_adapter

    return lm_eval, TaskManager, lm_eval_adapter


def _lm_eval_samples(res, task):
    """Per-document log-likelihoods (one per choice) from lm-eval's logged samples, in document order."""
    rows = sorted(res["samples"][task], key=lambda s: s["doc_id"])
    return [[float(r[0][0]) for r in s["resps"]] for s in rows], [s["arguments"][0][0] for s in rows]


def test_gptkit_and_lm_eval_agree(lm_eval_api, tiny_model, shared_data, tmp_path):
    """Same model, data and shots: identical prompts, accuracies and (to float noise) log-likelihoods."""
    lm_eval, TaskManager, adapter = lm_eval_api
    tasks, n = ["sst2", "hellaswag", "lambada"], 20
    adapter.export_lm_eval_tasks(tasks, tmp_path, data_dir=shared_data, limit=n)
    tm = TaskManager(include_path=str(tmp_path), include_defaults=False)
    lm = adapter.GptkitLM(model=tiny_model, batch_size=8)
    for k in (0, 1):
        ours = evaluate(tiny_model, tasks, [k], data_dir=shared_data, limit=n, overflow="truncate",
                        keep_samples=True, log=lambda m: None)
        res = lm_eval.simple_evaluate(model=lm, tasks=[f"gptkit_{t}" for t in tasks], num_fewshot=k, limit=n,
                                      task_manager=tm, log_samples=True, bootstrap_iters=0)
        for t in tasks:
            mine, theirs = ours.summary["results"][t], res["results"][f"gptkit_{t}"]
            assert mine["acc"] == theirs["acc,none"], (t, k)
            if "acc_norm" in mine:
                assert mine["acc_norm"] == theirs["acc_norm,none"], (t, k)
            lls, contexts = _lm_eval_samples(res, f"gptkit_{t}")
            samples = [s for s in ours.samples if s["task"] == t]
            assert [s["context"] for s in samples] == [c.rstrip() for c in contexts]
            for s, ll in zip(samples, lls):
                assert max(abs(a - b) for a, b in zip(s.get("loglikelihoods", [s.get("loglikelihood")]), ll)) < 2e-4


def test_lm_eval_rolling_and_hand_written_yaml(lm_eval_api, tiny_model):
    lm_eval, TaskManager, adapter = lm_eval_api
    from lm_eval.api.instance import Instance

    lm = adapter.GptkitLM(model=tiny_model, batch_size=4)
    texts = ["Lovely little cafe with the best bread in town. " * 40, "Short one."]
    reqs = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)]
    theirs = lm.loglikelihood_rolling(reqs)
    ids = [tiny_model.tokenizer.encode(t) for t in texts]
    ours = rolling_loglikelihood(tiny_model, ids, stride=tiny_model.config.block_size, bos=tiny_model.tokenizer.eot_id)
    assert max(abs(a - b) for a, (b, _) in zip(theirs, ours)) < 1e-3
    # generate_until: greedy decoding, cut at the first stop string (or <|endoftext|>)
    tok = tiny_model.tokenizer
    gen = lm.generate_until([Instance("generate_until", {}, ("Review:", {"until": ["t"], "max_gen_toks": 8}), 0)])
    ids = tok.encode("Review:")
    new = tiny_model.generate(torch.tensor([ids]), 8, temperature=0)[0, len(ids):].tolist()
    new = new[:new.index(tok.eot_id)] if tok.eot_id in new else new
    assert gen == [tok.decode(new).split("t")[0]]
    # configs/tasks/lm_eval/tiny_sentiment.yaml (written by hand in lm-eval's format) = the gptkit YAML task
    cwd = os.getcwd()
    os.chdir(REPO)  # its data_files are relative to the repository root
    try:
        tm = TaskManager(include_path=str(REPO / "configs/tasks/lm_eval"), include_defaults=False)
        res = lm_eval.simple_evaluate(model=lm, tasks=["tiny_sentiment_lm"], num_fewshot=2, task_manager=tm,
                                      log_samples=True, bootstrap_iters=0)
    finally:
        os.chdir(cwd)
    ours = evaluate(tiny_model, [str(EXAMPLE_TASK)], [2], keep_samples=True, log=lambda m: None)
    lls, contexts = _lm_eval_samples(res, "tiny_sentiment_lm")
    assert [s["context"] for s in ours.samples] == [c.rstrip() for c in contexts]
    assert max(abs(a - b) for s, ll in zip(ours.samples, lls) for a, b in zip(s["loglikelihoods"], ll)) < 1e-4


def test_lm_eval_finds_gptkit_through_the_startup_hook():
    """gptkit_lm_eval.pth (written into site-packages by setup.py) loads a tiny hook at start-up that imports
    nothing heavy, and registers `gptkit` only once lm-eval has filled its registry with its own models."""
    pytest.importorskip("lm_eval")
    code = "\n".join([
        "import sys",
        "assert '_gptkit_lm_eval' in sys.modules, 'no start-up hook: reinstall gptkit (pip install -e .)'",
        "assert not {'torch', 'gptkit', 'lm_eval'} & set(sys.modules), sorted(sys.modules)",
        "from lm_eval.api.registry import model_registry",
        "assert len(model_registry) == 0  # an entry now would stop get_model from loading lm-eval's own models",
        "import lm_eval.models",
        "assert 'hf' in model_registry and 'dummy' in model_registry and 'gptkit' in model_registry",
        "entry = dict(model_registry.items())['gptkit']  # still lazy: gptkit's entry point (or its text)",
        "assert getattr(entry, 'value', entry) == 'gptkit.evaluate.lm_eval_adapter:GptkitLM', entry",
        "assert type(sys.modules['lm_eval.models'].__loader__).__name__ == 'SourceFileLoader'",
        "assert not {'torch', 'gptkit'} & set(sys.modules)  # the model itself loads only when asked for",
    ])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_lm_eval_command_line(lm_eval_api, tiny_ckpt, tmp_path):
    """lm-eval's own `lm_eval --model gptkit` command, offline, on an exported local task: the same accuracy as
    `gptkit eval` on the same data and shots."""
    _, _, adapter = lm_eval_api
    adapter.export_lm_eval_tasks([str(EXAMPLE_TASK)], tmp_path / "tasks")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    lm_eval_cmd = Path(sys.executable).with_name("lm_eval")  # the console script lm-eval installs beside python
    cmd = [str(lm_eval_cmd), "--model", "gptkit", "--model_args", f"checkpoint={tiny_ckpt}",
           "--include_path", str(tmp_path / "tasks"), "--tasks", "gptkit_tiny_sentiment", "--num_fewshot", "1",
           "--output_path", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    acc = result["results"]["gptkit_tiny_sentiment"]["acc,none"]
    ours = tmp_path / "gptkit.json"
    assert main(["eval", "--ckpt", str(tiny_ckpt), "--task", str(EXAMPLE_TASK), "--shots", "1", "--out", str(ours),
                 "--no-progress"]) == 0
    assert acc == json.loads(ours.read_text())["results"]["tiny_sentiment"]["acc"]


def test_eval_checks_its_outputs_before_running(tmp_path, capsys):
    """A directory as --out, an output in a folder that is a file, or the task file itself as an output: one
    line before the checkpoint is even read (the checkpoint here does not exist)."""
    (tmp_path / "afile").write_text("")
    (tmp_path / "adir").mkdir()
    task = tmp_path / "t.yaml"
    task.write_text(EXAMPLE_TASK.read_text().replace("data: ", "data: " + str(EXAMPLE_TASK.parent) + "/"))
    before = task.read_bytes()
    cases = [(["--out", str(tmp_path / "adir")], "is a directory"),
             (["--out", str(tmp_path / "afile" / "ev.json")], "not a directory"),
             (["--out", str(tmp_path / "ev.json"), "--write-samples", str(task)], "also an input"),
             (["--out", str(tmp_path / "ev.md")], "name the same file")]
    for extra, message in cases:
        rc = main(["eval", "--ckpt", str(tmp_path / "nockpt"), "--task", str(task), "--no-progress", *extra])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and message in err and err.count("\n") == 0, (extra, err)
    assert task.read_bytes() == before
    assert not list(tmp_path.glob(".*"))


def test_lm_eval_model_args_take_gptkit_names(lm_eval_api, tiny_ckpt, tmp_path):
    """--model_args ckpt=, tokenizer_dir= (gptkit's --ckpt and --tokenizer-dir) as lm-eval's checkpoint=,
    tokenizer=: the same model and tokenizer; both names at once must agree."""
    from gptkit.checkpoint import load_model

    _, _, adapter = lm_eval_api
    model = load_model(tiny_ckpt)
    model.tokenizer.save(tmp_path / "tok")
    model.tokenizer = None
    model.save_pretrained(tmp_path / "bare")
    plain = adapter.GptkitLM(checkpoint=str(tiny_ckpt))
    ours = adapter.GptkitLM(ckpt=str(tmp_path / "bare"), tokenizer_dir=str(tmp_path / "tok"))
    text = "the quick brown fox"
    assert ours.tok_encode(text) == plain.tok_encode(text)
    ids = torch.tensor([plain.tok_encode(text)])
    assert torch.equal(ours.model(ids), plain.model(ids))
    with pytest.raises(EvalError, match="checkpoint and ckpt"):
        adapter.GptkitLM(checkpoint=str(tiny_ckpt), ckpt=str(tmp_path / "bare"))
    with pytest.raises(EvalError, match="no tokenizer"):
        adapter.GptkitLM(ckpt=str(tmp_path / "bare"))


@pytest.mark.parametrize("flag", ["--write-samples", "--out", "--plot"])
def test_eval_refuses_an_output_that_is_a_tasks_data_file(tmp_path, capsys, flag):
    """The data a task reads (a YAML task's `data:` file, a built-in task's file under --data-dir) named as an
    output was overwritten after the evaluation, exit 0: LAMBADA's test set became two sample records."""
    task = tmp_path / "t.yaml"
    task.write_text(EXAMPLE_TASK.read_text())  # its data: tiny_sentiment.jsonl, beside it
    (tmp_path / "tiny_sentiment.jsonl").write_bytes((EXAMPLE_TASK.parent / "tiny_sentiment.jsonl").read_bytes())
    lambada = tmp_path / "shared" / "lambada" / "lambada_test.jsonl"
    lambada.parent.mkdir(parents=True)
    lambada.write_text('{"text": "a passage and its last word"}\n')
    for target, tasks in ((tmp_path / "tiny_sentiment.jsonl", [str(task)]), (lambada, ["lambada"])):
        before = target.read_bytes()
        rc = main(["eval", "--ckpt", str(tmp_path / "nockpt"), "--task", *tasks, "--data-dir",
                   str(tmp_path / "shared"), "--no-progress", flag, str(target)])
        err = capsys.readouterr().err
        assert rc == 2 and "also an input" in err and err.count("\n") == 1, err
        assert target.read_bytes() == before


@pytest.mark.parametrize("extra, message", [
    (["--plot", "accuracy.txt", "--shots", "0", "1"], "--plot accuracy.txt: give a file name ending .png, .pdf, .svg"),
    (["--shots", "0", "0", "1"], "--shots 0 is given twice")])
def test_eval_refuses_a_plot_name_it_cannot_draw_and_a_repeated_k(tiny_ckpt, tmp_path, capsys, monkeypatch, extra,
                                                                    message):
    """A .txt plot was written as PNG bytes; K=0 given twice was evaluated, and reported, twice."""
    monkeypatch.chdir(tmp_path)
    rc = main(["eval", "--ckpt", str(tiny_ckpt), "--task", str(EXAMPLE_TASK), "--no-progress", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []
