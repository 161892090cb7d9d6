"""Tokenizers against their references, on every text file in ../shared/data.

- gpt2: ids equal to a tiktoken Encoding built here from OpenAI's encoder.json + vocab.bpe by tiktoken's own
  loader (independent of gptkit's loader), for both of gptkit's loading routes; decode inverts encode; Hugging
  Face loads what ``save`` writes and agrees.
- gpt1: ids equal to ``transformers.OpenAIGPTTokenizer``.
- bpe: arbitrary Unicode round-trips (hypothesis); save/load keeps the ids.
- char, special tokens, loading errors, and the parallel cutting of long texts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptkit.tokenizer import (
    EOT,
    BPETokenizer,
    CharTokenizer,
    GPT1Tokenizer,
    GPT2Tokenizer,
    Tokenizer,
    TokenizerError,
    split_at_word_boundaries,
    load_tokenizer,
)

REPO = Path(__file__).resolve().parents[1]
UNICODE_TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)))  # no lone surrogates: not UTF-8

# The GPT-1 reference (transformers) encodes a whole text on one thread at ~1 MB/s, so for files above this
# size the GPT-1 comparison uses a deterministic sample: every k-th line, at most _SAMPLE_LINES lines, cut to
# _SAMPLE_CHARS characters. (Both tokenizers see the same sample, so where it is cut does not matter.)
_FULL_FILE_BYTES = 300_000
_SAMPLE_LINES = 2000
_SAMPLE_CHARS = 100_000


# ---- fixtures --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_files(shared_data: Path) -> list[tuple[str, str]]:
    """(relative path, text) of every file under shared/data that is valid UTF-8, in path order."""
    files = []
    for p in sorted(shared_data.rglob("*")):
        if not p.is_file():
            continue
        try:
            text = p.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue  # not a text file
        files.append((str(p.relative_to(shared_data)), text))
    names = {name for name, _ in files}
    assert "tinyshakespeare/input.txt" in names and "sst2/stsa.binary.dev" in names and "stsb/train.tsv" in names
    return files


@pytest.fixture(scope="module")
def tiktoken_gpt2(shared_data: Path):
    """The reference: tiktoken's own GPT-2 loader and pattern, on the local files (never get_encoding)."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    d = shared_data / "gpt2-bpe-vocab"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken otherwise caches the files in /tmp by path
        ranks = data_gym_to_mergeable_bpe_ranks(str(d / "vocab.bpe"), str(d / "encoder.json"))
    enc = tiktoken.Encoding("gpt2-reference", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                            special_tokens={EOT: 50256})
    assert enc.n_vocab == 50257
    return enc


@pytest.fixture(scope="module")
def gpt2(shared_data: Path) -> GPT2Tokenizer:
    tok = Tokenizer.from_pretrained(shared_data / "gpt2-bpe-vocab")
    assert isinstance(tok, GPT2Tokenizer)
    return tok


@pytest.fixture(scope="module")
def gpt2_ids(gpt2, text_files) -> dict[str, list[int]]:
    """gptkit's gpt2 ids of every file (route: encoder.json + vocab.bpe)."""
    return {name: gpt2.encode(text) for name, text in text_files}


@pytest.fixture(scope="module")
def gpt1(shared_data: Path) -> GPT1Tokenizer:
    tok = Tokenizer.from_pretrained(shared_data / "gpt1-bpe-vocab")
    assert isinstance(tok, GPT1Tokenizer)
    return tok


@pytest.fixture(scope="module")
def hf_gpt1(shared_data: Path, tmp_path_factory):
    """transformers' OpenAIGPTTokenizer on OpenAI's GPT-1 files.

    transformers 5.x ignores ``vocab_file=``/``merges_file=`` (it would build a 1-token tokenizer), so the files
    are linked into a folder under the names ``from_pretrained`` looks for.
    """
    from transformers import OpenAIGPTTokenizer

    d = tmp_path_factory.mktemp("hf-gpt1")
    src = shared_data / "gpt1-bpe-vocab"
    for target, name in (("encoder_bpe_40000.json", "vocab.json"), ("vocab_40000.bpe", "merges.txt")):
        try:
            os.symlink(src / target, d / name)
        except OSError:
            shutil.copyfile(src / target, d / name)
    hf = OpenAIGPTTokenizer.from_pretrained(str(d))
    assert len(hf) == 40478, "the reference tokenizer did not load the GPT-1 vocabulary"
    assert hf.encode("Hello, world!") == [3570, 240, 1276, 267]
    return hf


