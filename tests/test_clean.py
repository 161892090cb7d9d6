"""`gptkit data clean`: newlines to LF and Project Gutenberg's header and footer removed, on made-up documents
with every marker form and on real books from ../shared/corpora/gutenberg-books."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error

from gptkit.cli import main
from gptkit.data.clean import clean, clean_text

BOOKS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "gutenberg-books"
LICENCE = "This eBook is for the use of anyone anywhere at no cost.\n"

MODERN = ("The Project Gutenberg EBook of A Tale, by Someone\r\n" + LICENCE.replace("\n", "\r\n") +
          "\r\n*** START OF THIS PROJECT GUTENBERG EBOOK A TALE ***\r\n\r\nProduced by volunteers.\r\n\r\n"
          "CHAPTER I\r\nIt was a dark night.\r\n\r\nEnd of the Project Gutenberg EBook of A Tale, by Someone\r\n\r\n"
          "*** END OF THIS PROJECT GUTENBERG EBOOK A TALE ***\r\n\r\nSection 1. General Terms of Use\r\n")
WRAPPED = ("header text\n***START OF THE PROJECT GUTENBERG EBOOK THE LIFE AND ADVENTURES OF BARON\nTRENCK***\n\n"
           "The Baron was born.\n\n***END OF THE PROJECT GUTENBERG EBOOK THE LIFE AND ADVENTURES OF BARON TRENCK***\n"
           "licence\n")
OLD = ("Project Gutenberg Etext of Poems\n**Welcome To The World of Free Plain Vanilla Electronic Texts**\n"
       "***START**THE SMALL PRINT!**FOR PUBLIC DOMAIN ETEXTS**START***\nlawyers' words\n"
       "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n\nPOEMS\nShall I compare thee\n\n"
       "The end of Project Gutenberg Etext of Poems\n")
SMALL_PRINT_AFTER = ("*** START OF THE PROJECT GUTENBERG EBOOK X ***\nThe book, all of it.\n"
                     "End of the Project Gutenberg EBook of X\n"
                     "*END THE SMALL PRINT! FOR PUBLIC DOMAIN EBOOKS*Ver.02/11/02*END*\n")


@pytest.mark.parametrize("text, body", [
    (MODERN, "Produced by volunteers.\n\nCHAPTER I\nIt was a dark night."),
    (WRAPPED, "The Baron was born."),
    (OLD, "POEMS\nShall I compare thee"),
    (SMALL_PRINT_AFTER, "The book, all of it."),
    ("No markers here.\r\nA mention of Project Gutenberg in the text.\r\n",
     "No markers here.\nA mention of Project Gutenberg in the text.\n"),
])
def test_each_marker_form(text, body):
    c = clean_text(text)
    assert c.text == body
    lf = text.replace("\r\n", "\n")
    assert c.header + len(c.text) + c.footer == (len(lf) if c.found_start or c.found_end else len(c.text))
    assert c.carriage_returns == text.count("\r")
    assert clean_text(text, strip="none").text == lf  # newlines only


def test_the_pass_keeps_fields_counts_and_reports(tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [{"id": 1, "text": MODERN}, {"id": 2, "text": "plain words\r\n"},
            {"id": 3, "text": "*** START OF THE PROJECT GUTENBERG EBOOK E ***\n\n"
                              "*** END OF THE PROJECT GUTENBERG EBOOK E ***"}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))  # JSON escapes the CRs: they reach the cleaner
    (tmp_path / "book.txt").write_text(OLD)
    out = tmp_path / "clean.jsonl"
    r = clean([str(src), str(tmp_path / "book.txt")], out)
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g.get("id") for g in got] == [1, 2, None]  # input order; the empty book dropped
    assert got[0]["text"].startswith("Produced by") and got[1]["text"] == "plain words\n"
    assert got[2] == {"text": "POEMS\nShall I compare thee", "source": str(tmp_path / "book.txt")}
    assert (r["documents_in"], r["kept"], r["empty_after_cleaning"]) == (4, 3, 1)
    assert (r["both_markers"], r["no_markers"]) == (3, 1) and r["no_marker_examples"] == [f"{src}:2"]
    assert r["characters_out"] == sum(len(g["text"]) for g in got)
    assert json.loads((tmp_path / "clean.report.json").read_text()) == r


def test_bad_input_is_one_line(tmp_path, capsys):
    x = tmp_path / "x.txt"
    x.write_bytes(MODERN.encode())
    rc = main(["data", "clean", "--input", str(x), "--out", str(x)])
    assert_one_line_error(rc, capsys.readouterr().err, "also an input")
    assert x.read_bytes() == MODERN.encode()
    with pytest.raises(SystemExit) as e:
        main(["data", "clean", "--input", str(x), "--out", str(tmp_path / "o.jsonl"), "--strip", "html"])
    assert e.value.code == 2 and not (tmp_path / "o.jsonl").exists()


def _books(n: int) -> list[Path]:
    if not BOOKS.is_dir():
        pytest.skip(f"{BOOKS} is absent (the shared corpus of Project Gutenberg books)")
    return sorted(BOOKS.glob("pg*.txt"))[:n]


def test_real_books_lose_exactly_the_boilerplate(tmp_path, capsys):
    """On real books the output holds no marker or licence line, and a modern book's text is exactly the lines
    between its START marker and its 'End of the Project Gutenberg EBook' line (a line-by-line oracle)."""
    books = _books(12)
    out = tmp_path / "books.jsonl"
    assert main(["data", "clean", "--input", *map(str, books), "--out", str(out)]) == 0
    assert "kept 12 of 12 document(s)" in capsys.readouterr().out
    docs = {Path(d["source"]).name: d["text"] for d in map(json.loads, out.read_text().splitlines())}
    for name, text in docs.items():
        for line in text.splitlines():
            up = line.upper()
            assert not (up.startswith(("*** START OF", "***START OF", "*** END OF", "***END OF"))
                        or "THE SMALL PRINT!" in up or up.startswith("END OF THE PROJECT GUTENBERG")), (name, line)
        assert "Project Gutenberg-tm" not in text, name  # the licence's own spelling
    lines = (BOOKS / "pg1001.txt").read_text().splitlines()
    a = next(i for i, s in enumerate(lines) if s.startswith("*** START OF THIS PROJECT GUTENBERG EBOOK"))
    b = next(i for i, s in enumerate(lines) if s.startswith("End of the Project Gutenberg EBook"))
    assert docs["pg1001.txt"] == "\n".join(lines[a + 1:b]).strip()
