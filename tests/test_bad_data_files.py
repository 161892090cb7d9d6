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
