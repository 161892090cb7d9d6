"""Data files that parse but are wrong (a hand-edited manifest, a corrupt shard, a quality model or tokenizer file
with bad fields, a file name that is not UTF-8) and out-of-range data flags: each is one line,
`gptkit: error: ...`, naming what is wrong, not a traceback from deep inside numpy, torch, tiktoken or sklearn."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from cli_helpers import assert_one_line_error, run, save_char_ckpt
from gptkit.data import loader
from gptkit.data.bytes import val_bytes_per_token
from gptkit.data.dedup import MAX_NUM_PERM, candidate_probability, lsh_params
from gptkit.data.loader import BatchLoader, TokenDataset, load_tokenizer, read_manifest
from gptkit.data.prepare import MixtureSource, prepare
from gptkit.data.quality import QualityModel, train_quality
from gptkit.data.shards import HEADER_BYTES, DataError, open_shard, write_shard
from gptkit.tokenizer import Tokenizer, TokenizerError

TEXT = "the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.\n"
TINY_TRAIN = ["--n-layer", "1", "--n-head", "2", "--n-embd", "8", "--block-size", "8", "--max-iters", "1",
              "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def char_data(tmp_path_factory) -> Path:
    """A tiny prepared char dataset (two shards per split of at most 400 tokens); tests edit copies of it."""
    d = tmp_path_factory.mktemp("bad_data")
    for i in range(4):
        (d / f"doc{i}.txt").write_text(TEXT * 8)
    prepare([str(d)], d / "data", tokenizer="char", val_fraction=0.25, shard_tokens=400, progress=False)
    return d / "data"


@pytest.fixture
def data_copy(char_data, tmp_path) -> Path:
    return Path(shutil.copytree(char_data, tmp_path / "data"))


def edit_json(path: Path, change) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


def train(capsys, data: Path, tmp_path: Path) -> tuple[int, str]:
    rc, _, err = run(capsys, "train", "--data", data, "--out", tmp_path / "run", *TINY_TRAIN)
    return rc, err


# ------------------------------------------------------------------------------------ B3: manifest shape
MANIFEST_EDITS = {
    "no splits": (lambda m: m.pop("splits"), "`splits` is missing"),
    "val null": (lambda m: m["splits"].update(val=None), "`splits.val` is null, expected an object"),
    "tokenizer a string": (lambda m: m.update(tokenizer="char"), "`tokenizer` is a string, expected an object"),
    "vocab_size a string": (lambda m: m["tokenizer"].update(vocab_size="66"), "`tokenizer.vocab_size` is a string"),
    "eot beyond vocab": (lambda m: m["tokenizer"].update(vocab_size=10), "`tokenizer.eot_id`"),
    "shards null": (lambda m: m["splits"]["train"].update(shards=None), "`splits.train.shards` is null"),
    "shard a number": (lambda m: m["splits"]["train"]["shards"].__setitem__(0, 7), "`splits.train.shards[0]`"),
    "shard path": (lambda m: m["splits"]["train"]["shards"][0].update(file="../../x.bin"), "not a file name"),
    "tokens negative": (lambda m: m["splits"]["val"].update(tokens=-5), "`splits.val.tokens` is -5"),
    "tokens not the sum": (lambda m: m["splits"]["val"].update(tokens=1), "not the sum of its shards' tokens"),
    "dtype": (lambda m: m.update(dtype="float99"), "`dtype` is 'float99'"),
}


@pytest.mark.parametrize("case", MANIFEST_EDITS)
def test_a_manifest_of_the_wrong_shape_is_one_line_naming_the_field(case, data_copy, tmp_path, capsys):
    change, fragment = MANIFEST_EDITS[case]
    edit_json(data_copy / "manifest.json", change)
    rc, err = train(capsys, data_copy, tmp_path)
    assert_one_line_error(rc, err, "manifest.json: corrupt manifest", fragment)
    assert not (tmp_path / "run" / "checkpoints").exists()
    with pytest.raises(DataError, match="corrupt manifest"):  # what `scale fit --unit bpb` reads
        val_bytes_per_token(data_copy)


def test_scale_plan_reads_the_manifest_through_the_same_check(data_copy, tmp_path, capsys):
    edit_json(data_copy / "manifest.json", lambda m: m.pop("splits"))
    rc, _, err = run(capsys, "scale", "--plan-only", "--quiet", "--device", "cpu", "--data", data_copy,
                     "--budget-minutes", "5", "--out", tmp_path / "study")
    assert_one_line_error(rc, err, "`splits` is missing")


def test_a_good_manifest_passes_the_shape_check(char_data):
    m = read_manifest(char_data)
    assert len(m["splits"]["train"]["shards"]) >= 2 and m["dtype"] == "uint16"


# ------------------------------------------------------------------------ B4: token ids >= the vocabulary
def overwrite_body(shard: Path, value: int = 0xFFFF) -> None:
    raw = bytearray(shard.read_bytes())
    raw[HEADER_BYTES:] = np.full((len(raw) - HEADER_BYTES) // 2, value, dtype="<u2").tobytes()
    shard.write_bytes(bytes(raw))


def test_a_shard_with_ids_beyond_the_vocabulary_is_one_line(data_copy, tmp_path, capsys):
    overwrite_body(data_copy / "train_000.bin")
    rc, err = train(capsys, data_copy, tmp_path)
    assert_one_line_error(rc, err, "train_000.bin: token id 65,535 is not below the vocabulary size", "corrupt")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_large_split_checks_the_ids_of_each_drawn_batch(data_copy, monkeypatch):
    """Above FULL_CHECK_TOKENS a split is not scanned when opened (that would read all of a large dataset on every
    run); each batch is checked as it is drawn instead, a max over its tokens on the host, naming the shard."""
    monkeypatch.setattr(loader, "FULL_CHECK_TOKENS", 0)
    shards = read_manifest(data_copy)["splits"]["train"]["shards"]
    overwrite_body(data_copy / shards[1]["file"], 70)
    ds = TokenDataset(data_copy, "train")  # opens: nothing scanned
    first = shards[0]["tokens"]
    assert ds.windows(np.array([0, 5]), 9).max() < ds.vocab_size  # windows inside the good shard
    for start in (first + 3, first - 4):  # inside the bad shard; across the boundary into it
        with pytest.raises(DataError, match=f"{shards[1]['file']}: token id 70 is not below the vocabulary size"):
            ds.windows(np.array([0, start]), 9)
    batches = BatchLoader(data_copy, batch_size=64, block_size=8, seed=0)
    with pytest.raises(DataError, match="token id 70"):
        for step in range(20):
            batches.get_batch("train", step)


def test_a_tokenizer_that_does_not_match_the_manifest_is_one_line(data_copy, tmp_path, capsys):
    shutil.rmtree(data_copy / "tokenizer")
    small = Tokenizer.train_char("abcdefgh")
    small.add_special_tokens(["<|endoftext|>"])
    small.save(data_copy / "tokenizer")
    rc, err = train(capsys, data_copy, tmp_path)
    assert_one_line_error(rc, err, "the tokenizer has 9 ids", "manifest.json says")
    with pytest.raises(DataError, match="the tokenizer has 9 ids"):
        load_tokenizer(data_copy)


def test_a_shard_written_for_another_vocabulary_is_refused(tmp_path):
    write_shard(tmp_path / "s.bin", np.arange(10, dtype=np.uint16), vocab_size=66)
    assert len(open_shard(tmp_path / "s.bin", 66)) == 10
    with pytest.raises(DataError, match="written for a vocabulary of 66 ids, the manifest says 50"):
        open_shard(tmp_path / "s.bin", 50)


# ------------------------------------------------------------------------------- B7 / F7: quality model
@pytest.fixture(scope="module")
def quality(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny quality model and an input file for it."""
    d = tmp_path_factory.mktemp("quality")
    pos, neg = d / "pos.jsonl", d / "neg.jsonl"
    pos.write_text("".join(json.dumps({"text": f"edited prose about the river number {i} and its banks"}) + "\n"
                           for i in range(12)))
    neg.write_text("".join(json.dumps({"text": f"click here buy now cheap offer {i} free free"}) + "\n"
                           for i in range(12)))
    train_quality([str(pos)], [str(neg)], d / "q.safetensors", n_features=1024, heldout=0.0)
    return d / "q.safetensors", neg


