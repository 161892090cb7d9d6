"""The task registry: what each evaluation task reads from the data folder and how an example becomes text.

Every task is reduced to one of three shapes (GPT-3 §2.4 describes all three):

- ``choice``: a prompt and a few candidate continuations, scored by their log-likelihood (HellaSwag, PIQA,
  Story Cloze; SST-2 and RTE through verbalizers such as "positive"/"negative");
- ``cloze``: a prompt and the one right continuation; right when greedy decoding reproduces it (LAMBADA);
- ``perplexity``: a document scored token by token (WikiText-2).

An example is a :class:`Doc`: ``query`` (the prompt text of this example), ``choices`` and ``gold``. The same
Docs feed gptkit's scorer and, exported as JSONL, lm-eval through the bridge, so the two read identical text.

Data files are read from ``--data-dir`` (default ``$GPTKIT_DATA``, else ``../shared/data`` relative to the
working directory) and are never downloaded. This module imports neither torch nor transformers.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from ..errors import GptkitError
from ..io import jsonl_objects

Kind = Literal["choice", "cloze", "perplexity"]
DEFAULT_DATA_DIR = Path("../shared/data")


class EvalError(GptkitError):
    """A task, task file or evaluation request that cannot be run as asked."""


@dataclass(frozen=True)
class Doc:
    """One example. For ``choice`` tasks ``choices[gold]`` is right; a ``cloze`` Doc has the single target in
    ``choices``; a ``perplexity`` Doc keeps its text in ``query`` and its original form in ``raw``."""

    query: str
    choices: tuple[str, ...] = ()
    gold: int = 0
    raw: str | None = None


@dataclass(frozen=True)
class Task:
    """How to evaluate one data set.

    ``load(data_dir)`` returns the splits as lists of Docs. Demonstrations come from ``fewshot_split``; when
    it is the evaluated split, the scored example itself is never one of its own demonstrations.
    """

    name: str
    kind: Kind
    load: Callable[[Path], dict[str, list[Doc]]] = field(repr=False, compare=False)
    eval_split: str = "test"
    fewshot_split: str | None = None
    description: str = ""
    """Optional natural-language task description put before the demonstrations (GPT-3 Fig. 2.1)."""
    target_delimiter: str = " "
    """Between a prompt and its answer, e.g. 'Answer:' + ' ' + 'positive'."""
    fewshot_delimiter: str = "\n\n"
    """Between demonstrations, and between the last demonstration and the scored prompt."""
    uncond_context: str = "Answer:"
    """GPT-3 §2.4 normalisation: P(completion | context) / P(completion | this 'answer context')."""
    source: str = ""
    """The files read, for reports."""
    files: tuple[str, ...] = ()
    """The data files `load` reads: relative to the data folder for a built-in task, absolute for a YAML task's
    (so that an output can be refused where it would overwrite one)."""


# ------------------------------------------------------------------------------------------- data folder
def resolve_data_dir(flag: str | os.PathLike[str] | None = None) -> Path:
    """The data folder: ``flag`` if given, else ``$GPTKIT_DATA``, else ``../shared/data`` (relative to the CWD)."""
    raw = flag if flag is not None else os.environ.get("GPTKIT_DATA") or DEFAULT_DATA_DIR
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise EvalError(f"data folder {path} not found: pass --data-dir DIR or set GPTKIT_DATA "
                        f"(gptkit never downloads evaluation data)")
    return path


def _need(path: Path) -> Path:
    if not path.is_file():
        raise EvalError(f"missing data file {path} (is --data-dir right?)")
    return path


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines file; a bad line is reported with its number (gptkit.io.jsonl_objects)."""
    with open(_need(path), encoding="utf-8") as f:
        return [row for _, row in jsonl_objects(f, path, EvalError)]


# ------------------------------------------------------------------------------------------------ readers
def _lambada(d: Path) -> dict[str, list[Doc]]:
    # OpenAI's LAMBADA (the GPT-2 version): the target is the passage's last word; context = everything before
    # the last space, and the continuation carries that space (target_delimiter " ").
    docs = []
    for row in read_jsonl(d / "lambada" / "lambada_test.jsonl"):
        context, _, word = row["text"].rpartition(" ")
        docs.append(Doc(context, (word,), 0))
    return {"test": docs}


