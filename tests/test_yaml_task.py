"""gptkit.evaluate.yaml_task: a user's task from a YAML spec and a JSONL file. Templates render fields and
nothing else, every mistake is one line naming the file, and the evaluation of a YAML task equals a float64
recomputation by hand on a tiny random model (choice, cloze and perplexity)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gptkit import GPT, GPTConfig, Tokenizer
from gptkit.evaluate.runner import evaluate
from gptkit.evaluate.tasks import Doc, EvalError, get_task, load_splits
from gptkit.evaluate.yaml_task import check_template, load_yaml_task, render

ROWS = [{"text": "good food", "label": "pos", "n": 1}, {"text": "cold soup", "label": "neg", "n": 0},
        {"text": "kind staff", "label": "pos", "n": 1}]


def _write(d: Path, spec: str, rows: list[dict] = ROWS, name: str = "d.jsonl") -> Path:
    (d / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = d / "task.yaml"
    p.write_text(spec)
    return p


def _error(path: Path) -> str:
    with pytest.raises(EvalError) as e:
        task = load_yaml_task(path)
        load_splits(task, path.parent)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# ------------------------------------------------------------------------------------------ templates
def test_render_replaces_fields_and_keeps_escaped_braces():
    assert render("Q: {text} {{x}} = {n}", {"text": "hi", "n": 3}, "w") == "Q: hi {x} = 3"
    with pytest.raises(EvalError, match=r"w: the template needs field 'missing'.*it has text"):
        render("{missing}", {"text": "hi"}, "w")


@pytest.mark.parametrize("bad, shown", [("{text", "{text"), ("a {text.upper} b", "{text.upper}"),
                                        ("{text!r}", "{text!r}"), ("{text:>9}", "{text:>9}"), ("x } y", "}"),
                                        ("{}", "{}")])
def test_check_template_refuses_what_is_not_a_field(bad, shown):
    with pytest.raises(EvalError) as e:
        check_template(bad, "t.yaml")
    msg = str(e.value)
    assert msg.startswith(f"t.yaml: template has {shown!r} at character {bad.index(shown[0]) + 1}")
    assert "\n" not in msg


def test_check_template_accepts_fields_and_escapes():
    for ok in ("{text}", "{{literal}}", "Review: {text}\nSentiment:", "no fields", "{a}{b} {{}}"):
        check_template(ok, "t.yaml")


# ------------------------------------------------------------------------------------------ loading
def test_a_verbalizer_task_loads_as_docs(tmp_path):
    p = _write(tmp_path, "name: mine\ndata: d.jsonl\ntemplate: \"Review: {text}\\nSentiment:\"\n"
                         "verbalizer: {neg: negative, pos: positive}\nanswer_field: label\n"
                         "description: Say it.\n")
    task = load_yaml_task(p)
    assert (task.name, task.kind, task.eval_split, task.fewshot_split) == ("mine", "choice", "eval", "eval")
    assert task.description == "Say it." and task.source == str(p)
    docs, pool = load_splits(task, Path("/nonexistent"))  # YAML tasks do not use --data-dir
    assert docs == [Doc("Review: good food\nSentiment:", ("negative", "positive"), 1),
                    Doc("Review: cold soup\nSentiment:", ("negative", "positive"), 0),
                    Doc("Review: kind staff\nSentiment:", ("negative", "positive"), 1)]
    assert pool is docs


def test_answers_by_index_by_text_and_by_number_keys(tmp_path):
    p = _write(tmp_path, "data: d.jsonl\ntemplate: '{text}'\nchoices: [bad, good]\nanswer_field: n\n")
    assert [d.gold for d in load_splits(load_yaml_task(p), tmp_path)[0]] == [1, 0, 1]  # index
    rows = [{"text": "a", "y": "good"}, {"text": "b", "y": "bad"}]
    p = _write(tmp_path, "data: d.jsonl\ntemplate: '{text}'\nchoices: [bad, good]\nanswer_field: y\n", rows)
    assert [d.gold for d in load_splits(load_yaml_task(p), tmp_path)[0]] == [1, 0]  # the right choice's text
    rows = [{"text": "a", "y": "1"}, {"text": "b", "y": 0}]  # YAML reads `1:` as an int, JSONL may hold "1"
    p = _write(tmp_path, "data: d.jsonl\ntemplate: '{text}'\nverbalizer: {0: nay, 1: yea}\nanswer_field: y\n",
               rows)
    assert [d.gold for d in load_splits(load_yaml_task(p), tmp_path)[0]] == [1, 0]


def test_per_example_choices_cloze_and_perplexity(tmp_path):
    rows = [{"q": "2+2", "opts": ["3", "4", "5"], "a": 1}]
    p = _write(tmp_path, "data: d.jsonl\ntemplate: '{q} ='\nchoices_field: opts\nanswer_field: a\n", rows)
    assert load_splits(load_yaml_task(p), tmp_path)[0] == [Doc("2+2 =", ("3", "4", "5"), 1)]
    rows = [{"ctx": "the cat sat on the", "w": "mat"}]
    p = _write(tmp_path, "kind: cloze\ndata: d.jsonl\ntemplate: '{ctx}'\ntarget_field: w\n", rows)
    task = load_yaml_task(p)
    assert task.kind == "cloze" and load_splits(task, tmp_path)[0] == [Doc("the cat sat on the", ("mat",), 0)]
    rows = [{"body": "Some text."}]
    p = _write(tmp_path, "kind: perplexity\ndata: d.jsonl\ntext_field: body\n", rows)
    task = load_yaml_task(p)
    assert task.fewshot_split is None
    assert load_splits(task, tmp_path) == ([Doc("Some text.", raw="Some text.")], None)


def test_data_paths_are_relative_to_the_task_file_and_fewshot_data_is_its_own_split(tmp_path, monkeypatch):
    sub = tmp_path / "tasks"
    sub.mkdir()
    (sub / "train.jsonl").write_text(json.dumps({"text": "demo", "n": 0}) + "\n")
    p = _write(sub, "data: d.jsonl\nfewshot_data: train.jsonl\ntemplate: '{text}'\nchoices: [a, b]\n"
                    "answer_field: n\n")
    monkeypatch.chdir(tmp_path)  # not the task file's folder
    task = get_task(str(p))
    docs, pool = load_splits(task, tmp_path)
    assert len(docs) == 3 and pool == [Doc("demo", ("a", "b"), 0)] and task.fewshot_split == "fewshot"


# ------------------------------------------------------------------------------------------ mistakes
CHOICE = "data: d.jsonl\ntemplate: '{text}'\nanswer_field: n\n"


@pytest.mark.parametrize("spec, rows, message", [
    ("kind: choose\n" + CHOICE + "choices: [a, b]\n", ROWS, "kind must be choice, cloze or perplexity"),
    ("template: '{text}'\nchoices: [a, b]\nanswer_field: n\n", ROWS, "'data' (the JSONL file of examples) is required"),
    ("name: 3\n" + CHOICE + "choices: [a, b]\n", ROWS, "'name' must be a string, got int"),
    ("name: ../../evil\n" + CHOICE + "choices: [a, b]\n", ROWS, "hold '/'"),  # it named files outside --export
    ("name: .hidden\n" + CHOICE + "choices: [a, b]\n", ROWS, "start with '.'"),
    (CHOICE, ROWS, "needs exactly one of choices, choices_field, verbalizer (got none)"),
    (CHOICE + "choices: [a]\n", ROWS, "'choices' must be a list of at least two strings"),
    (CHOICE + "verbalizer: {a: x}\n", ROWS, "'verbalizer' must map at least two answer values to strings"),
    ("data: d.jsonl\nchoices: [a, b]\nanswer_field: n\n", ROWS, "a choice task needs 'template' and 'answer_field'"),
    ("kind: cloze\ndata: d.jsonl\ntemplate: '{text}'\n", ROWS, "a cloze task needs 'template' and 'target_field'"),
    ("kind: perplexity\ndata: d.jsonl\n", ROWS, "a perplexity task needs 'text_field'"),
    (CHOICE + "choices: [a, b]\n", [{"text": "x", "n": 5}], "example 1: answer index 5 is out of range for 2"),
    (CHOICE + "choices: [a, b]\n", [{"text": "x", "n": True}], "answer True must be a choice index"),
    (CHOICE + "choices: [a, b]\n", [{"text": "x"}], "example 1: missing answer field 'n'"),
    (CHOICE + "verbalizer: {0: nay, 1: yea}\n", [{"text": "x", "n": 7}], "answer 7 is not a key of the verbalizer"),
    ("data: d.jsonl\ntemplate: '{text}'\nchoices_field: o\nanswer_field: n\n", [{"text": "x", "o": "ab", "n": 0}],
     "field 'o' must be a list of at least two strings"),
    ("kind: cloze\ndata: d.jsonl\ntemplate: '{text}'\ntarget_field: w\n", [{"text": "x", "w": ""}],
     "field 'w' must be a non-empty string"),
    ("kind: perplexity\ndata: d.jsonl\ntext_field: body\n", [{"body": 3}], "field 'body' must be a string"),
    (CHOICE + "choices: [a, b]\n", [], "no examples"),
    ("data: d.jsonl\ntemplate: '{text}'\nchoices: [a, b]\nanswer_field: n\n: [\n", ROWS, "not valid YAML at line"),
])
def test_each_mistake_is_one_line_naming_the_file(tmp_path, spec, rows, message):
    p = _write(tmp_path, spec, rows)
    msg = _error(p)
    assert message in msg and (str(p) in msg or str(tmp_path / "d.jsonl") in msg), msg


def test_files_that_are_not_task_files(tmp_path):
    assert _error(tmp_path / "absent.yaml") == f"task file {tmp_path / 'absent.yaml'} not found"
    p = tmp_path / "t.yaml"
    p.write_bytes(b"name: caf\xe9\n")
    assert _error(p) == f"{p}: not UTF-8 text"
    p.write_text("- a\n- b\n")
    assert "expected a YAML mapping of task settings, got list" in _error(p)
    p.write_text("data: d.jsonl\ncolour: red\n")
    assert "unknown key(s) colour; allowed:" in _error(p)
    p.write_text("data: nope.jsonl\ntemplate: '{text}'\nchoices: [a, b]\nanswer_field: n\n")
    assert f"data file {tmp_path / 'nope.jsonl'} not found" in _error(p)


# ------------------------------------------------------------------------------ results by hand
@pytest.fixture(scope="module")
def tiny() -> GPT:
    torch.manual_seed(0)
    tok = Tokenizer.train_char("abcdefghijklmnopqrstuvwxyzRS:. \n")
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32, init_std=0.2,
                          gelu="exact"))
    model.tokenizer = tok
    return model.eval()


def _logprobs(model: GPT, ids: list[int]) -> torch.Tensor:
    """(len(ids) - 1, vocab) float64 log-probabilities of each next token."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids[:-1]]))[0].double(), dim=-1)


