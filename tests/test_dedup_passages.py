"""`gptkit data dedup --unit passage`: near-duplicate passages removed from inside documents, on real books.

The oracle is independent of the implementation's MinHash, LSH and hashing: it walks every passage in input order
and removes it when the exact Jaccard similarity of its set of word 5-grams (tuples of lower-cased `\\w+` words)
with a passage kept before it is >= 0.8, comparing with every earlier kept passage. Only the cutting into passages
(`passage_spans`, tested on its own below) is shared with the implementation."""

from __future__ import annotations

import json
import random
import re

import pytest

from gptkit.cli import main
from gptkit.data.dedup import dedup
from gptkit.data.passages import join_kept, passage_spans

WORD = re.compile(r"\w+")
N = 120  # --passage-words in these tests: a few dozen passages per real book


def shingles(text: str, n: int = 5) -> frozenset:
    w = WORD.findall(text.lower())
    if len(w) < n:
        return frozenset({tuple(w)}) if w else frozenset()
    return frozenset(tuple(w[i:i + n]) for i in range(len(w) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def oracle(texts: list[str], words: int = N, threshold: float = 0.8) -> tuple[list[str], list[list[bool]]]:
    """Each document rewritten from its kept passages ("" when none is kept), and each passage's keep flag."""
    kept_sets: list[frozenset] = []
    by_gram: dict[tuple, list[int]] = {}  # n-gram -> kept passages holding it (only pairs sharing one can match)
    seen: set[str] = set()  # every passage's text: a passage without words can only be an exact copy
    out, flags = [], []
    for t in texts:
        spans = passage_spans(t, words)
        keep = []
        for s, e in spans:
            g = shingles(t[s:e])
            cands = {k for x in g for k in by_gram.get(x, ())}
            dup = any(jaccard(g, kept_sets[k]) >= threshold for k in cands) or (not g and t[s:e] in seen)
            seen.add(t[s:e])
            keep.append(not dup)
            if not dup:
                for x in g:
                    by_gram.setdefault(x, []).append(len(kept_sets))
                kept_sets.append(g)
        flags.append(keep)
        out.append(join_kept(t, spans, keep) if not all(keep) else t)
    return out, flags


def read_jsonl(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def write_jsonl(path, texts: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": f"doc-{i}", "text": t, "meta": {"i": i}}) + "\n")


@pytest.fixture(scope="module")
def books(shared_data) -> dict[str, str]:
    """Two real books (Alice in Wonderland; the first 40,000 words of SimpleBooks-92's valid split, children's
    books) and Shakespeare, each as one text."""
    alice = (shared_data / "gutenberg-alice" / "wonderland.txt").read_text(encoding="utf-8-sig")
    simple = (shared_data / "simplebooks-92" / "valid.txt").read_text(encoding="utf-8")
    cut = [m.start() for m in re.finditer(r"\n\n", simple) if m.start() > 0]
    simple = simple[:next(c for c in cut if len(simple[:c].split()) >= 40_000)]
    shakespeare = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:150_000]
    return {"alice": alice, "simple": simple, "shakespeare": shakespeare}


def _plant(host: str, k: int, piece: str) -> str:
    """`host` with `piece` inserted between its passages k-1 and k, as a paragraph of its own."""
    sp = passage_spans(host, N)
    sep = host[sp[k - 1][1]:sp[k][0]]
    return host[:sp[k - 1][1]] + sep + piece + sep + host[sp[k][0]:]


def _edit(text: str, every: int) -> str:
    """One paragraph of the text's words with every `every`-th word replaced by another of them. (One paragraph
    of N/2 words or more is always one passage, whatever its words: the planted copy is a passage of its own.)"""
    words = text.split()
    rng = random.Random(every)
    return " ".join(rng.choice(words) if i % every == every // 2 else w for i, w in enumerate(words))


# ------------------------------------------------------------------------------------------ cutting
def test_passages_cover_the_text_at_paragraph_breaks(books):
    for name, text in books.items():
        spans = passage_spans(text, N)
        assert spans and join_kept(text, spans, [True] * len(spans)) == text, name
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), name
        seps = [text[a[1]:b[0]] for a, b in zip(spans, spans[1:])]
        # every cut is at a blank line or before an indented line; nothing but whitespace is left between passages
        assert all(s.count("\n") >= 2 or (s == "\n" and text[b[0]] in " \t") for s, b in zip(seps, spans[1:]))
        n = [len(WORD.findall(text[s:e])) for s, e in spans]
        assert len(n) > 50 and all(x >= N // 2 for x in n), name  # only a document's only passage may be shorter
        assert 0.75 * N < sum(n) / len(n) < 1.5 * N, (name, sum(n) / len(n))


def test_cuts_depend_on_the_content_not_the_position(books):
    """The same text after a different beginning is cut at the same places once the two copies have cut at the
    same paragraph: what makes an edition's chapters comparable with another's."""
    text = books["alice"]
    for prefix in ("A preface of a few words.\n\n", books["simple"][:5000] + "\n\n", "x\n\n" * 7):
        a = {text[s:e] for s, e in passage_spans(text, N)}
        b = [(prefix + text)[s:e] for s, e in passage_spans(prefix + text, N)]
        same = sum(p in a for p in b)
        assert same >= len(a) - 3, (len(a), same)


def test_indented_lines_start_paragraphs():
    stanzas = [" ".join(f"w{i}x{j}" for j in range(30)) for i in range(40)]
    blank = "\n\n".join(s.replace(" w", "\nw", 2) for s in stanzas)  # stanzas of 3 lines, blank lines between
    indented = "\n".join("    " + s.replace(" w", "\nw", 2) for s in stanzas)  # first lines indented instead
    a = [WORD.findall(blank[s:e]) for s, e in passage_spans(blank, 100)]
    b = [WORD.findall(indented[s:e]) for s, e in passage_spans(indented, 100)]
    assert a == b and len(a) > 3


def test_join_kept_is_cut_into_the_kept_passages(books):
    """Rewriting a document from some of its passages gives a text that is cut into exactly those passages,
    separated by the text's own separators: a second de-duplication finds the same passages."""
    rng = random.Random(0)
    stanzas = "\n".join(f"    {i} " + " ".join(f"w{i}y{j}\nz" for j in range(9)) for i in range(400))
    for text in [*books.values(), stanzas]:
        spans = passage_spans(text, N)
        for _ in range(5):
            keep = [rng.random() < 0.6 for _ in spans]
            keep[rng.randrange(len(keep))] = True
            out = join_kept(text, spans, keep)
            assert [out[s:e] for s, e in passage_spans(out, N)] == [text[s:e] for (s, e), k in zip(spans, keep) if k]
    assert join_kept("a b\n\nc d", [(0, 3), (5, 8)], [False, False]) == ""


# ------------------------------------------------------------------------------------------ dedup
@pytest.fixture(scope="module")
def planted(books, tmp_path_factory):
    """Alice; SimpleBooks with three copies of Alice passages planted inside it (one exact, one with a word in 80
    changed, one with a word in 10 changed); Shakespeare with its own 10th passage repeated as its 40th."""
    d = tmp_path_factory.mktemp("passages")
    alice, simple, shakes = books["alice"], books["simple"], books["shakespeare"]
    sp = passage_spans(alice, N)
    exact, light, heavy = (alice[s:e] for s, e in (sp[20], sp[50], sp[80]))
    light, heavy = _edit(light, 80), _edit(heavy, 10)
    host = _plant(_plant(_plant(simple, 150, heavy), 100, light), 50, exact)
    ssp = passage_spans(shakes, N)
    shakes2 = _plant(shakes, 40, shakes[ssp[10][0]:ssp[10][1]])
    texts = [alice, host, shakes2]
    write_jsonl(d / "in.jsonl", texts)
    return d, texts, {"simple": simple, "shakespeare": shakes, "light": light, "heavy": heavy, "exact": exact}


def test_planted_passages_removed_and_only_they(planted, tmp_path):
    d, texts, parts = planted
    rep = dedup([d / "in.jsonl"], tmp_path / "k.jsonl", unit="passage", passage_words=N, workers=1,
                removed=tmp_path / "r.jsonl", progress=False)
    out = [o["text"] for o in read_jsonl(tmp_path / "k.jsonl")]
    want, flags = oracle(texts)
    assert out == want
    # what the oracle removed is what was planted: the exact and the lightly edited copy, and Shakespeare's repeat
    sp = passage_spans(texts[0], N)
    alice = [shingles(texts[0][s:e]) for s, e in sp]
    assert 0.8 <= max(jaccard(shingles(parts["light"]), a) for a in alice) < 1.0
    assert max(jaccard(shingles(parts["heavy"]), a) for a in alice) < 0.8
    assert out[0] == texts[0]  # the first occurrences, in Alice, are kept byte for byte
    assert out[1] == _plant(parts["simple"], 150, parts["heavy"])  # the copy below the threshold stays
    assert out[2] == parts["shakespeare"]  # the later repeat inside one document goes, the first stays
    assert [sum(not k for k in f) for f in flags] == [0, 2, 1]
    removed = read_jsonl(tmp_path / "r.jsonl")
    assert [(r["document"], r["kind"], r["duplicate_of"]) for r in removed] == [(1, "exact", 0), (1, "near", 0),
                                                                                (2, "exact", 2)]
    spans = passage_spans(texts[1], N)
    assert texts[1][slice(*spans[removed[0]["passage"]])] == parts["exact"]
    assert texts[1][removed[1]["start"]:removed[1]["end"]] == parts["light"]
    assert 0.8 <= removed[1]["jaccard"] < 1.0
    assert removed[2]["duplicate_of_passage"] == 10 and removed[2]["passage"] == 40
    _check_report(rep, texts, want, flags)


def _check_report(rep: dict, texts: list[str], out: list[str], flags: list[list[bool]]) -> None:
    """The report's counts, recomputed from the texts and the oracle's decisions."""
    b_in = [len(t.encode()) for t in texts]
    b_rm = [len(t.encode()) - len(o.encode()) for t, o in zip(texts, out)]
    assert rep["passages_in"] == sum(len(f) for f in flags)
    assert rep["exact_passages_removed"] + rep["near_passages_removed"] == sum(not k for f in flags for k in f)
    assert rep["passages_kept"] == sum(k for f in flags for k in f)
    assert rep["text_bytes_in"] == sum(b_in) and rep["text_bytes_removed"] == sum(b_rm)
    assert rep["removed_fraction"] == pytest.approx(sum(b_rm) / sum(b_in))
    assert rep["documents_in"] == len(texts)
    assert rep["documents_changed"] == sum(0 < r and o != "" for r, o in zip(b_rm, out))
    assert rep["documents_emptied"] == sum(o == "" for o in out) and rep["kept"] == sum(o != "" for o in out)
    top = [(i, r) for i, r in sorted(enumerate(b_rm), key=lambda x: (-x[1], x[0])) if r > 0]
    assert [(e["document"], e["text_bytes_removed"]) for e in rep["top_documents"]] == top[:10]
    assert [e["passages_removed"] for e in rep["top_documents"]] == [sum(not k for k in flags[i]) for i, _ in top]
    assert rep["parameters"]["unit"] == "passage" and rep["parameters"]["passage_words"] == N


def test_idempotent_deterministic_and_fields_kept(planted, tmp_path):
    d = planted[0]
    rep = dedup([d / "in.jsonl"], tmp_path / "a.jsonl", unit="passage", passage_words=N, workers=1, progress=False)
    again = dedup([tmp_path / "a.jsonl"], tmp_path / "b.jsonl", unit="passage", passage_words=N, workers=1,
                  progress=False)
    assert rep["near_passages_removed"] + rep["exact_passages_removed"] == 3
    assert again["near_passages_removed"] + again["exact_passages_removed"] == 0
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    # the fields come through; an unchanged document is its input line exactly
    inp = (d / "in.jsonl").read_text(encoding="utf-8").splitlines()
    out = (tmp_path / "a.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(out[0]) == json.loads(inp[0])
    assert [{k: v for k, v in json.loads(x).items() if k != "text"} for x in out] == [
        {"id": f"doc-{i}", "meta": {"i": i}} for i in range(3)]
    dedup([d / "in.jsonl"], tmp_path / "w2.jsonl", unit="passage", passage_words=N, workers=2, progress=False)
    assert (tmp_path / "w2.jsonl").read_bytes() == (tmp_path / "a.jsonl").read_bytes()
    # --verify minhash: the same passages, decided by the signatures' estimate (no n-gram sets stored)
    est = dedup([d / "in.jsonl"], tmp_path / "m.jsonl", unit="passage", passage_words=N, workers=1, verify="minhash",
                progress=False)
    assert (est["passages_in"], est["exact_passages_removed"]) == (rep["passages_in"], rep["exact_passages_removed"])
    assert (tmp_path / "m.jsonl").read_bytes() == (tmp_path / "a.jsonl").read_bytes()


def test_a_chapter_copied_into_another_book(books, tmp_path):
    """A whole chapter of Alice inside a children's book from SimpleBooks: the passages removed from that book lie
    inside the copied chapter and cover almost all of it; the two books' own text is untouched."""
    alice, simple = books["alice"], books["simple"]
    ch = alice.index("CHAPTER III.")
    chapter = alice[ch:alice.index("CHAPTER IV.")].strip()
    at = simple.index("\n\n", len(simple) // 2)
    host = simple[:at] + "\n\n" + chapter + simple[at:]
    write_jsonl(tmp_path / "in.jsonl", [alice, host])
    rc = main(["data", "dedup", "--unit", "passage", "--passage-words", str(N), "--input", str(tmp_path / "in.jsonl"),
               "--out", str(tmp_path / "k.jsonl"), "--threads", "1", "--removed", str(tmp_path / "r.jsonl")])
    assert rc == 0
    out = [o["text"] for o in read_jsonl(tmp_path / "k.jsonl")]
    assert out == oracle([alice, host])[0]
    assert out[0] == alice
    removed = read_jsonl(tmp_path / "r.jsonl")
    lo, hi = at + 2, at + 2 + len(chapter)
    assert removed and all(r["document"] == 1 and lo <= r["start"] and r["end"] <= hi for r in removed)
    gone = sum(r["end"] - r["start"] for r in removed)
    assert gone >= 0.8 * len(chapter), (gone, len(chapter))
    # what is left of the host is its own text plus at most the ends of the chapter
    assert out[1].startswith(simple[:at]) and out[1].endswith(simple[at:])
    assert len(out[1]) - len(simple) <= len(chapter) - gone + 2


def test_whole_copies_are_emptied(books, tmp_path):
    texts = [books["alice"], books["shakespeare"][:20000], books["alice"]]
    write_jsonl(tmp_path / "in.jsonl", texts)
    rep = dedup([tmp_path / "in.jsonl"], tmp_path / "k.jsonl", unit="passage", passage_words=N, workers=1,
                progress=False)
    want, flags = oracle(texts)
    assert [o["text"] for o in read_jsonl(tmp_path / "k.jsonl")] == [t for t in want if t]
    assert rep["documents_emptied"] == 1 and rep["kept"] == 2 and rep["exact_passages_removed"] == len(flags[2])
    _check_report(rep, texts, want, flags)


def test_passage_flags_are_checked(tmp_path, capsys):
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "hello world"}) + "\n")
    rc = main(["data", "dedup", "--input", str(tmp_path / "a.jsonl"), "--out", str(tmp_path / "o.jsonl"),
               "--unit", "passage", "--passage-words", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and err == "gptkit: error: --passage-words must be at least 2, got 1\n"
    assert not (tmp_path / "o.jsonl").exists()
    with pytest.raises(SystemExit):
        main(["data", "dedup", "--input", str(tmp_path / "a.jsonl"), "--out", str(tmp_path / "o.jsonl"),
              "--unit", "sentence"])
    assert "invalid choice" in capsys.readouterr().err
