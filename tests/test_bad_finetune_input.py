"""User mistakes in `gptkit finetune` and `gptkit predict` that used to print a traceback, a misleading line or
nothing at all (the sections below name the findings of a fuzzing report). Each now stops with one line,
`gptkit: error: ...`, before anything is written."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest
import torch

from cli_helpers import assert_one_line_error, run, save_char_ckpt
from gptkit.finetune import tasks as T
from gptkit.options.finetune import FinetuneConfig

SST2 = "1 hello world\n0 the quick fox\n1 the brown fox\n0 hello there\n1 we owe the world\n0 the low fox\n"
"""sst2 lines (`LABEL sentence`) in the characters of save_char_ckpt's vocabulary."""


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # tiny models gain nothing from threads; on a shared 2-core machine they only slow everything down
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory) -> Path:
    """A fine-tuned model (one step of sst2 classification on a tiny character-level model, context 16)."""
    d = tmp_path_factory.mktemp("ft")
    ckpt = save_char_ckpt(d / "ckpt")
    (d / "train.txt").write_text(SST2)
    out = d / "run"
    from gptkit.cli import main

    rc = main(["finetune", "--ckpt", str(ckpt), "--format", "sst2", "--train", str(d / "train.txt"),
               "--valid-from-train", "2", "--out", str(out), "--epochs", "1", "--quiet", "--device", "cpu",
               "--threads", "1"])
    assert rc == 0
    return out


@pytest.fixture
def sst2_input(tmp_path) -> Path:
    p = tmp_path / "in.txt"
    p.write_text(SST2)
    return p


def _finetune(tmp_path, *extra, fmt="sst2", train=None, valid=None):
    """finetune argv whose model is never reached (a bad flag or file stops it first)."""
    train = train or tmp_path / "train.txt"
    if not Path(train).exists():
        Path(train).write_text(SST2)
    return ["finetune", "--ckpt", tmp_path / "no-model-needed", "--format", fmt, "--train", train,
            *(["--valid", valid] if valid else ["--valid-from-train", "2"]), "--out", tmp_path / "out", *extra]


# --------------------------------------------------------------------------------- B5: not UTF-8 text
NOT_UTF8 = b"1 hello world\n0 the quick fox\n1 caf\xc3\xa9 \xff\xfe\x80 garbage\n0 ok\n"
"""Line 3 holds a valid 2-byte character, then 0xff at byte offset 38."""


@pytest.mark.parametrize("fmt, where", [("sst2", "--train"), ("tsv", "--train"), ("csv", "--train"),
                                        ("jsonl", "--train"), ("sst2", "--valid"), ("sst2", "--test")])
def test_finetune_names_the_file_line_and_byte_that_is_not_utf8(tmp_path, capsys, fmt, where):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(NOT_UTF8)
    extra = [] if fmt == "sst2" else ["--task-type", "classification"]
    if where == "--train":
        argv = _finetune(tmp_path, *extra, fmt=fmt, train=bad, valid=bad)
    elif where == "--valid":
        argv = _finetune(tmp_path, *extra, fmt=fmt, valid=bad)
    else:
        argv = _finetune(tmp_path, *extra, "--test", bad, fmt=fmt)
    rc, _, err = run(capsys, *argv)
    assert_one_line_error(rc, err, f"{bad}:3: not UTF-8 text (byte 0xff at offset 38)")
    assert not (tmp_path / "out").exists()


def test_predict_names_the_line_and_byte_that_is_not_utf8(finetuned, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(NOT_UTF8)
    out = tmp_path / "p.jsonl"
    rc, _, err = run(capsys, "predict", "--ckpt", finetuned, "--input", bad, "--out", out, "--device", "cpu")
    assert_one_line_error(rc, err, f"{bad}:3: not UTF-8 text (byte 0xff at offset 38)")
    assert not out.exists()


@pytest.mark.parametrize("block", [1, 2, 3, 5, 1 << 20])
def test_first_bad_utf8_finds_the_byte_across_block_ends(tmp_path, block):
    p = tmp_path / "f"
    p.write_bytes("é€😀\n".encode() * 3 + b"x\n\xe2\x82\n")  # 3 valid lines of 2/3/4-byte characters, a cut one
    assert T.first_bad_utf8(p, block) == (3 * 10 + 2, 0xe2, 5)
    p.write_bytes("é€😀\n".encode() * 3)
    assert T.first_bad_utf8(p, block) is None
    p.write_bytes("é€😀\n".encode() + b"\xe2")  # cut by the end of the file
    assert T.first_bad_utf8(p, block) == (10, 0xe2, 2)


# ------------------------------------------------------------------- F1, F2: the ranges `gptkit train` allows
@pytest.mark.parametrize("flag, value, message", [
    ("--weight-decay", "-1", "--weight-decay must be finite and >= 0, got -1.0"),
    ("--weight-decay", "inf", "--weight-decay must be finite and >= 0, got inf"),
    ("--grad-clip", "-1", "--grad-clip must be finite and >= 0 (0: off), got -1.0"),
    ("--grad-clip", "nan", "--grad-clip must be finite and >= 0 (0: off), got nan"),
    ("--lr", "1e300", "--lr must be in (0, 1], got 1e+300"),
    ("--lr", "1.5", "--lr must be in (0, 1], got 1.5"),
    ("--lr", "0", "--lr must be in (0, 1], got 0.0"),
])
def test_finetune_refuses_optimizer_flags_train_refuses(tmp_path, capsys, flag, value, message):
    rc, _, err = run(capsys, *_finetune(tmp_path, flag, value))
    assert_one_line_error(rc, err, message)
    assert not (tmp_path / "out").exists()


def test_the_ends_of_the_optimizer_ranges_are_allowed():
    cfg = FinetuneConfig(ckpt="c", train="t", valid="v", out="o", lr=1.0, weight_decay=0.0, grad_clip=0.0)
    cfg.validate()


# ------------------------------------------------------------------------- G6: an unknown --format
def test_finetune_says_unknown_format_not_task_type(tmp_path, capsys):
    rc, _, err = run(capsys, *_finetune(tmp_path, fmt="nope"))
    assert_one_line_error(rc, err, "unknown format 'nope'; choose one of: sst2")
    assert "--task-type" not in err


def test_predict_refuses_an_unknown_format_before_loading_the_model(tmp_path, sst2_input, capsys):
    rc, _, err = run(capsys, "predict", "--ckpt", tmp_path / "nockpt", "--input", sst2_input, "--out",
                     tmp_path / "p.jsonl", "--format", "nope")
    assert_one_line_error(rc, err, "unknown format 'nope'; choose one of: sst2")


# ---------------------------------------------------------------- H1: --out in a directory that does not exist
def test_predict_does_not_create_the_directory_of_out(finetuned, sst2_input, tmp_path, capsys):
    out = tmp_path / "missing" / "deeper" / "p.jsonl"
    rc, _, err = run(capsys, "predict", "--ckpt", finetuned, "--input", sst2_input, "--out", out, "--device", "cpu")
    assert_one_line_error(rc, err, f"--out {out}: directory {out.parent} does not exist")
    assert not (tmp_path / "missing").exists()