@pytest.fixture(scope="module")
def shakespeare(shared_data: Path) -> str:
    return (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def bpe(shakespeare: str) -> BPETokenizer:
    tok = Tokenizer.train_bpe([shakespeare], vocab_size=512)
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == 512
    return tok


def _first_difference(a: list[int], b: list[int]) -> str:
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"first difference at token {i} of {len(a)} vs {len(b)}: {a[i:i + 8]} vs {b[i:i + 8]}"


def _gpt1_sample(text: str) -> tuple[str, bool]:
    if len(text.encode("utf-8")) <= _FULL_FILE_BYTES:
        return text, False
    lines = text.splitlines(keepends=True)
    k = -(-len(lines) // _SAMPLE_LINES)
    return "".join(lines[::k][:_SAMPLE_LINES])[:_SAMPLE_CHARS], True


# ---- GPT-2 -------------------------------------------------------------------------------------------------------


def test_gpt2_basics(gpt2):
    from tiktoken_ext.openai_public import r50k_pat_str

    from gptkit.tokenizer import _GPT2_PAT_STR

    assert _GPT2_PAT_STR == r50k_pat_str  # the fallback constant is GPT-2's regex
    assert gpt2.kind == "gpt2" and gpt2.vocab_size == len(gpt2) == 50257 and gpt2.eot_id == 50256
    assert gpt2.special_tokens == {EOT: 50256}
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.token_to_id("Ġworld") == 995 and gpt2.id_to_token(995) == "Ġworld"
    # special strings are ordinary text unless allowed
    assert 50256 not in gpt2.encode(f"a{EOT}b")
    assert gpt2.encode(f"a{EOT}b", allowed_special="all") == [64, 50256, 65]
    assert gpt2.encode(f"a{EOT}b", allowed_special={EOT}) == [64, 50256, 65]


def test_gpt2_matches_tiktoken_on_every_file(gpt2, gpt2_ids, tiktoken_gpt2, text_files):
    """Whole files (the long ones go through gptkit's parallel cutting, see testsplit_at_word_boundaries_*)."""
    for name, text in text_files:
        ref = tiktoken_gpt2.encode_ordinary(text)
        assert gpt2_ids[name] == ref, f"{name}: {_first_difference(gpt2_ids[name], ref)}"
        assert gpt2.decode(gpt2_ids[name]) == text, name
        if EOT in text:  # e.g. the data README names <|endoftext|>
            assert gpt2.encode(text, allowed_special="all") == tiktoken_gpt2.encode(text, allowed_special="all")


def test_gpt2_loading_routes_agree(gpt2, gpt2_ids, text_files, tmp_path):
    """encoder.json + vocab.bpe, vocab.json + merges.txt (Hugging Face layout), and a gptkit save."""
    saved = tmp_path / "saved"
    gpt2.save(saved)
    hf_layout = tmp_path / "hf"
    hf_layout.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(saved / name, hf_layout / name)
    for route in (saved, hf_layout):
        tok = Tokenizer.from_pretrained(route)
        assert isinstance(tok, GPT2Tokenizer) and tok.vocab_size == 50257 and tok.eot_id == 50256
        assert tok._ranks == gpt2._ranks and tok.special_tokens == gpt2.special_tokens
    # the Hugging Face layout on every file (the gptkit save reads the same two files, spot-checked)
    for name, text in text_files:
        assert tok.encode(text) == gpt2_ids[name], f"vocab.json+merges.txt: {name}"
    tok = Tokenizer.from_pretrained(saved)
    for name, text in text_files[-3:]:
        assert tok.encode(text) == gpt2_ids[name], f"gptkit save: {name}"


def test_gpt2_hf_loads_saved_files_and_agrees(gpt2, shakespeare, text_files, tmp_path):
    """transformers' GPT2TokenizerFast / AutoTokenizer read what save() writes, and give the same ids."""
    from transformers import AutoTokenizer, GPT2TokenizerFast

    gpt2.save(tmp_path)
    hf = GPT2TokenizerFast.from_pretrained(str(tmp_path))
    assert len(hf) == 50257
    assert hf.encode(shakespeare[:300_000]) == gpt2.encode(shakespeare[:300_000])
    for name, text in text_files:
        if name.startswith(("lambada", "wikitext-2-raw", "piqa")):
            sample = text[:50_000]
            assert hf.encode(sample) == gpt2.encode(sample), name
    assert type(AutoTokenizer.from_pretrained(str(tmp_path))).__name__.startswith("GPT2Tokenizer")


def test_gpt2_encode_batch(gpt2, tiktoken_gpt2, shakespeare):
    lines = shakespeare.splitlines(keepends=True)[:3000]
    ref = [tiktoken_gpt2.encode_ordinary(line) for line in lines]
    assert gpt2.encode_batch(lines) == ref
    assert gpt2.encode_batch(lines, num_threads=1) == ref
    assert gpt2.encode_batch([]) == []
    assert gpt2.encode_batch([f"x{EOT}"], allowed_special="all") == [[87, 50256]]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=UNICODE_TEXT)
def test_gpt2_roundtrip_any_unicode(gpt2, tiktoken_gpt2, text):
    ids = gpt2.encode(text)
    assert ids == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2.decode(ids) == text


# ---- GPT-1 -------------------------------------------------------------------------------------------------------


def test_gpt1_basics(gpt1):
    assert gpt1.kind == "gpt1" and gpt1.vocab_size == 40478 and gpt1.eot_id is None
    assert gpt1.special_tokens == {"<unk>": 0}
    assert gpt1.encode("Hello, World!") == [3570, 240, 1276, 267]
    assert gpt1.token_to_id("hello</w>") == 3570
    # lossy decode: lower case, accents stripped, words joined by single spaces
    assert gpt1.decode(gpt1.encode("Don't STOP, naïve Café!")) == "don ' t stop , naive cafe !"
    # characters outside the 40,478 tokens become <unk> (id 0): here the CJK ideograph
    assert gpt1.encode("a 你 b") == [246, 0, 259]


def test_gpt1_matches_transformers_on_every_file(gpt1, hf_gpt1, text_files):
    """Small files whole; files over 300 KB on a deterministic sample of lines (see _gpt1_sample).

    transformers' ``encode`` treats the literal text "<unk>" as the unknown token (WikiText is full of it): that
    is gptkit's ``allowed_special="all"``; gptkit's default (special strings as plain text) equals transformers
    with ``split_special_tokens=True``.
    """
    sampled = 0
    for name, text in text_files:
        sample, was_sampled = _gpt1_sample(text)
        sampled += was_sampled
        ref = hf_gpt1.encode(sample)
        ours = gpt1.encode(sample, allowed_special="all")
        assert ours == ref, f"{name}: {_first_difference(ours, ref)}"
        if "<unk>" in sample:
            ref = hf_gpt1.encode(sample, split_special_tokens=True)
            ours = gpt1.encode(sample)
            assert ours == ref, f"{name} (<unk> as text): {_first_difference(ours, ref)}"
        else:
            assert gpt1.encode(sample) == ours
    assert sampled > 5


def test_gpt1_whole_file_and_batch(gpt1, hf_gpt1, shakespeare):
    """A whole 1.1 MB file (gptkit cuts it and encodes the pieces in parallel) and encode_batch on its lines."""
    ref = hf_gpt1.encode(shakespeare)
    assert gpt1.encode(shakespeare) == ref
    lines = shakespeare.splitlines(keepends=True)[:5000]
    batch = gpt1.encode_batch(lines)
    assert batch == [hf_gpt1.encode(line) for line in lines]
    assert gpt1.encode_batch(lines, num_threads=1) == batch


def test_gpt1_loading_routes_and_hf_roundtrip(gpt1, shared_data, tmp_path):
    from transformers import AutoTokenizer

    text = (shared_data / "gutenberg-alice" / "wonderland.txt").read_text(encoding="utf-8")[:100_000]
    ids = gpt1.encode(text)
    gpt1.save(tmp_path / "saved")
    hf_layout = tmp_path / "hf"
    hf_layout.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(tmp_path / "saved" / name, hf_layout / name)
    for route in (tmp_path / "saved", hf_layout):
        tok = Tokenizer.from_pretrained(route)
        assert isinstance(tok, GPT1Tokenizer), route  # vocab.json with "</w>" tokens: GPT-1, not GPT-2
        assert tok.encode(text) == ids
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
    assert len(hf) == 40478 and hf.encode(text) == ids


# ---- byte-level BPE ----------------------------------------------------------------------------------------------


def test_bpe_basics(bpe, shakespeare):
    assert bpe.kind == "bpe" and bpe.eot_id == 0 and bpe.special_tokens == {EOT: 0}
    ids = bpe.encode(shakespeare[:5000])
    assert len(ids) < 5000 * 0.6  # merges learned: fewer tokens than bytes
    assert bpe.decode(ids) == shakespeare[:5000]
    assert bpe.encode(EOT, allowed_special="all") == [0]
    assert 0 not in bpe.encode(f"a{EOT}b")
    assert bpe.decode(bpe.encode(f"a{EOT}b", allowed_special="all")) == f"a{EOT}b"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=UNICODE_TEXT)
