"""gptkit.data.outputs: checks on output paths made before any work, so that a mistake costs nothing and no
input is ever overwritten by an output."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gptkit.data.outputs import (check_distinct_outputs, check_output_file, check_writable_dir, positive_int)
from gptkit.data.shards import DataError
from gptkit.errors import GptkitError


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_a_new_file_in_a_writable_directory_passes_and_leaves_no_trace(tmp_path):
    check_output_file(tmp_path / "out.jsonl", "--out", [])
    check_output_file(None, "--report", [])  # an output that was not asked for
    assert list(tmp_path.iterdir()) == []  # the write probe is removed


def test_an_output_equal_to_an_input_is_refused(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "precious"}\n')
    with pytest.raises(DataError) as e:
        check_output_file(data, "--out", [data], DataError)
    assert "--out" in _one_line(e) and "is also an input" in str(e.value)
    assert data.read_text() == '{"text": "precious"}\n'


def test_an_input_reached_another_way_is_still_refused(tmp_path):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    f = d / "sub" / "a.txt"
    f.write_text("x")
    with pytest.raises(GptkitError, match="is also an input"):  # inside an input directory
        check_output_file(f, "--out", [d])
    link = tmp_path / "link.txt"
    link.symlink_to(f)
    with pytest.raises(GptkitError, match="is also an input"):  # the same file under another name
        check_output_file(link, "--out", [f])
    hard = tmp_path / "hard.txt"
    os.link(f, hard)
    with pytest.raises(GptkitError, match="is also an input"):
        check_output_file(hard, "--out", [d])
    check_output_file(tmp_path / "other.txt", "--out", [d, f])  # a different file is fine


def test_a_directory_is_not_a_file_output(tmp_path):
    with pytest.raises(DataError) as e:
        check_output_file(tmp_path, "--rejected", [], DataError)
    assert "--rejected" in _one_line(e) and "is a directory" in str(e.value)


def test_the_parent_must_exist_unless_the_writer_creates_it(tmp_path):
    target = tmp_path / "new" / "deeper" / "out.json"
    with pytest.raises(GptkitError) as e:
        check_output_file(target, "--out", [])
    assert "does not exist" in _one_line(e)
    check_output_file(target, "--out", [], create_parent=True)
    assert list(tmp_path.iterdir()) == []  # nothing created by the check


def test_a_parent_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(GptkitError) as e:
        check_output_file(tmp_path / "afile" / "out.json", "--out", [], create_parent=True)
    assert "is not a directory" in _one_line(e)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write in a read-only directory")
def test_a_read_only_directory_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(GptkitError) as e:
            check_writable_dir(ro, "--out x")
        assert "cannot write in" in _one_line(e)
    finally:
        ro.chmod(0o755)


def test_two_flags_naming_one_file_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as e:
        check_distinct_outputs({"--out": "kept.jsonl", "--report": None, "--rejected": tmp_path / "kept.jsonl"},
                               DataError)
    assert _one_line(e) == "--rejected and --out name the same file " + str(tmp_path / "kept.jsonl")
    check_distinct_outputs({"--out": "a.jsonl", "--report": "a.report.json", "--removed": None})


@pytest.mark.parametrize("value", [0, -3, True, 2.0, "4"])
def test_positive_int_refuses_what_is_not_a_positive_whole_number(value):
    with pytest.raises(GptkitError) as e:
        positive_int(value, "--batch-size")
    assert _one_line(e) == f"--batch-size must be a positive whole number, got {value}"


def test_positive_int_accepts_whole_numbers_and_none_when_allowed():
    positive_int(1, "--n")
    positive_int(None, "--limit")
    with pytest.raises(GptkitError):
        positive_int(None, "--batch-size", allow_none=False)


def test_the_error_class_is_the_callers():
    class Mine(GptkitError):
        pass

    with pytest.raises(Mine):
        positive_int(0, "--n", Mine)
    with pytest.raises(Mine):
        check_output_file(Path("/"), "--out", [], Mine)


def test_a_directory_that_refuses_the_write_probe_is_refused(tmp_path, monkeypatch):
    import gptkit.data.outputs as outputs

    def refuse(path, mode="r", *a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(outputs, "open", refuse, raising=False)  # as a read-only mount would, even for root
    with pytest.raises(DataError) as e:
        check_output_file(tmp_path / "out.jsonl", "--out", [], DataError)
    assert _one_line(e) == f"--out {tmp_path / 'out.jsonl'}: cannot write in {tmp_path} (Permission denied)"