def _hellaswag(d: Path) -> dict[str, list[Doc]]:
    # 6 lines per item: "activity_label: ctx", the gold index, 4 endings (markers already stripped upstream).
    path = _need(d / "hellaswag" / "hellaswag_val_full.txt")
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) % 6:
        raise EvalError(f"{path}: expected 6 lines per item, got {len(lines)} lines")
    docs = []
    for i in range(0, len(lines), 6):
        ctx, gold, *endings = lines[i:i + 6]
        docs.append(Doc(ctx, tuple(endings), int(gold)))
    return {"validation": docs}


def _piqa(d: Path) -> dict[str, list[Doc]]:
    rows = read_jsonl(d / "piqa" / "valid.jsonl")
    labels = _need(d / "piqa" / "valid-labels.lst").read_text().split()
    if len(labels) != len(rows):
        raise EvalError(f"piqa: {len(rows)} questions but {len(labels)} labels")
    return {"validation": [Doc(f"Question: {r['goal']}\nAnswer:", (r["sol1"], r["sol2"]), int(y))
                           for r, y in zip(rows, labels)]}


def _storycloze(d: Path) -> dict[str, list[Doc]]:
    # GPT-3 §2.4 draws Story Cloze demonstrations from the 2016 validation set and reports the test set.
    def read(path: Path) -> list[Doc]:
        with open(_need(path), encoding="utf-8", newline="") as f:
            return [Doc(" ".join(r[f"InputSentence{i}"] for i in range(1, 5)),
                        (r["RandomFifthSentenceQuiz1"], r["RandomFifthSentenceQuiz2"]),
                        int(r["AnswerRightEnding"]) - 1) for r in csv.DictReader(f)]

    return {"validation": read(d / "story-cloze-2016" / "val.csv"), "test": read(d / "story-cloze-2016" / "test.csv")}


SST2_VERBALIZER = ("negative", "positive")


def _sst2(d: Path) -> dict[str, list[Doc]]:
    def read(path: Path) -> list[Doc]:
        docs = []
        for n, line in enumerate(_need(path).read_text(encoding="utf-8").splitlines(), 1):
            label, _, sentence = line.partition(" ")
            if label not in ("0", "1"):
                raise EvalError(f"{path}:{n}: expected '0 sentence' or '1 sentence'")
            docs.append(Doc(f"{sentence}\nQuestion: Is this sentence positive or negative?\nAnswer:",
                            SST2_VERBALIZER, int(label)))
        return docs

    return {s: read(d / "sst2" / f"stsa.binary.{s}") for s in ("train", "dev")}


RTE_VERBALIZER = {"entailment": "True", "not_entailment": "False"}


def _rte(d: Path) -> dict[str, list[Doc]]:
    choices = tuple(RTE_VERBALIZER.values())

    def read(path: Path) -> list[Doc]:
        return [Doc(f"{r['premise']}\nQuestion: {r['hypothesis']} True or False?\nAnswer:", choices,
                    list(RTE_VERBALIZER).index(r["label"])) for r in read_jsonl(path)]

    return {"train": read(d / "rte" / "superglue_rte_train.jsonl"),
            "validation": read(d / "rte" / "superglue_rte_val.jsonl")}


# WikiText's own tokenisation puts spaces around punctuation and marks in-number separators as " @-@ ".
# GPT-2 §3.1 evaluates with "invertible de-tokenizers" that undo such artifacts, since a byte-level LM never saw
# them; these rules are ours, applied in this order.
_DETOK_RULES: list[tuple[re.Pattern[str], str]] = [(re.compile(p), r) for p, r in [
    (r" @([-,.])@ ", r"\1"),              # 1 @,@ 000 -> 1,000 ; well @-@ known -> well-known
    (r" ([.,;:!?%])(?=\s|$)", r"\1"),     # word , word -> word, word
    (r" (n't|'s|'re|'ve|'m|'ll|'d)\b", r"\1"),
    (r"([(\[{]) ", r"\1"),                # ( text ) -> (text)
    (r" ([)\]}])", r"\1"),
    (r'" ([^"\n]*?) "', r'"\1"'),         # " quoted " -> "quoted"
]]


