"""Users' own tasks without code: a JSONL file of examples plus a small YAML spec.

    # configs/tasks/tiny_sentiment.yaml
    name: tiny_sentiment
    kind: choice                        # choice (default) | cloze | perplexity
    data: tiny_sentiment.jsonl          # examples to score (relative to this file)
    fewshot_data: tiny_sentiment_train.jsonl   # optional; default: `data`, never the scored example itself
    template: "Review: {text}\\nSentiment:"      # {field} is replaced by the example's field; {{ }} escape
    verbalizer: {neg: negative, pos: positive}  # answer value -> candidate word (classification), or
    # choices: [negative, positive]     # fixed candidates, the answer an index or the right choice's text, or
    # choices_field: options            # a field with each example's own candidates
    answer_field: label
    description: "Is the review positive or negative?"   # optional, zero-shot instruction

A ``cloze`` task names ``target_field`` (the text the model must produce); a ``perplexity`` task names
``text_field``. Every mistake (an unknown key, a missing field in line 17, an answer that is not a choice) is
reported as one line naming the file, before any model runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .tasks import Doc, EvalError, Task, read_jsonl

KEYS = {"name", "kind", "data", "fewshot_data", "template", "choices", "choices_field", "verbalizer",
        "answer_field", "target_field", "text_field", "description", "target_delimiter", "fewshot_delimiter",
        "uncond_context"}
_FIELD = re.compile(r"\{\{|\}\}|\{(\w+)\}")


def render(template: str, row: dict[str, Any], where: str) -> str:
    """Replace each {field} of template by str(row[field]); '{{' and '}}' stand for literal braces."""

    def sub(m: re.Match[str]) -> str:
        if m.group(1) is None:
            return m.group()[0]
        if m.group(1) not in row:
            raise EvalError(f"{where}: the template needs field {m.group(1)!r}, which this example lacks "
                            f"(it has {', '.join(map(str, row)) or 'no fields'})")
        return str(row[m.group(1)])

    return _FIELD.sub(sub, template)


def check_template(template: str, where: str) -> None:
    """Refuse a template with a brace that is neither `{{`, `}}` nor part of a plain `{field}`: "{text",
    "{text.upper}", "{text!r}", "{text:>9}" would otherwise go into every prompt as literal text."""
    pos = 0
    for m in _FIELD.finditer(template):
        stray = re.search(r"[{}]", template[pos:m.start()])
        if stray:
            break
        pos = m.end()
    else:
        stray = re.search(r"[{}]", template[pos:])
    if stray:
        at = pos + stray.start()
        bad = re.match(r"\{[^{}]*\}?", template[at:])
        shown = bad.group() if bad and template[at] == "{" else template[at]
        raise EvalError(f"{where}: template has {shown!r} at character {at + 1}, which is not a field: write "
                        f"{{name}} for the example's field name (no attributes, conversions or format specs), "
                        f"and {{{{ or }}}} for a literal brace")


def _str(spec: dict, key: str, path: Path, default: str | None = None) -> str | None:
    value = spec.get(key, default)
    if value is not None and not isinstance(value, str):
        raise EvalError(f"{path}: '{key}' must be a string, got {type(value).__name__}")
    return value


def _gold(value: Any, choices: tuple[str, ...], verbalizer: dict[str, str] | None, where: str) -> int:
    if verbalizer is not None:
        # keys compared as text: YAML reads `1:` as an int, a JSONL file may hold "1" (or the reverse)
        if str(value) not in verbalizer:
            raise EvalError(f"{where}: answer {value!r} is not a key of the verbalizer ({', '.join(verbalizer)})")
        return choices.index(verbalizer[str(value)])
    if isinstance(value, bool):
        raise EvalError(f"{where}: answer {value!r} must be a choice index or the right choice's text")
    if isinstance(value, int):
        if not 0 <= value < len(choices):
            raise EvalError(f"{where}: answer index {value} is out of range for {len(choices)} choices")
        return value
    if isinstance(value, str) and value in choices:
        return choices.index(value)
    raise EvalError(f"{where}: answer {value!r} is neither a choice index nor one of the choices {list(choices)}")


def _read_spec(path: Path) -> dict:
    """The YAML mapping of a task file, with no key outside KEYS."""
    if not path.is_file():
        raise EvalError(f"task file {path} not found")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise EvalError(f"{path}: not valid YAML{at} ({getattr(e, 'problem', None) or e})") from None
    except UnicodeDecodeError:
        raise EvalError(f"{path}: not UTF-8 text") from None
    if not isinstance(spec, dict):
        raise EvalError(f"{path}: expected a YAML mapping of task settings, got {type(spec).__name__}")
    unknown = sorted(set(map(str, spec)) - KEYS)
    if unknown:
        raise EvalError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(KEYS))}")
    return spec


@dataclass(frozen=True)
class _Rows:
    """How a checked spec turns the rows of its JSONL files into Docs."""

    path: Path  # the task file: data files are relative to its folder
    kind: str
    template: str | None
    choices: list[str] | None
    choices_field: str | None
    verbalizer: dict[str, str] | None  # keys as text
    answer_field: str | None
    target_field: str | None
    text_field: str | None

    @classmethod
    def from_spec(cls, spec: dict, path: Path, kind: str) -> _Rows:
        """Check the fields a task of `kind` needs (one line naming the file for each mistake)."""
        template = _str(spec, "template", path)
        if template is not None:
            check_template(template, str(path))
        rows = cls(path, kind, template, spec.get("choices"), _str(spec, "choices_field", path),
                   spec.get("verbalizer"), _str(spec, "answer_field", path), _str(spec, "target_field", path),
                   _str(spec, "text_field", path))
        if kind == "choice":
            rows._check_choice(spec)
        elif kind == "cloze" and (template is None or rows.target_field is None):
            raise EvalError(f"{path}: a cloze task needs 'template' and 'target_field'")
        elif kind == "perplexity" and rows.text_field is None:
            raise EvalError(f"{path}: a perplexity task needs 'text_field'")
        if rows.verbalizer is not None:
            object.__setattr__(rows, "verbalizer", {str(k): v for k, v in rows.verbalizer.items()})
        return rows

    def _check_choice(self, spec: dict) -> None:
        path, choices, verbalizer = self.path, self.choices, self.verbalizer
        given = [k for k in ("choices", "choices_field", "verbalizer") if spec.get(k) is not None]
        if len(given) != 1:
            raise EvalError(f"{path}: a choice task needs exactly one of choices, choices_field, verbalizer "
                            f"(got {', '.join(given) or 'none'})")
        if self.template is None or self.answer_field is None:
            raise EvalError(f"{path}: a choice task needs 'template' and 'answer_field'")
        if choices is not None and (not isinstance(choices, list) or len(choices) < 2
                                    or not all(isinstance(c, str) for c in choices)):
            raise EvalError(f"{path}: 'choices' must be a list of at least two strings")
        if verbalizer is not None and (not isinstance(verbalizer, dict) or len(verbalizer) < 2
                                       or not all(isinstance(v, str) for v in verbalizer.values())):
            raise EvalError(f"{path}: 'verbalizer' must map at least two answer values to strings")

    def doc(self, row: dict, where: str) -> Doc:
        """The Doc of one example; a row that does not fit the spec is one EvalError naming `where`."""
        if self.kind == "perplexity":
            if not isinstance(row.get(self.text_field), str):
                raise EvalError(f"{where}: field {self.text_field!r} must be a string")
            return Doc(row[self.text_field], raw=row[self.text_field])
        query = render(self.template, row, where)
        if self.kind == "cloze":
            target = row.get(self.target_field)
            if not isinstance(target, str) or not target:
                raise EvalError(f"{where}: field {self.target_field!r} must be a non-empty string")
            return Doc(query, (target,), 0)
        if self.verbalizer is not None:
            cands = tuple(dict.fromkeys(self.verbalizer.values()))
        elif self.choices is not None:
            cands = tuple(self.choices)
        else:
            cands = row.get(self.choices_field)
            if not isinstance(cands, list) or len(cands) < 2 or not all(isinstance(c, str) for c in cands):
                raise EvalError(f"{where}: field {self.choices_field!r} must be a list of at least two strings")
            cands = tuple(cands)
        if self.answer_field not in row:
            raise EvalError(f"{where}: missing answer field {self.answer_field!r}")
        return Doc(query, cands, _gold(row[self.answer_field], cands, self.verbalizer, where))

    def where(self, file: str) -> Path:
        """A data file's path: relative to the task file's folder unless absolute."""
        return Path(file) if Path(file).is_absolute() else self.path.parent / file

    def read(self, file: str) -> list[Doc]:
        """The Docs of a JSONL file (relative to the task file's folder unless absolute)."""
        p = self.where(file)
        if not p.is_file():
            raise EvalError(f"{self.path}: data file {p} not found")
        docs = [self.doc(row, f"{p}: example {i}") for i, row in enumerate(read_jsonl(p), 1)]
        if not docs:
            raise EvalError(f"{p}: no examples")
        return docs


def load_yaml_task(path: str | Path) -> Task:
    """Read and check a task spec; the examples are read (and checked) when the task is loaded."""
    path = Path(path)
    spec = _read_spec(path)
    kind = spec.get("kind", "choice")
    if kind not in ("choice", "cloze", "perplexity"):
        raise EvalError(f"{path}: kind must be choice, cloze or perplexity, got {kind!r}")
    name = _str(spec, "name", path, path.stem)
    if not name or name.startswith(".") or re.search(r"[/\\\x00-\x1f]", name):
        raise EvalError(f"{path}: name must not be empty, start with '.' or hold '/', '\\' or control characters "
                        f"(it names the task's files), got {name!r}")
    data = _str(spec, "data", path)
    if not data:
        raise EvalError(f"{path}: 'data' (the JSONL file of examples) is required")
    fewshot_data = _str(spec, "fewshot_data", path)
    rows = _Rows.from_spec(spec, path, kind)

    def load(_data_dir: Path) -> dict[str, list[Doc]]:
        splits = {"eval": rows.read(data)}
        if fewshot_data:
            splits["fewshot"] = rows.read(fewshot_data)
        return splits

    return Task(
        name=name, kind=rows.kind, load=load, eval_split="eval",
        fewshot_split=None if rows.kind == "perplexity" else ("fewshot" if fewshot_data else "eval"),
        description=_str(spec, "description", path, "") or "",
        target_delimiter=_str(spec, "target_delimiter", path, " "),
        fewshot_delimiter=_str(spec, "fewshot_delimiter", path, "\n\n"),
        uncond_context=_str(spec, "uncond_context", path, "Answer:"),
        source=str(path),
        files=tuple(str(rows.where(f).absolute()) for f in (data, fewshot_data) if f),
    )
