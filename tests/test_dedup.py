"""`gptkit data dedup`: exact and MinHash-LSH near-duplicate removal, on real paragraphs from ../shared/data.

Ground truth is computed independently of the implementation: the Jaccard similarity of two documents' sets of
word 5-grams (tuples of lower-cased `\\w+` words), exactly, for every pair that shares a 5-gram."""

from __future__ import annotations

import collections
import gzip
import json
import random
import re

import numpy as np
import pytest

from gptkit.cli import main
from gptkit.data.dedup import (Signer, SortedRuns, band_keys, batch_ngram_hashes, candidate_probability, dedup,
                               estimated_jaccard, lsh_params, ngram_hashes)
from gptkit.data.shards import DataError

WORD = re.compile(r"\w+")
LEVELS = [0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.4]  # share of words edited in a planted copy


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    w = WORD.findall(text.lower())
    if len(w) < n:
        return {tuple(w)} if w else set()
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def edit(text: str, p: float, vocab: list[str], rng: random.Random) -> str:
    """Each word, with probability p, is replaced by a random corpus word, deleted, or followed by one (p = 0: the
    text itself, an exact copy)."""
    if p == 0:
        return text
    out = []
    for w in text.split():
        if rng.random() >= p:
            out.append(w)
            continue
        op = rng.randrange(3)
        if op == 0:
            out.append(rng.choice(vocab))
        elif op == 2:
            out.extend([w, rng.choice(vocab)])
    return " ".join(out)


@pytest.fixture(scope="module")
def planted(shared_data, tmp_path_factory):
    """Real paragraphs (Wikipedia + books) in one file, and planted copies of some of them at controlled edit
    levels in a second file (so the duplicates are across sources). Returns paths, documents in stream order,
    and for each planted copy (its stream index, the index of its original, the edit level)."""
    d = tmp_path_factory.mktemp("dedup")
    wiki = [ln.strip() for ln in (shared_data / "wikitext-2-raw" / "wiki.test.raw").read_text("utf-8").splitlines()
            if len(ln.split()) >= 40 and not ln.strip().startswith("=")]
    books = [json.loads(ln)["text"] for ln in (shared_data / "lambada" / "lambada_test.jsonl").read_text().splitlines()]
    books = [b for b in books if len(b.split()) >= 40]
    base = wiki[:500] + books[:300]
    vocab = sorted({w for t in base for w in t.split()})
    rng = random.Random(7)
    originals = rng.sample(range(len(base)), 450)
    copies = [(o, LEVELS[k % len(LEVELS)]) for k, o in enumerate(originals)]
    rng.shuffle(copies)
    copy_texts = [edit(base[o], p, vocab, rng) for o, p in copies]
    with open(d / "base.jsonl", "w", encoding="utf-8") as f:
        for i, t in enumerate(base):
            f.write(json.dumps({"id": f"base-{i}", "text": t, "meta": {"n": i}}) + "\n")
    with open(d / "copies.jsonl", "w", encoding="utf-8") as f:
        for k, ((o, p), t) in enumerate(zip(copies, copy_texts)):
            f.write(json.dumps({"id": f"copy-{k}", "text": t, "level": p}) + "\n")
    docs = base + copy_texts
    planted = [(len(base) + k, o, p) for k, (o, p) in enumerate(copies)]
    return d, docs, planted


def true_pairs(docs: list[str], threshold: float) -> dict[tuple[int, int], float]:
    """Every pair (i < j) with exact 5-gram Jaccard >= threshold (pairs sharing no 5-gram have Jaccard 0)."""
    sets = [shingles(t) for t in docs]
    index = collections.defaultdict(list)
    for i, s in enumerate(sets):
        for g in s:
            index[g].append(i)
    cand = set()
    for ids in index.values():
        for a in range(len(ids)):
            for b in ids[a + 1:]:
                cand.add((ids[a], b))
    return {(i, j): jv for i, j in cand if (jv := jaccard(sets[i], sets[j])) >= threshold}


def run(planted, tmp_path, **kw):
    d = planted[0]
    rep = dedup([d / "base.jsonl", d / "copies.jsonl"], tmp_path / "kept.jsonl", removed=tmp_path / "removed.jsonl",
                progress=False, **kw)
    removed = {r["document"]: r for r in map(json.loads, (tmp_path / "removed.jsonl").read_text().splitlines())}
    return rep, removed


