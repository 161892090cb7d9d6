"""GPT-1 fine-tuning: the four input transforms, truncation, readers on the real task files, the grown vocabulary,
parity with transformers' OpenAIGPTDoubleHeadsModel, metrics against scikit-learn / scipy, the L2 + λ·L1 loop
end to end through the CLI (a model that learns, predict = the run's own predictions), and bad input."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import math
import random
from pathlib import Path

import pytest
import torch

from gptkit import GPT, GPTConfig, Tokenizer
from gptkit.checkpoint import save_model
from gptkit.cli import main
from cli_helpers import assert_one_line_error
from gptkit.finetune import tasks as T
from gptkit.finetune.heads import (
    FinetuneModel,
    MultipleChoiceHead,
    SimilarityHead,
)
from gptkit.finetune.loop import (
    FinetuneConfig,
    collate,
    grow_vocab,
    load_finetuned,
    prepare_model,
    run_model,
)
from gptkit.optim import warmup_linear

pytestmark = pytest.mark.usefixtures("one_thread")

IDS = {"start": 900, "delimiter": 901, "extract": 902}


# ------------------------------------------------------------------------------------------ transforms
def test_the_four_input_transforms():
    s, d, e = IDS["start"], IDS["delimiter"], IDS["extract"]
    a, b, c1, c2 = [1, 2, 3], [4, 5], [6], [7, 8]
    assert T.transform("classification", a, None, None, IDS, 64) == ([[s, 1, 2, 3, e]], False)
    assert T.transform("entailment", a, b, None, IDS, 64) == ([[s, 1, 2, 3, d, 4, 5, e]], False)
    # similarity: both orders (GPT-1 §3.3)
    assert T.transform("similarity", a, b, None, IDS, 64) == ([[s, 1, 2, 3, d, 4, 5, e], [s, 4, 5, d, 1, 2, 3, e]],
                                                              False)
    assert T.transform("multiple-choice", a, None, [c1, c2], IDS, 64) == \
        ([[s, 1, 2, 3, d, 6, e], [s, 1, 2, 3, d, 7, 8, e]], False)


def _reference_fit(la: int, lb: int, budget: int) -> tuple[int, int]:
    while la + lb > budget:  # the policy as stated: one token at a time from the longer part, first on a tie
        if la >= lb:
            la -= 1
        else:
            lb -= 1
    return la, lb


def test_longest_first_truncation_equals_its_definition():
    for la in range(1, 30):
        for lb in range(1, 30):
            for budget in range(2, 45):
                assert T.fit_lengths(la, lb, budget) == _reference_fit(la, lb, budget), (la, lb, budget)


@pytest.mark.parametrize("task", T.TASKS)
def test_truncation_keeps_the_special_tokens_and_the_right_text(task):
    rng = random.Random(0)
    s, d, e = IDS["start"], IDS["delimiter"], IDS["extract"]
    for _ in range(200):
        max_len = rng.randint(8, 40)
        a = [rng.randint(0, 99) for _ in range(rng.randint(1, 60))]
        b = [rng.randint(100, 199) for _ in range(rng.randint(1, 60))]
        choices = [[rng.randint(200, 299) for _ in range(rng.randint(1, 30))] for _ in range(3)]
        seqs, cut = T.transform(task, a, b, choices, IDS, max_len)
        for seq in seqs:
            assert len(seq) <= max_len
            assert seq[0] == s and seq[-1] == e  # the extract token is never cut
        if task == "classification":
            assert seqs[0][1:-1] == a[: max_len - 2] and cut == (len(a) > max_len - 2)
            continue
        assert all(seq.count(d) == 1 for seq in seqs)
        for k, seq in enumerate(seqs):
            first, second = seq[1: seq.index(d)], seq[seq.index(d) + 1: -1]
            if task == "multiple-choice":
                assert first == a[len(a) - len(first):]  # the context keeps its end (it leads into the answer)
                assert second == choices[k][: len(second)]
                whole = first == a and second == choices[k]
            else:
                x, y = (a, b) if k == 0 else (b, a)
                assert first == x[: len(first)] and second == y[: len(second)]  # both keep their beginnings
                whole = first == x and second == y
            if not whole:
                assert len(seq) == max_len and cut  # nothing is cut that fits
        assert cut == any(len(seq) == max_len and not (seq[1: seq.index(d)] + seq[seq.index(d) + 1: -1] in
                                                        (a + b, b + a, *(a + c for c in choices))) for seq in seqs)
        if task == "similarity":  # the two orders hold the same two truncated texts
            x, y = seqs
            assert x[1: x.index(d)] == y[y.index(d) + 1: -1] and y[1: y.index(d)] == x[x.index(d) + 1: -1]


# --------------------------------------------------------------------------------------------- readers
def test_readers_on_the_real_task_files(shared_data):
    D = shared_data
    sst = T.read_examples(D / "sst2/stsa.binary.train", "sst2", "classification")
    assert len(sst) == 6920 and {e.label for e in sst} == {"0", "1"}
    assert sst[0].label == "1" and sst[0].text.startswith("a stirring , funny")
    assert len(T.read_examples(D / "sst2/stsa.binary.test", "sst2", "classification")) == 1821

    rte = T.read_examples(D / "rte/superglue_rte_train.jsonl", "superglue", "entailment")
    assert len(rte) == 2490 and {e.label for e in rte} == {"entailment", "not_entailment"}
    assert rte[0].pair == "Weapons of Mass Destruction Found in Iraq."
    rte_test = T.read_examples(D / "rte/superglue_rte_test.jsonl", "superglue", "entailment", need_labels=False)
    assert len(rte_test) == 3000 and all(e.label is None for e in rte_test)
    with pytest.raises(T.TaskError, match=r"superglue_rte_test.jsonl:1: no field 'label'"):
        T.read_examples(D / "rte/superglue_rte_test.jsonl", "superglue", "entailment")  # labels needed

    mrpc = T.read_examples(D / "mrpc/test.txt", "mrpc", "similarity")  # BOM + header row skipped
    assert len(mrpc) == 1725 and mrpc[0].where.endswith("test.txt:2") and mrpc[0].label == "1"
    assert mrpc[0].text.startswith("PCCW's chief operating officer")
    assert [len(T.read_examples(D / f"mrpc/{s}.txt", "mrpc", "similarity")) for s in ("train", "dev")] == [2576, 1500]

    stsb = T.read_examples(D / "stsb/train.tsv", "stsb", "similarity")
    assert len(stsb) == 4249 and stsb[0].label == 5.0 and stsb[1].label == 3.8
    assert (stsb[0].text, stsb[0].pair) == ("A plane is taking off.", "An air plane is taking off.")
    stsb_test = T.read_examples(D / "stsb/test.tsv", "stsb", "similarity")  # header row skipped
    assert len(stsb_test) == 1500 and all(0 <= e.label <= 5 for e in stsb_test)

    sc = T.read_examples(D / "story-cloze-2016/val.csv", "storycloze", "multiple-choice")
    assert len(sc) == 1871 and {e.label for e in sc} == {0, 1}  # AnswerRightEnding 1/2 -> 0/1
    assert sc[0].text == ("Rick grew up in a troubled household. He never found good support in family, and turned "
                          "to gangs. It wasn't long before Rick got shot in a robbery. The incident caused him to "
                          "turn a new leaf.")
    assert sc[0].choices == ("He is happy now.", "He joined a gang.") and sc[0].label == 0
    # the same file through the generic csv reader and column flags gives the same examples
    from gptkit.finetune.loop import columns_from_flags

    cols = columns_from_flags("csv", "multiple-choice",
                              text_field=",".join(f"InputSentence{i}" for i in range(1, 5)),
                              choice_fields="RandomFifthSentenceQuiz1,RandomFifthSentenceQuiz2",
                              label_field="AnswerRightEnding", index_base=1)
    assert T.read_examples(D / "story-cloze-2016/val.csv", "csv", "multiple-choice", cols) == sc


def test_generic_readers_and_column_flags(tmp_path):
    from gptkit.finetune.loop import columns_from_flags

    (tmp_path / "a.jsonl").write_text('{"q": "ctx one", "opts": ["x", "y", "z"], "ans": 2}\n\n'
                                      '{"q": "ctx two", "opts": ["u", "v"], "ans": 0}\n')
    cols = columns_from_flags("jsonl", "multiple-choice", text_field="q", choice_fields="opts", label_field="ans")
    ex = T.read_examples(tmp_path / "a.jsonl", "jsonl", "multiple-choice", cols)
    assert [(e.text, e.choices, e.label, e.where[-7:]) for e in ex] == \
        [("ctx one", ("x", "y", "z"), 2, "jsonl:1"), ("ctx two", ("u", "v"), 0, "jsonl:3")]
    (tmp_path / "b.tsv").write_text('neg\t"quoted" text\tB\npos\tmore text\tB2\n')  # no header, tab, bare quotes
    cols = columns_from_flags("tsv", "entailment", text_field="1", pair_field="2", label_field="0", header=False)
    ex = T.read_examples(tmp_path / "b.tsv", "tsv", "entailment", cols)
    assert [(e.text, e.pair, e.label) for e in ex] == [('"quoted" text', "B", "neg"), ("more text", "B2", "pos")]
    (tmp_path / "c.csv").write_text('score,s1,s2\n1.5,"a, b",c\n4,d,e\n')
    cols = columns_from_flags("csv", "similarity", text_field="s1", pair_field="s2", label_field="score")
    ex = T.read_examples(tmp_path / "c.csv", "csv", "similarity", cols, regression=True)
    assert [(e.text, e.label) for e in ex] == [("a, b", 1.5), ("d", 4.0)]
    with pytest.raises(T.TaskError, match=r"c.csv:2: the score 'x' is not a finite number"):
        (tmp_path / "c.csv").write_text('score,s1,s2\nx,a,b\n')
        T.read_examples(tmp_path / "c.csv", "csv", "similarity", cols, regression=True)


# ------------------------------------------------------------------------------------------ a tiny model
@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, shared_data) -> Path:
    """A random tiny GPT-2-style model with a byte-level BPE trained on real text, saved as a gptkit checkpoint."""
    text = (shared_data / "tinyshakespeare/input.txt").read_text()[:200_000]
    tok = Tokenizer.train_bpe([text], vocab_size=512)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32, gelu="exact"))
    path = tmp_path_factory.mktemp("tiny") / "ckpt"
    save_model(model, path, tokenizer=tok)
    return path


def test_special_tokens_grow_the_embedding(tiny_ckpt):
    base = GPT.from_pretrained(tiny_ckpt)
    spec = T.TaskSpec(task="classification", labels=["a", "b"])
    cfg = FinetuneConfig(ckpt=str(tiny_ckpt), seed=3)
    model, tok = prepare_model(cfg, spec, torch.device("cpu"))
    gpt = model.gpt
    V = base.config.vocab_size
    assert list(spec.special_ids.values()) == [V, V + 1, V + 2] and tok.vocab_size == V + 3
    assert tok.special_tokens["<|extract|>"] == V + 2
    assert gpt.config.vocab_size == V + 3
    wte = gpt.transformer.wte.weight
    assert gpt.lm_head.weight is wte  # the tied LM head follows the embedding
    assert torch.equal(wte[:V], base.transformer.wte.weight)  # old rows untouched
    new_rows = wte[V:]
    assert new_rows.abs().max() > 0 and abs(new_rows.std().item() - 0.02) < 0.008  # N(0, init_std), 96 values
    assert spec.max_len == 64
    for name, p in base.transformer.h.named_parameters():
        assert torch.equal(p, gpt.transformer.h.get_parameter(name)), name
    # an added token encodes to its id only as a special token; user text with the same string stays text
    assert tok.encode("<|extract|>", allowed_special="all") == [V + 2]
    assert V + 2 not in tok.encode("<|extract|>")


def test_grow_vocab_untied_head():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8, tie_embeddings=False))
    g = grow_vocab(m, 12, [10, 11], generator=torch.Generator().manual_seed(0))
    assert g.lm_head.weight.shape == (12, 8) and g.lm_head.weight is not g.transformer.wte.weight
    assert torch.equal(g.lm_head.weight[:10], m.lm_head.weight)
    assert torch.equal(g.transformer.wte.weight[:10], m.transformer.wte.weight)


def test_from_scratch_keeps_the_architecture_not_the_weights(tiny_ckpt):
    base = GPT.from_pretrained(tiny_ckpt)
    spec = T.TaskSpec(task="classification", labels=["a", "b"])
    model, _ = prepare_model(FinetuneConfig(ckpt=str(tiny_ckpt), from_scratch=True, dropout=0.1), spec,
                             torch.device("cpu"))
    c = model.gpt.config
    assert (c.n_layer, c.n_embd, c.block_size, c.norm) == (2, 32, 64, base.config.norm)
    assert c.resid_pdrop == 0.1 and c.attn_pdrop == 0.1
    assert not torch.equal(model.gpt.transformer.h[0].attn.c_attn.weight, base.transformer.h[0].attn.c_attn.weight)


# --------------------------------------------------------------------------------- heads and batching
def _random_items(rng: random.Random, n: int, k_range=(2, 4), vocab: int = 50) -> list[T.Encoded]:
    return [T.Encoded([[rng.randrange(vocab) for _ in range(rng.randint(3, 12))]
                       for _ in range(rng.randint(*k_range))], None) for _ in range(n)]


def test_padding_and_batching_change_nothing():
    """A batch of examples of different lengths (and a different number of answers) gives each example the
    outputs it gets alone: right padding is invisible to causal attention, missing answers are masked."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()
    model = FinetuneModel(gpt, MultipleChoiceHead(16)).eval()
    items = _random_items(random.Random(0), 7)
    batched = run_model(model, items, batch_size=7, device=torch.device("cpu"))
    for item, out in zip(items, batched):
        alone, _ = model(*collate([item], torch.device("cpu")), lm_loss=False)
        k = len(item.seqs)
        assert torch.allclose(out[:k], alone[0, :k], atol=1e-6)
        assert torch.isinf(out[k:]).all()  # an example's missing answers never win
    # the LM loss of a padded batch equals the token-weighted mean over the examples taken alone
    idx, lengths = collate(items, torch.device("cpu"))
    _, lm = model(idx, lengths)
    total = count = 0
    for item in items:
        for s in item.seqs:
            x = torch.tensor([s])
            logits = gpt(x)[0, :-1].double()
            total += torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").item()
            count += len(s) - 1
    assert abs(lm.item() - total / count) < 1e-5


