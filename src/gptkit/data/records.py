"""Documents with their fields, for the GPT-3 data pipeline (`gptkit data quality`, `gptkit data dedup`).

`gptkit.data.sources.Corpus` yields the text of every document and counts bad input; by default it stops at the
first unreadable file (right for `gptkit prepare`: a half-read corpus must not become a dataset). Filters need
it the other way round: a crawl of a million files with one truncated `.gz` should still be filtered, and a
kept document must come out with the fields it came in with (`id`, `url`, ...). `RecordReader` is a `Corpus`
with `unreadable="count"` whose documents are `Record`s: it keeps the corpus's input discovery (files,
directories, JSONL, `.gz`), its text policy (UTF-8, U+FFFD for undecodable bytes) and its counters, including

- unreadable files (a corrupt or truncated `.gz`, an I/O error) counted in `unreadable_files`, with the
  message, instead of an exception; the documents read before the damage are kept and counted;
- JSONL lines that are not JSON counted apart from lines that are JSON but have no string text field.

`bad_input()` gives every count by kind, for the JSON reports; nothing is dropped without being counted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

from .shards import DataError
from .sources import MAX_SKIPPED_EXAMPLES, Corpus


def text_file_fields(text_field: str, text: str, path: str) -> dict:
    """The JSONL fields of a document that was a whole text file: its text and its path under "source". The text
    wins the name when --text-field is "source" (the path would otherwise replace every document's text)."""
    return {"source": path, text_field: text}


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
        obj = self.fields if self.fields is not None else text_file_fields(text_field, self.text, self.path)
        return json.dumps(obj, ensure_ascii=False)


class RecordReader(Corpus):
    """The documents of `inputs` as `Record`s, counting bad input by kind instead of stopping (module docstring).

    Iterate `records()` (one pass per call); afterwards `bad_input()`, `summary()` and `stats` describe the pass.
    """

    def __init__(self, inputs: list[str | os.PathLike], text_field: str = "text"):
        super().__init__(inputs, text_field, unreadable="count")

    def records(self) -> Iterator[Record]:
        """Every non-empty document of every input, in order (the same order as `Corpus.documents`)."""
        for text, fields, path, line in self.entries():
            yield Record(text, fields, path, line)

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

    def empty_error(self, inputs: list[str | os.PathLike]) -> DataError:
        """The one-line error for a pass that found no document (as `gptkit prepare` refuses an empty corpus),
        naming what was wrong with the input when something was."""
        b = self.bad_input()
        why = [f"{b[k]:,} {label}" for k, label in (
            ("unreadable_files", "unreadable file(s)"), ("not_json_lines", "non-JSON line(s)"),
            ("missing_text_field_lines", f"line(s) without a string {self.text_field!r} field (see --text-field)"),
            ("empty_documents", "empty document(s)"), ("skipped_non_text_files", "non-text file(s) skipped"))
            if b[k]]
        if b["unreadable_file_errors"]:
            why.append(f"first unreadable: {b['unreadable_file_errors'][0]}")
        return DataError(f"empty corpus: no non-empty documents in {', '.join(map(str, inputs))}"
                         + (f" ({'; '.join(why)})" if why else ""))

    def warnings(self) -> list[str]:
        """One line per kind of bad input in the last pass, pointing to the report."""
        return [w.replace("(see manifest.json)", "(see the report)") for w in super().warnings()]