def quality(planted, removed, threshold=0.8):
    _, docs, plant = planted
    pairs = true_pairs(docs, threshold)
    sets = {}

    def J(i, j):
        for k in (i, j):
            if k not in sets:
                sets[k] = shingles(docs[k])
        return jaccard(sets[i], sets[j])

    # recall: of the pairs above the threshold, the later document was removed
    recall = sum(j in removed for _, j in pairs) / len(pairs)
    # precision: a removed document's reported twin really is above the threshold
    near = [r for r in removed.values() if r["kind"] == "near"]
    precision = sum(J(r["duplicate_of"], r["document"]) >= threshold for r in removed.values()) / len(removed)
    near_precision = sum(J(r["duplicate_of"], r["document"]) >= threshold for r in near) / len(near)
    per_level = {}
    for idx, orig, p in plant:
        j = J(orig, idx)
        lv = per_level.setdefault(p, [0, 0, []])
        lv[0] += 1
        lv[1] += idx in removed
        lv[2].append(j)
    return pairs, recall, precision, near_precision, per_level


def test_planted_near_duplicates_precision_recall(planted, tmp_path):
    rep, removed = run(planted, tmp_path)
    pairs, recall, precision, near_precision, per_level = quality(planted, removed)
    print(f"\n{len(pairs)} pairs with Jaccard >= 0.8; recall {recall:.4f}, precision {precision:.4f} "
          f"(near only {near_precision:.4f}); removed {len(removed)}")
    for p, (n, det, js) in sorted(per_level.items()):
        print(f"  edit level {p:5.3f}: {n:3d} copies, Jaccard median {np.median(js):.3f} "
              f"[{min(js):.3f}, {max(js):.3f}], removed {det:3d} ({100 * det / n:.0f}%)")
    assert len(pairs) > 150
    assert recall >= 0.95 and precision >= 0.95 and near_precision >= 0.95
    # the copies far above the threshold are all removed, those far below all kept
    for p, (n, det, js) in per_level.items():
        if min(js) >= 0.85:
            assert det == n, p
        if max(js) < 0.7:
            assert det == 0, p
    # exact duplicates are always removed, as exact
    _, _, plant = planted
    for idx, _, p in plant:
        if p == 0.0:
            assert removed[idx]["kind"] == "exact"
    assert rep["documents_in"] == rep["kept"] + rep["exact_duplicates_removed"] + rep["near_duplicates_removed"]
    assert rep["by_file"][str(planted[0] / "copies.jsonl")]["exact"] >= 50  # removed across sources


def test_minhash_estimate_mode(planted, tmp_path):
    rep, removed = run(planted, tmp_path, verify="minhash")
    _, recall, precision, near_precision, _ = quality(planted, removed)
    print(f"\nverify=minhash: recall {recall:.4f}, precision {precision:.4f} (near only {near_precision:.4f})")
    assert rep["parameters"]["verify"] == "minhash"
    assert recall >= 0.9 and precision >= 0.9  # noisier near the threshold than verify="exact"


def test_deterministic_for_any_worker_count(planted, tmp_path):
    d = planted[0]
    outs = []
    for k, w in enumerate((1, 2, 2)):
        rep = dedup([d / "base.jsonl", d / "copies.jsonl"], tmp_path / f"k{k}.jsonl", workers=w, progress=False)
        report = {x: y for x, y in rep.items() if x not in ("run", "output")}
        outs.append(((tmp_path / f"k{k}.jsonl").read_bytes(), report))
    assert outs[0] == outs[1] == outs[2]


def test_fields_preserved_and_text_files(planted, shared_data, tmp_path):
    d = planted[0]
    dedup([d / "base.jsonl"], tmp_path / "k.jsonl", progress=False)
    inp = [json.loads(x) for x in (d / "base.jsonl").read_text().splitlines()]
    out = [json.loads(x) for x in (tmp_path / "k.jsonl").read_text().splitlines()]
    assert out == [o for o in inp if o in out] and all(set(o) == {"id", "text", "meta"} for o in out)
    # text files are one document each; the same file twice (a copy) is an exact duplicate across inputs
    alice = shared_data / "gutenberg-alice" / "wonderland.txt"
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "alice.txt").write_bytes(alice.read_bytes())
    rep = dedup([alice, tmp_path / "copy"], tmp_path / "t.jsonl.gz", progress=False)
    lines = gzip.open(tmp_path / "t.jsonl.gz", "rt", encoding="utf-8").read().splitlines()
    assert rep["exact_duplicates_removed"] == 1 and len(lines) == 1
    obj = json.loads(lines[0])
    assert obj == {"text": alice.read_text(encoding="utf-8-sig"), "source": str(alice)}


