"""User mistakes in `gptkit finetune` and `gptkit predict` that used to print a traceback, a misleading line or
nothing at all (the sections below name the findings of a fuzzing report). Each now stops with one line,
`gptkit: error: ...`, before anything is written."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cli_helpers import assert_one_line_error, run, save_char_ckpt
from gptkit.finetune import tasks as T
from gptkit.options.finetune import FinetuneConfig

pytestmark = pytest.mark.usefixtures("one_thread")

SST2 = "1 hello world\n0 the quick fox\n1 the brown fox\n0 hello there\n1 we owe the world\n0 the low fox\n"
"""sst2 lines (`LABEL sentence`) in the characters of save_char_ckpt's vocabulary."""


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


# ------------------------------------------------------------------------ B6, G2, G4: a damaged task.json
def _edit(key, value):
    def edit(d):
        *path, last = key.split(".")
        for k in path:
            d = d[k]
        d[last] = value
    return edit


def _drop(key):
    return lambda d: d.pop(key)


def _swap_special_ids(d):
    ids = d["special_ids"]
    ids["start"], ids["extract"] = ids["extract"], ids["start"]


TASK_JSON_CASES = {
    "max_len_text": (_edit("max_len", "x"), ["max_len must be a whole number", 'got "x"']),
    "max_len_too_long": (_edit("max_len", 999), ["max_len 999 is longer than the model's context (16)"]),
    "max_len_too_short": (_edit("max_len", 2), ["max_len must be a whole number >= 3"]),
    "special_id_outside_vocab": (_edit("special_ids.start", 999999),
                                 ["special_ids.start 999999 is outside the model's vocabulary"]),
    "special_ids_swapped": (_swap_special_ids, ["special_ids.start is", "the tokenizer's <|start|> is"]),
    "special_ids_missing": (_drop("special_ids"), ["special_ids must be an object with start, delimiter, extract"]),
    "special_id_text": (_edit("special_ids.extract", "e"), ["special_ids.extract must be a token id"]),
    "columns_null": (_edit("columns", None), ["columns must be an object", "got null"]),
    "columns_text_number": (_edit("columns.text", 5), ["columns.text must be a list"]),
    "columns_unknown": (_edit("columns.extra", 1), ["unknown field columns.extra"]),
    "labels_empty": (_edit("labels", []), ["labels must be two or more different class names", "got []"]),
    "labels_text": (_edit("labels", "01"), ["labels must be a list of class names", 'got "01"']),
    "labels_repeated": (_edit("labels", ["1", "1"]), ["labels must be two or more different class names"]),
    "positive_label": (_edit("positive_label", "7"), ["positive_label must be null or one of the labels"]),
    "regression_text": (_edit("regression", "no"), ["regression must be true or false", 'got "no"']),
    "task_unknown": (_edit("task", "summarize"), ["task must be one of classification", 'got "summarize"']),
    "format_unknown": (_edit("format", "xml"), ["format must be one of sst2", 'got "xml"']),
    "dtype_unknown": (_edit("dtype", "int8"), ['dtype must be float32 or bfloat16, got "int8"']),
    "head_dropout": (_edit("head_dropout", 2), ["head_dropout must be a number in [0, 1), got 2"]),
    "unknown_field": (_edit("colums", {}), ["unknown field 'colums'"]),
    "a_list": (lambda d: None, ["expected a JSON object, got a list"]),
}


@pytest.mark.parametrize("case", list(TASK_JSON_CASES))
def test_predict_names_the_bad_field_of_task_json(finetuned, sst2_input, tmp_path, capsys, recwarn, case):
    edit, fragments = TASK_JSON_CASES[case]
    model = tmp_path / "model"
    shutil.copytree(finetuned, model)
    spec = json.loads((model / "task.json").read_text())
    edit(spec)
    (model / "task.json").write_text(json.dumps([] if case == "a_list" else spec))
    out = tmp_path / "p.jsonl"
    rc, _, err = run(capsys, "predict", "--ckpt", model, "--input", sst2_input, "--out", out, "--device", "cpu")
    assert_one_line_error(rc, err, f"{model / 'task.json'}", *fragments)
    assert not [str(w.message) for w in recwarn if issubclass(w.category, UserWarning)]  # G4: torch's, before it
    assert not out.exists()


@pytest.mark.parametrize("data, fragment", [(b'{"task": "\xff"}', "can't decode byte 0xff"),
                                            (b'{"task": ', "Expecting value")])
def test_predict_names_a_task_json_that_is_not_json(finetuned, sst2_input, tmp_path, capsys, data, fragment):
    model = tmp_path / "model"
    shutil.copytree(finetuned, model)
    (model / "task.json").write_bytes(data)
    rc, _, err = run(capsys, "predict", "--ckpt", model, "--input", sst2_input, "--out", tmp_path / "p.jsonl")
    assert_one_line_error(rc, err, f"{model / 'task.json'} is not a valid task spec", fragment)


