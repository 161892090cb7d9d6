"""gptkit.io: atomic writes (the old file or the new one, never half of one; no temporary file left behind),
the usual file modes, directory publishing, and the strict JSON-lines reader."""

from __future__ import annotations

import gzip
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from gptkit import io as gio
from gptkit.errors import GptkitError


def _umask() -> int:
    u = os.umask(0)
    os.umask(u)
    return u


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


class Boom(Exception):
    pass


# ------------------------------------------------------------------------------------------------ files
def test_atomic_writes_replace_the_file_and_leave_nothing_else(tmp_path):
    p = tmp_path / "out.json"
    p.write_text("old")
    gio.atomic_write_json(p, {"a": [1, 2], "é": "ü"})
    assert json.loads(p.read_text(encoding="utf-8")) == {"a": [1, 2], "é": "ü"}
    assert p.read_text(encoding="utf-8").endswith("\n") and "ü" in p.read_text(encoding="utf-8")  # not \u escapes
    gio.atomic_write_text(tmp_path / "t.txt", "héllo")
    assert (tmp_path / "t.txt").read_bytes() == "héllo".encode()
    gio.atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert _names(tmp_path) == ["b.bin", "out.json", "t.txt"]


def test_a_write_that_fails_midway_keeps_the_old_file(tmp_path):
    p = tmp_path / "data.jsonl"
    p.write_bytes(b"the old content\n")
    with pytest.raises(Boom):
        with gio.AtomicFile(p) as f:
            f.write(b"half of the new")
            assert p.read_bytes() == b"the old content\n"  # nothing is visible before the commit
            raise Boom
    assert p.read_bytes() == b"the old content\n"
    assert _names(tmp_path) == ["data.jsonl"]


def test_a_failing_rename_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
    p = tmp_path / "report.json"
    p.write_text("old")

    def no_rename(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gio.os, "replace", no_rename)
    with pytest.raises(OSError):
        gio.atomic_write_text(p, "new")
    assert p.read_text() == "old"
    assert _names(tmp_path) == ["report.json"]


def test_atomic_path_for_writers_that_want_a_name(tmp_path):
    p = tmp_path / "plot.png"
    with gio.atomic_path(p, suffix=".tmp.png") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".plot.png.") and tmp.name.endswith(".tmp.png")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)  # as safetensors' save_file does
        os.write(fd, b"png")
        os.close(fd)
    assert p.read_bytes() == b"png"
    assert _mode(p) == 0o666 & ~_umask()  # a private temporary file gets the usual mode
    with pytest.raises(Boom):
        with gio.atomic_path(p) as tmp:
            tmp.write_bytes(b"broken")
            raise Boom
    assert p.read_bytes() == b"png"
    assert _names(tmp_path) == ["plot.png"]


def test_new_files_get_the_usual_mode(tmp_path):
    gio.atomic_write_text(tmp_path / "a.txt", "x")
    assert _mode(tmp_path / "a.txt") == 0o666 & ~_umask()  # not mkstemp's 0600


def test_gzip_output_is_reproducible_and_readable(tmp_path):
    a, b = tmp_path / "a" / "kept.jsonl.gz", tmp_path / "b" / "kept.jsonl.gz"
    for p in (a, b):
        p.parent.mkdir()
        with gio.AtomicFile(p) as f:
            f.write(b'{"text": "x"}\n')
    assert gzip.decompress(a.read_bytes()) == b'{"text": "x"}\n'
    assert a.read_bytes() == b.read_bytes()  # mtime 0 and the same name: the same bytes
    with gio.AtomicFile(tmp_path / "plain.gz", compress=False) as f:
        f.write(b"raw")
    assert (tmp_path / "plain.gz").read_bytes() == b"raw"


def test_temp_sibling_is_hidden_and_fresh(tmp_path):
    names = {gio.temp_sibling(tmp_path / "x.bin").name for _ in range(20)}
    assert len(names) == 20 and all(n.startswith(".x.bin.") and n.endswith(".tmp") for n in names)


