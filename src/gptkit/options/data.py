"""Options of the data commands: `gptkit prepare`, `gptkit data clean`, `gptkit data quality train|filter`,
`gptkit data dedup`."""

from __future__ import annotations

from dataclasses import dataclass

from . import common
from .generator import opt

TOKENIZERS = ("char", "bpe", "gpt2", "gpt1")
"""Tokenizer kinds `gptkit prepare` builds (gptkit.data.prepare checks the same tuple)."""
INPUTS_HELP = "text files, directories (recursive), .jsonl files, or .gz of these"
TEXT_FIELD_HELP = "JSONL field with the text"


@dataclass
class PrepareOptions:
    """Text → train/val token shards, the tokenizer and a manifest."""

    input: list[str] | None = opt(None, "text files, directories, .jsonl files, or .gz of these", nargs="+",
                                  metavar="PATH")
    source: list[str] | None = opt(
        None, "a weighted mixture instead of --input (repeatable; GPT-3 Table 2.2): each source gets WEIGHT / sum "
        "of weights of the train tokens, repeating small sources and sampling large ones; a NAME given twice "
        "(same WEIGHT) adds PATH to that source", append=True, metavar="NAME=PATH:WEIGHT")
    mix_tokens: int | None = opt(None, "train tokens of a mixture (default: the sum of its sources' train tokens)",
                                 metavar="N")
    tokenizer_kind: str = opt("char", "char: the corpus's characters; bpe: train a byte-level BPE of --vocab-size; "
                              "gpt2/gpt1: the vocabulary in --vocab", choices=TOKENIZERS, old={"--tokenizer": None})
    vocab: str | None = opt(None, "vocabulary directory for gpt2/gpt1 (e.g. ../shared/data/gpt2-bpe-vocab)",
                            metavar="DIR")
    vocab_size: int = opt(4096, "BPE vocabulary size", metavar="N")
    val_fraction: float = opt(0.1, "share held out for validation", metavar="F")
    text_field: str = opt("text", TEXT_FIELD_HELP, metavar="NAME")
    out: str = common.out_dir("where the shards, tokenizer and manifest go: new, empty, or a previous prepare "
                              "output holding only its own files, which is replaced")
    threads: int | None = common.threads("CPU cores to use: tokenizing processes (default: 1 for small inputs, "
                                         "else the CPU cores, at most 8)", old={"--workers": None})
    shard_tokens: int = opt(100_000_000, "tokens per shard file", metavar="N")
    seed: int = common.seed("the train/val document split")
    quiet: bool = common.quiet()


@dataclass
class QualityTrainOptions:
    """A logistic-regression quality classifier: reference text (positive) vs raw text (negative)."""

    positive: list[str] = opt(None, f"reference documents: {INPUTS_HELP}", nargs="+", required=True,
                              metavar="PATH")
    negative: list[str] = opt(None, f"raw documents: {INPUTS_HELP}", nargs="+", required=True, metavar="PATH")
    out: str = common.out_file("the classifier to write, e.g. quality.safetensors", metavar="MODEL")
    text_field: str = opt("text", TEXT_FIELD_HELP, metavar="NAME")
    heldout: float = opt(0.1, "share of each class held out to measure accuracy", metavar="F")
    n_features: int = opt(1 << 20, "hashed feature columns", metavar="N")
    ngram_max: int = opt(2, "longest word n-gram feature", metavar="N")
    C: float = opt(1.0, "inverse L2 regularisation strength")
    limit: int | None = common.limit("read at most N documents per class", old={"--max-docs": None})
    seed: int = common.seed("the held-out split")


@dataclass
class QualityFilterOptions:
    """Keep documents by classifier score: GPT-3's Pareto rule, or a threshold."""

    model: str = opt(None, "model from `gptkit data quality train`", required=True, metavar="MODEL")
    input: list[str] = opt(None, INPUTS_HELP, nargs="+", required=True, metavar="PATH")
    out: str = common.out_file("the kept documents, JSONL (.gz to compress); the report and histogram go beside it")
    alpha: float = opt(9.0, "Pareto shape α (GPT-3's)", group="rule")
    min_score: float | None = opt(None, "keep when the classifier's score >= S instead", group="rule", metavar="S",
                                  old={"--threshold": None})
    seed: int = common.seed("the Pareto draws")
    text_field: str = opt("text", TEXT_FIELD_HELP, metavar="NAME")
    report: str | None = opt(None, "JSON report (default OUT.report.json)", metavar="FILE")
    histogram: str | None = opt(None, "score histogram (default OUT.scores.png)", metavar="PNG")
    rejected: str | None = opt(None, "also write the documents the filter rejects here (as `data dedup "
                               "--removed` does)", flag="--removed", metavar="FILE", old={"--rejected": None})
    score_field: str | None = opt(None, "add each document's score under NAME", metavar="NAME")
    quiet: bool = common.quiet()


@dataclass
class DedupOptions:
    """Exact (content hash) and near (MinHash LSH, Jaccard-confirmed) de-duplication."""

    input: list[str] = opt(None, INPUTS_HELP, nargs="+", required=True, metavar="PATH")
    out: str = common.out_file("the kept documents, JSONL (.gz to compress); the report goes beside it")
    min_jaccard: float = opt(0.8, "Jaccard similarity from which two documents are near duplicates", metavar="J",
                             old={"--threshold": None})
    num_perm: int = opt(128, "MinHash permutations (2 to 8192)", metavar="N")
    ngram: int = opt(5, "words per shingle", metavar="N")
    unit: str = opt("document", "what is compared and removed: whole documents, or passages of about "
                    "--passage-words words cut at the documents' paragraph breaks (a document keeps its other "
                    "passages)", choices=("document", "passage"))
    passage_words: int = opt(200, "average words per passage with --unit passage", metavar="N")
    verify: str = opt("exact", "confirm LSH candidates with the exact Jaccard of their n-gram sets or with the "
                      "MinHash estimate (stores no n-gram sets)", choices=("exact", "minhash"))
    threads: int | None = common.threads("CPU cores to use: processes computing signatures (default: 1 below 8 MB "
                                         "of input, else the CPU cores, at most 8)", old={"--workers": None})
    seed: int = common.seed("the MinHash permutations")
    text_field: str = opt("text", TEXT_FIELD_HELP, metavar="NAME")
    report: str | None = opt(None, "JSON report (default OUT.report.json)", metavar="FILE")
    removed: str | None = opt(None, "also write one JSONL line per removed document or passage (which kept one "
                              "it duplicates)", metavar="FILE")
    quiet: bool = common.quiet()


@dataclass
class CleanOptions:
    """Newlines to LF and Project Gutenberg's header and licence footer removed, before dedup and prepare."""

    input: list[str] = opt(None, INPUTS_HELP, nargs="+", required=True, metavar="PATH")
    out: str = common.out_file("the cleaned documents, JSONL (.gz to compress); the report goes beside it")
    strip: str = opt("gutenberg", "boilerplate to remove: gutenberg (Project Gutenberg's header and licence "
                     "footer, found by their markers) or none (newlines only)", choices=("gutenberg", "none"))
    text_field: str = opt("text", TEXT_FIELD_HELP, metavar="NAME")
    report: str | None = opt(None, "JSON report (default OUT.report.json)", metavar="FILE")
    quiet: bool = common.quiet()
