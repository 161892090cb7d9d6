"""Weighted mixtures in `gptkit prepare` (GPT-3 §2.2, Table 2.2), on real text from ../shared/data.

The mixture's train stream is checked independently of the manifest: with the char tokenizer every token is one
character, so each document of the stream decodes back to its text, and is attributed to the source it came from
by looking the text up in that source."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from gptkit.cli import main
from gptkit.data.loader import TokenDataset, load_tokenizer, read_manifest
from gptkit.data.prepare import MixtureSource, parse_source, prepare, sample_segments, shares_to_tokens
from gptkit.data.shards import DataError


@pytest.fixture(scope="module")
def sources(shared_data, tmp_path_factory) -> dict[str, Path]:
    """Three real sources: Wikipedia paragraphs (JSONL), Alice in Wonderland (one text file), HellaSwag contexts
    with an ending (JSONL)."""
    d = tmp_path_factory.mktemp("mix_sources")
    wiki = [ln.strip() for ln in (shared_data / "wikitext-2-raw" / "wiki.test.raw").read_text("utf-8").splitlines()
            if ln.strip() and not ln.strip().startswith("=")][:500]
    lines = (shared_data / "hellaswag" / "hellaswag_val_full.txt").read_text("utf-8").split("\n")
    swag = [lines[i] + " " + lines[i + 2] for i in range(0, 6 * 1500, 6)]
    for name, docs in (("wiki", wiki), ("web", swag)):
        with open(d / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for i, t in enumerate(docs):
                f.write(json.dumps({"id": i, "text": t}) + "\n")
    return {"wiki": d / "wiki.jsonl", "books": shared_data / "gutenberg-alice" / "wonderland.txt",
            "web": d / "web.jsonl"}


def _texts(sources: dict[str, Path]) -> dict[str, list[str]]:
    out = {}
    for name, p in sources.items():
        if p.suffix == ".jsonl":
            out[name] = [json.loads(ln)["text"] for ln in p.read_text("utf-8").splitlines()]
        else:
            out[name] = [p.read_text(encoding="utf-8-sig")]
    return out


def _stream_docs(out: Path, split: str) -> list[str]:
    tok = load_tokenizer(out)
    ids = TokenDataset(out, split)[:]
    cuts = np.flatnonzero(ids == tok.eot_id)
    docs, start = [], 0
    for c in cuts.tolist():
        docs.append(tok.decode(ids[start:c].tolist()))
        start = c + 1
    assert start == len(ids)  # every document of the stream ends with end-of-text
    return docs


def _attribute(doc: str, texts: dict[str, list[str]], exact: dict[str, str]) -> str:
    if doc in exact:
        return exact[doc]
    hits = [name for name, ts in texts.items() if any(doc in t for t in ts)]
    assert len(hits) >= 1, f"a train document from no source: {doc[:80]!r}"
    return hits[0]


@pytest.fixture(scope="module")
def mixture(sources, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("mix") / "m"
    srcs = [MixtureSource("wiki", [str(sources["wiki"])], 4.0), MixtureSource("books", [str(sources["books"])], 3.0),
            MixtureSource("web", [str(sources["web"])], 3.0)]
    m = prepare(None, out, tokenizer="char", sources=srcs, mix_tokens=800_000, progress=False)
    return out, m


def test_each_source_gets_its_share_of_train_tokens(mixture, sources):
    out, m = mixture
    mix = m["mixture"]
    assert m["splits"]["train"]["tokens"] == mix["train_tokens"] == 800_000
    rows = {r["name"]: r for r in mix["sources"]}
    assert [rows[n]["sampled_tokens"] for n in ("wiki", "books", "web")] == [320_000, 240_000, 240_000]
    for r in rows.values():
        assert r["share"] == pytest.approx(r["weight"] / 10)
        assert r["effective_epochs"] == pytest.approx(r["sampled_tokens"] / r["train_tokens"])
    # small Alice (~150K characters of train text) is repeated; the large web source is sampled below one epoch
    assert rows["books"]["effective_epochs"] > 1 and rows["web"]["effective_epochs"] < 1

    # independently of the manifest: decode the train stream and count each source's characters (+ end-of-text)
    texts = _texts(sources)
    exact = {t: name for name, ts in texts.items() for t in ts}
    counted: Counter = Counter()
    docs = _stream_docs(out, "train")
    for doc in docs:
        counted[_attribute(doc, texts, exact)] += len(doc) + 1
    assert dict(counted) == {n: rows[n]["sampled_tokens"] for n in rows}
    assert len(docs) == m["splits"]["train"]["documents"]


def test_sources_are_interleaved_and_repeated_by_whole_passes(mixture, sources):
    out, m = mixture
    rows = {r["name"]: r for r in m["mixture"]["sources"]}
    texts = _texts(sources)
    exact = {t: name for name, ts in texts.items() for t in ts}
    docs = _stream_docs(out, "train")
    # wiki's share is 1.x epochs of its train documents: every one of them appears at least once
    wiki_train = Counter(d for d in docs if exact.get(d) == "wiki")
    n_wiki_train = rows["wiki"]["train_documents"]
    assert rows["wiki"]["effective_epochs"] > 1
    assert len(wiki_train) >= n_wiki_train - 1  # (one may be the cut window, not whole)
    # interleaving: the web and wiki documents are short, so each fifth of the stream holds them near their shares
    # (Alice is one ~150K-character document, so it comes in long runs by design; not checked per stretch)
    ids_per_doc = np.array([len(d) + 1 for d in docs])
    ends = np.cumsum(ids_per_doc)
    src = [_attribute(d, texts, exact) for d in docs]
    total = ends[-1]
    for k in range(5):
        sel = [(src[i], ids_per_doc[i]) for i in range(len(docs)) if k * total / 5 <= ends[i] < (k + 1) * total / 5]
        tok = Counter()
        for s, n in sel:
            tok[s] += n
        ww = tok["wiki"] / max(1, tok["wiki"] + tok["web"])
        assert abs(ww - 4 / 7) < 0.1, (k, dict(tok))


def test_val_holds_every_source_once_and_manifest_is_complete(mixture, sources):
    out, m = mixture
    texts = _texts(sources)
    exact = {t: name for name, ts in texts.items() for t in ts}
    val = _stream_docs(out, "val")
    by = Counter(_attribute(d, texts, exact) for d in val)
    rows = {r["name"]: r for r in m["mixture"]["sources"]}
    assert set(by) == {"wiki", "books", "web"}
    assert by == {n: rows[n]["val_documents"] for n in rows}
    whole = [d for d in val if d in exact]
    assert len(whole) == len(set(whole))  # no val document twice
    assert sum(len(d) + 1 for d in val) == m["splits"]["val"]["tokens"]
    assert m["split"]["policy"] == "per-source" and rows["books"]["split_policy"] == "single-document"
    assert {s["mixture_source"] for s in m["sources"]} == {"wiki", "books", "web"}
    assert read_manifest(out)["mixture"] == m["mixture"]


def test_mixture_is_deterministic_and_seeded(sources, tmp_path):
    srcs = [MixtureSource("wiki", [str(sources["wiki"])], 1.0), MixtureSource("web", [str(sources["web"])], 1.0)]
    a = prepare(None, tmp_path / "a", tokenizer="char", sources=srcs, mix_tokens=200_000, progress=False)
    b = prepare(None, tmp_path / "b", tokenizer="char", sources=srcs, mix_tokens=200_000, progress=False,
                num_workers=2)
    c = prepare(None, tmp_path / "c", tokenizer="char", sources=srcs, mix_tokens=200_000, progress=False, seed=7)
    assert a["splits"]["train"]["shards"] == b["splits"]["train"]["shards"]  # same sha256, any worker count
    assert a["splits"]["train"]["shards"][0]["sha256"] != c["splits"]["train"]["shards"][0]["sha256"]
    assert ([r["sampled_tokens"] for r in a["mixture"]["sources"]]
            == [r["sampled_tokens"] for r in c["mixture"]["sources"]] == [100_000, 100_000])


def test_default_total_is_the_sum_of_train_tokens(sources, tmp_path):
    srcs = [MixtureSource("wiki", [str(sources["wiki"])], 3.0), MixtureSource("web", [str(sources["web"])], 1.0)]
    m = prepare(None, tmp_path / "d", tokenizer="char", sources=srcs, progress=False)
    rows = m["mixture"]["sources"]
    assert m["mixture"]["default_total"] and m["mixture"]["train_tokens"] == sum(r["train_tokens"] for r in rows)


def test_sampling_helpers():
    assert shares_to_tokens([60, 22, 8, 8, 3], 300) == [178, 65, 24, 24, 9]  # GPT-3's weights sum to 101
    assert sum(shares_to_tokens([1, 1, 1], 100)) == 100
    ends = np.array([5, 12, 20])  # three documents of 5, 7, 8 tokens
    rng = np.random.default_rng(0)
    segs = list(sample_segments(ends, 47, rng))  # two whole passes (40) + 7 more
    assert sum(b - a + cut for a, b, cut in segs) == 47
    assert sum(cut for *_, cut in segs) <= 1
    whole = Counter((a, b) for a, b, cut in segs if not cut)
    assert all(whole[(a, b)] >= 2 for a, b in ((0, 5), (5, 12), (12, 20)))


@pytest.mark.parametrize("spec, message", [
    ("wiki", "expected NAME=PATH:WEIGHT"),
    ("wiki=data.txt", "expected NAME=PATH:WEIGHT"),
    ("wiki=data.txt:zero", "is not a number"),
    ("wiki=data.txt:0", "positive"),
    ("wiki=data.txt:-1", "positive"),
    ("=data.txt:1", "expected NAME=PATH:WEIGHT"),
    ("w/x=data.txt:1", "the name must be"),
])
def test_bad_source_spec(spec, message):
    with pytest.raises(DataError, match=message):
        parse_source(spec)


def test_source_spec_path_may_hold_colons():
    s = parse_source("web=/data/a:b.jsonl:2.5")
    assert (s.name, s.inputs, s.weight) == ("web", ["/data/a:b.jsonl"], 2.5)


def test_cli_mixture_and_errors(sources, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["prepare", "--tokenizer", "char", "--out", str(out), "--mix-tokens", "100000",
               "--source", f"wiki={sources['wiki']}:2", "--source", f"books={sources['books']}:1"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "mixture of 2 source(s), 100,000 train tokens" in text and "epochs" in text and "66.7%" in text
    cases = [
        (["--input", str(sources["wiki"]), "--source", f"web={sources['web']}:1"], "not both"),
        ([], "no inputs given"),
        (["--source", f"a={sources['wiki']}:1", "--source", f"a={sources['web']}:2"], "different weights"),
        (["--source", f"a={tmp_path / 'missing.txt'}:1"], "input not found"),
        (["--input", str(sources["wiki"]), "--mix-tokens", "10"], "--mix-tokens is for mixtures"),
    ]
    for extra, message in cases:
        rc = main(["prepare", "--tokenizer", "char", "--out", str(tmp_path / "bad"), *extra])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and err.count("\n") == 1 and err.startswith("gptkit: error:"), err


def test_absurd_mix_tokens_stop_before_mixing(tmp_path, capsys):
    """12 bytes asked to become 10^14 tokens: one line, no output, instead of writing until the disk is full."""
    (tmp_path / "tiny.txt").write_text("hello world\n")
    out = tmp_path / "out"
    rc = main(["prepare", "--tokenizer", "char", "--out", str(out), "--source", f"a={tmp_path / 'tiny.txt'}:1",
               "--mix-tokens", "100000000000000"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("gptkit: error:") and err.count("\n") == 1 and "at most 1,000 passes" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.txt"]  # no output, no temporary directory
    # 1,000 passes are still allowed
    assert main(["prepare", "--tokenizer", "char", "--out", str(out), "--source", f"a={tmp_path / 'tiny.txt'}:1",
                 "--mix-tokens", "8000", "--val-fraction", "0"]) == 0


@pytest.mark.parametrize("n", ["0", "-3"])
def test_workers_must_be_positive(tmp_path, capsys, n):
    (tmp_path / "tiny.txt").write_text("hello world\n")
    rc = main(["prepare", "--tokenizer", "char", "--input", str(tmp_path / "tiny.txt"), "--out",
               str(tmp_path / "out"), "--workers", n])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--workers must be at least 1" in err
    assert not (tmp_path / "out").exists()