# ------------------------------------------------------------------------------------------ directories
def test_publish_dir_replaces_a_directory_whole(tmp_path):
    final = tmp_path / "ckpt"
    final.mkdir()
    (final / "old-only.txt").write_text("old")
    (final / "shared.txt").write_text("old")
    tmp = gio.new_tmp_dir(final)
    assert tmp.parent == tmp_path and tmp.name.startswith(".ckpt.tmp-")
    assert _mode(tmp) == 0o777 & ~_umask()  # not mkdtemp's 0700
    (tmp / "shared.txt").write_text("new")
    (tmp / "sub").mkdir()
    fd = os.open(tmp / "sub" / "w.bin", os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    gio.publish_dir(tmp, final)
    assert _names(final) == ["shared.txt", "sub"]  # the old directory's files are gone, not merged
    assert (final / "shared.txt").read_text() == "new"
    assert _mode(final / "sub" / "w.bin") == 0o666 & ~_umask()
    assert _names(tmp_path) == ["ckpt"]  # neither the temporary nor the moved-aside old directory is left


def test_publish_dir_into_a_new_place(tmp_path):
    final = tmp_path / "a" / "b" / "out"
    tmp = gio.new_tmp_dir(final)  # creates the parents
    (tmp / "f").write_text("1")
    gio.publish_dir(tmp, final)
    assert (final / "f").read_text() == "1" and _names(final.parent) == ["out"]


# ------------------------------------------------------------------------------------------------ JSONL
def test_jsonl_objects_numbers_lines_and_skips_blank_ones():
    lines = ['{"a": 1}\n', "\n", "   \n", '{"b": "x"}\n']
    assert list(gio.jsonl_objects(lines, "f.jsonl", GptkitError)) == [(1, {"a": 1}), (4, {"b": "x"})]


@pytest.mark.parametrize("bad, message", [
    ("{oops}\n", "f.jsonl:2: not valid JSON"),
    ("[1, 2]\n", "f.jsonl:2: expected a JSON object per line, got list"),
    ('"text"\n', "f.jsonl:2: expected a JSON object per line, got str"),
])
def test_jsonl_objects_names_the_bad_line(bad, message):
    class Mine(GptkitError):
        pass

    with pytest.raises(Mine) as e:
        list(gio.jsonl_objects(['{"ok": 1}\n', bad, '{"ok": 2}\n'], "f.jsonl", Mine))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_jsonl_objects_refuses_text_that_is_not_utf8(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"a": 1}\n{"a": "caf\xe9"}\n')
    with open(p, encoding="utf-8") as f, pytest.raises(GptkitError) as e:
        list(gio.jsonl_objects(f, p, GptkitError))
    assert str(e.value).startswith(f"{p}: not UTF-8 text") and "\n" not in str(e.value)


def test_publish_dir_swaps_in_one_step_where_linux_can(tmp_path, monkeypatch):
    """On Linux the old and the new directory change places in one renameat2 call: with os.replace failing (the
    two-rename way), replacing a directory still works there and leaves nothing beside it; elsewhere (exchange
    returns False) the two renames do it."""
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    tmp = gio.new_tmp_dir(final)
    (tmp / "new.txt").write_text("new")
    if sys.platform == "linux":
        (tmp_path / ".a").mkdir()
        (tmp_path / ".b").mkdir()
        (tmp_path / ".a" / "in-a").touch()
        if not gio.exchange(tmp_path / ".a", tmp_path / ".b"):
            pytest.skip("this file system cannot swap two directories (no RENAME_EXCHANGE)")
        assert _names(tmp_path / ".b") == ["in-a"] and _names(tmp_path / ".a") == []
        (tmp_path / ".b" / "in-a").unlink()
        (tmp_path / ".a").rmdir()
        (tmp_path / ".b").rmdir()

    def no_replace(*a):
        raise AssertionError("os.replace called: not one step")

    if sys.platform == "linux":
        with monkeypatch.context() as m:
            m.setattr(gio.os, "replace", no_replace)
            gio.publish_dir(tmp, final)
        assert _names(final) == ["new.txt"] and _names(tmp_path) == ["out"]
    tmp = gio.new_tmp_dir(final)
    (tmp / "third.txt").write_text("3")
    monkeypatch.setattr(gio, "exchange", lambda a, b: False)
    gio.publish_dir(tmp, final)
    assert _names(final) == ["third.txt"] and _names(tmp_path) == ["out"]