def test_lm_loss_under_bf16_autocast_is_the_float32_loss_to_bf16_rounding():
    """Under autocast the auxiliary LM loss L1 takes the fused projection + cross-entropy (gptkit.lm_loss): its
    value and the backbone's gradients stay those of float32 to bf16's rounding; the task output too."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=300, block_size=16, n_layer=2, n_head=2, n_embd=32, embd_pdrop=0.0,
                        attn_pdrop=0.0, resid_pdrop=0.0))
    model = FinetuneModel(gpt, SimilarityHead(32, 3, dropout=0.0))
    items = [T.Encoded(seqs=[[random.Random(i).randrange(300) for _ in range(5 + i)]] * 2, target=i % 3)
             for i in range(6)]
    idx, lengths = collate(items, torch.device("cpu"))

    def run(dtype):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            out, lm = model(idx, lengths)
        lm.backward()
        return out.float(), lm, gpt.transformer.wte.weight.grad.clone()

    out32, lm32, g32 = run(torch.float32)
    out16, lm16, g16 = run(torch.bfloat16)
    assert lm16.dtype == torch.float32 and abs(lm16.item() - lm32.item()) < 2e-2 * lm32.item()
    assert torch.allclose(out16, out32, atol=5e-2)
    assert (g16 - g32).norm() < 5e-2 * g32.norm()


def test_similarity_is_symmetric_in_its_two_texts():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=60, block_size=32, n_layer=2, n_head=2, n_embd=16)).eval()
    model = FinetuneModel(gpt, SimilarityHead(16, 3)).eval()
    ids = {"start": 57, "delimiter": 58, "extract": 59}
    a, b = [1, 2, 3, 4], [5, 6]
    ab, _ = T.transform("similarity", a, b, None, ids, 32)
    ba, _ = T.transform("similarity", b, a, None, ids, 32)
    out_ab, _ = model(*collate([T.Encoded(ab, None)], torch.device("cpu")), lm_loss=False)
    out_ba, _ = model(*collate([T.Encoded(ba, None)], torch.device("cpu")), lm_loss=False)
    assert torch.allclose(out_ab, out_ba, atol=1e-6)
    # ... and not by accident: the two orders' extract states differ, only their sum is the same
    h_ab = model.gpt.transformer(torch.tensor([ab[0]]))[0, -1]
    h_ba = model.gpt.transformer(torch.tensor([ab[1]]))[0, -1]
    assert (h_ab - h_ba).abs().max() > 1e-2


# -------------------------------------------------------------------------------- parity with transformers
def _randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """O(1) activations, so that a wrong mapping cannot hide under the tolerance (N(0, 0.02) weights barely move
    the logits): linear weights N(0, 1/fan_in), embeddings N(0, 0.5²), LayerNorm gains 1 + N(0, 0.2²), biases
    N(0, 0.1²). HF's Conv1D stores its weight as (in, out)."""
    g = torch.Generator().manual_seed(seed)

    def rn(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=g)

    with torch.no_grad():
        for mod in model.modules():
            kind = type(mod).__name__
            if isinstance(mod, torch.nn.Embedding):
                mod.weight.copy_(0.5 * rn(mod.weight))
            elif isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(1 + 0.2 * rn(mod.weight))
                mod.bias.copy_(0.1 * rn(mod.bias))
            elif isinstance(mod, torch.nn.Linear) or kind == "Conv1D":
                fan_in = mod.weight.shape[1] if isinstance(mod, torch.nn.Linear) else mod.weight.shape[0]
                mod.weight.copy_(rn(mod.weight) / math.sqrt(fan_in))
                if getattr(mod, "bias", None) is not None:
                    mod.bias.copy_(0.1 * rn(mod.bias))
    return model


