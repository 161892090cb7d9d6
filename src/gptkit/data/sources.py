"""Documents from the user's inputs: text files, directories, JSONL, and `.gz` of these.

What is a document:
- a text file (`.txt`, `.md`, ... or any file without NUL bytes in its first 8 KB) is ONE document;
- a JSONL file (`.jsonl`, `.ndjson`) holds one document per line, the string in field `text_field`;
- a `.gz` of either is read through gzip and treated like the file inside it;
- a directory is walked recursively in sorted order (the same corpus always gives the same documents in the
  same order). Hidden files and folders (`.name`), binary files and previous `gptkit prepare` outputs inside it
  are skipped and listed in `Corpus.skipped_files`.
Documents that are empty or only whitespace are skipped and counted (`empty_documents`).

Text policy:
- Bytes are decoded as UTF-8 (a leading byte-order mark is dropped). **Undecodable bytes do not stop the run**:
  each invalid sequence becomes U+FFFD (`errors="replace"`), and the documents and files where that happened
  are counted (`documents_with_replacements`), reported in the manifest and in a warning. Real corpora carry the
  odd stray Latin-1 byte; failing a multi-gigabyte run for one of them helps no one, hiding it would be worse.
- Line endings of text files are normalised as Python's `open()` does (`\\r\\n` and `\\r` become `\\n`), so a
  text file gives the same characters as `open(path).read()` (what nanoGPT tokenizes). JSON strings are kept
  as they are.
- A JSONL line that is not JSON, not an object, or has no string `text_field` is skipped and counted
  (`skipped_lines`, with the first few line numbers and reasons in `skipped_examples`); blank lines are ignored.
- A file name that is not valid UTF-8 is read all the same; where its path is written (a record's "source", a
  report, the manifest) its undecodable bytes are spelled `\\xff` (`display_path`), so the output stays UTF-8
  and still names the file.
User mistakes (a missing path, a file that is not valid gzip) raise `DataError` with one line naming the path.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..io import parse_json
from .shards import DataError

TEXT_SUFFIXES = frozenset({".txt", ".text", ".md", ".markdown", ".rst", ".tex", ".org", ".adoc", ".csv", ".tsv",
                           ".html", ".htm", ".xml", ".raw", ".tokens"})
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
BINARY_SUFFIXES = frozenset({".bin", ".npy", ".npz", ".pt", ".pth", ".safetensors", ".ckpt", ".pkl", ".zip",
                             ".tar", ".bz2", ".xz", ".zst", ".7z", ".png", ".jpg", ".jpeg", ".gif", ".pdf",
                             ".so", ".pyc", ".parquet", ".arrow", ".db", ".sqlite"})
SNIFF_BYTES = 8192
MAX_SKIPPED_EXAMPLES = 10
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
"""A JSON line that spells a surrogate code point ("\\ud800"): the only way lone surrogates get into a document."""


def _without_surrogates(obj: Any) -> tuple[Any, bool]:
    """Parsed JSON with every lone surrogate in its strings (keys too) replaced by U+FFFD, and whether there was one."""
    if isinstance(obj, str):
        new = _SURROGATE.sub("\ufffd", obj)
        return new, new != obj
    if isinstance(obj, list):
        items = [_without_surrogates(x) for x in obj]
        return [x for x, _ in items], any(f for _, f in items)
    if isinstance(obj, dict):
        pairs = [(_without_surrogates(k), _without_surrogates(v)) for k, v in obj.items()]
        return {k: v for (k, _), (v, _) in pairs}, any(fk or fv for (_, fk), (_, fv) in pairs)
    return obj, False


def display_path(path: str | os.PathLike) -> str:
    """`path` as text any UTF-8 output can hold: the bytes of a file name that are not UTF-8 (which Python keeps as
    lone surrogates, `os.fsdecode`) are written as backslash escapes, `bad\\xffname.txt`, as Python prints
    bytes. A valid name comes back unchanged."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _inner_suffix(path: Path) -> tuple[str, bool]:
    """(suffix of the file inside, is gzip) — `a.jsonl.gz` -> (".jsonl", True)."""
    name = path.name.lower()
    if name.endswith(".gz"):
        return Path(name[:-3]).suffix, True
    return Path(name).suffix, False


