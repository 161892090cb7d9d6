"""The data commands: `gptkit prepare` (text → token shards) and the GPT-3 data pipeline's `gptkit data ...`:

    gptkit data clean          --input PATH... --out FILE [--strip gutenberg|none]
    gptkit data quality train  --positive PATH... --negative PATH... --out MODEL
    gptkit data quality filter --model MODEL --input PATH... --out FILE [--alpha 9 | --min-score S]
    gptkit data dedup          --input PATH... --out FILE [--min-jaccard 0.8] [--num-perm 128] [--ngram 5]
                               [--unit document|passage] [--passage-words 200]

The modules doing the work (numpy, scikit-learn, datasketch, matplotlib) are imported only when a command runs.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import GptkitError
from ..options import from_args
from ..options.data import CleanOptions, DedupOptions, PrepareOptions, QualityFilterOptions, QualityTrainOptions
from . import add_command


def add_prepare(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "prepare", PrepareOptions, cmd_prepare,
                help="tokenize text into train/val token shards for `gptkit train`",
                description="Tokenize text files, directories (recursive), JSONL and .gz of these into train/val "
                            "token shards, the tokenizer and a manifest. Documents are separated by "
                            "<|endoftext|>; a corpus that is one document (tinyshakespeare) is split at 90% of its "
                            "tokens like nanoGPT.")


def _group(sub: argparse._SubParsersAction, name: str, help: str, description: str | None = None,
           dest: str = "") -> argparse._SubParsersAction:
    """A command that only holds subcommands (`gptkit data`, `gptkit data quality`); alone it is a mistake that
    names them (as a missing subcommand is in git or pip)."""
    p = sub.add_parser(name, help=help, description=description)
    subs = p.add_subparsers(dest=dest or f"{name}_command", metavar="COMMAND")

    def needs_one(args: argparse.Namespace) -> int:
        raise GptkitError(f"`{p.prog}` needs a command: {', '.join(subs.choices)} (see `{p.prog} --help`)")

    p.set_defaults(func=needs_one)
    return subs


def add_data(sub: argparse._SubParsersAction) -> None:
    """Add `gptkit data` with its subcommands to the `gptkit` parser."""
    dsub = _group(sub, "data", "GPT-3 data pipeline: cleaning, quality classifier and filter, de-duplication",
                  "The GPT-3 data pipeline (GPT-3 §2.2, Appendix A): cleaning (newlines, Project Gutenberg's "
                  "boilerplate), a logistic-regression quality classifier and its Pareto filter, and exact + "
                  "MinHash LSH de-duplication. Weighted mixtures of sources are made by `gptkit prepare --source "
                  "NAME=PATH:WEIGHT`.")
    add_command(dsub, "clean", CleanOptions, cmd_clean,
                help="normalize newlines and remove Project Gutenberg's header and licence footer",
                description="Write each document with CRLF/CR newlines as LF and, with --strip gutenberg (the "
                            "default), without Project Gutenberg's header (up to its START marker or the end of "
                            "the old small print) and footer (from its 'End of (the) Project Gutenberg' line or "
                            "END marker). Documents without markers are kept whole and counted; a JSON report says "
                            "what each step removed.")
    qsub = _group(dsub, "quality", "train or apply the quality classifier")
    add_command(qsub, "train", QualityTrainOptions, cmd_quality_train,
                help="train the classifier: reference text (positive) vs raw text (negative)",
                description="Fit a logistic regression on hashed word n-grams (scikit-learn HashingVectorizer + "
                            "LogisticRegression) with reference documents as positives and raw documents as "
                            "negatives; print the held-out accuracy; save the model as safetensors.")
    add_command(qsub, "filter", QualityFilterOptions, cmd_quality_filter,
                help="keep documents by classifier score (GPT-3's Pareto rule or a threshold)",
                description="Score documents and keep each when numpy's pareto(ALPHA) draw > 1 - score (GPT-3 "
                            "Appendix A), or when score >= --min-score. Writes the kept documents (JSONL, input "
                            "fields preserved), a JSON report with the kept fraction and the fraction the rule is "
                            "expected to keep, and a score histogram PNG.")
    add_command(dsub, "dedup", DedupOptions, cmd_dedup,
                help="remove exact and near duplicates (content hash + MinHash LSH)",
                description="Remove exact duplicates (content hash) and near duplicates (MinHash LSH over word "
                            "n-grams, confirmed by Jaccard similarity >= --min-jaccard), within and across all "
                            "inputs, keeping the first document of each cluster. With --unit passage the same is "
                            "done to passages of about --passage-words words, cut at paragraph breaks, and each "
                            "document is written with the passages it keeps. Writes the kept documents (JSONL, "
                            "input fields preserved) and a JSON report.")


def cmd_prepare(args: argparse.Namespace) -> int:
    from ..data.prepare import parse_source, prepare

    args = from_args(PrepareOptions, args)
    sources = [parse_source(s) for s in args.source] if args.source else None
    m = prepare(args.input, args.out, tokenizer=args.tokenizer_kind, vocab=args.vocab, vocab_size=args.vocab_size,
                val_fraction=args.val_fraction, text_field=args.text_field, num_workers=args.threads,
                shard_tokens=args.shard_tokens, seed=args.seed, sources=sources, mix_tokens=args.mix_tokens,
                progress=False if args.quiet else None)
    tr, va = m["splits"]["train"], m["splits"]["val"]
    d = m["documents"]
    print(f"prepared {d['documents']:,} document(s) from {d['files']:,} file(s) in {m['run']['seconds']:.1f}s: "
          f"train {tr['tokens']:,} tokens ({len(tr['shards'])} shard(s)), val {va['tokens']:,} tokens; "
          f"tokenizer {m['tokenizer']['kind']}, vocab {m['tokenizer']['vocab_size']:,}, {m['dtype']}; "
          f"wrote {args.out}", file=sys.stdout)
    if "mixture" in m:
        print(mixture_table(m["mixture"]), file=sys.stdout)
    return 0


def mixture_table(mix: dict) -> str:
    """The mixture as GPT-3's Table 2.2: each source's train tokens, weight in the mix and epochs elapsed."""
    rows = [("source", "train tokens", "weight in mix", "sampled tokens", "epochs")]
    for r in mix["sources"]:
        rows.append((r["name"], f"{r['train_tokens']:,}", f"{100 * r['share']:.1f}%", f"{r['sampled_tokens']:,}",
                     f"{r['effective_epochs']:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
             for row in rows]
    return "\n".join([f"mixture of {len(mix['sources'])} source(s), {mix['train_tokens']:,} train tokens:",
                      *lines])


def _bad_input_line(bad: dict) -> str:
    parts = [f"{bad[k]:,} {label}" for k, label in (
        ("unreadable_files", "unreadable file(s)"), ("not_json_lines", "non-JSON line(s)"),
        ("missing_text_field_lines", "line(s) without the text field"), ("empty_documents", "empty document(s)"),
        ("documents_with_undecodable_bytes", "document(s) with undecodable bytes (kept, U+FFFD)"),
        ("skipped_non_text_files", "non-text file(s)")) if bad[k]]
    return "bad input: " + (", ".join(parts) if parts else "none")


def cmd_clean(args: argparse.Namespace) -> int:
    from ..data.clean import clean

    opts = from_args(CleanOptions, args)
    r = clean(opts.input, opts.out, strip=opts.strip, text_field=opts.text_field, report=opts.report,
              progress=False if opts.quiet else None)
    gone = r["characters_in"] - r["characters_out"]
    print(f"kept {r['kept']:,} of {r['documents_in']:,} document(s) ({r['empty_after_cleaning']:,} empty after "
          f"cleaning); removed {gone:,} of {r['characters_in']:,} characters ({100 * r['removed_fraction']:.2f}%): "
          f"header {r['header_characters']:,}, footer {r['footer_characters']:,}, carriage returns "
          f"{r['carriage_returns']:,}; markers: both {r['both_markers']:,}, start only {r['only_start']:,}, end "
          f"only {r['only_end']:,}, none {r['no_markers']:,}; wrote {opts.out}")
    print(_bad_input_line(r["bad_input"]))
    print(f"report {opts.report or _sibling(opts.out, '.report.json')}", file=sys.stdout)
    return 0


def cmd_quality_train(args: argparse.Namespace) -> int:
    from ..data.quality import train_quality

    args = from_args(QualityTrainOptions, args)

    _, info = train_quality(args.positive, args.negative, args.out, text_field=args.text_field,
                            n_features=args.n_features, ngram_max=args.ngram_max, heldout=args.heldout, C=args.C,
                            seed=args.seed, max_docs=args.limit)
    d, h = info["documents"], info["heldout"]
    print(f"trained on {d['train_positive']:,} positive and {d['train_negative']:,} negative document(s) "
          f"in {info['seconds']:.1f}s; wrote {args.out}")
    if h:
        print(f"held-out accuracy {h['accuracy']:.4f} on {h['documents']:,} document(s) "
              f"(positive {h['accuracy_positive']:.4f}, negative {h['accuracy_negative']:.4f}, "
              f"ROC AUC {h['roc_auc']:.4f})")
    else:
        print("no held-out documents (--heldout 0): accuracy not measured")
    for cls in ("positive", "negative"):
        print(f"{cls}: {_bad_input_line(info['bad_input'][cls])}")
    return 0


def cmd_quality_filter(args: argparse.Namespace) -> int:
    from ..data.quality import filter_quality

    args = from_args(QualityFilterOptions, args)

    r = filter_quality(args.model, args.input, args.out, alpha=args.alpha, threshold=args.min_score,
                       seed=args.seed, text_field=args.text_field, report=args.report, histogram=args.histogram,
                       rejected=args.rejected, score_field=args.score_field,
                       progress=False if args.quiet else None)
    n = r["documents_in"]
    rule = f"score >= {r['threshold']}" if r["rule"] == "threshold" else f"pareto({r['alpha']:g}) > 1 - score"
    if n:
        print(f"kept {r['kept']:,} of {n:,} document(s) ({100 * r['kept_fraction']:.2f}%; the rule {rule} "
              f"keeps {100 * r['expected_kept_fraction']:.2f}% ± {100 * r['expected_kept_fraction_std']:.2f}% "
              f"on average for these scores); wrote {args.out}")
    else:
        print(f"no documents in the input; wrote an empty {args.out}")
    print(_bad_input_line(r["bad_input"]))
    print(f"report {args.report or _sibling(args.out, '.report.json')}"
          + (f", histogram {r['histogram_png']}" if r["histogram_png"] else ""))
    return 0


def cmd_dedup(args: argparse.Namespace) -> int:
    from ..data.dedup import dedup

    args = from_args(DedupOptions, args)

    r = dedup(args.input, args.out, threshold=args.min_jaccard, num_perm=args.num_perm, ngram=args.ngram,
              text_field=args.text_field, workers=args.threads, seed=args.seed, verify=args.verify,
              report=args.report, removed=args.removed, unit=args.unit, passage_words=args.passage_words,
              progress=False if args.quiet else None)
    took = f"{r['run']['seconds']:.1f}s with {r['run']['workers']} worker(s); wrote {args.out}"
    if args.unit == "passage":
        print(f"removed {r['exact_passages_removed']:,} exact and {r['near_passages_removed']:,} near duplicate "
              f"passage(s) of {r['passages_in']:,}: {r['text_bytes_removed']:,} of {r['text_bytes_in']:,} text "
              f"bytes ({100 * r['removed_fraction']:.2f}%); {r['documents_changed']:,} of {r['documents_in']:,} "
              f"document(s) changed, {r['documents_emptied']:,} emptied; {took}")
    else:
        print(f"kept {r['kept']:,} of {r['documents_in']:,} document(s): removed {r['exact_duplicates_removed']:,} "
              f"exact and {r['near_duplicates_removed']:,} near duplicate(s) in {r['clusters']:,} cluster(s), "
              f"{took}")
    print(_bad_input_line(r["bad_input"]))
    print(f"report {args.report or _sibling(args.out, '.report.json')}", file=sys.stdout)
    return 0


def _sibling(out: str, suffix: str) -> str:
    from ..data.passes import sibling_path

    return str(sibling_path(out, suffix))