def test_a_choice_task_scores_as_a_hand_computation(tiny, tmp_path):
    p = _write(tmp_path, "data: d.jsonl\ntemplate: \"Review: {text}\\nSentiment:\"\n"
                         "verbalizer: {neg: bad, pos: good}\nanswer_field: label\n")
    rep = evaluate(tiny, [str(p)], [0], keep_samples=True, log=lambda m: None)
    tok = tiny.tokenizer
    hits = []
    for row, s in zip(ROWS, rep.samples):
        context = f"Review: {row['text']}\nSentiment:"
        assert s["context"] == context and s["choices"] == ["bad", "good"]
        ll = []
        for choice in ("bad", "good"):
            ctx, cont = tok.encode(context), tok.encode(" " + choice)
            lp = _logprobs(tiny, ctx + cont)
            ll.append(sum(lp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont)))
        assert s["loglikelihoods"] == pytest.approx(ll, abs=1e-4)
        gold = 1 if row["label"] == "pos" else 0
        assert s["gold"] == gold
        hits.append(float(max(range(2), key=lambda k: ll[k]) == gold))
    assert rep.summary["results"][p.stem]["acc"] == pytest.approx(sum(hits) / len(hits))


def test_cloze_and_perplexity_tasks_score_as_a_hand_computation(tiny, tmp_path):
    tok = tiny.tokenizer
    rows = [{"ctx": "the cat sat on the", "w": "mat"}, {"ctx": "a dog", "w": "ran"}]
    p = _write(tmp_path, "kind: cloze\ndata: d.jsonl\ntemplate: '{ctx}'\ntarget_field: w\n", rows)
    rep = evaluate(tiny, [str(p)], [0], keep_samples=True, log=lambda m: None)
    for row, s in zip(rows, rep.samples):
        ctx, cont = tok.encode(row["ctx"]), tok.encode(" " + row["w"])
        lp = _logprobs(tiny, ctx + cont)
        rows_lp = lp[len(ctx) - 1:]
        assert s["loglikelihood"] == pytest.approx(sum(rows_lp[j, t].item() for j, t in enumerate(cont)), abs=1e-4)
        assert s["correct"] == all(int(rows_lp[j].argmax()) == t for j, t in enumerate(cont))

    rows = [{"body": "some short text."}, {"body": "another one"}]
    p = _write(tmp_path, "kind: perplexity\ndata: d.jsonl\ntext_field: body\n", rows)
    rep = evaluate(tiny, [str(p)], [0], keep_samples=True, log=lambda m: None)
    for row, s in zip(rows, rep.samples):
        ids = tok.encode(row["body"])
        lp = _logprobs(tiny, [tok.eot_id, *ids])  # each document is scored after <|endoftext|>
        assert s["tokens"] == len(ids)
        assert s["loglikelihood"] == pytest.approx(sum(lp[j, t].item() for j, t in enumerate(ids)), abs=1e-4)


def test_a_data_file_that_is_not_utf8_is_one_line(tmp_path):
    p = _write(tmp_path, CHOICE + "choices: [a, b]\n")
    (tmp_path / "d.jsonl").write_bytes(b'{"text": "ok", "n": 0}\n{"text": "caf\xe9", "n": 1}\n')
    assert _error(p).startswith(f"{tmp_path / 'd.jsonl'}: not UTF-8 text")
