"""Fine-tuning tasks: file readers, GPT-1's four input transforms, and the truncation policy.

GPT-1 §3.3 (Figure 1, right) turns every structured input into token sequences framed by added special tokens,
start `s`, delimiter `$` and extract `e`, so that the pre-trained model needs no new architecture:

    classification    s text e
    entailment        s premise $ hypothesis e
    similarity        s A $ B e   and   s B $ A e       (no inherent order: both are encoded)
    multiple-choice   s context $ answer_k e            (one sequence per answer k)

Truncation policy (inputs longer than the context): the special tokens are never cut, so every sequence still
ends with its extract token. The text budget is max_len minus the special tokens; one text keeps its first
tokens; a pair is cut *longest first* (one token at a time from whichever part is longer, the first part on a
tie), each part losing its end, except a multiple-choice context, which loses its beginning, because its end is
what the answer continues. (GPT-1's released code cut each part to a fixed half of the context instead.)

This module does not import torch: reading and checking the data happen before a model is loaded, so a bad
file fails in a fraction of a second with one line naming the file and the line.
"""

from __future__ import annotations

import csv
import json
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import GptkitError
from ..io import jsonl_objects

TASKS = ("classification", "entailment", "similarity", "multiple-choice")
FORMATS = ("sst2", "superglue", "mrpc", "stsb", "storycloze", "jsonl", "csv", "tsv")
# the task each named format holds (generic formats hold whatever their column mapping says)
FORMAT_TASKS = {"sst2": ("classification",), "superglue": ("entailment", "similarity"),
                "mrpc": ("similarity", "entailment"), "stsb": ("similarity",), "storycloze": ("multiple-choice",)}
SPECIAL_TOKENS = {"start": "<|start|>", "delimiter": "<|delimiter|>", "extract": "<|extract|>"}
"""GPT-1's added tokens (its code calls them _start_, _delimiter_, _classify_), spelled so that no ordinary text
collides with them; user text containing these strings is still encoded as plain text."""

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long passages in user CSVs


class TaskError(GptkitError, ValueError):
    """Bad task data or options; the message is one line naming the file and line when there is one."""


# --------------------------------------------------------------------------------------------- examples
@dataclass(frozen=True)
class Example:
    """One labelled (or unlabelled) input, as read from a file, before tokenization."""

    text: str
    """The text (classification), premise (entailment), sentence A (similarity) or context (multiple choice)."""
    pair: str | None = None
    """The hypothesis (entailment) or sentence B (similarity)."""
    choices: tuple[str, ...] | None = None
    """The candidate answers (multiple choice)."""
    label: str | float | int | None = None
    """A class name (str), a score (float, regression) or the 0-based index of the right answer (int); None when
    the file has no labels."""
    where: str = ""
    """`FILE:LINE`, for error messages."""


@dataclass
class Columns:
    """Which fields of a jsonl/csv/tsv row hold what. Names for jsonl and csv/tsv with a header; 0-based column
    numbers for csv/tsv without one."""

    text: tuple[str, ...] = ()
    """Field(s) of the first text; several are joined with a space (e.g. the four sentences of a story)."""
    pair: str | None = None
    choices: tuple[str, ...] = ()
    """Fields holding one answer each, or one field holding a JSON list of answers (jsonl)."""
    label: str | None = "label"
    header: bool = True
    """csv/tsv: the first row names the columns."""
    index_base: int = 0
    """Multiple choice: the label of the first answer (Story Cloze's AnswerRightEnding counts from 1)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Columns:
        d = dict(d)
        d["text"], d["choices"] = tuple(d.get("text", ())), tuple(d.get("choices", ()))
        return cls(**d)


def default_columns(fmt: str, task: str) -> Columns:
    """The column mapping of a named format, or the generic formats' defaults for a task."""
    if fmt == "superglue":
        return Columns(text=("premise",), pair="hypothesis", label="label")
    if fmt == "storycloze":
        return Columns(text=tuple(f"InputSentence{i}" for i in range(1, 5)),
                       choices=("RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2"),
                       label="AnswerRightEnding", index_base=1)
    if fmt in ("mrpc", "stsb"):  # rows are read by position, see _iter_rows_glue
        return Columns(text=("sentence1",), pair="sentence2", label="label", header=False)
    if fmt == "sst2":
        return Columns(text=("sentence",), label="label", header=False)
    return {
        "classification": Columns(text=("text",), label="label"),
        "entailment": Columns(text=("premise",), pair="hypothesis", label="label"),
        "similarity": Columns(text=("sentence1",), pair="sentence2", label="label"),
        "multiple-choice": Columns(text=("context",), choices=("choices",), label="label"),
    }[task]


