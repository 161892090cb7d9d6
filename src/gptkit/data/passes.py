"""One pass of a document filter over its inputs: `gptkit data dedup` and `gptkit data quality filter`.

Both filters have the same shape, kept here once:

1. before any work, the outputs are checked (`FilterPass(...)`): `--out` is a file name in an existing directory,
   no output is an input (writing it would destroy it) and no two outputs are the same file;
2. the documents stream from a `RecordReader` in batches (`batched`), the filter decides each one, and
   `FilterPass.writing` writes the kept ones to `--out` and, when asked, the others (or a line about each) to a
   second JSONL file; both are atomic (renamed into place at the end, deleted if the pass fails or finds no
   document), gzip-compressed when the name ends in `.gz`;
3. the JSON report (`FilterPass.report`, `FilterPass.finish`) has the same header and tail for both filters:
   format, inputs, output, then the filter's own fields, then the bad input by kind, the files read and the run.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ..io import AtomicFile, atomic_write_json
from ..runtime import Progress
from .outputs import check_distinct_outputs, check_output_file
from .records import Record, RecordReader
from .shards import DataError


def sibling_path(out: str | os.PathLike, suffix: str) -> Path:
    """A file beside `out` named after it: `kept.jsonl` (or `kept.jsonl.gz`) + ".report.json" -> `kept.report.json`."""
    out = Path(out)
    stem = out.name.removesuffix(".gz").removesuffix(".jsonl")
    return out.with_name(f"{stem}{suffix}")


def output_path(out: str | os.PathLike) -> Path:
    """`--out` of a filter as an absolute path, checked: a file name in a directory that exists."""
    out = Path(out).expanduser().absolute()
    if out.is_dir():
        raise DataError(f"--out {out} is a directory; give a file name such as kept.jsonl")
    if not out.parent.is_dir():
        raise DataError(f"--out {out}: directory {out.parent} does not exist")
    return out


def batched(records: Iterable[Record], max_docs: int, max_chars: int | None = None) -> Iterator[list[Record]]:
    """Consecutive records in lists of `max_docs`, or fewer once they hold `max_chars` characters of text."""
    batch: list[Record] = []
    chars = 0
    for rec in records:
        batch.append(rec)
        chars += len(rec.text)
        if len(batch) >= max_docs or (max_chars is not None and chars >= max_chars):
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _warn(msg: str) -> None:
    print(f"gptkit: warning: {msg}", file=sys.stderr)


class PassOutput:
    """The open outputs of a pass: every document goes to `keep` or `drop` once, in input order."""

    def __init__(self, kept: AtomicFile, other: AtomicFile | None, reader: RecordReader, bar, task):
        self._kept, self._other, self._reader = kept, other, reader
        self.bar, self.task = bar, task
        self.documents = 0

    @property
    def writes_other(self) -> bool:
        """Whether dropped documents are written somewhere (`--removed`)."""
        return self._other is not None

    def keep(self, line: str) -> None:
        """A kept document, as its JSONL line (without the newline)."""
        self.documents += 1
        self._kept.write((line + "\n").encode("utf-8"))

    def drop(self, line: str | None = None) -> None:
        """A document not kept; `line` goes to the other output when there is one."""
        self.documents += 1
        if line is not None:
            self.other(line)

    def other(self, line: str) -> None:
        """A line for the other output (when there is one): a dropped document's, or what a document kept in part
        lost (`dedup --unit passage --removed`)."""
        if self._other is not None:
            self._other.write((line + "\n").encode("utf-8"))

    def advance(self) -> None:
        """Move the progress display to the input bytes read so far."""
        self.bar.update(self.task, completed=self._reader.bytes_read)


class FilterPass:
    """A filter's inputs, outputs and report (module docstring). Construct it before any work: it checks every
    output (`others`: flag -> path or None, after `--out` and `--report`; `read_also`: files read besides the
    inputs, such as a model, which no output may overwrite either)."""

    def __init__(self, inputs: list[str | os.PathLike], out: str | os.PathLike, *, text_field: str,
                 report: str | os.PathLike | None, others: dict[str, str | os.PathLike | None],
                 read_also: Iterable[str | os.PathLike] = (), warn: Callable[[str], None] | None = None):
        self.t0 = time.perf_counter()
        self.inputs, self.text_field = inputs, text_field
        self.out = output_path(out)
        self.report_path = Path(report) if report is not None else sibling_path(self.out, ".report.json")
        outputs = {"--out": self.out, "--report": self.report_path, **others}
        for flag, path in outputs.items():
            check_output_file(path, flag, [*inputs, *read_also], DataError)
        check_distinct_outputs(outputs, DataError)
        self.reader = RecordReader(inputs, text_field=text_field)
        self.documents = 0
        self.warn = warn or _warn

    @contextlib.contextmanager
    def writing(self, other: str | os.PathLike | None, progress: bool | None, label: str) -> Iterator[PassOutput]:
        """Open `--out` (and `other`, when given) and a progress display named `label` over the input bytes.
        When the block ends normally the files are renamed into place, unless no document was read: then, as when
        the block raises, they are deleted and the one-line empty-input error is raised."""

        with contextlib.ExitStack() as stack:
            kept = stack.enter_context(AtomicFile(self.out))
            extra = (stack.enter_context(AtomicFile(Path(other).expanduser().absolute()))
                     if other is not None else None)
            bar = stack.enter_context(Progress(live=progress, bytes=True))
            total = self.reader.total_bytes
            w = PassOutput(kept, extra, self.reader, bar, bar.add_task(label, total=total))
            yield w
            bar.update(w.task, completed=total)
            self.documents = w.documents
            if w.documents == 0:  # raised inside the block: no output is left behind
                raise self.reader.empty_error(self.inputs)

    def report(self, fmt: str, fields: dict, run: dict | None = None) -> dict:
        """The report: the common header, the filter's `fields`, bad input, files, and `run` with the timing."""
        seconds = time.perf_counter() - self.t0
        return {
            "format": fmt,
            "format_version": 1,
            "inputs": [str(i) for i in self.inputs],
            "output": str(self.out),
            **fields,
            "bad_input": self.reader.bad_input(),
            "files": self.reader.summary()["files"],
            "run": {**(run or {}), "seconds": round(seconds, 3),
                    "documents_per_second": round(self.documents / seconds, 1) if seconds > 0 else None},
        }

    def finish(self, report: dict) -> dict:
        """Write the report (atomically), warn once per kind of bad input, and return the report."""
        atomic_write_json(self.report_path, report)
        for w in self.reader.warnings():
            self.warn(w)
        return report