def test_bpe_roundtrip_any_unicode(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text
    assert bpe.decode(bpe.encode(text, allowed_special="all")) == text


def test_bpe_save_load_and_parallel_path(bpe, shakespeare, tmp_path):
    ids = bpe.encode(shakespeare)
    # the whole-text path cuts the text and encodes in parallel; the backend alone on the whole text agrees
    assert ids == bpe._backend.encode(shakespeare).ids
    assert bpe.decode(ids) == shakespeare
    bpe.save(tmp_path / "saved")
    assert (tmp_path / "saved" / "tokenizer.json").is_file()
    for route in (tmp_path / "saved", tmp_path / "saved" / "tokenizer.json"):
        again = Tokenizer.from_pretrained(route)
        assert isinstance(again, BPETokenizer) and again.vocab_size == 512 and again.eot_id == 0
        assert again.encode(shakespeare) == ids
    # a bare Hugging Face tokenizer.json
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copyfile(tmp_path / "saved" / "tokenizer.json", bare / "tokenizer.json")
    assert Tokenizer.from_pretrained(bare).encode(shakespeare[:2000]) == ids[: len(bpe.encode(shakespeare[:2000]))]
    lines = shakespeare.splitlines()[:2000]
    assert bpe.encode_batch(lines) == [bpe.encode(line) for line in lines]
    assert bpe.encode_batch(lines, num_threads=1) == [bpe.encode(line) for line in lines]


def test_bpe_train_arguments():
    tok = Tokenizer.train_bpe("just one small string", vocab_size=300)  # a str is one text, not its chars
    assert tok.vocab_size <= 300 and tok.decode(tok.encode("small ünïcode ✓")) == "small ünïcode ✓"
    with pytest.raises(TokenizerError, match="vocab_size"):
        Tokenizer.train_bpe(["abc"], vocab_size=100)


# ---- char --------------------------------------------------------------------------------------------------------


def test_char_roundtrip_and_layout(shakespeare, tmp_path):
    tok = Tokenizer.train_char(shakespeare)
    chars = sorted(set(shakespeare))
    assert isinstance(tok, CharTokenizer) and tok.kind == "char"
    assert tok.vocab_size == len(chars) + 1 == 66 and tok.eot_id == len(chars)
    ids = tok.encode(shakespeare)
    assert ids[:3] == [chars.index(c) for c in shakespeare[:3]]
    assert tok.decode(ids) == shakespeare
    tok.save(tmp_path)
    again = Tokenizer.from_pretrained(tmp_path)
    assert isinstance(again, CharTokenizer) and again.encode(shakespeare) == ids
    assert again.special_tokens == {EOT: 65}


def test_char_unknown_character_is_an_error():
    tok = Tokenizer.train_char("hello world")
    with pytest.raises(TokenizerError, match=r"'ö'.*position 4"):
        tok.encode("hellö")
    with pytest.raises(TokenizerError, match="'<'"):  # the special string as text needs '<' in the vocab
        tok.encode(EOT)
    assert tok.encode(f"he{EOT}", allowed_special="all") == [3, 2, 8]
    assert tok.decode([3, 2, 8]) == f"he{EOT}"
    with pytest.raises(TokenizerError):
        Tokenizer.train_char("")


# ---- special tokens, every kind ---------------------------------------------------------------------------------


@pytest.fixture(params=["char", "bpe", "gpt2", "gpt1"])
def fresh(request, shared_data, shakespeare) -> Tokenizer:
    """A tokenizer of each kind that the test may modify."""
    if request.param == "char":
        return Tokenizer.train_char(shakespeare + "_<|>")  # so that "_start_", "<|x|>" can be plain text too
    if request.param == "bpe":
        return Tokenizer.train_bpe([shakespeare[:200_000]], vocab_size=300)
    if request.param == "gpt2":
        return Tokenizer.from_pretrained(shared_data / "gpt2-bpe-vocab")
    return Tokenizer.from_pretrained(shared_data / "gpt1-bpe-vocab")


def test_add_special_tokens_every_kind(fresh, tmp_path):
    n = fresh.vocab_size
    new = ["_start_", "_delimiter_", "_classify_"]
    ids = fresh.add_special_tokens(new)
    assert ids == [n, n + 1, n + 2] and fresh.vocab_size == n + 3
    assert fresh.add_special_tokens(new) == ids  # idempotent
    assert fresh.vocab_size == n + 3
    assert all(fresh.token_to_id(t) == i for t, i in zip(new, ids))
    text = "_start_ First Citizen _delimiter_ Speak _classify_"
    enc = fresh.encode(text, allowed_special="all")
    assert enc[0] == ids[0] and enc[-1] == ids[2] and ids[1] in enc
    assert not set(ids) & set(fresh.encode(text))  # not allowed: plain text
    only_start = fresh.encode(text, allowed_special={"_start_"})
    assert only_start[0] == ids[0] and ids[2] not in only_start
    if fresh.kind != "gpt1":  # gpt1's decode is lossy
        assert fresh.decode(enc) == text
    fresh.save(tmp_path)
    cfg = json.loads((tmp_path / "gptkit_tokenizer.json").read_text())
    assert cfg["kind"] == fresh.kind and cfg["vocab_size"] == n + 3
    again = Tokenizer.from_pretrained(tmp_path)
    assert type(again) is type(fresh) and again.vocab_size == n + 3
    assert again.special_tokens == fresh.special_tokens
    assert again.encode(text, allowed_special="all") == enc
    assert again.decode(enc) == fresh.decode(enc)


def test_add_special_tokens_hf_sees_them(fresh, tmp_path):
    """gpt2/gpt1 saves carry the added tokens in tokenizer_config.json, so transformers maps them the same way."""
    if fresh.kind not in ("gpt2", "gpt1"):
        pytest.skip("only gpt2/gpt1 write Hugging Face vocab.json + merges.txt")
    from transformers import AutoTokenizer

    fresh.add_special_tokens(["<|pad|>", "_start_"])
    fresh.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    text = "_start_ Hello<|pad|> world"
    assert len(hf) == fresh.vocab_size and hf.encode(text) == fresh.encode(text, allowed_special="all")


# ---- API edges and errors --------------------------------------------------------------------------------------


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        Tokenizer.from_pretrained(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(TokenizerError, match=r"not a tokenizer directory.*vocab.json\+merges.txt") as e:
        Tokenizer.from_pretrained(tmp_path)
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(TokenizerError, match="is a file"):
        Tokenizer.from_pretrained(tmp_path / "notes.txt")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "gptkit_tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="cannot read"):
        Tokenizer.from_pretrained(bad)
    (bad / "gptkit_tokenizer.json").write_text('{"kind": "wordpiece"}')
    with pytest.raises(TokenizerError, match="unknown tokenizer kind"):
        Tokenizer.from_pretrained(bad)
    (bad / "gptkit_tokenizer.json").write_text('{"kind": "gpt2", "special_tokens": {}}')
    with pytest.raises(TokenizerError, match="missing tokenizer file"):
        Tokenizer.from_pretrained(bad)
    assert issubclass(TokenizerError, ValueError)


def test_from_pretrained_checkpoint_dir(tmp_path):
    tok = Tokenizer.train_char("abc")
    (tmp_path / "model.safetensors").write_bytes(b"")
    tok.save(tmp_path / "tokenizer")
    assert load_tokenizer(tmp_path).encode("cab") == [2, 0, 1]


def test_decode_inputs_and_errors(gpt2):
    import numpy as np
    import torch

    ids = gpt2.encode("Hello world")
    assert gpt2.decode(tuple(ids)) == gpt2.decode(np.array(ids)) == gpt2.decode(torch.tensor(ids)) == "Hello world"
    assert gpt2.decode([]) == ""
    with pytest.raises(TokenizerError, match="out of range"):
        gpt2.decode([50257])
    with pytest.raises(TokenizerError, match="out of range"):
        gpt2.decode([-1])
    with pytest.raises(TokenizerError, match="allowed_special"):
        gpt2.encode("x", allowed_special={"<|nope|>"})
    with pytest.raises(TokenizerError, match="allowed_special"):
        gpt2.encode("x", allowed_special=EOT)  # a str that is not "all": almost surely meant {EOT}
    with pytest.raises(TokenizerError, match="single str"):
        gpt2.encode_batch("not a list")
    with pytest.raises(TokenizerError):
        gpt2.encode(b"bytes")


# ---- cutting long texts for parallel encoding ------------------------------------------------------------------

# Mostly whitespace in every arrangement, plus some of what sits next to it in real text.
_WS_HEAVY = st.lists(st.sampled_from([*"ab1 .'\n\t\r\u00a0\u3000\x1c\u0301", "é", "你", "'s", "  ", "\n\n", " \n"]),
                     max_size=80).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_WS_HEAVY | UNICODE_TEXT, size=st.integers(1, 12))
def testsplit_at_word_boundaries_preserves_ids(tiktoken_gpt2, gpt1, bpe, text, size):
    """Encoding the pieces separately gives the whole text's ids, for all three regex/word-splitting backends."""
    pieces = split_at_word_boundaries(text, size)
    assert "".join(pieces) == text
    assert sum((tiktoken_gpt2.encode_ordinary(p) for p in pieces), []) == tiktoken_gpt2.encode_ordinary(text)
    for backend in (gpt1._backend, bpe._backend):
        whole = backend.encode(text, add_special_tokens=False).ids
        assert sum((backend.encode(p, add_special_tokens=False).ids for p in pieces), []) == whole


def testsplit_at_word_boundaries_sizes(shakespeare):
    pieces = split_at_word_boundaries(shakespeare, 1 << 16)
    assert "".join(pieces) == shakespeare and len(pieces) == -(-len(shakespeare) // (1 << 16))
    assert all(len(p) >= 1 << 16 for p in pieces[:-1]) and max(map(len, pieces)) < (1 << 16) + 100
    assert split_at_word_boundaries("x" * 100, 10) == ["x" * 100]  # no safe point: one piece


def test_import_is_light():
    """`import gptkit.tokenizer` must not import tiktoken, tokenizers or transformers (the CLI starts fast)."""
    code = ("import sys, gptkit.tokenizer; "
            "print(sorted(m for m in ('tiktoken', 'tokenizers', 'transformers', 'torch') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


def test_allowed_special_between_many_and_big_pieces(fresh):
    """Text joined by <|endoftext|>: many small documents (one batch call) and a few big ones (parallel cuts)."""
    if fresh.eot_id is None:
        fresh.add_special_tokens([EOT])
    eot = fresh.eot_id
    docs = ["First Citizen:\nBefore we proceed", "", " Speak, speak.\n\n", "You are all resolved"] * 50
    big = ["Speak, speak. " * 20_000, "You are all resolved rather to die than to famish?\n" * 3000]
    for parts in (docs, big, big + docs):
        ids = fresh.encode(EOT.join(parts), allowed_special="all")
        expected = []
        for k, part in enumerate(parts):
            expected += fresh.encode(part) + ([eot] if k < len(parts) - 1 else [])
        assert ids == expected


def test_pickle_keeps_behaviour(fresh):
    """DataLoader workers receive pickled tokenizers: same ids, and special strings stay plain text."""
    import pickle

    fresh.add_special_tokens(["<|x|>"])
    again = pickle.loads(pickle.dumps(fresh))
    text = "Speak <|x|>, speak."
    assert again.special_tokens == fresh.special_tokens
    assert again.encode(text) == fresh.encode(text) and fresh.special_tokens["<|x|>"] not in again.encode(text)
    assert again.encode(text, allowed_special="all") == fresh.encode(text, allowed_special="all")