def test_multiple_choice_logits_and_lm_loss_match_transformers_double_heads(tmp_path):
    pytest.importorskip("transformers")
    from transformers import OpenAIGPTConfig, OpenAIGPTDoubleHeadsModel

    V, P = 97, 24
    hf_cfg = OpenAIGPTConfig(vocab_size=V, n_positions=P, n_embd=32, n_layer=2, n_head=4, afn="gelu")
    torch.manual_seed(0)
    hf = _randomize_(OpenAIGPTDoubleHeadsModel(hf_cfg), 1).eval()
    hf.transformer.save_pretrained(tmp_path / "hf")  # the LM part, read by gptkit's own HF importer
    gpt = GPT.from_pretrained(tmp_path / "hf")
    assert gpt.config.norm == "post" and gpt.config.vocab_size == V
    head = MultipleChoiceHead(32, dropout=0.1)
    with torch.no_grad():  # HF's multiple_choice_head.summary is GPT-1's W_y (hidden → 1)
        head.linear.weight.copy_(hf.multiple_choice_head.summary.weight)
        head.linear.bias.copy_(hf.multiple_choice_head.summary.bias)
    model = FinetuneModel(gpt, head).eval()

    # 3 examples × 4 answers of different lengths, right-padded with token 0
    rng = random.Random(0)
    items = [T.Encoded([[rng.randrange(V) for _ in range(rng.randint(4, P))] for _ in range(4)], rng.randrange(4))
             for _ in range(3)]
    idx, lengths = collate(items, torch.device("cpu"))
    labels = idx.masked_fill(torch.arange(idx.size(-1)) >= lengths.unsqueeze(-1), -100)  # HF ignores -100
    with torch.no_grad():
        ref = hf(input_ids=idx, mc_token_ids=lengths - 1, labels=labels,
                 mc_labels=torch.tensor([e.target for e in items]))
        mc_logits, lm_loss = model(idx, lengths)
    diff_mc = (mc_logits - ref.mc_logits).abs().max().item()
    assert diff_mc < 1e-5 and (lm_loss - ref.loss).abs().item() < 1e-5, (diff_mc, lm_loss, ref.loss)
    mc_loss = torch.nn.functional.cross_entropy(mc_logits, torch.tensor([e.target for e in items]))
    assert abs(mc_loss.item() - ref.mc_loss.item()) < 1e-5
    assert ref.mc_logits.std() > 0.1 and ref.loss > 1.0  # O(1) signals, not a trivially small comparison
    # a deliberate mistake is caught: the state one token before the extract token
    wrong, _ = model(idx, (lengths - 1).clamp(min=1), lm_loss=False)
    assert (wrong - ref.mc_logits).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------- metrics