def check_format(fmt: str) -> None:
    """One line for a format gptkit cannot read."""
    if fmt not in FORMATS:
        raise TaskError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")


def infer_format(path: str | Path) -> str:
    """jsonl / csv / tsv from a file name; named formats must be asked for with --format."""
    name = str(path).lower()
    for ext, fmt in ((".jsonl", "jsonl"), (".json", "jsonl"), (".csv", "csv"), (".tsv", "tsv")):
        if name.endswith(ext):
            return fmt
    raise TaskError(f"{path}: cannot tell the file format from its name; pass --format "
                    f"({', '.join(FORMATS)})")


# ----------------------------------------------------------------------------------------------- readers
def _open_text(path: Path):
    try:
        return open(path, encoding="utf-8-sig", newline="")  # -sig: MRPC's test.txt starts with a BOM
    except FileNotFoundError:
        raise TaskError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise TaskError(f"{path} is a directory, expected a data file") from None
    except OSError as e:
        raise TaskError(f"{path}: cannot read ({e.strerror})") from None


def first_bad_utf8(path: Path, block: int = 1 << 20) -> tuple[int, int, int] | None:
    """(byte offset, byte, line number) of the first byte of `path` that is not UTF-8, or None; read in blocks, a
    sequence cut by a block's end carried over to the next."""
    offset, line, carry = 0, 1, b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(block)
            buf = carry + chunk
            try:
                buf.decode("utf-8")
                carry = b""
            except UnicodeDecodeError as e:
                if chunk and e.end == len(buf) and e.reason == "unexpected end of data":
                    carry = buf[e.start:]  # a character cut by the block's end: decided with the next block
                else:
                    return offset + e.start, buf[e.start], line + buf.count(b"\n", 0, e.start)
                buf = buf[: e.start]
            if not chunk:
                return None
            offset += len(buf)
            line += buf.count(b"\n")


def _text_lines(f, path: Path):
    """The lines of an open text file; bytes that are not UTF-8 raise one TaskError naming the file, the line
    and the byte offset. Labelled data is refused rather than read with U+FFFD (as `gptkit prepare` reads a
    corpus): a replaced character in a label or a text would train on something the file does not say."""
    try:
        yield from f
    except UnicodeDecodeError:
        bad = first_bad_utf8(path)
        if bad is None:  # the file changed while it was read
            raise TaskError(f"{path}: not UTF-8 text") from None
        offset, byte, line = bad
        raise TaskError(f"{path}:{line}: not UTF-8 text (byte 0x{byte:02x} at offset {offset}); save the file as "
                        f"UTF-8") from None


def _iter_rows_jsonl(path: Path):
    with _open_text(path) as f:
        yield from jsonl_objects(_text_lines(f, path), path, TaskError)