def _sniff_is_text(path: Path, gz: bool) -> bool:
    try:
        opener = gzip.open if gz else open
        with opener(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except (OSError, EOFError, zlib.error):
        return False
    return b"\0" not in head


def input_kind(path: str | Path) -> str | None:
    """How a file is read: "text", "jsonl", or None for a file that is not text (skipped inside directories).

    Known suffixes decide (`.md`, `.txt`, ... are text; `.jsonl` is JSONL; `.bin`, `.png`, ... are not text),
    also under `.gz`; any other file is text when its first 8 KB hold no NUL byte.
    """
    path = Path(path)
    suffix, gz = _inner_suffix(path)
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in TEXT_SUFFIXES:
        return "text"
    if suffix in BINARY_SUFFIXES:
        return None
    return "text" if _sniff_is_text(path, gz) else None


def is_text_file(path: str | Path) -> bool:
    """True for a file read as one text document: `notes.md`, `book.txt`, `README`, `book.txt.gz`, ..."""
    return input_kind(path) == "text"


def is_prepared_dir(path: str | Path) -> bool:
    """True for a directory written by `gptkit prepare` (it holds a gptkit manifest.json)."""
    m = Path(path) / "manifest.json"
    if not m.is_file():
        return False
    try:
        return parse_json(m.read_text(encoding="utf-8")).get("format") == "gptkit-prepared"
    except (OSError, ValueError, AttributeError):
        return False


@dataclass
class SourceFile:
    path: Path
    kind: str  # "text" | "jsonl"
    gzip: bool
    size: int


@dataclass
class SourceStats:
    """What one input file contributed; one entry of the manifest's `sources`."""

    path: str
    kind: str
    gzip: bool
    bytes: int = 0
    sha256: str = ""
    documents: int = 0
    empty_documents: int = 0
    documents_with_replacements: int = 0
    skipped_lines: int = 0
    skipped_examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def discover(inputs: list[str | os.PathLike]) -> tuple[list[SourceFile], list[str]]:
    """Expand inputs into the files to read, in a deterministic order, and the files skipped inside directories.

    A file named explicitly is always read (as JSONL when its suffix says so, else as text); a missing input is
    a DataError naming it. The same file reached twice (named and inside a named directory) is read once.
    """
    if not inputs:
        raise DataError("no inputs given")
    files: list[SourceFile] = []
    skipped: list[str] = []
    seen: set[Path] = set()

    def add(p: Path, kind: str) -> None:
        real = p.resolve()
        if real in seen:
            return
        seen.add(real)
        files.append(SourceFile(p, kind, _inner_suffix(p)[1], p.stat().st_size))

    for raw in inputs:
        p = Path(raw).expanduser()
        if not p.exists():
            raise DataError(f"input not found: {raw}")
        if p.is_dir():
            if is_prepared_dir(p):
                raise DataError(f"input {raw} is a `gptkit prepare` output (token shards), not text")
            for root, dirs, names in os.walk(p):
                rootp = Path(root)
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not is_prepared_dir(rootp / d))
                for name in sorted(names):
                    f = rootp / name
                    if name.startswith(".") or not f.is_file():
                        continue
                    kind = input_kind(f)
                    if kind is None:
                        skipped.append(display_path(f))
                    else:
                        add(f, kind)
        elif p.is_file():
            add(p, "jsonl" if _inner_suffix(p)[0] in JSONL_SUFFIXES else "text")
        else:
            raise DataError(f"input is neither a file nor a directory: {raw}")
    return files, skipped


class _HashingReader(io.RawIOBase):
    """A raw binary reader that hashes and counts every byte read from the file on disk."""

    def __init__(self, f):
        self.f, self.sha, self.n = f, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.f.readinto(b)
        if n:
            self.sha.update(memoryview(b)[:n])
            self.n += n
        return n or 0

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _decode(raw: bytes) -> tuple[str, bool]:
    """UTF-8 text of `raw` (BOM dropped) and whether undecodable bytes were replaced by U+FFFD."""
    try:
        return raw.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8-sig", errors="replace"), True