def test_metrics_match_scikit_learn_and_scipy():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    from gptkit.finetune import metrics as M

    rng = random.Random(0)
    for trial in range(20):
        n = rng.randint(5, 200)
        gold = [rng.randrange(3 if trial % 2 else 2) for _ in range(n)]
        pred = [g if rng.random() < 0.6 else rng.randrange(3 if trial % 2 else 2) for g in gold]
        assert M.accuracy(pred, gold) == pytest.approx(sklearn_metrics.accuracy_score(gold, pred))
        assert M.f1_binary(pred, gold, 1) == pytest.approx(
            sklearn_metrics.f1_score(gold, pred, labels=[1], average="macro", zero_division=0))
        if trial % 2:
            assert M.macro_f1(pred, gold, 3) == pytest.approx(
                sklearn_metrics.f1_score(gold, pred, labels=[0, 1, 2], average="macro", zero_division=0))
        x = [round(rng.uniform(0, 5), 1) for _ in range(n)]  # rounded: many ties, as in STS-B's scores
        y = [v + rng.gauss(0, 1.5) for v in x]
        assert M.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
        assert M.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)


def test_learning_rate_warms_up_then_decays_linearly_to_zero():
    total, warm, lr = 1000, 2, 6.25e-5  # 0.2% of 1000 steps
    lrs = [warmup_linear(s, total, warm, lr) for s in range(total)]
    assert lrs[0] == lr / 2 and lrs[1] == lr and lrs[2] == lr
    assert all(b < a for a, b in zip(lrs[2:], lrs[3:]))
    assert lrs[-1] == pytest.approx(lr / (total - warm)) and warmup_linear(total, total, warm, lr) == 0