def _iter_rows_delimited(path: Path, delimiter: str, header: bool):
    """Rows of a csv/tsv as dicts (by header name, or by column number as a str: "0", "1", ..., "-1" = last).

    tsv is read without quote processing, as GLUE's files need (their sentences contain bare quotes).
    """
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with _open_text(path) as f:
        reader = csv.reader(_text_lines(f, path), delimiter=delimiter, quoting=quoting)
        names: list[str] | None = None
        first = True
        try:
            for row in reader:
                lineno = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if first:
                    first = False
                    if header:
                        names = [c.strip() for c in row]
                        continue
                if names is not None:
                    if len(row) != len(names):
                        raise TaskError(f"{path}:{lineno}: the row has {len(row)} fields, the header has "
                                        f"{len(names)}")
                    yield lineno, dict(zip(names, row))
                else:
                    d = {str(i): c for i, c in enumerate(row)}
                    d["-1"] = row[-1]
                    d["__n__"] = len(row)  # type: ignore[assignment]
                    yield lineno, d
        except csv.Error as e:
            raise TaskError(f"{path}:{reader.line_num}: {e}") from None


def _iter_rows_sst2(path: Path):
    """SST-2 as distributed with the few-shot / CNN papers: `LABEL sentence`, one example a line."""
    with _open_text(path) as f:
        for lineno, line in enumerate(_text_lines(f, path), 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            label, sep, sentence = line.partition(" ")
            if not sep or not sentence.strip():
                raise TaskError(f"{path}:{lineno}: expected 'LABEL sentence', got {line[:60]!r}")
            yield lineno, {"label": label, "sentence": sentence}


def _iter_rows_glue(path: Path, fmt: str):
    """GLUE's MRPC and STS-B TSVs, read by column position (their headers differ between files and splits).

    MRPC: label, #1 ID, #2 ID, #1 String, #2 String (test.txt starts with a header row `Quality ...`).
    STS-B: index, genre, filename, year, old_index, source1, source2, sentence1, sentence2, score (the score,
    the last column, is absent from GLUE's unlabelled test file; a header row starts with `index`).
    """
    header_word, need = ("quality", 5) if fmt == "mrpc" else ("index", 9)
    for lineno, row in _iter_rows_delimited(path, "\t", False):
        n = row["__n__"]
        if lineno == 1 and row["0"].strip().lower() == header_word:
            continue
        if fmt == "mrpc":
            if n != 5:
                raise TaskError(f"{path}:{lineno}: expected 5 tab-separated columns (label, #1 ID, #2 ID, "
                                f"#1 String, #2 String), got {n}")
            yield lineno, {"label": row["0"], "sentence1": row["3"], "sentence2": row["4"]}
        else:
            if n not in (need, need + 1):
                raise TaskError(f"{path}:{lineno}: expected GLUE STS-B's 10 tab-separated columns (9 without "
                                f"a score), got {n}")
            out = {"sentence1": row["7"], "sentence2": row["8"]}
            if n == need + 1:
                out["label"] = row["9"]
            yield lineno, out


def _field(row: dict[str, Any], name: str, where: str, what: str) -> Any:
    if name not in row:
        if "__n__" in row:  # a file without a header
            raise TaskError(f"{where}: no column {name} for the {what} (the row has {row['__n__']} columns)")
        shown = ", ".join(k for k in list(row)[:8])
        raise TaskError(f"{where}: no field {name!r} for the {what} (fields: {shown})")
    return row[name]


def _as_text(value: Any, where: str, what: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise TaskError(f"{where}: the {what} must be text, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise TaskError(f"{where}: the {what} is empty")
    return text


def _raw_label(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return json.dumps(value)


def _mc_index(raw: str, n_choices: int, base: int, where: str) -> int:
    try:
        i = int(raw)
    except ValueError:
        i = None
    if i is None or not base <= i < base + n_choices:
        raise TaskError(f"{where}: answer index {raw!r} is not one of {base}..{base + n_choices - 1} "
                        f"({n_choices} answers)")
    return i - base


def _rows(path: Path, fmt: str, cols: Columns):
    """(line number, row dict) of a data file in format `fmt`."""
    if fmt == "sst2":
        return _iter_rows_sst2(path)
    if fmt in ("jsonl", "superglue"):
        return _iter_rows_jsonl(path)
    if fmt in ("csv", "storycloze"):
        return _iter_rows_delimited(path, ",", cols.header)
    if fmt in ("mrpc", "stsb"):
        return _iter_rows_glue(path, fmt)
    return _iter_rows_delimited(path, "\t", cols.header)


def _choices(row: dict[str, Any], cols: Columns, where: str) -> tuple[str, ...]:
    """The answers of a multiple-choice row: one field each, or one field holding a JSON list."""
    if len(cols.choices) == 1 and isinstance(row.get(cols.choices[0]), list):
        values = row[cols.choices[0]]
    else:
        values = [_field(row, c, where, "answer") for c in cols.choices]
    if len(values) < 2:
        raise TaskError(f"{where}: a multiple-choice example needs at least 2 answers, got {len(values)}")
    return tuple(_as_text(v, where, f"answer {k + cols.index_base}") for k, v in enumerate(values))


def read_examples(path: str | Path, fmt: str, task: str, columns: Columns | None = None, *,
                  regression: bool = False, need_labels: bool = True, limit: int | None = None) -> list[Example]:
    """Read one data file into Examples, checking every row.

    `need_labels`: every row must have a label (training and validation files); otherwise a file without labels
    gives examples with label None (test sets without answers, `gptkit predict`). Any problem raises TaskError
    with `FILE:LINE: ...`.
    """
    path = Path(path)
    check_format(fmt)
    cols = columns or default_columns(fmt, task)
    rows = _rows(path, fmt, cols)
    if fmt == "stsb":
        regression = True
    needs_pair = task in ("entailment", "similarity")
    if needs_pair and cols.pair is None:
        raise TaskError(f"the {task} task needs a second text: pass --pair-field")
    if task == "multiple-choice" and not cols.choices:
        raise TaskError("the multiple-choice task needs the answers: pass --choice-fields")
    if not cols.text:
        raise TaskError("no --text-field given")

    examples: list[Example] = []
    for lineno, row in rows:
        where = f"{path}:{lineno}"
        parts = [_as_text(_field(row, c, where, "text"), where, f"text field {c!r}") for c in cols.text]
        text = " ".join(parts)
        pair = _as_text(_field(row, cols.pair, where, "second text"), where, f"field {cols.pair!r}") \
            if needs_pair else None
        choices = _choices(row, cols, where) if task == "multiple-choice" else None
        raw = None
        if cols.label is not None:
            name = cols.label
            present = name in row
            if not present and need_labels:
                _field(row, name, where, "label")
            raw = _raw_label(row.get(name)) if present else None
            if raw is None and need_labels:
                raise TaskError(f"{where}: the label is empty")
        elif need_labels:
            raise TaskError(f"{path}: no --label-field given; training and validation files need labels")
        label: str | float | int | None = raw
        if raw is not None:
            if task == "multiple-choice":
                label = _mc_index(raw, len(choices), cols.index_base, where)
            elif regression:
                try:
                    label = float(raw)
                except ValueError:
                    label = math.nan
                if not math.isfinite(label):
                    raise TaskError(f"{where}: the score {raw!r} is not a finite number (regression)")
        examples.append(Example(text=text, pair=pair, choices=choices, label=label, where=where))
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise TaskError(f"{path}: no examples (the file is empty)")
    return examples


# --------------------------------------------------------------------------------------------- task spec
def _label_sort_key(labels: Sequence[str]):
    try:
        [float(x) for x in labels]
        return lambda x: (float(x), x)
    except ValueError:
        return lambda x: (0.0, x)


@dataclass
class TaskSpec:
    """What a fine-tuned model predicts and how its inputs are built; saved as `task.json` in the checkpoint."""

    task: str
    regression: bool = False
    labels: list[str] | None = None
    """Class names in the order of the head's outputs (classification, entailment, paraphrase)."""
    positive_label: str | None = None
    """The class F1 is computed for (two-class tasks)."""
    format: str = "jsonl"
    columns: dict[str, Any] = field(default_factory=dict)
    max_len: int = 512
    """Longest sequence, special tokens included (at most the model's context)."""
    special_tokens: dict[str, str] = field(default_factory=lambda: dict(SPECIAL_TOKENS))
    special_ids: dict[str, int] = field(default_factory=dict)
    truncation: str = ("special tokens always kept; one text keeps its first tokens; pairs are cut longest-first "
                       "from their ends, a multiple-choice context from its start")

    @property
    def n_outputs(self) -> int:
        """Width of W_y: the classes, or 1 (a score, or one answer's logit)."""
        if self.task == "multiple-choice" or self.regression:
            return 1
        return len(self.labels or ())

    def label_index(self, ex: Example) -> int | float | None:
        """The training target of an example: class index, score, or answer index."""
        if ex.label is None:
            return None
        if self.task == "multiple-choice" or self.regression:
            return ex.label  # already checked by the reader
        try:
            return self.labels.index(str(ex.label))
        except ValueError:
            known = ", ".join(repr(x) for x in self.labels)
            raise TaskError(f"{ex.where}: label {ex.label!r} is not one of the training labels ({known})") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> TaskSpec:
        """The spec a task.json holds, every field checked: a TaskError names the first bad field (the caller
        adds the file)."""
        _check_spec(d)
        return cls(**d)


def _shown(v: Any) -> str:
    """A value as task.json spells it, cut short."""
    text = json.dumps(v, ensure_ascii=False, default=repr)
    return text if len(text) <= 40 else text[:37] + "..."


def _want(name: str, want: str, v: Any) -> TaskError:
    return TaskError(f"{name} must be {want}, got {_shown(v)}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def min_len(task: str) -> int:
    """The shortest max_len a task's sequences fit in: its special tokens and one token of each text."""
    return 3 if task == "classification" else 5


def _check_spec(d: Any) -> None:
    """TaskSpec.from_dict's checks: the fields of a TaskSpec, each of its type, and consistent with the task."""
    if not isinstance(d, dict):
        raise TaskError(f"expected a JSON object, got {'a list' if isinstance(d, list) else _shown(d)}")
    known = [f.name for f in fields(TaskSpec)]
    for k in d:
        if k not in known:
            raise TaskError(f"unknown field {k!r} (a task spec has {', '.join(known)})")
    task = d.get("task")
    if task not in TASKS:
        raise _want("task", f"one of {', '.join(TASKS)}", task)
    regression = d.get("regression", False)
    if not isinstance(regression, bool):
        raise _want("regression", "true or false", regression)
    if regression and task == "multiple-choice":
        raise TaskError("regression must be false for a multiple-choice task")
    labels = d.get("labels")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        raise _want("labels", "a list of class names", labels)
    if task != "multiple-choice" and not regression and (labels is None or len(set(labels)) < 2
                                                         or len(set(labels)) != len(labels)):
        raise _want("labels", f"two or more different class names for a {task} task", labels)
    pos = d.get("positive_label")
    if pos is not None and (not isinstance(pos, str) or pos not in (labels or ())):
        raise _want("positive_label", "null or one of the labels", pos)
    if d.get("format", "jsonl") not in FORMATS:
        raise _want("format", f"one of {', '.join(FORMATS)}", d.get("format"))
    _check_columns(d.get("columns", {}), task)
    max_len = d.get("max_len", 512)
    if not _is_int(max_len) or max_len < min_len(task):
        raise _want("max_len", f"a whole number >= {min_len(task)} for a {task} task", max_len)
    for key, is_value, want, default in (
            ("special_tokens", lambda v: isinstance(v, str) and v, "non-empty text", SPECIAL_TOKENS),
            ("special_ids", lambda v: _is_int(v) and v >= 0, "a token id", None)):
        value = d.get(key, default)
        if not isinstance(value, dict) or sorted(value) != sorted(SPECIAL_TOKENS):
            raise _want(key, f"an object with {', '.join(SPECIAL_TOKENS)}", value)
        for name, v in value.items():
            if not is_value(v):
                raise _want(f"{key}.{name}", want, v)
        if len(set(value.values())) != len(value):
            raise _want(key, "three different values", value)
    if not isinstance(d.get("truncation", ""), str):
        raise _want("truncation", "text", d["truncation"])


def _check_columns(cols: Any, task: str) -> None:
    """The `columns` of a task spec: a Columns as a dict, with what the task reads."""
    known = [f.name for f in fields(Columns)]
    if not isinstance(cols, dict):
        raise _want("columns", f"an object with {', '.join(known)}", cols)
    for k in cols:
        if k not in known:
            raise TaskError(f"unknown field columns.{k} (columns has {', '.join(known)})")

    def names(v: Any) -> bool:
        return isinstance(v, list) and all(isinstance(x, str) and x for x in v)

    for key, ok, want in (("text", lambda v: names(v) and v, "a list of one or more field names"),
                          ("choices", names, "a list of field names"),
                          ("pair", lambda v: v is None or isinstance(v, str) and v, "null or a field name"),
                          ("label", lambda v: v is None or isinstance(v, str) and v, "null or a field name"),
                          ("header", lambda v: isinstance(v, bool), "true or false"),
                          ("index_base", _is_int, "a whole number")):
        if key in cols and not ok(cols[key]):
            raise _want(f"columns.{key}", want, cols[key])
    if "text" not in cols:
        raise TaskError("columns.text is missing (the field(s) of the first text)")
    if task in ("entailment", "similarity") and not cols.get("pair"):
        raise _want("columns.pair", f"a field name for a {task} task (its second text)", cols.get("pair"))
    if task == "multiple-choice" and not cols.get("choices"):
        raise _want("columns.choices", "a list of field names for a multiple-choice task", cols.get("choices"))


def build_spec(task: str, train: list[Example], *, regression: bool, fmt: str, columns: Columns, max_len: int,
               positive_label: str | None = None) -> TaskSpec:
    """The task spec implied by the training examples (the label set is the training file's)."""
    if task not in TASKS:
        raise TaskError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    if regression and task not in ("classification", "entailment", "similarity"):
        raise TaskError("--regression applies to classification, entailment and similarity tasks")
    labels = None
    if task != "multiple-choice" and not regression:
        found = sorted({str(e.label) for e in train}, key=_label_sort_key([str(e.label) for e in train]))
        if len(found) < 2:
            raise TaskError(f"{train[0].where.rsplit(':', 1)[0]}: the training file has only one label "
                            f"({', '.join(found)}); a classifier needs at least two")
        labels = found
        if positive_label is not None:
            if positive_label not in labels:
                raise TaskError(f"--positive-label {positive_label!r} is not a training label ({', '.join(labels)})")
        elif len(labels) == 2:
            conventional = [x for x in ("1", "true", "yes", "entailment", "positive") if x in labels]
            positive_label = conventional[0] if conventional else labels[1]
    return TaskSpec(task=task, regression=regression, labels=labels, positive_label=positive_label, format=fmt,
                    columns=columns.to_dict(), max_len=max_len)


# ------------------------------------------------------------------------------------------- transforms
def fit_lengths(la: int, lb: int, budget: int) -> tuple[int, int]:
    """Longest-first truncation of a pair of lengths to at most `budget` tokens together."""
    excess = la + lb - budget
    if excess <= 0:
        return la, lb
    # cut the longer part down to the shorter one's length first, then alternate (first part on a tie)
    cut_a = min(excess, max(0, la - lb))
    cut_b = min(excess - cut_a, max(0, lb - la))
    la, lb, excess = la - cut_a, lb - cut_b, excess - cut_a - cut_b
    la, lb = la - (excess + 1) // 2, lb - excess // 2
    return la, lb


@dataclass
class Encoded:
    """The token sequences of one example: one (classification, entailment), two orders (similarity) or one per
    answer (multiple choice); each ends with the extract token."""

    seqs: list[list[int]]
    target: int | float | None
    truncated: bool = False


def transform(task: str, a: list[int], b: list[int] | None, choices: list[list[int]] | None,
              ids: dict[str, int], max_len: int) -> tuple[list[list[int]], bool]:
    """GPT-1's input transforms (§3.3) on token ids, with the truncation policy of this module's docstring."""
    s, d, e = ids["start"], ids["delimiter"], ids["extract"]
    if max_len < min_len(task):
        raise TaskError(f"--max-len {max_len} leaves no room for the texts and special tokens of a {task} task "
                        f"(at least {min_len(task)})")
    if task == "classification":
        budget = max_len - 2
        return [[s, *a[:budget], e]], len(a) > budget
    budget = max_len - 3
    if task == "entailment":
        la, lb = fit_lengths(len(a), len(b), budget)
        return [[s, *a[:la], d, *b[:lb], e]], (la, lb) != (len(a), len(b))
    if task == "similarity":
        la, lb = fit_lengths(len(a), len(b), budget)
        return [[s, *a[:la], d, *b[:lb], e], [s, *b[:lb], d, *a[:la], e]], (la, lb) != (len(a), len(b))
    if task == "multiple-choice":
        seqs, cut = [], False
        for ans in choices:
            la, lb = fit_lengths(len(a), len(ans), budget)
            ctx = a[len(a) - la:]  # the context loses its beginning: its end leads into the answer
            seqs.append([s, *ctx, d, *ans[:lb], e])
            cut |= (la, lb) != (len(a), len(ans))
        return seqs, cut
    raise TaskError(f"unknown task {task!r}")


def encode_examples(examples: list[Example], tokenizer: Any, spec: TaskSpec) -> list[Encoded]:
    """Tokenize (one batch call for all texts) and apply the task's input transform to every example."""
    texts: dict[str, int] = {}
    for ex in examples:
        for t in (ex.text, ex.pair, *(ex.choices or ())):
            if t is not None and t not in texts:
                texts[t] = len(texts)
    try:
        ids = tokenizer.encode_batch(list(texts))
    except GptkitError:
        # find the example whose text the tokenizer refuses (a char vocabulary has no unknown token)
        for ex in examples:
            for t in (ex.text, ex.pair, *(ex.choices or ())):
                if t is not None:
                    try:
                        tokenizer.encode(t)
                    except GptkitError as e:
                        raise TaskError(f"{ex.where}: {e}") from None
        raise
    out = []
    for ex in examples:
        a = ids[texts[ex.text]]
        b = ids[texts[ex.pair]] if ex.pair is not None else None
        ch = [ids[texts[c]] for c in ex.choices] if ex.choices is not None else None
        seqs, cut = transform(spec.task, a, b, ch, spec.special_ids, spec.max_len)
        out.append(Encoded(seqs, spec.label_index(ex), cut))
    return out


def split_holdout(examples: list[Example], holdout: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Hold out a share (0 < holdout < 1) or a number (>= 1) of the examples, chosen at random with `seed`."""
    n = len(examples)
    k = int(round(holdout * n)) if holdout < 1 else int(holdout)
    if not 0 < k < n:
        raise TaskError(f"--valid-from-train {holdout} leaves {n - k} training and {k} validation examples")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:k])
    return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]


def subsample(examples: list[Example], n: int | None, seed: int) -> list[Example]:
    """At most n examples, drawn at random with `seed` (kept in file order)."""
    if n is None or n >= len(examples):
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]