def edited_model(src: Path, dst: Path, vectorizer: dict | None = None, tensors=None) -> Path:
    """A copy of the model `src` with vectorizer parameters replaced and its arrays changed by `tensors`."""
    with safe_open(str(src), framework="np") as f:
        meta, arrays = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    params = json.loads(meta["vectorizer"])
    params.update(vectorizer or {})
    if tensors is not None:
        tensors(arrays)
    save_file(arrays, str(dst), metadata={**meta, "vectorizer": json.dumps(params)})
    return dst


MODEL_EDITS = {
    "ngram_range reversed": ({"ngram_range": [3, 1]}, None, "ngram_range [3, 1]"),
    "token_pattern not a regex": ({"token_pattern": "(["}, None, "token_pattern '([' is not a regular expression"),
    "token_pattern two groups": ({"token_pattern": "(a)(b)"}, None, "more than one capturing group"),
    "norm l7": ({"norm": "l7"}, None, "norm 'l7'"),
    "lowercase a string": ({"lowercase": "yes"}, None, "lowercase 'yes'"),
    "n_features a string": ({"n_features": "x"}, None, "n_features 'x'"),
    "intercept nan": (None, lambda a: a.update(intercept=np.array([math.nan])), "NaN or infinite"),
    "weight inf": (None, lambda a: a["coef_value"].__setitem__(0, math.inf), "NaN or infinite"),
    "negative index": (None, lambda a: a["coef_index"].__setitem__(0, -1), "outside [0, 1024)"),  # would wrap
    "float index": (None, lambda a: a.update(coef_index=a["coef_index"].astype(np.float32)), "integer indices"),
}