class Corpus:
    """The documents of a list of inputs. `documents()` can be iterated several times (one pass per call, e.g.
    one to learn a char vocabulary and one to tokenize); each pass refreshes `stats` and `bytes_read`.

    A file that cannot be read to the end (a corrupt or truncated `.gz`, an I/O error) raises `DataError` with
    `unreadable="raise"` (right for `gptkit prepare`: a half-read corpus must not become a dataset). With
    `unreadable="count"` (the filters of `gptkit data`) the documents read before the damage are kept, and the
    file is listed, with the message, in `unreadable_files`.
    """

    def __init__(self, inputs: list[str | os.PathLike], text_field: str = "text",
                 unreadable: Literal["raise", "count"] = "raise"):
        if unreadable not in ("raise", "count"):
            raise ValueError(f"unreadable must be 'raise' or 'count', got {unreadable!r}")
        self.inputs = [str(i) for i in inputs]
        self.text_field = text_field
        self.unreadable = unreadable
        self.files, self.skipped_files = discover(inputs)
        self.stats: list[SourceStats] = []
        self.unreadable_files: list[str] = []
        self.not_json_lines = 0  # skipped JSONL lines that are not JSON ...
        self.missing_text_lines = 0  # ... and those that are JSON without a string text field
        self._done_bytes = 0
        self._reader: _HashingReader | None = None

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def bytes_read(self) -> int:
        """Bytes read from disk so far in the current pass (compressed bytes for .gz) — for progress bars."""
        return self._done_bytes + (self._reader.n if self._reader is not None else 0)

    def documents(self) -> Iterator[str]:
        """Every non-empty document, in order."""
        for text, _, _, _ in self.entries():
            yield text

    def entries(self) -> Iterator[tuple[str, dict | None, str, int | None]]:
        """Every non-empty document, in order, as (text, JSON object, path, line): the object (text field
        included) and the 1-based line number for a JSONL line, None and None for a whole text file."""
        self.stats, self._done_bytes = [], 0
        self.unreadable_files, self.not_json_lines, self.missing_text_lines = [], 0, 0
        for src in self.files:
            st = SourceStats(display_path(src.path.absolute()), src.kind, src.gzip)
            self.stats.append(st)
            path = display_path(src.path)
            reader, cut_short = None, False
            try:
                with open(src.path, "rb") as f:
                    self._reader = reader = _HashingReader(f)
                    stream = io.BufferedReader(reader, 1 << 20)
                    if src.gzip:
                        stream = gzip.GzipFile(fileobj=stream, mode="rb")
                    if src.kind == "jsonl":
                        yield from self._jsonl(stream, st, path)
                    else:
                        yield from self._text(stream, st, path)
                    reader.drain()
            except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
                why = f"{'gzip: ' if src.gzip else ''}{e}"
                if self.unreadable == "raise":
                    raise DataError(f"{src.path}: cannot read ({why})") from None
                self.unreadable_files.append(f"{path}: {why} (after {st.documents} document(s))")
                cut_short = True
            finally:
                self._reader = None
            if reader is not None:
                st.bytes, st.sha256 = reader.n, reader.sha.hexdigest()
            # for progress, a file cut short counts as done to its end
            self._done_bytes += src.size if cut_short or reader is None else reader.n

    def _keep(self, text: str, replaced: bool, st: SourceStats) -> bool:
        if not text.strip():
            st.empty_documents += 1
            return False
        st.documents += 1
        st.documents_with_replacements += replaced
        return True

    def _text(self, stream, st: SourceStats, path: str) -> Iterator[tuple[str, None, str, None]]:
        text, replaced = _decode(stream.read())
        if "\r" in text:  # as open(path).read() in text mode: universal newlines
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if self._keep(text, replaced, st):
            yield text, None, path, None

    def _skip(self, st: SourceStats, lineno: int, why: str) -> None:
        st.skipped_lines += 1
        if len(st.skipped_examples) < MAX_SKIPPED_EXAMPLES:
            st.skipped_examples.append(f"line {lineno}: {why}")

    def _jsonl(self, stream, st: SourceStats, path: str) -> Iterator[tuple[str, dict, str, int]]:
        for lineno, raw in enumerate(stream, 1):
            if not raw.strip():
                continue
            line, replaced = _decode(raw)
            try:
                obj = parse_json(line)
            except ValueError:
                self.not_json_lines += 1
                self._skip(st, lineno, "not valid JSON")
                continue
            if _ESCAPED_SURROGATE.search(line):  # JSON can spell lone surrogates ("\ud800") in any string, which
                # are not text: no tokenizer takes them and no UTF-8 output can hold them
                obj, fixed = _without_surrogates(obj)
                replaced = replaced or fixed
            text = obj.get(self.text_field) if isinstance(obj, dict) else None
            if not isinstance(text, str):
                self.missing_text_lines += 1
                self._skip(st, lineno, f"no string field {self.text_field!r}")
                continue
            if self._keep(text, replaced, st):
                yield text, obj, path, lineno

    def summary(self) -> dict:
        """Totals over the last pass."""
        return {
            "files": len(self.stats),
            "documents": sum(s.documents for s in self.stats),
            "empty_documents": sum(s.empty_documents for s in self.stats),
            "documents_with_replacements": sum(s.documents_with_replacements for s in self.stats),
            "files_with_replacements": sum(1 for s in self.stats if s.documents_with_replacements),
            "skipped_lines": sum(s.skipped_lines for s in self.stats),
            "skipped_files": len(self.skipped_files),
        }

    def warnings(self) -> list[str]:
        """One line per thing the user should know about the last pass (replacements, skipped lines/files)."""
        s, out = self.summary(), []
        if s["documents_with_replacements"]:
            out.append(f"{s['documents_with_replacements']} document(s) in {s['files_with_replacements']} file(s) "
                       "had bytes that are not valid UTF-8; they were replaced by U+FFFD (see manifest.json)")
        if s["skipped_lines"]:
            where = [f"{st.path} {st.skipped_examples[0]}" for st in self.stats if st.skipped_examples]
            out.append(f"skipped {s['skipped_lines']} JSONL line(s) that are not JSON objects with a string field "
                       f"{self.text_field!r}, e.g. {where[0]}")
        if s["skipped_files"]:
            out.append(f"skipped {s['skipped_files']} non-text file(s) inside input directories, e.g. "
                       f"{self.skipped_files[0]}")
        if self.unreadable_files:
            out.append(f"{len(self.unreadable_files)} file(s) could not be read to the end and were cut short, "
                       f"e.g. {self.unreadable_files[0]}")
        return out