def test_predict_still_reads_an_intact_task_json(finetuned, sst2_input, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        rc, _, err = run(capsys, "predict", "--ckpt", finetuned, "--input", sst2_input, "--out", out,
                         "--device", "cpu")
    assert rc == 0, err
    assert len(out.read_text().splitlines()) == 6


# ------------------------------------------------------------------------------ G3: a head of the wrong shape
@pytest.mark.parametrize("tensors, fragments", [
    ({"linear.weight": (5, 8), "linear.bias": (5,)},
     ["linear.weight has shape [5, 8], the classification head in task.json needs [2, 8]", "2 outputs"]),
    ({"linear.weight": (2, 8), "linear.bias": (3,)}, ["linear.bias has shape [3], ", "needs [2]"]),
    ({"linear.weight": (2, 8)}, ["has no tensor linear.bias"]),
    ({"linear.weight": (2, 8), "linear.bias": (2,), "extra": (1,)}, ["has tensors", "does not: extra"]),
])
def test_predict_names_the_head_tensor_that_does_not_fit(finetuned, sst2_input, tmp_path, capsys, tensors,
                                                         fragments):
    model = tmp_path / "model"
    shutil.copytree(finetuned, model)
    save_file({k: torch.zeros(shape) for k, shape in tensors.items()}, str(model / "head.safetensors"))
    out = tmp_path / "p.jsonl"
    rc, _, err = run(capsys, "predict", "--ckpt", model, "--input", sst2_input, "--out", out, "--device", "cpu")
    assert_one_line_error(rc, err, str(model / "head.safetensors"), *fragments)
    assert "Error(s) in loading state_dict" not in err
    assert not out.exists()


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


# ------------------------------------------------------------------------ --max-len shorter than the task
@pytest.mark.parametrize("max_len, task, fmt", [("2", "classification", "sst2"), ("4", "entailment", "jsonl")])
def test_finetune_refuses_a_max_len_with_no_room_for_the_texts(tmp_path, capsys, max_len, task, fmt):
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"premise": "p", "hypothesis": "h", "label": "x"}) + "\n")
    argv = _finetune(tmp_path, "--max-len", max_len, "--task-type", task, fmt=fmt,
                     train=None if fmt == "sst2" else train)
    rc, _, err = run(capsys, *argv)
    assert_one_line_error(rc, err, f"--max-len {max_len} leaves no room", f"{task} task")


# ------------------------------------------------------------------------- a diverged fine-tune
def test_a_finetune_that_diverges_stops_and_writes_nothing(tmp_path, capsys):
    """--lm-coef 1e300 (in range: λ has no upper bound) made the loss infinite: the head was written with NaN
    weights and exit 0. Now the first non-finite loss stops the run, as in `gptkit train`."""
    ckpt = save_char_ckpt(tmp_path / "ckpt")
    (tmp_path / "train.txt").write_text(SST2)
    out = tmp_path / "run"
    rc, _, err = run(capsys, "finetune", "--ckpt", ckpt, "--format", "sst2", "--train", tmp_path / "train.txt",
                     "--valid-from-train", "2", "--out", out, "--epochs", "1", "--quiet", "--device", "cpu",
                     "--threads", "1", "--lm-coef", "1e300")
    assert_one_line_error(rc, err, "fine-tuning diverged at step 1", "nothing was written")
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ------------------------------------------------------------------ outputs that would destroy an input
def test_finetune_overwrite_replaces_only_an_earlier_finetune_and_never_an_input(tmp_path, capsys):
    """--overwrite deleted whatever --out held: the pre-training run being fine-tuned (--out = --ckpt), the --train
    file inside it, a user's notes."""
    ckpt = save_char_ckpt(tmp_path / "ckpt")
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.txt").write_text(SST2)
    (data / "notes.txt").write_text("keep")
    base = ["finetune", "--format", "sst2", "--valid-from-train", "2", "--epochs", "1", "--quiet", "--device", "cpu",
            "--overwrite"]
    for out, fragment in ((ckpt, f"is or holds --ckpt {ckpt}"), (data, "is or holds --train")):
        before = sorted(p.name for p in out.iterdir())
        rc, _, err = run(capsys, *base, "--ckpt", ckpt, "--train", data / "train.txt", "--out", out)
        assert_one_line_error(rc, err, fragment)
        assert sorted(p.name for p in out.iterdir()) == before
    (tmp_path / "train.txt").write_text(SST2)
    rc, _, err = run(capsys, *base, "--ckpt", ckpt, "--train", tmp_path / "train.txt", "--out", data)
    assert_one_line_error(rc, err, "not a `gptkit finetune` output", "--overwrite replaces only")
    assert (data / "notes.txt").read_text() == "keep"


def test_predict_refuses_an_out_that_is_a_file_of_the_model(finetuned, sst2_input, tmp_path, capsys):
    """`--out MODEL/model.safetensors` (or task.json) replaced the model with predictions, exit 0."""
    model = tmp_path / "model"
    shutil.copytree(finetuned, model)
    for name in ("task.json", "head.safetensors"):
        before = (model / name).read_bytes()
        rc, _, err = run(capsys, "predict", "--ckpt", model, "--input", sst2_input, "--out", model / name,
                         "--device", "cpu")
        assert_one_line_error(rc, err, "is also an input")
        assert (model / name).read_bytes() == before
