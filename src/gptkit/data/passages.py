"""A document cut into passages of about N words at its own paragraph breaks, for `gptkit data dedup --unit passage`.

Books are duplicated by the chapter, not by the book: the same chapters come in two editions, or in a part beside
the complete volume, each with its own front matter. Comparing passages finds them only if the same text is cut at
the same places in both copies, whatever comes before it. Cutting every N words from the start of the document
would not: one extra paragraph at the top of one edition shifts every later cut. So the cuts are *content-defined*
(as in content-defined chunking of backup tools): whether a passage ends after a paragraph depends only on that
paragraph's own words and on how many words the passage already has, never on the position in the document.

A paragraph ends at a blank line, or at a line break followed by an indented line: old books mark paragraphs,
and verse its stanzas, either way, and two editions of one text often differ in exactly that (Cary's Dante is
printed with blank lines between the stanzas in one Project Gutenberg edition and with indented first lines in
another). A passage ends after a paragraph when

- it already has at least N/2 words, and
- u < n / (N/2), where n is the number of words of the paragraph and u ∈ [0, 1) is the CRC-32 of those words
  (lower-cased runs of `\\w`, as dedup's n-grams) over 2^32.

So past N/2 words each further word ends the passage with probability 2/N: passages have about N/2 + N/2 = N words
on average, and a paragraph of N/2 words or more always ends one. Two copies of the same text, once each has cut
at the same paragraph, cut at the same places from then on. A text with no paragraph break is one passage. The
last stretch of a document, if shorter than N/2 words, joins the passage before it, so that a document's last
words ("THE END") are not a passage of their own.

`passage_spans` gives each passage as a character span of the text; the separator between two passages (a blank
line, or the line break before an indented line) belongs to neither. `join_kept` rewrites a document from the
passages kept. It keeps the text before the first passage and after the last, and joins two kept passages A and C
with the separator that followed A when that holds a blank line, else with the one that preceded C: either way a
paragraph break, at which the rewritten text is cut exactly where the original was, so it is cut into exactly the
kept passages, and de-duplicating it again changes nothing.
"""

from __future__ import annotations

import re
import zlib

WORD = re.compile(r"\w+")
"""A word: a run of `\\w`, lower-cased by the caller. dedup's n-grams are made of the same words."""
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n|\n(?=[^\S\n]+\S)")  # a blank line, or a line break before an indented line
_U32 = float(1 << 32)

Span = tuple[int, int]  # [start, end) character offsets of a passage in its document's text


def _paragraphs(text: str) -> list[Span]:
    """The spans of the paragraphs, without the whitespace-only stretches a text may start or end with."""
    spans, start = [], 0
    for m in _PARAGRAPH_BREAK.finditer(text):
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(text)))
    return [(s, e) for s, e in spans if s < e and not text[s:e].isspace()]


def passage_spans(text: str, words: int = 200) -> list[Span]:
    """The passages of `text` of about `words` words each, as character spans, in order (module docstring).

    A text of only whitespace has no passage; otherwise the passages cover every paragraph.
    """
    if words < 2:
        raise ValueError(f"passage words must be at least 2, got {words}")
    half = words // 2
    spans: list[Span] = []
    start, w, end = -1, 0, 0  # the open passage's start (-1: none open) and words; the last paragraph's end
    for ps, end in _paragraphs(text):
        start = ps if start < 0 else start
        para = WORD.findall(text[ps:end].lower())
        w += len(para)
        if w >= half and zlib.crc32("".join(x + " " for x in para).encode("utf-8")) / _U32 < len(para) / half:
            spans.append((start, end))
            start, w = -1, 0
    if start >= 0:  # the last stretch: a passage of its own, or the end of the one before when it is short
        if w < half and spans:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans


def _blank(separator: str) -> bool:
    return separator.count("\n") >= 2


def join_kept(text: str, spans: list[Span], keep: list[bool]) -> str:
    """`text` with only the passages whose `keep` is true (module docstring); "" when none is kept."""
    kept = [k for k, ok in enumerate(keep) if ok]
    if not kept:
        return ""
    parts = [text[:spans[0][0]]]
    for a, c in zip(kept, kept[1:]):
        after_a, before_c = text[spans[a][1]:spans[a + 1][0]], text[spans[c - 1][1]:spans[c][0]]
        parts += [text[spans[a][0]:spans[a][1]], after_a if _blank(after_a) else before_c]
    last = kept[-1]
    parts += [text[spans[last][0]:spans[last][1]], text[spans[-1][1]:]]
    return "".join(parts)