# --------------------------------------------------------------------------------------- end to end
WORDS = ["the", "a", "film", "story", "plot", "actor", "scene", "music", "moment", "character", "ending", "pace", "script"]


def _sentiment_file(path: Path, n: int, seed: int, labels=("good", "bad")) -> None:
    """A task a tiny model can learn in a few steps: the label is the sentiment word hidden in the text."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            lab = rng.choice(labels)
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 10))]
            words.insert(rng.randrange(len(words) + 1), {"good": "wonderful", "bad": "dreadful"}.get(lab, lab))
            f.write(json.dumps({"text": " ".join(words), "label": lab}) + "\n")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_finetune_learns_and_predict_reproduces_it(tiny_ckpt, tmp_path, capsys, dtype):
    """The whole loop through the CLI, in float32 and under bf16 autocast (weights stay float32); `gptkit
    predict` computes in the dtype the run was fine-tuned in, so it reproduces the run's own predictions."""
    _sentiment_file(tmp_path / "train.jsonl", 256, 0)
    _sentiment_file(tmp_path / "valid.jsonl", 64, 1)
    _sentiment_file(tmp_path / "test.jsonl", 64, 2)
    out = tmp_path / "run"
    rc = main(["finetune", "--ckpt", str(tiny_ckpt), "--task-type", "classification", "--train",
               str(tmp_path / "train.jsonl"), "--valid", str(tmp_path / "valid.jsonl"), "--test",
               str(tmp_path / "test.jsonl"), "--out", str(out), "--lr", "2e-3", "--epochs", "4", "--batch-size",
               "16", "--quiet", "--seed", "0", "--dtype", dtype])
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads((out / "finetune_config.json").read_text())["dtype"] == dtype
    assert json.loads((out / "task.json").read_text())["dtype"] == dtype
    assert set(metrics) == {"valid", "test"}
    assert metrics["valid"]["accuracy"] >= 0.9 and metrics["test"]["accuracy"] >= 0.9, metrics
    assert {"accuracy", "f1", "n"} <= set(metrics["test"]) and metrics["test"]["n"] == 64
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log[:-1]] == [1, 2, 3, 4] and log[-1]["summary"] and log[-1]["steps"] == 64
    assert all(r["train_lm_loss"] > 0 and abs(r["train_loss"] - r["train_task_loss"] - 0.5 * r["train_lm_loss"])
               < 1e-4 for r in log[:-1])  # L3 = L2 + 0.5 L1
    spec = json.loads((out / "task.json").read_text())
    assert spec["labels"] == ["bad", "good"] and spec["positive_label"] == "good"  # no conventional name: the 2nd
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left

    # the fine-tuned directory is a gptkit checkpoint (LM + grown vocabulary + tokenizer) ...
    lm = GPT.from_pretrained(out)
    assert lm.config.vocab_size == lm.tokenizer.vocab_size == 515
    # ... and `gptkit predict` gives exactly the predictions the run wrote
    rc = main(["predict", "--ckpt", str(out), "--input", str(tmp_path / "test.jsonl"), "--out",
               str(tmp_path / "pred.jsonl")])
    assert rc == 0
    pred = [json.loads(x) for x in (tmp_path / "pred.jsonl").read_text().splitlines()]
    run_pred = [json.loads(x) for x in (out / "predictions/test.jsonl").read_text().splitlines()]
    assert len(pred) == 64 and [p["prediction"] for p in pred] == [p["prediction"] for p in run_pred]
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-4 for p in pred)
    assert sum(p["prediction"] == p["label"] for p in pred) / 64 == metrics["test"]["accuracy"]
    model, spec2, _ = load_finetuned(out)
    assert not model.training and spec2.task == "classification"
    assert model.autocast_dtype == getattr(torch, dtype)
    # the run really computed in its dtype: float32 predictions of the same weights differ (in bf16's rounding)
    assert main(["predict", "--ckpt", str(out), "--input", str(tmp_path / "test.jsonl"), "--out",
                 str(tmp_path / "pred32.jsonl"), "--dtype", "float32"]) == 0
    pred32 = [json.loads(x) for x in (tmp_path / "pred32.jsonl").read_text().splitlines()]
    gap = max(abs(p["probabilities"][k] - q["probabilities"][k]) for p, q in zip(pred32, run_pred)
              for k in p["probabilities"])
    assert gap < 1e-5 if dtype == "float32" else gap > 1e-4


