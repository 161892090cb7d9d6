"""Checks on output paths, made before a command does its work, so that a mistake costs nothing.

A command that reads inputs and writes files calls `check_output_file` for each file it will write: the target
must not be a directory, its parent must be a writable directory (or missing, when the writer creates it, with a
writable directory as its nearest existing ancestor), and it must not be one of the inputs (writing the output
would replace the input it is read from). Imports nothing heavy.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from ..errors import GptkitError


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _input_files(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """The files named by `inputs`, directories expanded (recursively)."""
    files = []
    for p in inputs:
        p = Path(p)
        if p.is_dir():
            files.extend(f for f in p.rglob("*") if f.is_file())
        elif p.exists():
            files.append(p)
    return files


def check_writable_dir(d: Path, what: str, error: type[GptkitError] = GptkitError, create: bool = False) -> None:
    """`d` is a directory a file can be created in (tried, not guessed: a read-only mount or permissions);
    with `create`, `d` may also be missing below a writable directory."""
    probe = d
    if create:
        while not probe.exists() and probe != probe.parent:
            if probe.is_symlink():
                break
            probe = probe.parent
    if not probe.exists():
        raise error(f"{what}: directory {d} does not exist")
    if not probe.is_dir():
        raise error(f"{what}: {probe} is not a directory")
    tmp = probe / f".gptkit-write-test.{secrets.token_hex(4)}"
    try:
        open(tmp, "xb").close()
    except OSError as e:
        raise error(f"{what}: cannot write in {probe} ({e.strerror or e})") from None
    tmp.unlink(missing_ok=True)


def check_output_file(path: str | os.PathLike | None, flag: str, inputs: Iterable[str | os.PathLike] = (),
                      error: type[GptkitError] = GptkitError, create_parent: bool = False) -> None:
    """Refuse `path` as a file output (one-line `error`) when it is a directory, its parent is not a writable
    directory, or it is the same file as one of `inputs` (files, or directories searched recursively)."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise error(f"{flag} {p} is a directory; give a file name")
    check_writable_dir(p.parent if str(p.parent) else Path("."), f"{flag} {p}", error, create=create_parent)
    if p.exists():
        for f in _input_files(inputs):
            if _same_file(p, f):
                raise error(f"{flag} {p} is also an input ({f}); writing it would destroy the input: "
                            "choose another file")


def check_distinct_outputs(outputs: dict[str, str | os.PathLike | None], error: type[GptkitError] = GptkitError
                           ) -> None:
    """Refuse two flags naming the same output file."""
    seen: dict[Path, str] = {}
    for flag, path in outputs.items():
        if path is None:
            continue
        r = Path(path).resolve()
        if r in seen:
            raise error(f"{flag} and {seen[r]} name the same file {path}")
        seen[r] = flag


def positive_int(value: int | None, flag: str, error: type[GptkitError] = GptkitError,
                 allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if value is None or isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise error(f"{flag} must be a positive whole number, got {value}")

