"""User mistakes that used to lose work or print a traceback: each now stops with one line, `gptkit: error: ...`,
before anything is written or deleted."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from pathlib import Path

import pytest

from cli_helpers import assert_one_line_error, run, save_char_ckpt


@pytest.fixture
def char_ckpt(tmp_path) -> Path:
    return save_char_ckpt(tmp_path / "ckpt")


# ------------------------------------------------------------------------------------------- export-hf
def test_export_hf_refuses_to_overwrite_its_own_checkpoint(char_ckpt, tmp_path, capsys):
    before = sorted(p.name for p in char_ckpt.iterdir())
    rc, _, err = run(capsys, "export-hf", "--ckpt", char_ckpt, "--out", char_ckpt)
    assert_one_line_error(rc, err, "checkpoint being exported")
    assert sorted(p.name for p in char_ckpt.iterdir()) == before
    rc, _, err = run(capsys, "export-hf", "--ckpt", char_ckpt, "--out", tmp_path)  # the folder holding it
    assert_one_line_error(rc, err, "checkpoint being exported")
    assert char_ckpt.is_dir()


def test_export_hf_refuses_an_unrelated_directory_or_a_file(char_ckpt, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text("{}")
    rc, _, err = run(capsys, "export-hf", "--ckpt", char_ckpt, "--out", data)
    assert_one_line_error(rc, err, "not a `gptkit export-hf` output")
    assert (data / "manifest.json").read_text() == "{}"
    f = tmp_path / "some.txt"
    f.write_text("keep me")
    rc, _, err = run(capsys, "export-hf", "--ckpt", char_ckpt, "--out", f)
    assert_one_line_error(rc, err, "is not a directory")
    assert f.read_text() == "keep me"


def test_export_hf_replaces_an_earlier_export_and_the_export_samples(char_ckpt, tmp_path, capsys):
    out = tmp_path / "hf"
    assert run(capsys, "export-hf", "--ckpt", char_ckpt, "--out", out)[0] == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt2"
    assert run(capsys, "export-hf", "--ckpt", char_ckpt, "--out", out)[0] == 0  # an earlier export: replaced
    rc, text, err = run(capsys, "sample", "--ckpt", out, "--prompt", "hello", "--max-new-tokens", "3",
                        "--seed", "0")
    assert rc == 0, err
    assert text.startswith("hello")


# ------------------------------------------------------------------------------------------ quickstart
@pytest.mark.parametrize("flags, fragment", [
    (["--max-iters", "0"], "--max-iters"), (["--tokens", "-1"], "--tokens"), (["--device", "tpu"], "tpu"),
    (["--resume"], "no quickstart run to resume"), (["--minutes", "nan"], "--minutes")])
def test_quickstart_checks_flags_before_copying_the_corpus(tmp_path, capsys, flags, fragment):
    out = tmp_path / "qs"
    rc, _, err = run(capsys, "quickstart", "--out", out, "--quiet", *flags)
    assert_one_line_error(rc, err, fragment)
    assert not out.exists()  # no corpus copied, nothing prepared


def test_quickstart_checks_the_prompt_before_training(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("abc abc abc\n" * 50)
    out = tmp_path / "qs"
    rc, _, err = run(capsys, "quickstart", "--input", corpus, "--out", out, "--max-iters", "1", "--quiet",
                     "--device", "cpu", "--prompt", "XYZ")
    last = err.splitlines()[-1] + "\n"  # after the "corpus: ..." progress line
    assert_one_line_error(rc, last, "--prompt", "'X'")
    assert "Traceback" not in err
    assert not (out / "run").exists()  # stopped before training