def test_lm_coef_zero_trains_on_the_task_loss_alone(tiny_ckpt, tmp_path, capsys):
    _sentiment_file(tmp_path / "train.jsonl", 32, 0)
    out = tmp_path / "run"
    rc = main(["finetune", "--ckpt", str(tiny_ckpt), "--task-type", "classification", "--train",
               str(tmp_path / "train.jsonl"), "--valid-from-train", "8", "--out", str(out), "--lm-coef", "0",
               "--epochs", "1", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    rec = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert rec["train_lm_loss"] is None and rec["train_loss"] == rec["train_task_loss"]
    assert json.loads((out / "metrics.json").read_text())["valid"]["n"] == 8


def test_the_thread_guard_sees_every_step_and_its_choice_is_logged(tiny_ckpt, tmp_path, capsys, monkeypatch):
    """Fine-tuning hands each step's time to a ThreadGuard (gptkit.threadguard); fewer threads are recorded in the
    epoch's log line, and the run's count is given back at the end. `--threads N` turns the guard off."""
    from gptkit.finetune import loop
    from gptkit.threadguard import ThreadGuard

    seen = []

    class Recording(ThreadGuard):
        def after_step(self, took, step):
            seen.append((self.on, took, step))
            if self.on and step == 3:  # as if another process had taken a core
                self._use(1)

    monkeypatch.setattr(loop, "ThreadGuard", Recording)
    monkeypatch.setenv("GPTKIT_THREAD_GUARD", "on")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # the guard's count without 2 real threads
    counts = []
    monkeypatch.setattr(torch, "set_num_threads", counts.append)
    _sentiment_file(tmp_path / "train.jsonl", 64, 0)
    argv = ["finetune", "--ckpt", str(tiny_ckpt), "--task-type", "classification",
            "--train", str(tmp_path / "train.jsonl"),
            "--valid-from-train", "16", "--epochs", "2", "--batch-size", "8", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0, capsys.readouterr().err
    assert [step for _, _, step in seen] == list(range(1, 13)) and all(on and took > 0 for on, took, _ in seen)
    log = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert [r.get("threads") for r in log[:-1]] == [1, 1] and log[-1]["threads"] == 2
    assert counts == [1, 2]  # the guard's one thread, then the run's two given back
    seen.clear()
    assert main([*argv, "--out", str(tmp_path / "fixed"), "--threads", "1"]) == 0
    assert len(seen) == 12 and not any(on for on, _, _ in seen)
    assert "threads" not in json.loads((tmp_path / "fixed/log.jsonl").read_text().splitlines()[0])


def test_the_thread_guard_leaves_out_partial_batches_and_steps_that_compiled(tiny_ckpt, tmp_path, capsys,
                                                                             monkeypatch):
    """A partial batch's time, scaled up to a full batch's tokens, is mostly its fixed costs, and a step in which
    torch.compile compiled (a new length, the backward's first call) is the compiler's: neither is shown to the
    guard, which would take them for another process on the CPU (a review's simulation: 33 of 96 steps on one
    thread on a quiet machine)."""
    import itertools

    from gptkit.finetune import loop
    from gptkit.threadguard import ThreadGuard

    seen = []

    class Recording(ThreadGuard):
        def after_step(self, took, step):
            seen.append(step)

    calls = itertools.count()
    monkeypatch.setattr(loop, "ThreadGuard", Recording)
    monkeypatch.setattr(loop, "compile_events", lambda: int(next(calls) >= 3))  # read before and after each step:
    # the 4th reading, after step 2, is the first to differ from the one before its step
    _sentiment_file(tmp_path / "train.jsonl", 50, 0)  # 34 to train on: 4 batches of 8 and one of 2 an epoch
    assert main(["finetune", "--ckpt", str(tiny_ckpt), "--task-type", "classification", "--train",
                 str(tmp_path / "train.jsonl"), "--valid-from-train", "16", "--epochs", "2", "--batch-size", "8",
                 "--quiet", "--out", str(tmp_path / "run")]) == 0, capsys.readouterr().err
    steps = json.loads((tmp_path / "run/log.jsonl").read_text().splitlines()[-1])["steps"]
    assert steps == 10 and len(seen) == 10 - 2 - 1 and 2 not in seen


def test_recipe_sizes_lr_epochs_and_warmup_and_flags_win():
    """lr = 0.048 / width (GPT-1's 6.25e-5 at 768), 3 epochs or enough for 500 steps (at most 20), warmup 6%."""
    from gptkit.options.finetune import recipe

    base = FinetuneConfig(ckpt="m", train="t", out="o", valid="v")
    sst2, why = recipe(base, 768, 67_349)  # GPT-1's size on SST-2's training set: GPT-1's own values
    assert (sst2.lr, sst2.epochs, sst2.warmup) == (pytest.approx(6.25e-5), 3.0, 0.06) and len(why) == 3
    rte, _ = recipe(base, 192, 2_490)  # 78 steps an epoch: 7 epochs make 500 steps
    assert rte.lr == pytest.approx(2.5e-4) and rte.epochs == 7.0
    assert recipe(base, 192, 200)[0].epochs == 20.0  # 7 steps an epoch: capped
    mine = FinetuneConfig(ckpt="m", train="t", out="o", valid="v", lr=1e-3, epochs=1.0, warmup=0.0)
    kept, why = recipe(mine, 192, 2_490)
    assert (kept.lr, kept.epochs, kept.warmup) == (1e-3, 1.0, 0.0) and why == []


def test_recipe_defaults_are_used_and_recorded(tiny_ckpt, tmp_path, capsys):
    _sentiment_file(tmp_path / "train.jsonl", 40, 0)
    out = tmp_path / "run"
    rc = main(["finetune", "--ckpt", str(tiny_ckpt), "--task-type", "classification", "--train",
               str(tmp_path / "train.jsonl"), "--valid-from-train", "8", "--out", str(out), "--batch-size", "8"])
    err = capsys.readouterr().err
    assert rc == 0, err
    width = 32  # tiny_ckpt's n_embd
    cfg = json.loads((out / "finetune_config.json").read_text())
    assert cfg["lr"] == pytest.approx(0.048 / width) and cfg["epochs"] == 20.0 and cfg["warmup"] == 0.06
    assert "fine-tuning recipe" in err and f"width {width}" in err
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["steps"] == 20 * 4  # 32 examples left after 8 held out: 4 steps of 8, 20 epochs


@pytest.mark.parametrize("task,fmt", [("similarity", "stsb"), ("multiple-choice", "storycloze")])
def test_regression_and_multiple_choice_runs_on_real_files(tiny_ckpt, tmp_path, shared_data, capsys, task, fmt):
    D = shared_data
    files = {"stsb": ("stsb/train.tsv", "stsb/dev.tsv"), "storycloze": ("story-cloze-2016/val.csv",
                                                                          "story-cloze-2016/test.csv")}[fmt]
    out = tmp_path / "run"
    rc = main(["finetune", "--ckpt", str(tiny_ckpt), "--format", fmt, "--train", str(D / files[0]), "--valid",
               str(D / files[1]), "--out", str(out), "--max-train-examples", "64", "--max-eval-examples", "40",
               "--epochs", "1", "--max-len", "40", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())["valid"]
    spec = json.loads((out / "task.json").read_text())
    assert spec["task"] == task and spec["max_len"] == 40
    if fmt == "stsb":
        assert spec["regression"] and {"pearson", "spearman", "mse"} <= set(m)
    else:
        assert m["n"] == 40 and "accuracy" in m and m["truncated"] > 0  # 40 tokens cannot hold a whole story
        pred = [json.loads(x) for x in (out / "predictions/valid.jsonl").read_text().splitlines()]
        assert {p["prediction"] for p in pred} <= {1, 2} and {p["label"] for p in pred} <= {1, 2}


# --------------------------------------------------------------------------------------------- bad input
def _finetune_argv(tmp_path, train, valid, fmt, out, extra=()):
    return ["finetune", "--ckpt", str(tmp_path / "no-model-needed"), "--train", str(train), "--valid", str(valid),
            "--format", fmt, "--out", str(out), *extra]


def test_bad_input_is_one_line_naming_file_and_line(tmp_path, capsys, shared_data):
    out = tmp_path / "out"
    sst_train = shared_data / "sst2/stsa.binary.train"
    cases = []
    # an unknown label in the validation file
    (tmp_path / "valid.sst2").write_text("1 fine\n0 bad\n7 what is this label\n")
    cases.append((_finetune_argv(tmp_path, sst_train, tmp_path / "valid.sst2", "sst2", out),
                  [f"{tmp_path / 'valid.sst2'}:3", "label '7' is not one of the training labels ('0', '1')"]))
    # a missing column
    (tmp_path / "rte.jsonl").write_text('{"premise": "p", "hypothesis": "h", "label": "entailment"}\n'
                                        '{"premise": "p", "label": "not_entailment"}\n')
    cases.append((_finetune_argv(tmp_path, tmp_path / "rte.jsonl", tmp_path / "rte.jsonl", "superglue", out),
                  [f"{tmp_path / 'rte.jsonl'}:2", "no field 'hypothesis'"]))
    (tmp_path / "mrpc.txt").write_text("1\t1\t2\tonly one sentence\n")
    cases.append((_finetune_argv(tmp_path, tmp_path / "mrpc.txt", tmp_path / "mrpc.txt", "mrpc", out),
                  [f"{tmp_path / 'mrpc.txt'}:1", "expected 5 tab-separated columns"]))
    # an empty file
    (tmp_path / "empty.jsonl").write_text("")
    cases.append((_finetune_argv(tmp_path, tmp_path / "empty.jsonl", tmp_path / "empty.jsonl", "jsonl", out,
                                 ["--task-type", "classification"]), [f"{tmp_path / 'empty.jsonl'}: no examples"]))
    # a Story Cloze row with a bad answer index
    rows = (shared_data / "story-cloze-2016/test.csv").read_text().splitlines()[:4]
    rows[3] = rows[3][:-1] + "3"
    (tmp_path / "sc.csv").write_text("\n".join(rows) + "\n")
    cases.append((_finetune_argv(tmp_path, shared_data / "story-cloze-2016/val.csv", tmp_path / "sc.csv",
                                 "storycloze", out), [f"{tmp_path / 'sc.csv'}:4", "answer index '3' is not one of 1..2"]))
    # a file that does not exist, a label column with one value
    cases.append((_finetune_argv(tmp_path, tmp_path / "nope.jsonl", tmp_path / "nope.jsonl", "jsonl", out,
                                 ["--task-type", "classification"]), ["nope.jsonl: no such file"]))
    for argv, fragments in cases:
        rc = main(argv)
        assert_one_line_error(rc, capsys.readouterr().err, *fragments)
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_failed_run_leaves_out_as_it_was(tiny_ckpt, tmp_path, capsys, monkeypatch):
    _sentiment_file(tmp_path / "train.jsonl", 32, 0)
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("old result")
    (out / "finetune_config.json").write_text("{}")  # an earlier fine-tune's output: --overwrite may replace it
    argv = ["finetune", "--ckpt", str(tiny_ckpt), "--task-type", "classification",
            "--train", str(tmp_path / "train.jsonl"),
            "--valid", str(tmp_path / "train.jsonl"), "--out", str(out), "--epochs", "1", "--quiet"]
    assert_one_line_error(main(argv), capsys.readouterr().err, "already holds files", "--overwrite")

    from gptkit.finetune import loop

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(loop, "save_finetuned", boom)  # fails after training, while writing the result
    with pytest.raises(RuntimeError, match="disk full"):
        main(argv + ["--overwrite"])
    assert sorted(p.name for p in out.iterdir()) == ["finetune_config.json", "keep.txt"]
    assert (out / "keep.txt").read_text() == "old result"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()
    assert main(argv + ["--overwrite"]) == 0  # and --overwrite replaces it once the run succeeds
    assert (out / "metrics.json").is_file() and not (out / "keep.txt").exists()


def test_bad_checkpoint_and_options(tmp_path, capsys, tiny_ckpt):
    _sentiment_file(tmp_path / "train.jsonl", 8, 0)
    base = ["finetune", "--task-type", "classification", "--train", str(tmp_path / "train.jsonl"), "--valid",
            str(tmp_path / "train.jsonl"), "--out", str(tmp_path / "o")]
    assert_one_line_error(main(base + ["--ckpt", str(tmp_path / "nope")]), capsys.readouterr().err, "does not exist")
    assert_one_line_error(main(base + ["--ckpt", str(tiny_ckpt), "--max-len", "999"]), capsys.readouterr().err,
                          "longer than the model's context (64)")
    assert_one_line_error(main(base + ["--ckpt", str(tiny_ckpt), "--format", "storycloze"]),
                          capsys.readouterr().err, "--format storycloze holds multiple-choice data, not --task-type "
                          "classification")
    old = [("--task" if x == "--task-type" else x) for x in base]  # the old spelling: named back as it was typed
    assert_one_line_error(main(old + ["--ckpt", str(tiny_ckpt), "--format", "storycloze"]),
                          capsys.readouterr().err, "not --task classification")
    assert_one_line_error(main(base + ["--ckpt", str(tiny_ckpt), "--dtype", "float16"]), capsys.readouterr().err,
                          "--dtype must be auto, float32 or bfloat16")
    assert_one_line_error(main(["predict", "--ckpt", str(tiny_ckpt), "--input", "x", "--out", str(tmp_path / "p"),
                                "--dtype", "half"]), capsys.readouterr().err, "--dtype must be")
    assert_one_line_error(main(["finetune", "--ckpt", str(tiny_ckpt), "--train", "x.jsonl", "--out", "o"]),
                          capsys.readouterr().err, "--valid")
    assert_one_line_error(main(["predict", "--ckpt", str(tiny_ckpt), "--input", "x", "--out", str(tmp_path / "p")]),
                          capsys.readouterr().err, "not a fine-tuned model")
    assert not (tmp_path / "o").exists() and not (tmp_path / "p").exists()


@pytest.mark.parametrize("flag", ["--epochs", "--lr", "--lm-coef"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_numbers_are_refused(tmp_path, capsys, flag, value):
    _sentiment_file(tmp_path / "train.jsonl", 8, 0)
    argv = _finetune_argv(tmp_path, tmp_path / "train.jsonl", tmp_path / "train.jsonl", "jsonl", tmp_path / "o",
                          ["--task-type", "classification", flag, value])
    assert_one_line_error(main(argv), capsys.readouterr().err, flag)
    assert not (tmp_path / "o").exists()


def test_predict_checks_counts_and_output_before_loading(tmp_path, capsys):
    """Checked before the model is read (the checkpoint here does not exist): --out that is the input or a
    directory, and counts that are not positive."""
    x = tmp_path / "x.txt"
    x.write_text("a fine day\n")
    (tmp_path / "adir").mkdir()
    base = ["predict", "--ckpt", str(tmp_path / "nockpt"), "--input", str(x)]
    cases = [(["--out", str(x)], "also an input"), (["--out", str(tmp_path / "adir")], "is a directory"),
             (["--out", str(tmp_path / "p.jsonl"), "--max-examples", "0"], "--max-examples"),
             (["--out", str(tmp_path / "p.jsonl"), "--max-examples", "-1"], "--max-examples"),
             (["--out", str(tmp_path / "p.jsonl"), "--batch-size", "0"], "--batch-size"),
             (["--out", str(tmp_path / "p.jsonl"), "--batch-size", "-2"], "--batch-size")]
    for extra, fragment in cases:
        assert_one_line_error(main(base + extra), capsys.readouterr().err, fragment)
    assert x.read_text() == "a fine day\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "x.txt"]


def test_a_second_writer_of_out_is_refused(tiny_ckpt, tmp_path, capsys):
    """While another process holds --out (gptkit.runlock), finetune stops at once and leaves everything as it
    was; once the holder is gone it runs, and the published directory holds no lock file."""
    import os

    from gptkit.runlock import LOCK_NAME, RunLock

    _sentiment_file(tmp_path / "train.jsonl", 32, 0)
    out = tmp_path / "run"
    argv = ["finetune", "--ckpt", str(tiny_ckpt), "--task-type", "classification",
            "--train", str(tmp_path / "train.jsonl"),
            "--valid", str(tmp_path / "train.jsonl"), "--out", str(out), "--epochs", "1", "--quiet"]
    with RunLock(out):
        assert_one_line_error(main(argv), capsys.readouterr().err, str(out), f"process {os.getpid()}")
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory begun
    assert main(argv) == 0
    assert (out / "metrics.json").is_file() and not (out / LOCK_NAME).exists()
