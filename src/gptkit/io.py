"""Atomic file and directory writes, shared by checkpoints, token shards and the data pipeline's outputs, and the
one strict JSON-lines reader of evaluation and fine-tuning data.

Every output is written under a hidden temporary name next to its destination (`.NAME.<random>.tmp`), flushed
to disk, and renamed into place with `os.replace`, which POSIX makes atomic: a reader, or a run that crashed
mid-write, sees the old file or the new one, never half of one. A write that fails removes its temporary file.

Temporary files are opened with `open(..., "xb")`, not `tempfile.mkstemp`, so the finished file gets the usual
mode (0666 less the umask) instead of mkstemp's 0600. This module imports no torch: the `gptkit data` commands
use it and stay light.

`jsonl_objects` is strict (evaluation and fine-tuning data: a bad line is the user's mistake, reported with its
line number); the data pipeline's lenient reader, which counts bad lines and goes on, is gptkit.data.sources.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gzip
import json
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO


def temp_sibling(path: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """A fresh hidden name in `path`'s directory for writing `path`: `.NAME.<8 hex>` + `suffix`."""
    path = Path(path)
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _usual_mode(path: Path) -> None:
    """Give a file that a writer created private (safetensors' save_file makes 0600 files) the mode any other
    output gets: 0666 less the umask, so that weights are as readable as the config beside them."""
    if path.stat().st_mode & 0o777 == 0o600:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary sibling path for a writer that wants a file name (safetensors, matplotlib); when the
    block ends normally the file is synced and renamed to `path`, when it raises the file is deleted.
    `suffix` ends the temporary name (".tmp.png" lets matplotlib infer the format)."""
    path = Path(path)
    tmp = temp_sibling(path, suffix)
    try:
        yield tmp
        _usual_mode(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class AtomicFile:
    """A binary file written under a temporary sibling and renamed over `path` by `commit()`, or deleted by
    `abort()`. As a context manager it commits when the block ends normally and aborts when it raises.

    With `compress=True` (default: when `path` ends in `.gz`), `file` is a gzip stream over it, with mtime 0
    and the final file name in its header, so the same data gives the same bytes.
    """

    def __init__(self, path: str | os.PathLike, compress: bool | None = None):
        self.path = Path(path)
        self.tmp = temp_sibling(self.path)
        self.raw: BinaryIO = open(self.tmp, "xb")
        if compress is None:
            compress = self.path.name.endswith(".gz")
        self.file: BinaryIO = (gzip.GzipFile(filename=self.path.name, fileobj=self.raw, mode="wb", mtime=0)
                               if compress else self.raw)

    def write(self, data: bytes) -> int:
        return self.file.write(data)

    def commit(self) -> None:
        """Finish the file and move it to `path`; if that fails (a full disk, a vanished directory), the temporary
        file is deleted and `path` is left as it was."""
        try:
            if self.file is not self.raw:
                self.file.close()
            self.raw.flush()
            os.fsync(self.raw.fileno())
            self.raw.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Close and delete the temporary file; `path` is left as it was."""
        self.raw.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (module docstring)."""
    with AtomicFile(path, compress=False) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically (module docstring)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON (non-ASCII characters as they are) and a newline, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------------------------- directories
def fsync_dir(path: str | os.PathLike) -> None:
    """Sync a directory's entries (renames into it) to disk, where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def new_tmp_dir(final: Path) -> Path:
    """A fresh hidden directory next to `final` (`.NAME.tmp-<8 hex>`) to write its contents into. Made with
    `mkdir`, not `tempfile.mkdtemp`, so that once published it has the usual mode (0777 less the umask), not
    mkdtemp's 0700."""
    final.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = final.with_name(f".{final.name}.tmp-{secrets.token_hex(4)}")
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


RENAME_EXCHANGE = 2
AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux's renameat2 with RENAME_EXCHANGE, since 3.15 and glibc
    2.28). False where the system or the file system cannot (another OS, an old glibc, a file system without it):
    the caller then takes the two-rename way."""
    if sys.platform != "linux":
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def publish_dir(tmp: Path, final: Path) -> None:
    """Move a fully written directory `tmp` to `final`, replacing what was there. Where Linux can swap two
    directories in one step (`exchange`) a reader, or a kill, sees the old directory or the new one, never
    neither; elsewhere the old one is moved aside first (two renames), and a kill between them leaves the old one
    in a hidden `.NAME.old-*` directory beside `final`."""
    for f in tmp.rglob("*"):
        if f.is_file():
            _usual_mode(f)
            _fsync_file(f)
    if final.exists() and not final.is_symlink() and exchange(tmp, final):  # (a link itself would be swapped)
        fsync_dir(final.parent)
        shutil.rmtree(tmp, ignore_errors=True)  # now the old directory
        return
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-"))
        os.replace(final, old / "d")
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ reading
def parse_json(text: str | bytes) -> Any:
    """json.loads, whose every failure on a malformed text is a ValueError (JSONDecodeError included) with a short
    message: Python's own raise RecursionError for nesting deeper than its stack, and for an integer of more than
    4,300 digits a ValueError advising sys.set_int_max_str_digits()."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except json.JSONDecodeError:
        raise
    except ValueError as e:
        if "integer string conversion" in str(e):
            raise ValueError("a JSON number of more than 4,300 digits") from None
        raise


def json_type(value: Any) -> str:
    """The JSON name of a value's type, with its article ("null", "a string", "an object"), for messages about a
    hand-edited file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {str: "a string", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__)


def jsonl_objects(lines: Iterable[str], name: str | os.PathLike, error: type[Exception]
                  ) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON-lines text (an open file, or any lines).

    Every line must hold one JSON object; anything else raises `error("NAME:LINE: ...")`, one line naming the
    place, as does text that is not UTF-8 (when `lines` is a file opened with a UTF-8 encoding; a file is decoded
    in blocks, so the bad byte is known to be after the last line read, not on which line).
    """
    n = 0
    try:
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = parse_json(line)
            except ValueError as e:
                raise error(f"{name}:{n}: not valid JSON ({getattr(e, 'msg', e)})") from None
            if not isinstance(row, dict):
                raise error(f"{name}:{n}: expected a JSON object per line, got {type(row).__name__}")
            yield n, row
    except UnicodeDecodeError:
        raise error(f"{name}: not UTF-8 text" + (f" (after line {n})" if n else "")) from None