def test_bad_input_is_counted_by_kind(tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    good = "The quick brown fox jumps over the lazy dog near the river bank today."
    (d / "a.jsonl").write_bytes(b"\n".join([
        json.dumps({"text": good}).encode(),
        b"{not json",
        json.dumps({"title": "no text"}).encode(),
        json.dumps({"text": "   "}).encode(),
        json.dumps({"text": "bad bytes \xff\xfe here and more words to make it long"}).encode()[:-2]
        + b"\xff\xfe\"}",
        json.dumps({"text": good}).encode(),
    ]) + b"\n")
    (d / "empty.txt").write_text("  \n\n ")
    (d / "latin1.txt").write_bytes("caf\xe9 au lait, a drink with many words in it".encode("latin-1"))
    gz = gzip.compress(b"".join(json.dumps({"text": f"line {i} " * 20}).encode() + b"\n" for i in range(2000)))
    (d / "cut.jsonl.gz").write_bytes(gz[:len(gz) // 2])  # truncated
    (d / "garbage.txt.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip at all")
    (d / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    rc = main(["data", "dedup", "--input", str(d), "--out", str(tmp_path / "k.jsonl"), "--workers", "1"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    rep = json.loads((tmp_path / "k.report.json").read_text())
    bad = rep["bad_input"]
    assert bad["unreadable_files"] == 2 and bad["not_json_lines"] == 1 and bad["missing_text_field_lines"] == 1
    assert bad["empty_documents"] == 2 and bad["documents_with_undecodable_bytes"] == 2
    assert bad["skipped_non_text_files"] == 1
    assert any("cut.jsonl.gz" in e for e in bad["unreadable_file_errors"])
    assert any("garbage.txt.gz" in e for e in bad["unreadable_file_errors"])
    assert "2 unreadable file(s)" in out.out and "1 non-JSON line(s)" in out.out
    assert "could not be read to the end" in out.err
    # the good documents are all there: the readable part of the truncated .gz too, and the duplicate counted
    assert rep["exact_duplicates_removed"] == 1
    kept = [json.loads(x)["text"] for x in (tmp_path / "k.jsonl").read_text(encoding="utf-8").splitlines()]
    assert good in kept and any("\ufffd" in k for k in kept) and any(k.startswith("caf\ufffd") for k in kept)
    assert sum(k.startswith("line ") for k in kept) == rep["by_file"][str(d / "cut.jsonl.gz")]["kept"] > 0
    assert rep["documents_in"] == rep["kept"] + rep["exact_duplicates_removed"] + rep["near_duplicates_removed"]


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "hello world"}) + "\n")
    cases = [
        (["--input", str(tmp_path / "missing.jsonl")], "input not found"),
        (["--input", str(tmp_path / "a.jsonl"), "--threshold", "1.5"], "--threshold must be in (0, 1]"),
        (["--input", str(tmp_path / "a.jsonl"), "--num-perm", "1"], "--num-perm must be at least 2"),
    ]
    for extra, message in cases:
        rc = main(["data", "dedup", "--out", str(tmp_path / "o.jsonl"), *extra])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and err.count("\n") == 1 and err.startswith("gptkit: error:"), err
    rc = main(["data", "dedup", "--input", str(tmp_path / "a.jsonl"), "--out", str(tmp_path)])
    assert rc == 2 and "is a directory" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ the parts
def test_batch_hashes_equal_single(planted):
    docs = planted[1][:200] + ["", "!!!", "one", "One two", "a b c d e", "a b c d e f", "ünïcödé wörds ok"]
    for n in (1, 3, 5, 9):
        h, off = batch_ngram_hashes(docs, n)
        for i, t in enumerate(docs):
            np.testing.assert_array_equal(h[off[i]:off[i + 1]], ngram_hashes(t, n))
    assert len(ngram_hashes("One two", 5)) == 1 and len(ngram_hashes("!!!", 5)) == 0
    # the hashes of distinct 5-grams are distinct (no collision among these real documents' 5-grams)
    assert all(len(np.unique(ngram_hashes(t))) == len(shingles(t)) for t in planted[1][:200])


def test_minhash_estimates_jaccard(planted):
    """The signature's estimate is within 4 standard errors of the exact Jaccard (datasketch's MinHash)."""
    _, docs, plant = planted
    signer = Signer(128, 5, 1)
    for idx, orig, _ in plant[:80]:
        j = jaccard(shingles(docs[idx]), shingles(docs[orig]))
        est = estimated_jaccard(signer.signature(ngram_hashes(docs[idx])), signer.signature(ngram_hashes(docs[orig])))
        assert abs(est - j) <= 4 * max(np.sqrt(j * (1 - j) / 128), 0.01) + 0.01, (j, est)


def test_lsh_params_and_datasketch_candidates(planted):
    for t in (0.5, 0.7, 0.8, 0.9, 0.95):
        b, r = lsh_params(t, 128)
        assert b * r <= 128 and candidate_probability(t, b, r) >= 0.99
    assert lsh_params(0.8, 128) == (16, 6)
    with pytest.raises(DataError):
        lsh_params(0.0, 128)
    # the banding index finds exactly the candidates of datasketch's MinHashLSH with the same bands
    from datasketch import LeanMinHash, MinHashLSH

    _, docs, _ = planted
    signer = Signer(128, 5, 1)
    sigs = np.stack([signer.signature(ngram_hashes(t)) for t in docs])
    n_base = 800  # the originals are indexed, the planted copies are the queries
    b, r = 16, 6
    lsh = MinHashLSH(num_perm=128, params=(b, r))
    runs = SortedRuns(1)
    keys = band_keys(sigs, b, r)
    for i in range(n_base):
        lsh.insert(i, LeanMinHash(seed=1, hashvalues=sigs[i], scheme="affine32"))
    for lo in range(0, n_base, 37):  # several runs, merged as they grow
        hi = min(lo + 37, n_base)
        runs.add(keys[lo:hi].ravel(), np.repeat(np.arange(lo, hi), b))
    qi, vals = runs.lookup(keys[n_base:].ravel())
    ours = collections.defaultdict(set)
    for q, v in zip((qi // b).tolist(), vals[:, 0].tolist()):
        ours[n_base + q].add(v)
    for i in range(n_base, len(docs)):
        assert ours.get(i, set()) == set(lsh.query(LeanMinHash(seed=1, hashvalues=sigs[i], scheme="affine32")))
    assert sum(map(len, ours.values())) > 200  # the planted copies do collide


def test_sorted_runs_is_a_multimap():
    rng = np.random.default_rng(0)
    runs, ref = SortedRuns(2), collections.defaultdict(list)
    for _ in range(40):
        k = rng.integers(0, 500, size=int(rng.integers(1, 60))).astype(np.uint64)
        v = rng.integers(0, 1 << 40, size=(len(k), 2))
        runs.add(k, v)
        for kk, vv in zip(k.tolist(), v.tolist()):
            ref[kk].append(tuple(vv))
    assert len(runs.runs) <= 12 and len(runs) == sum(map(len, ref.values()))
    q = np.arange(0, 600, dtype=np.uint64)
    qi, vals = runs.lookup(q)
    got = collections.defaultdict(list)
    for i, v in zip(qi.tolist(), vals.tolist()):
        got[int(q[i])].append(tuple(v))
    assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in ref.items()}


# ------------------------------------------------------------------------------------ user mistakes
def _one_line_error(rc, err, *fragments):
    assert rc != 0 and "Traceback" not in err and err.startswith("gptkit: error:") and err.count("\n") == 1, err
    for f in fragments:
        assert f in err, (f, err)


def _docs(path, n=3):
    path.write_text("".join(json.dumps({"text": f"document number {i} about things"}) + "\n" for i in range(n)))
    return path


def test_dedup_refuses_an_output_that_is_an_input(tmp_path, capsys):
    a = _docs(tmp_path / "a.jsonl")
    before = a.read_bytes()
    kept = str(tmp_path / "k.jsonl")
    for extra in (["--out", str(a)], ["--out", kept, "--report", str(a)], ["--out", kept, "--removed", str(a)]):
        rc = main(["data", "dedup", "--input", str(a), "--workers", "1", *extra])
        _one_line_error(rc, capsys.readouterr().err, "also an input")
        assert a.read_bytes() == before
    assert not (tmp_path / "k.jsonl").exists()


@pytest.mark.parametrize("what", ["empty", "no-field", "unreadable"])
def test_dedup_fails_on_input_with_no_documents(tmp_path, capsys, what):
    p = tmp_path / {"empty": "e.jsonl", "no-field": "n.jsonl", "unreadable": "u.jsonl.gz"}[what]
    p.write_bytes({"empty": b"", "no-field": b'{"body": "some words here"}\n', "unreadable": b"not gzip"}[what])
    rc = main(["data", "dedup", "--input", str(p), "--out", str(tmp_path / "k.jsonl"), "--workers", "1"])
    _one_line_error(rc, capsys.readouterr().err, "empty corpus",
                    {"empty": "", "no-field": "'text'", "unreadable": "unreadable"}[what])
    assert sorted(x.name for x in tmp_path.iterdir()) == [p.name]  # no output, no temporary file


def test_dedup_checks_the_report_directory_before_writing(tmp_path, capsys):
    a = _docs(tmp_path / "a.jsonl")
    (tmp_path / "afile").write_text("")
    rc = main(["data", "dedup", "--input", str(a), "--out", str(tmp_path / "k.jsonl"), "--workers", "1",
               "--report", str(tmp_path / "afile" / "r.json")])
    _one_line_error(rc, capsys.readouterr().err, "--report", "not a directory")
    assert not (tmp_path / "k.jsonl").exists()