@pytest.mark.parametrize("case", MODEL_EDITS)
def test_a_quality_model_with_bad_fields_is_one_line(case, quality, tmp_path, capsys):
    vectorizer, tensors, fragment = MODEL_EDITS[case]
    good, docs = quality
    bad = edited_model(good, tmp_path / "bad.safetensors", vectorizer, tensors)
    rc, _, err = run(capsys, "data", "quality", "filter", "--quiet", "--model", bad, "--input", docs,
                     "--out", tmp_path / "kept.jsonl")
    assert_one_line_error(rc, err, "corrupt quality model", fragment)
    assert not (tmp_path / "kept.jsonl").exists()


def test_an_unedited_quality_model_still_loads_and_scores(quality):
    model = QualityModel.load(quality[0])
    assert np.isfinite(model.score(["some text here"])).all()


# -------------------------------------------------------------------------------- B10 / F6: tokenizer files
@pytest.fixture(scope="module")
def gpt2_vocab(shared_data) -> Path:
    return shared_data / "gpt2-bpe-vocab"


def gpt2_copy(src: Path, dst: Path, encoder_change=None, merges: str | None = None) -> Path:
    dst.mkdir()
    enc = json.loads((src / "encoder.json").read_text(encoding="utf-8"))
    if encoder_change is not None:
        encoder_change(enc)
    (dst / "encoder.json").write_text(json.dumps(enc), encoding="utf-8")
    if merges is None:
        shutil.copy(src / "vocab.bpe", dst / "vocab.bpe")
    else:
        (dst / "vocab.bpe").write_text(merges, encoding="utf-8")
    return dst


GPT2_EDITS = {
    "id a string": (lambda e: e.update({"x": "str"}), None, "the id of token 'x' is 'str'"),
    "id negative": (lambda e: e.update({"!": -5}), None, "the id of token '!' is -5"),
    "id huge": (lambda e: e.update({"!": 10**12}), None, "is 1000000000000; expected a whole number"),
    "id a float": (lambda e: e.update({"!": 1.5}), None, "the id of token '!' is 1.5"),
    "ids shared": (lambda e: e.update({"!": e['"']}), None, "have the same id"),
    "no merges": (None, "", "vocab.bpe: holds no merges"),
    "only the version line": (None, "#version: 0.2\n", "vocab.bpe: holds no merges"),
}


@pytest.mark.parametrize("case", GPT2_EDITS)
def test_a_gpt2_vocabulary_with_bad_ids_or_no_merges_is_one_line(case, gpt2_vocab, tmp_path, capsys):
    change, merges, fragment = GPT2_EDITS[case]
    vocab = gpt2_copy(gpt2_vocab, tmp_path / "vocab", change, merges)
    (tmp_path / "in.txt").write_text(TEXT)
    rc, _, err = run(capsys, "prepare", "--quiet", "--input", tmp_path / "in.txt", "--tokenizer-kind", "gpt2",
                     "--vocab", vocab, "--out", tmp_path / "out")
    assert_one_line_error(rc, err, fragment)
    assert not (tmp_path / "out").exists()


GPTKIT_TOKENIZER_EDITS = {
    "special_tokens a list": (lambda c: c.update(special_tokens=["<|endoftext|>"]), "got a list"),
    "special id negative": (lambda c: c["special_tokens"].update({"<|endoftext|>": -1}), "is -1"),
    "special id a string": (lambda c: c["special_tokens"].update({"<|endoftext|>": "65"}), "is '65'"),
    "vocab_size a string": (lambda c: c.update(vocab_size="x"), "vocab_size is 'x'"),
    "format_version a string": (lambda c: c.update(format_version="x"), "format_version is 'x'"),
}


@pytest.mark.parametrize("case", GPTKIT_TOKENIZER_EDITS)
def test_a_gptkit_tokenizer_file_with_bad_fields_is_one_line(case, data_copy, tmp_path, capsys):
    change, fragment = GPTKIT_TOKENIZER_EDITS[case]
    edit_json(data_copy / "tokenizer" / "gptkit_tokenizer.json", change)
    with pytest.raises(TokenizerError, match=fragment):
        Tokenizer.from_pretrained(data_copy / "tokenizer")
    rc, err = train(capsys, data_copy, tmp_path)
    assert_one_line_error(rc, err, "gptkit_tokenizer.json", fragment)