def wikitext_detokenize(text: str) -> str:
    """Undo WikiText's tokenisation artifacts in one line (see _DETOK_RULES)."""
    text = text.strip()
    for pattern, repl in _DETOK_RULES:
        text = pattern.sub(repl, text)
    return text


def split_wikitext_articles(raw: str) -> list[str]:
    """Split WikiText raw text into articles at the top-level headings (' = Title = ', one '=' each side)."""
    articles: list[list[str]] = []
    for line in raw.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        if re.fullmatch(r" = [^=].* = ", line) or not articles:
            articles.append([])
        articles[-1].append(line)
    return ["\n".join(a) for a in articles]


def _wikitext2(d: Path) -> dict[str, list[Doc]]:
    raw = _need(d / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")
    docs = []
    for article in split_wikitext_articles(raw):
        text = "\n".join(wikitext_detokenize(line) for line in article.split("\n"))
        docs.append(Doc(text, raw=article))
    return {"test": docs}


BUILTIN_TASKS: dict[str, Task] = {t.name: t for t in [
    Task("lambada", "cloze", _lambada, "test", "test", source="lambada/lambada_test.jsonl (OpenAI version)",
         files=("lambada/lambada_test.jsonl",)),
    Task("hellaswag", "choice", _hellaswag, "validation", "validation", source="hellaswag/hellaswag_val_full.txt",
         files=("hellaswag/hellaswag_val_full.txt",)),
    Task("piqa", "choice", _piqa, "validation", "validation", source="piqa/valid.jsonl + valid-labels.lst",
         files=("piqa/valid.jsonl", "piqa/valid-labels.lst")),
    Task("storycloze", "choice", _storycloze, "test", "validation",
         source="story-cloze-2016/test.csv (demonstrations: val.csv)",
         files=("story-cloze-2016/test.csv", "story-cloze-2016/val.csv")),
    Task("sst2", "choice", _sst2, "dev", "train", source="sst2/stsa.binary.dev (demonstrations: .train)",
         files=("sst2/stsa.binary.dev", "sst2/stsa.binary.train")),
    Task("rte", "choice", _rte, "validation", "train",
         source="rte/superglue_rte_val.jsonl (demonstrations: _train.jsonl)",
         files=("rte/superglue_rte_val.jsonl", "rte/superglue_rte_train.jsonl")),
    Task("wikitext2", "perplexity", _wikitext2, "test", None,
         source="wikitext-2-raw/wiki.test.raw, detokenised", files=("wikitext-2-raw/wiki.test.raw",)),
]}


def get_task(name: str) -> Task:
    """A built-in task by name, or a user's task from a YAML file path (see gptkit.evaluate.yaml_task)."""
    if name in BUILTIN_TASKS:
        return BUILTIN_TASKS[name]
    if name.endswith((".yaml", ".yml")) or Path(name).is_file():
        from .yaml_task import load_yaml_task

        return load_yaml_task(name)
    raise EvalError(f"unknown task {name!r}: choose one of {', '.join(BUILTIN_TASKS)}, or give a task YAML file")


def load_splits(task: Task, data_dir: Path) -> tuple[list[Doc], list[Doc] | None]:
    """(docs to score, demonstration pool or None) of a task; checks that the splits it names exist."""
    splits = task.load(data_dir)
    if task.eval_split not in splits:
        raise EvalError(f"{task.name}: no split {task.eval_split!r} (has {', '.join(splits)})")
    pool = None
    if task.fewshot_split is not None:
        if task.fewshot_split not in splits:
            raise EvalError(f"{task.name}: no few-shot split {task.fewshot_split!r} (has {', '.join(splits)})")
        pool = splits[task.fewshot_split]
    return splits[task.eval_split], pool
