"""Cleaning documents before de-duplication and tokenizing: `gptkit data clean`.

Two steps, each reported:

- **newlines**: CRLF and lone CR become LF (Project Gutenberg's files are CRLF; a tokenizer would learn "\\r\\n"
  as text, and a file and its LF copy would not be exact duplicates);
- **Project Gutenberg's boilerplate** (`strip="gutenberg"`, the default): the header up to and including the
  `*** START OF THE PROJECT GUTENBERG EBOOK ... ***` marker (whose title may run over a few lines) or, in older
  etexts, the licence that ends with `*END*THE SMALL PRINT!...*END*`; and the footer from the first
  `(The) End of (the) Project Gutenberg ...` line or `*** END OF THE PROJECT GUTENBERG EBOOK ... ***` marker after
  the header. The markers are whole lines of a fixed form, so a book that mentions Project Gutenberg keeps its
  text. A document with neither marker is kept whole and counted (with examples in the report); one that is
  empty afterwards is dropped and counted.

The output is JSONL, one line per kept document in input order: the input JSON object with its text field
replaced, or `{"text": ..., "source": path}` for a text file, ready for `gptkit data dedup` and `gptkit prepare`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from .passes import FilterPass
from .records import text_file_fields
from .shards import DataError
from .sources import MAX_SKIPPED_EXAMPLES

STRIP_CHOICES = ("gutenberg", "none")

_START = re.compile(r"^[ \t]*\*{3}[ \t]*START OF (?:THE |THIS )?PROJECT GUTENBERG E(?:BOOK|TEXT)\b.*$", re.I | re.M)
_SMALL_PRINT_END = re.compile(r"^[ \t]*\**[ \t]*END\*?[ \t]*THE SMALL PRINT!.*$", re.I | re.M)
_FOOTER = re.compile(r"^[ \t*]*(?:THE )?END OF (?:THE |THIS )?PROJECT GUTENBERG\b.*$", re.I | re.M)
MARKER_TITLE_LINES = 3
"""A START marker's title may wrap: the header ends at the first of this many lines that closes with `***`."""


@dataclass
class Cleaned:
    """One document after cleaning, with what was taken away (in characters)."""

    text: str
    header: int = 0
    footer: int = 0
    carriage_returns: int = 0
    found_start: bool = False
    found_end: bool = False


def normalize_newlines(text: str) -> tuple[str, int]:
    """The text with CRLF and lone CR as LF, and how many CRs went."""
    n = text.count("\r")
    return (text.replace("\r\n", "\n").replace("\r", "\n"), n) if n else (text, 0)


def _marker_end(text: str, m: re.Match) -> int:
    """Where a START marker ends: its line, or the line a wrapped title closes with `***` on."""
    if m.group(0).rstrip().endswith("***"):
        return m.end()
    offset = m.end()
    for line in text[m.end():].split("\n", MARKER_TITLE_LINES + 1)[1:MARKER_TITLE_LINES + 1]:
        offset += 1 + len(line)
        if line.rstrip().endswith("***"):
            return offset
    return m.end()


def strip_gutenberg(text: str) -> Cleaned:
    """`text` (LF newlines) without Project Gutenberg's header and footer (module docstring). The header ends
    after the START marker or after the old small print's end, whichever is later, counting a small print only
    when it comes before the footer (the 2002 etexts put theirs after the book)."""
    m = _START.search(text)
    start = _marker_end(text, m) if m is not None else 0
    first_footer = _FOOTER.search(text, start)
    limit = first_footer.start() if first_footer is not None else len(text)
    for sp in _SMALL_PRINT_END.finditer(text, 0, limit):
        start = max(start, sp.end())
    f = _FOOTER.search(text, start)
    if start == 0 and f is None:  # not a Project Gutenberg file: kept whole
        return Cleaned(text)
    stop = f.start() if f is not None else len(text)
    middle = text[start:stop]
    body = middle.strip()
    lead = len(middle) - len(middle.lstrip())
    return Cleaned(body, header=start + lead, footer=len(text) - start - lead - len(body),
                   found_start=start > 0, found_end=f is not None)


def clean_text(text: str, strip: str = "gutenberg") -> Cleaned:
    """One document through both steps."""
    text, crs = normalize_newlines(text)
    c = strip_gutenberg(text) if strip == "gutenberg" else Cleaned(text)
    c.carriage_returns = crs
    return c


class _Tally:
    def __init__(self) -> None:
        self.c = {"documents_in": 0, "kept": 0, "empty_after_cleaning": 0, "both_markers": 0, "only_start": 0,
                  "only_end": 0, "no_markers": 0, "characters_in": 0, "characters_out": 0,
                  "header_characters": 0, "footer_characters": 0, "carriage_returns": 0}
        self.no_marker_examples: list[str] = []

    def add(self, c: Cleaned, chars_in: int, where: str) -> None:
        t = self.c
        t["documents_in"] += 1
        t["characters_in"] += chars_in
        t["header_characters"] += c.header
        t["footer_characters"] += c.footer
        t["carriage_returns"] += c.carriage_returns
        kind = {(True, True): "both_markers", (True, False): "only_start", (False, True): "only_end",
                (False, False): "no_markers"}[(c.found_start, c.found_end)]
        t[kind] += 1
        if kind == "no_markers" and len(self.no_marker_examples) < MAX_SKIPPED_EXAMPLES:
            self.no_marker_examples.append(where)
        if c.text:
            t["kept"] += 1
            t["characters_out"] += len(c.text)
        else:
            t["empty_after_cleaning"] += 1


def clean(inputs: list[str | os.PathLike], out: str | os.PathLike, strip: str = "gutenberg",
          text_field: str = "text", report: str | os.PathLike | None = None, progress: bool | None = None,
          warn: Callable[[str], None] | None = None) -> dict:
    """Clean every document of `inputs` (text files, directories, JSONL, .gz) into `out` (JSONL) and return the
    report (also written to `report`, default `OUT.report.json`): documents in and kept, which markers were
    found, characters in and out, and how many went with the header, the footer and the carriage returns."""
    if strip not in STRIP_CHOICES:
        raise DataError(f"--strip must be one of {', '.join(STRIP_CHOICES)}, got {strip!r}")
    run = FilterPass(inputs, out, text_field=text_field, report=report, others={}, warn=warn)
    tally = _Tally()
    with run.writing(None, progress, "clean") as w:
        for i, rec in enumerate(run.reader.records()):
            c = clean_text(rec.text, strip)
            tally.add(c, len(rec.text), rec.path if rec.line is None else f"{rec.path}:{rec.line}")
            if not c.text:
                w.drop()
            elif rec.fields is not None:
                w.keep(json.dumps({**rec.fields, text_field: c.text}, ensure_ascii=False))
            else:
                w.keep(json.dumps(text_file_fields(text_field, c.text, rec.path), ensure_ascii=False))
            if i % 64 == 0:
                w.advance()
    t = tally.c
    removed = t["characters_in"] - t["characters_out"]
    fields = {"strip": strip, **t, "removed_fraction": removed / t["characters_in"] if t["characters_in"] else 0.0,
              "no_marker_examples": tally.no_marker_examples}
    return run.finish(run.report("gptkit-clean-report", fields))