def test_sample_with_a_bad_tokenizer_dir_is_one_line(tmp_path, capsys):
    ckpt = save_char_ckpt(tmp_path / "ckpt")
    tok_dir = tmp_path / "tok"
    Tokenizer.from_pretrained(ckpt).save(tok_dir)
    edit_json(tok_dir / "gptkit_tokenizer.json", lambda c: c.update(special_tokens=["<|endoftext|>"]))
    rc, _, err = run(capsys, "sample", "--ckpt", ckpt, "--tokenizer-dir", tok_dir, "--max-new-tokens", "2",
                     "--device", "cpu")
    assert_one_line_error(rc, err, "special_tokens", "got a list")


def test_real_vocabularies_still_load(shared_data):
    assert Tokenizer.from_pretrained(shared_data / "gpt2-bpe-vocab").vocab_size == 50257
    assert Tokenizer.from_pretrained(shared_data / "gpt1-bpe-vocab").vocab_size == 40478


# --------------------------------------------------------------------------- B11: a file name not in UTF-8
@pytest.mark.parametrize("command, lands_in", [
    (["data", "clean"], "out"), (["data", "dedup"], "out"), (["data", "quality", "filter", "--min-score", "0"], "out"),
    (["data", "quality", "filter", "--min-score", "1"], "removed")])
def test_a_file_name_that_is_not_utf8_is_written_with_backslash_escapes(command, lands_in, quality, tmp_path, capsys):
    """The record's "source" spells the undecodable byte `\\xff`: the output stays UTF-8 and still names the file
    (U+FFFD would not tell two such names apart). It stopped every data pass with a UnicodeEncodeError."""
    d = tmp_path / "in"
    d.mkdir()
    try:
        with open(os.path.join(os.fsencode(d), b"bad\xffname.txt"), "w") as f:
            f.write(TEXT)
    except OSError:
        pytest.skip("this file system refuses file names that are not UTF-8")
    extra = ["--model", quality[0]] if "quality" in command else []
    removed = ["--removed", tmp_path / "removed.jsonl"] if command[1] != "clean" else []
    out = tmp_path / "out.jsonl"
    rc, _, err = run(capsys, *command, *extra, *removed, "--quiet", "--input", d, "--out", out)
    assert rc == 0, err
    (row,) = [json.loads(line) for line in (tmp_path / f"{lands_in}.jsonl").read_text(encoding="utf-8").splitlines()]
    assert row["source"] == f"{d}/bad\\xffname.txt" and row["text"] == TEXT
    json.loads(out.with_name("out.report.json").read_text(encoding="utf-8"))


# --------------------------------------------------------------------- C2 / C3: out-of-range data flags
def test_mix_tokens_beyond_2_53_is_one_line(tmp_path, capsys):
    (tmp_path / "a.txt").write_text(TEXT * 4)
    rc, _, err = run(capsys, "prepare", "--quiet", "--source", f"a={tmp_path / 'a.txt'}:1", "--mix-tokens",
                     2**60, "--out", tmp_path / "out")
    assert_one_line_error(rc, err, "--mix-tokens must be positive and at most 2**53")
    with pytest.raises(DataError, match="at most 2\\*\\*53"):  # a library caller has no int64 flag check
        prepare(None, tmp_path / "out", sources=[MixtureSource("a", [str(tmp_path / "a.txt")], 1.0)],
                mix_tokens=10**20, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("num_perm", [2, 128, 3000, 3400, 4000, MAX_NUM_PERM])
def test_lsh_params_for_every_allowed_num_perm(num_perm):
    """0.8^r is below float resolution from r ≈ 3300: lsh_params divided by log1p(-0) = 0 for num_perm ≥ 4000."""
    for threshold in (0.5, 0.8, 0.95):
        b, r = lsh_params(threshold, num_perm)
        assert b >= 1 and r >= 1 and b * r <= num_perm
        assert candidate_probability(threshold, b, r) >= 0.99 or (b, r) == (num_perm, 1)


def test_dedup_with_many_permutations_runs_and_too_many_is_one_line(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in [TEXT, TEXT + " again", "something else"]))
    rc, _, err = run(capsys, "data", "dedup", "--quiet", "--input", src, "--out", tmp_path / "a.jsonl",
                     "--num-perm", 4000)
    assert rc == 0, err
    rc, _, err = run(capsys, "data", "dedup", "--quiet", "--input", src, "--out", tmp_path / "b.jsonl",
                     "--num-perm", MAX_NUM_PERM + 1)
    assert_one_line_error(rc, err, f"--num-perm must be at most {MAX_NUM_PERM:,}")
    assert not (tmp_path / "b.jsonl").exists()
