"""`gptkit prepare`, the token shard format, input sources and the resumable batch loader, on real data."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gptkit.commands.data import add_prepare
from gptkit.data.loader import (BatchLoader, TokenDataset, batch_offsets, data_fingerprint, eval_batches,
                                get_batch, load_tokenizer, read_manifest)
from gptkit.data.prepare import prepare, split_hash
from gptkit.data.shards import (HEADER_BYTES, DataError, ShardWriter, dtype_for_vocab, open_shard, read_header,
                                write_shard)
from gptkit.data.sources import Corpus, discover, input_kind, is_text_file
from gptkit.errors import GptkitError
from gptkit.tokenizer import Tokenizer, split_at_word_boundaries

prepare_mod = importlib.import_module("gptkit.data.prepare")  # the module; gptkit.data.prepare is the function


def tokens(out: Path, split: str) -> np.ndarray:
    return TokenDataset(out, split)[:]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def shakespeare(shared_data) -> Path:
    return shared_data / "tinyshakespeare" / "input.txt"


@pytest.fixture(scope="module")
def char_data(shakespeare, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "shakespeare_char"
    prepare([str(shakespeare)], out, tokenizer="char", progress=False)
    return out


# --------------------------------------------------------------------------------------------- char / nanoGPT
def test_one_document_with_no_val_share_is_all_train(tmp_path):
    """--val-fraction 0 on one document: all of it, with its end-of-text token, goes to train and val is empty
    (it held one lone end-of-text token, which made `gptkit train` refuse the data as too short)."""
    text = "To be, or not to be, that is the question.\n" * 20
    (tmp_path / "one.txt").write_text(text)
    m = prepare([str(tmp_path / "one.txt")], tmp_path / "out", tokenizer="char", val_fraction=0.0, progress=False)
    assert m["split"]["policy"] == "single-document"
    assert m["splits"]["train"]["tokens"] == len(text) + 1 and m["splits"]["val"]["tokens"] == 0
    assert m["splits"]["train"]["documents"] == 1 and m["splits"]["val"]["documents"] == 0


def test_char_tinyshakespeare_matches_nanogpt_split(char_data, shakespeare):
    # nanoGPT data/shakespeare_char/prepare.py: chars = sorted(set(data)); n = len(data);
    # train_data = data[:int(n*0.9)]; val_data = data[int(n*0.9):]  -> 1,003,854 and 111,540 characters.
    text = shakespeare.read_text()
    n = len(text)
    assert n == 1_115_394
    k = int(n * 0.9)
    assert k == 1_003_854
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    m = read_manifest(char_data)
    assert m["split"]["policy"] == "single-document"
    assert m["tokenizer"] == {"kind": "char", "vocab_size": 66, "eot_id": 65, "dir": "tokenizer", "source": None}
    assert m["splits"]["train"]["tokens"] == 1_003_854
    assert m["splits"]["val"]["tokens"] == 111_540 + 1  # the document's end-of-text token ends val
    train, val = tokens(char_data, "train"), tokens(char_data, "val")
    assert train.dtype == np.uint16
    # ids are nanoGPT's stoi (sorted characters), eot is the one extra id after them
    np.testing.assert_array_equal(train, np.array([stoi[c] for c in text[:k]], dtype=np.uint16))
    tok = load_tokenizer(char_data)
    assert tok.decode(train) == text[:k]
    assert tok.decode(val[:-1]) == text[k:] and val[-1] == tok.eot_id == 65


# --------------------------------------------------------------------------------------- gpt2, mixed sources
@pytest.fixture(scope="module")
def mixed_corpus(shared_data, tmp_path_factory) -> tuple[Path, list[str]]:
    """A directory with a .txt, a .jsonl (in a subfolder) and a .jsonl.gz of real text, plus files to skip.
    Returns the directory and its documents in reading order."""
    root = tmp_path_factory.mktemp("corpus") / "corpus"
    (root / "sub").mkdir(parents=True)
    alice = (shared_data / "gutenberg-alice" / "wonderland.txt").read_text(encoding="utf-8")[:20_000]
    alice = alice.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    (root / "a.txt").write_text(alice, encoding="utf-8")
    lines = (shared_data / "lambada" / "lambada_test.jsonl").read_text(encoding="utf-8").splitlines()
    with gzip.open(root / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(lines[:30]) + "\n")
    (root / "sub" / "b.jsonl").write_text("\n".join(lines[30:60]) + "\n", encoding="utf-8")
    (root / "weights.bin").write_bytes(bytes(range(256)) * 4)  # binary: skipped
    (root / ".hidden.txt").write_text("not read", encoding="utf-8")
    docs = [alice] + [json.loads(x)["text"] for x in lines[:30]] + [json.loads(x)["text"] for x in lines[30:60]]
    return root, docs


def expected_streams(docs, tok, seed, val_fraction):
    """The train/val token streams prepare() must write: document-hash split, last document moved into an
    empty split."""
    eot = tok.eot_id
    split = ["val" if split_hash(d, seed) < val_fraction else "train" for d in docs]
    if "val" not in split[:-1]:
        split[-1] = "val"
    elif "train" not in split[:-1]:
        split[-1] = "train"
    out = {"train": [], "val": []}
    for d, s in zip(docs, split):
        out[s] += tok.encode(d) + [eot]
    return {s: np.array(v, dtype=np.uint16) for s, v in out.items()}, split


def test_gpt2_prepare_mixed_directory(mixed_corpus, shared_data, tmp_path, monkeypatch):
    root, docs = mixed_corpus
    vocab = shared_data / "gpt2-bpe-vocab"
    # small pieces and batches: the 20 kB text is tokenized in ~10 pieces spread over several batches and workers
    monkeypatch.setattr(prepare_mod, "PIECE_CHARS", 2000)
    monkeypatch.setattr(prepare_mod, "BATCH_CHARS", 5000)
    monkeypatch.setattr(prepare_mod, "BATCH_DOCS", 8)
    outs = {}
    for workers in (1, 2):
        outs[workers] = tmp_path / f"w{workers}"
        m = prepare([str(root)], outs[workers], tokenizer="gpt2", vocab=str(vocab), num_workers=workers,
                    shard_tokens=4096, progress=False)
    out = outs[1]
    # determinism: 1 worker and 2 workers write byte-identical shards
    files = sorted(p.name for p in out.glob("*.bin"))
    assert files == sorted(p.name for p in outs[2].glob("*.bin")) and len(files) > 2
    for f in files:
        assert (out / f).read_bytes() == (outs[2] / f).read_bytes()

    m = read_manifest(out)
    tok = Tokenizer.from_pretrained(vocab)
    assert tok.eot_id == 50256
    assert m["tokenizer"]["kind"] == "gpt2" and m["tokenizer"]["vocab_size"] == 50257
    assert m["tokenizer"]["eot_id"] == 50256 and m["dtype"] == "uint16"
    assert load_tokenizer(out).encode(docs[1]) == tok.encode(docs[1])
    # ids are the tokenizer's encode of each document, each followed by <|endoftext|>, split by the seeded hash
    want, split = expected_streams(docs, tok, seed=1337, val_fraction=0.1)
    assert m["split"]["policy"] == "document-hash"
    for s in ("train", "val"):
        np.testing.assert_array_equal(tokens(out, s), want[s])
        assert m["splits"][s]["tokens"] == len(want[s])
        assert m["splits"][s]["documents"] == split.count(s)
        for sh in m["splits"][s]["shards"]:  # checksums and sizes of the shards
            assert sha256(out / sh["file"]) == sh["sha256"]
            assert (out / sh["file"]).stat().st_size == sh["bytes"] == HEADER_BYTES + 2 * sh["tokens"]
    assert 0 < m["splits"]["val"]["documents"] < len(docs)
    # sources: reading order, sizes, checksums of the input files, documents per file
    src = m["sources"]
    assert [Path(s["path"]).relative_to(root).as_posix() for s in src] == ["a.txt", "c.jsonl.gz", "sub/b.jsonl"]
    assert [s["kind"] for s in src] == ["text", "jsonl", "jsonl"] and [s["gzip"] for s in src] == [0, 1, 0]
    assert [s["documents"] for s in src] == [1, 30, 30]
    for s in src:
        assert s["sha256"] == sha256(Path(s["path"])) and s["bytes"] == Path(s["path"]).stat().st_size
    assert m["documents"]["documents"] == 61 and m["documents"]["skipped_lines"] == 0
    assert [Path(p).name for p in m["skipped_files"]] == ["weights.bin"]
    assert m["arguments"]["tokenizer"] == "gpt2" and m["gptkit_version"]


def test_split_hash_fraction_on_many_documents(shared_data):
    texts = [json.loads(x)["text"] for x in (shared_data / "lambada" / "lambada_test.jsonl").open()]
    val = sum(split_hash(t, 1337) < 0.1 for t in texts)
    assert abs(val / len(texts) - 0.1) < 0.015
    assert [split_hash(t, 1337) for t in texts[:5]] == [split_hash(t, 1337) for t in texts[:5]]
    assert split_hash(texts[0], 1) != split_hash(texts[0], 2)


def test_gpt1_and_bpe_prepare(shared_data, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_mod, "PIECE_CHARS", 1000)  # long documents are encoded in pieces: same ids
    text = (shared_data / "gutenberg-alice" / "wonderland.txt").read_text(encoding="utf-8")[:30_000]
    text = text.lstrip("\ufeff")  # the reader drops a byte-order mark
    (tmp_path / "alice.txt").write_text(text, encoding="utf-8")
    (tmp_path / "more.txt").write_text(text[:3000], encoding="utf-8")
    inputs = [str(tmp_path / "alice.txt"), str(tmp_path / "more.txt")]
    m = prepare(inputs, tmp_path / "g1", tokenizer="gpt1", vocab=str(shared_data / "gpt1-bpe-vocab"),
                progress=False)
    # GPT-1 has no end-of-text token: it is added after the 40,478 ids
    assert m["tokenizer"]["kind"] == "gpt1" and m["tokenizer"]["vocab_size"] == 40_479
    assert m["tokenizer"]["eot_id"] == 40_478 and m["dtype"] == "uint16"
    want, _ = expected_streams([text, text[:3000]], load_tokenizer(tmp_path / "g1"), 1337, 0.1)
    for s in ("train", "val"):
        np.testing.assert_array_equal(tokens(tmp_path / "g1", s), want[s])

    m = prepare(inputs, tmp_path / "bpe", tokenizer="bpe", vocab_size=400, progress=False)
    assert m["tokenizer"]["kind"] == "bpe" and m["tokenizer"]["vocab_size"] <= 400
    tok = load_tokenizer(tmp_path / "bpe")
    want, _ = expected_streams([text, text[:3000]], tok, 1337, 0.1)
    for s in ("train", "val"):
        np.testing.assert_array_equal(tokens(tmp_path / "bpe", s), want[s])
    assert tok.decode(want["train"][:-1]) in (text, text[:3000])


def test_split_pieces_give_the_same_ids(shakespeare, shared_data):
    text = shakespeare.read_text()[:200_000]
    pieces = split_at_word_boundaries(text, 5000)
    assert "".join(pieces) == text and 35 < len(pieces) < 45
    for tok in (Tokenizer.from_pretrained(shared_data / "gpt2-bpe-vocab"), Tokenizer.train_char(text)):
        assert [i for p in pieces for i in tok.encode(p)] == tok.encode(text)
    assert split_at_word_boundaries("x" * 100, 10) == ["x" * 100]  # no safe point: one piece


# ------------------------------------------------------------------------------------------------- shards
def test_shard_round_trip_and_dtype(tmp_path):
    assert dtype_for_vocab(50_257) == np.uint16 and dtype_for_vocab(65_536) == np.uint16
    assert dtype_for_vocab(65_537) == np.uint32 and dtype_for_vocab(100_277) == np.uint32
    for dtype, vocab in ((np.uint16, 65_536), (np.uint32, 100_277)):
        ids = np.random.default_rng(0).integers(0, vocab, size=1000).astype(dtype)
        info = write_shard(tmp_path / "s.bin", ids, vocab_size=vocab)
        assert info["bytes"] == HEADER_BYTES + ids.nbytes and info["sha256"] == sha256(tmp_path / "s.bin")
        hdr = read_header(tmp_path / "s.bin")
        assert (hdr["count"], hdr["dtype"], hdr["vocab_size"]) == (1000, np.dtype(dtype), vocab)
        got = open_shard(tmp_path / "s.bin")
        assert isinstance(got, np.memmap) and got.dtype == dtype
        np.testing.assert_array_equal(got, ids)
    assert (tmp_path / "s.bin").read_bytes()[:8] == b"GPTKTOK\0"
    write_shard(tmp_path / "empty.bin", np.zeros(0, np.uint16))
    assert len(open_shard(tmp_path / "empty.bin")) == 0
    with pytest.raises(ValueError):
        write_shard(tmp_path / "x.bin", np.zeros(3, np.int64))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.bin", "s.bin"]  # no temporary files left


def test_shard_writer_rolls_over(tmp_path):
    w = ShardWriter(tmp_path, "train", np.uint16, shard_tokens=10)
    for chunk in (np.arange(7), np.arange(7, 12), np.arange(12, 25)):
        w.write(chunk)
    shards = w.close()
    assert [s["file"] for s in shards] == ["train_000.bin", "train_001.bin", "train_002.bin"]
    assert [s["tokens"] for s in shards] == [10, 10, 5]
    np.testing.assert_array_equal(np.concatenate([open_shard(tmp_path / s["file"]) for s in shards]),
                                  np.arange(25))


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-3], "truncated"),
    (lambda b: b + b"\0\0", "trailing bytes"),
    (lambda b: b[:100], "shorter than the 256-byte header"),
    (lambda b: b"NOTATOK\0" + b[8:], "bad magic"),
    (lambda b: b[:8] + (99).to_bytes(4, "little") + b[12:], "format version 99"),
    (lambda b: b[:12] + (3).to_bytes(4, "little") + b[16:], "dtype code 3"),
])
def test_corrupt_shard_is_one_clear_error(tmp_path, damage, message):
    write_shard(tmp_path / "s.bin", np.arange(50, dtype=np.uint16))
    (tmp_path / "s.bin").write_bytes(damage((tmp_path / "s.bin").read_bytes()))
    with pytest.raises(DataError, match=message) as e:
        open_shard(tmp_path / "s.bin")
    assert "\n" not in str(e.value) and "s.bin" in str(e.value)


# ------------------------------------------------------------------------------------------------- loader
def test_loader_batches(char_data):
    ds = TokenDataset(char_data, "train")
    x, y = get_batch(ds, 12, 64, seed=1337, step=3)
    assert x.shape == y.shape == (12, 64) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
    starts = batch_offsets(len(ds), 12, 64, seed=1337, step=3)
    data = ds[:]
    for i, s in enumerate(starts):
        assert x[i].tolist() == data[s:s + 64].tolist() and y[i].tolist() == data[s + 1:s + 65].tolist()
    # a pure function of (seed, step, micro_step, rank)
    same = get_batch(TokenDataset(char_data, "train"), 12, 64, seed=1337, step=3)
    assert torch.equal(same[0], x) and torch.equal(same[1], y)
    for kw in ({"step": 4}, {"step": 3, "micro_step": 1}, {"step": 3, "rank": 1}):
        other = get_batch(ds, 12, 64, seed=1337, **kw)
        assert not torch.equal(other[0], x)
    assert not torch.equal(get_batch(ds, 12, 64, seed=1, step=3)[0], x)


def test_loader_resumes_exactly(char_data):
    a = BatchLoader(char_data, batch_size=4, block_size=32, seed=7)
    straight = [a.get_batch("train", step, micro) for step in range(6) for micro in range(2)]
    state = json.loads(json.dumps(a.state_dict()))  # what a checkpoint stores: small and JSON-able
    assert state["seed"] == 7 and len(json.dumps(state)) < 500
    b = BatchLoader(char_data, batch_size=4, block_size=32, seed=0)
    b.load_state_dict(state)
    resumed = [b.get_batch("train", step, micro) for step in range(3, 6) for micro in range(2)]
    for (x1, y1), (x2, y2) in zip(straight[6:], resumed):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # eval batches are fixed whatever the training seed, so val losses of different runs compare
    e1 = list(a.eval_batches("val", 3))
    e2 = list(BatchLoader(char_data, batch_size=4, block_size=32, seed=99).eval_batches("val", 3))
    assert all(torch.equal(p[0], q[0]) for p, q in zip(e1, e2))
    e3 = list(eval_batches(TokenDataset(char_data, "val"), 3, batch_size=4, block_size=32))
    assert all(torch.equal(p[1], q[1]) for p, q in zip(e1, e3))
    assert not torch.equal(e1[0][0], e1[1][0])
    # ranks of a distributed run draw different windows
    r0 = BatchLoader(char_data, 4, 32, seed=7, rank=0, world_size=2).get_batch("train", 0)
    r1 = BatchLoader(char_data, 4, 32, seed=7, rank=1, world_size=2).get_batch("train", 0)
    assert not torch.equal(r0[0], r1[0])


def test_loader_draws_ahead_the_same_batches(char_data):
    """A training loop's in-order reads are drawn AHEAD_STEPS at a time: the same batches as the pure function,
    step by step, for each micro-step, in order, after jumps and backwards; a loaded state's seed is not served
    from draws made with the seed before."""
    ds = TokenDataset(char_data, "train")
    loader = BatchLoader(char_data, batch_size=4, block_size=32, seed=7)
    order = [*range(0, 150), 3, 2, 1, 400, 401, 402, *range(60, 70)]
    for step in order:
        for micro in (0, 1):
            x, y = loader.get_batch("train", step, micro)
            rx, ry = get_batch(ds, 4, 32, seed=7, step=step, micro_step=micro)
            assert torch.equal(x, rx) and torch.equal(y, ry) and x.is_contiguous()
    assert len(loader._ahead[("train", 0)][1]) == BatchLoader.AHEAD_STEPS  # in order: drawn ahead
    state = {**loader.state_dict(), "seed": 8}
    loader.get_batch("train", 402), loader.get_batch("train", 403)  # 403 on: drawn with seed 7
    loader.load_state_dict(state)
    assert torch.equal(loader.get_batch("train", 404)[0], get_batch(ds, 4, 32, seed=8, step=404)[0])


def test_loader_across_shards_and_errors(char_data, shakespeare, tmp_path):
    sharded = tmp_path / "sharded"
    prepare([str(shakespeare)], sharded, tokenizer="char", shard_tokens=100_000, progress=False)
    assert len(read_manifest(sharded)["splits"]["train"]["shards"]) == 11
    one, many = TokenDataset(char_data, "train"), TokenDataset(sharded, "train")
    np.testing.assert_array_equal(one[:], many[:])
    starts = np.array([0, 99_990, 199_999, 100_000, len(one) - 65])  # some windows cross shard boundaries
    np.testing.assert_array_equal(one.windows(starts, 65), many.windows(starts, 65))
    for step in range(5):
        assert torch.equal(get_batch(one, 16, 256, seed=1, step=step)[0], get_batch(many, 16, 256, seed=1,
                                                                                    step=step)[0])
    assert data_fingerprint(sharded) != data_fingerprint(char_data)  # same tokens, other shard files
    with pytest.raises(DataError, match="fewer than block_size"):
        get_batch(TokenDataset(char_data, "val"), 1, 200_000, seed=0, step=0)
    with pytest.raises(DataError, match="not a prepared data directory"):
        TokenDataset(tmp_path, "train")
    other = BatchLoader(sharded, 2, 8)
    other_state = other.state_dict()
    other_state["data"] = "0" * 16
    with pytest.raises(DataError, match="not the data this run was trained on"):
        BatchLoader(char_data, 2, 8).load_state_dict(other_state)


# ------------------------------------------------------------------------------------------------ sources
def test_sources_kinds_and_text_policy(tmp_path):
    for name, kind in (("notes.md", "text"), ("book.txt.gz", "text"), ("x.jsonl", "jsonl"),
                       ("x.ndjson.gz", "jsonl"), ("model.safetensors", None)):
        assert input_kind(tmp_path / name) == kind, name
    assert is_text_file(tmp_path / "README.md")
    (tmp_path / "README").write_text("plain text without a suffix")
    (tmp_path / "blob").write_bytes(b"\0\1\2binary")
    assert is_text_file(tmp_path / "README") and not is_text_file(tmp_path / "blob")
    (tmp_path / "crlf.txt").write_bytes(b"\xef\xbb\xbfline one\r\nline two\rend\n")
    files, skipped = discover([str(tmp_path)])
    assert [f.path.name for f in files] == ["README", "crlf.txt"] and [Path(s).name for s in skipped] == ["blob"]
    docs = list(Corpus([str(tmp_path / "crlf.txt")]).documents())
    assert docs == [open(tmp_path / "crlf.txt", encoding="utf-8-sig").read()] == ["line one\nline two\nend\n"]


# --------------------------------------------------------------------------------------------- bad input
def test_undecodable_bytes_are_replaced_and_counted(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_bytes(b"caf\xe9 au lait, latin-1 not utf-8\n")
    (tmp_path / "in" / "b.txt").write_text("plain utf-8 text, caf\u00e9\n", encoding="utf-8")
    warnings: list[str] = []
    m = prepare([str(tmp_path / "in")], tmp_path / "out", tokenizer="char", progress=False,
                warn=warnings.append)
    assert m["documents"]["documents_with_replacements"] == 1 and m["documents"]["files_with_replacements"] == 1
    assert [s["documents_with_replacements"] for s in m["sources"]] == [1, 0]
    assert len(warnings) == 1 and "not valid UTF-8" in warnings[0] and "\n" not in warnings[0]
    tok = load_tokenizer(tmp_path / "out")
    text = tok.decode(np.concatenate([tokens(tmp_path / "out", "train"), tokens(tmp_path / "out", "val")]))
    assert "caf\ufffd au lait" in text and "caf\u00e9\n" in text


def test_bad_jsonl_lines_are_skipped_and_counted(tmp_path):
    lines = ['{"text": "the first good document"}', "this is not json", '{"title": "no text field"}',
             '{"text": 5}', "", '["a", "list"]', '{"text": "the second good document"}', '{"text": "  "}']
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    warnings: list[str] = []
    m = prepare([str(tmp_path / "d.jsonl")], tmp_path / "out", progress=False, warn=warnings.append)
    s = m["sources"][0]
    assert (s["documents"], s["skipped_lines"], s["empty_documents"]) == (2, 4, 1)
    assert s["skipped_examples"] == ["line 2: not valid JSON", "line 3: no string field 'text'",
                                     "line 4: no string field 'text'", "line 6: no string field 'text'"]
    assert len(warnings) == 1 and "skipped 4 JSONL line(s)" in warnings[0]
    m = prepare([str(tmp_path / "d.jsonl")], tmp_path / "out2", text_field="title", progress=False,
                warn=lambda w: None)
    assert m["documents"]["documents"] == 1


@pytest.mark.parametrize("case", ["empty_file", "empty_dir", "only_binary", "missing", "bad_gzip", "no_vocab",
                                  "out_not_prepared", "bad_fraction"])
def test_bad_input_is_one_line_error(tmp_path, case):
    (tmp_path / "d").mkdir()
    inputs, kw, match = [str(tmp_path / "d")], {}, "empty corpus"
    if case == "empty_file":
        (tmp_path / "d" / "a.txt").write_text("  \n\n")
    elif case == "only_binary":
        (tmp_path / "d" / "x.bin").write_bytes(b"\0" * 10)
    elif case == "missing":
        inputs, match = [str(tmp_path / "nope.txt")], "input not found: .*nope.txt"
    elif case == "bad_gzip":
        (tmp_path / "d" / "a.txt.gz").write_bytes(b"this is not gzip")
        match = "a.txt.gz: cannot read"
    elif case == "no_vocab":
        (tmp_path / "d" / "a.txt").write_text("text")
        kw, match = {"tokenizer": "gpt2"}, "pass --vocab DIR"
    elif case == "out_not_prepared":
        (tmp_path / "d" / "a.txt").write_text("text")
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "precious.txt").write_text("keep me")
        match = "not a `gptkit prepare` output"
    elif case == "bad_fraction":
        (tmp_path / "d" / "a.txt").write_text("text")
        kw, match = {"val_fraction": 1.0}, "val-fraction"
    with pytest.raises(DataError, match=match) as e:
        prepare(inputs, tmp_path / "out", progress=False, **kw)
    assert "\n" not in str(e.value)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left behind
    if case == "out_not_prepared":
        assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"


def test_previous_output_is_replaced(tmp_path):
    (tmp_path / "a.txt").write_text("first corpus\n")
    prepare([str(tmp_path / "a.txt")], tmp_path / "out", progress=False)
    (tmp_path / "a.txt").write_text("a second, longer corpus\n")
    m = prepare([str(tmp_path / "a.txt")], tmp_path / "out", progress=False)
    assert read_manifest(tmp_path / "out") == m
    assert load_tokenizer(tmp_path / "out").decode(tokens(tmp_path / "out", "train")).startswith("a second")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "out"]
    # a prepare output inside an input directory is skipped; given as the input itself, it is refused
    m = prepare([str(tmp_path)], tmp_path / "again", progress=False)
    assert [Path(s["path"]).name for s in m["sources"]] == ["a.txt"]
    with pytest.raises(DataError, match="is a `gptkit prepare` output"):
        prepare([str(tmp_path / "out")], tmp_path / "o3", progress=False)


def test_a_previous_output_holding_other_files_is_not_replaced(tmp_path):
    """A run trained into a prepare output (train refuses that now), or a user's notes there: replacing the
    directory deleted them without a word."""
    (tmp_path / "a.txt").write_text("first corpus\n")
    out = tmp_path / "out"
    prepare([str(tmp_path / "a.txt")], out, progress=False)
    (out / "checkpoints").mkdir()
    (out / "notes.txt").write_text("keep me")
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(DataError, match=r"also holds checkpoints, notes.txt, which prepare did not write"):
        prepare([str(tmp_path / "a.txt")], out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == before and (out / "notes.txt").read_text() == "keep me"


# -------------------------------------------------------------------------------------------------- CLI
def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """`gptkit ARGV` in-process: through gptkit.cli.main once `prepare` is wired in, else through a parser
    built here with add_prepare and the same error handling."""
    from gptkit import cli

    wired = any(isinstance(a, argparse._SubParsersAction) and "prepare" in a.choices
                for a in cli.build_parser()._actions)
    if wired:
        rc = cli.main(argv)
    else:
        parser = argparse.ArgumentParser(prog="gptkit")
        add_prepare(parser.add_subparsers(dest="command"))
        args = parser.parse_args(argv)
        try:
            rc = args.func(args)
        except GptkitError as e:
            print(f"gptkit: error: {e}", file=sys.stderr)
            rc = 2
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_prepare(shakespeare, tmp_path, capsys):
    rc, out, err = run_cli(["prepare", "--input", str(shakespeare), "--out", str(tmp_path / "o")], capsys)
    assert rc == 0 and "train 1,003,854 tokens" in out and "val 111,541 tokens" in out and "vocab 66" in out
    for argv, match in ((["--input", str(tmp_path / "missing.txt")], "input not found"),
                        (["--input", str(shakespeare), "--tokenizer", "gpt2"], "--vocab DIR"),
                        (["--input", str(tmp_path / "empty")], "empty corpus")):
        (tmp_path / "empty").mkdir(exist_ok=True)
        rc, out, err = run_cli(["prepare", *argv, "--out", str(tmp_path / "o2")], capsys)
        assert rc == 2 and err.count("\n") == 1 and err.startswith("gptkit: error: ") and match in err, err


# ------------------------------------------------------------------------------------ atomic writes (gptkit.io)
def test_atomic_writes_replace_the_whole_file_or_nothing(tmp_path):
    from gptkit.io import AtomicFile, atomic_path, atomic_write_json, atomic_write_text, new_tmp_dir, publish_dir

    target = tmp_path / "out.json"
    atomic_write_text(target, "old\n")
    for crash in ("file", "path"):  # a writer that fails leaves the old file and no temporary one
        with pytest.raises(RuntimeError):
            if crash == "file":
                with AtomicFile(target) as f:
                    f.write(b"half")
                    raise RuntimeError("crash mid-write")
            else:
                with atomic_path(target) as tmp:
                    tmp.write_bytes(b"half")
                    raise RuntimeError("crash mid-write")
        assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    atomic_write_json(target, {"caf\u00e9": [1]})
    assert target.read_text(encoding="utf-8") == '{\n  "caf\u00e9": [\n    1\n  ]\n}\n'
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # the usual mode, not mkstemp's 0600
    # gzip: the same data gives the same bytes (mtime 0, the final name in the header, not the temporary one)
    blobs = []
    for _ in range(2):
        with AtomicFile(tmp_path / "k.jsonl.gz") as f:
            f.write(b'{"text": "x"}\n')
        blobs.append((tmp_path / "k.jsonl.gz").read_bytes())
    assert blobs[0] == blobs[1] and gzip.decompress(blobs[0]) == b'{"text": "x"}\n' and b"k.jsonl" in blobs[0]
    # directories: written beside, published over the old one, with the usual mode
    final = tmp_path / "d"
    for text in ("one", "two"):
        tmp = new_tmp_dir(final)
        (tmp / "f.txt").write_text(text)
        publish_dir(tmp, final)
    assert (final / "f.txt").read_text() == "two" and final.stat().st_mode & 0o777 == 0o777 & ~umask
    # safetensors' save_file creates 0600 files; published (or through atomic_path) they get the usual mode too
    from safetensors.numpy import save_file

    tmp = new_tmp_dir(final)
    save_file({"w": np.zeros(2, np.float32)}, str(tmp / "model.safetensors"))
    publish_dir(tmp, final)
    with atomic_path(tmp_path / "m.safetensors") as p:
        save_file({"w": np.zeros(2, np.float32)}, str(p))
    for f in (final / "model.safetensors", tmp_path / "m.safetensors"):
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, oct(f.stat().st_mode)
    (tmp_path / "m.safetensors").unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "k.jsonl.gz", "out.json"]
