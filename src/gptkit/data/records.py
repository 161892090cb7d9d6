"""Documents with their fields, for the GPT-3 data pipeline (`gptkit data quality`, `gptkit data dedup`).

`gptkit.data.sources.Corpus` yields the text of every document and counts bad input, but it stops at the first
unreadable file (right for `gptkit prepare`: a half-read corpus must not become a dataset) and drops a JSONL
line's other fields. Filters need both the other way round: a crawl of a million files with one truncated
`.gz` should still be filtered, and a kept document must come out with the fields it came in with (`id`,
`url`, ...). `RecordReader` is a `Corpus` that does exactly that and nothing else: it reuses the corpus's input
discovery (files, directories, JSONL, `.gz`), its text policy (UTF-8, U+FFFD for undecodable bytes) and its
counters, and adds

- unreadable files (a corrupt or truncated `.gz`, an I/O error) counted in `unreadable_files`, with the
  message, instead of an exception; the documents read before the damage are kept and counted;
- JSONL lines that are not JSON counted apart from lines that are JSON but have no string text field.

`bad_input()` gives every count by kind, for the JSON reports; nothing is dropped without being counted.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from .sources import _SURROGATE, MAX_SKIPPED_EXAMPLES, Corpus, SourceStats, _decode, _HashingReader


@dataclass
class Record:
    """One document: its text and, for a JSONL line, the whole JSON object it came from."""

    text: str
    fields: dict | None  # the JSONL object (text included), None for a text file
    path: str  # the file it was read from
    line: int | None  # 1-based line number in a JSONL file, None for a text file

    def to_json(self, text_field: str = "text") -> str:
        """The record as one JSONL line: the input object with every field as it came (only the text field of an
        undecodable line holds U+FFFD instead of the bad bytes), or `{text_field: text, "source": path}` for a
        document that was a whole text file."""
        obj = self.fields if self.fields is not None else {text_field: self.text, "source": self.path}
        return json.dumps(obj, ensure_ascii=False)


class RecordReader(Corpus):
    """The documents of `inputs` as `Record`s, counting bad input by kind instead of stopping (module docstring).

    Iterate `records()` (one pass per call); afterwards `bad_input()`, `summary()` and `stats` describe the pass.
    """

    def __init__(self, inputs: list[str | os.PathLike], text_field: str = "text"):
        super().__init__(inputs, text_field)
        self.unreadable_files: list[str] = []
        self.not_json_lines = 0
        self.missing_text_lines = 0

    def records(self) -> Iterator[Record]:
        """Every non-empty document of every input, in order (the same order as `Corpus.documents`)."""
        self.stats, self._done_bytes = [], 0
        self.unreadable_files, self.not_json_lines, self.missing_text_lines = [], 0, 0
        for src in self.files:
            st = SourceStats(str(src.path.absolute()), src.kind, src.gzip)
            self.stats.append(st)
            path = str(src.path)
            reader = None
            try:
                with open(src.path, "rb") as f:
                    self._reader = reader = _HashingReader(f)
                    stream = io.BufferedReader(reader, 1 << 20)
                    if src.gzip:
                        stream = gzip.GzipFile(fileobj=stream, mode="rb")
                    if src.kind == "jsonl":
                        yield from self._jsonl_records(stream, st, path)
                    else:
                        for text in self._text(stream, st):
                            yield Record(text, None, path, None)
                    reader.drain()
            except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
                self.unreadable_files.append(f"{path}: {'gzip: ' if src.gzip else ''}{e} "
                                             f"(after {st.documents} document(s))")
            finally:
                self._reader = None
            if reader is not None:
                st.bytes, st.sha256 = reader.n, reader.sha.hexdigest()
            self._done_bytes += src.size  # the whole file counts as done for progress, even when cut short

    def _jsonl_records(self, stream, st: SourceStats, path: str) -> Iterator[Record]:
        # Corpus._jsonl's rules, keeping the object and telling "not JSON" from "no text field" apart.
        for lineno, raw in enumerate(stream, 1):
            if not raw.strip():
                continue
            line, replaced = _decode(raw)
            try:
                obj = json.loads(line)
            except ValueError:
                self.not_json_lines += 1
                self._skip(st, lineno, "not valid JSON")
                continue
            text = obj.get(self.text_field) if isinstance(obj, dict) else None
            if not isinstance(text, str):
                self.missing_text_lines += 1
                self._skip(st, lineno, f"no string field {self.text_field!r}")
                continue
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate spelled in JSON ("\ud800") is not text
                text, replaced = _SURROGATE.sub("\ufffd", text), True
                obj[self.text_field] = text
            if self._keep(text, replaced, st):
                yield Record(text, obj, path, lineno)

    def bad_input(self) -> dict:
        """Counts of everything in the last pass that was not a clean document, by kind, with a few examples.

        Documents with undecodable bytes are *kept* (with U+FFFD); everything else here was not read as a
        document. `skipped_non_text_files` are binary files met inside input directories.
        """
        s = self.summary()
        examples = [f"{st.path} {e}" for st in self.stats for e in st.skipped_examples][:MAX_SKIPPED_EXAMPLES]
        return {
            "unreadable_files": len(self.unreadable_files),
            "not_json_lines": self.not_json_lines,
            "missing_text_field_lines": self.missing_text_lines,
            "empty_documents": s["empty_documents"],
            "documents_with_undecodable_bytes": s["documents_with_replacements"],
            "skipped_non_text_files": s["skipped_files"],
            "unreadable_file_errors": self.unreadable_files[:MAX_SKIPPED_EXAMPLES],
            "skipped_line_examples": examples,
            "skipped_file_examples": self.skipped_files[:MAX_SKIPPED_EXAMPLES],
        }

    def warnings(self) -> list[str]:
        """One line per kind of bad input in the last pass, pointing to the report."""
        out = [w.replace("(see manifest.json)", "(see the report)") for w in super().warnings()]
        if self.unreadable_files:
            out.append(f"{len(self.unreadable_files)} file(s) could not be read to the end and were cut short, "
                       f"e.g. {self.unreadable_files[0]}")
        return out
