"""`gptkit data ...`: the GPT-3 data pipeline's command-line shells (quality filter, de-duplication).

    gptkit data quality train  --positive PATH... --negative PATH... --out MODEL
    gptkit data quality filter --model MODEL --input PATH... --out FILE [--alpha 9 | --threshold T]
    gptkit data dedup          --input PATH... --out FILE [--threshold 0.8] [--num-perm 128] [--ngram 5]

The modules doing the work (scikit-learn, datasketch, matplotlib) are imported only when a command runs.
"""

from __future__ import annotations

import argparse
import sys

INPUTS_HELP = "text files, directories (recursive), .jsonl files, or .gz of these"


def add_data(sub: argparse._SubParsersAction) -> None:
    """Add `gptkit data` with its subcommands to the `gptkit` parser."""
    p = sub.add_parser("data", help="GPT-3 data pipeline: quality classifier and filter, de-duplication",
                       description="The GPT-3 data pipeline (GPT-3 §2.2, Appendix A): a logistic-regression "
                                   "quality classifier and its Pareto filter, and exact + MinHash LSH "
                                   "de-duplication. Weighted mixtures of sources are made by `gptkit prepare "
                                   "--source NAME=PATH:WEIGHT`.")
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])
    dsub = p.add_subparsers(dest="data_command", metavar="COMMAND")

    q = dsub.add_parser("quality", help="train or apply the quality classifier")
    q.set_defaults(func=lambda args: (q.print_help(), 0)[1])
    qsub = q.add_subparsers(dest="quality_command", metavar="COMMAND")

    t = qsub.add_parser("train", help="train the classifier: reference text (positive) vs raw text (negative)",
                        description="Fit a logistic regression on hashed word n-grams (scikit-learn "
                                    "HashingVectorizer + LogisticRegression) with reference documents as positives "
                                    "and raw documents as negatives; print the held-out accuracy; save the model "
                                    "as safetensors.")
    t.add_argument("--positive", nargs="+", required=True, metavar="PATH", help=f"reference documents: {INPUTS_HELP}")
    t.add_argument("--negative", nargs="+", required=True, metavar="PATH", help=f"raw documents: {INPUTS_HELP}")
    t.add_argument("--out", required=True, metavar="MODEL", help="model file to write (e.g. quality.safetensors)")
    t.add_argument("--text-field", default="text", metavar="NAME", help="JSONL field with the text (default text)")
    t.add_argument("--heldout", type=float, default=0.1, metavar="F",
                   help="share of each class held out to measure accuracy (default 0.1)")
    t.add_argument("--n-features", type=int, default=1 << 20, metavar="N", help="hashed feature columns (2^20)")
    t.add_argument("--ngram-max", type=int, default=2, metavar="N", help="longest word n-gram feature (default 2)")
    t.add_argument("--C", type=float, default=1.0, help="inverse L2 regularisation strength (default 1.0)")
    t.add_argument("--max-docs", type=int, default=None, metavar="N", help="read at most N documents per class")
    t.add_argument("--seed", type=int, default=0, help="seed of the held-out split (default 0)")
    t.set_defaults(func=cmd_quality_train)

    f = qsub.add_parser("filter", help="keep documents by classifier score (GPT-3's Pareto rule or a threshold)",
                        description="Score documents and keep each when numpy's pareto(ALPHA) draw > 1 - score "
                                    "(GPT-3 Appendix A), or when score >= --threshold. Writes the kept documents "
                                    "(JSONL, input fields preserved), a JSON report with the kept fraction and the "
                                    "fraction the rule is expected to keep, and a score histogram PNG.")
    f.add_argument("--model", required=True, metavar="MODEL", help="model from `gptkit data quality train`")
    f.add_argument("--input", nargs="+", required=True, metavar="PATH", help=INPUTS_HELP)
    f.add_argument("--out", required=True, metavar="FILE", help="kept documents, JSONL (.gz to compress)")
    rule = f.add_mutually_exclusive_group()
    rule.add_argument("--alpha", type=float, default=9.0, help="Pareto shape α (default 9, as GPT-3)")
    rule.add_argument("--threshold", type=float, default=None, help="keep when score >= THRESHOLD instead")
    f.add_argument("--seed", type=int, default=0, help="seed of the Pareto draws (default 0)")
    f.add_argument("--text-field", default="text", metavar="NAME", help="JSONL field with the text (default text)")
    f.add_argument("--report", default=None, metavar="FILE", help="JSON report (default OUT.report.json)")
    f.add_argument("--histogram", default=None, metavar="PNG", help="score histogram (default OUT.scores.png)")
    f.add_argument("--rejected", default=None, metavar="FILE", help="also write the rejected documents here")
    f.add_argument("--score-field", default=None, metavar="NAME", help="add each document's score under NAME")
    f.set_defaults(func=cmd_quality_filter)

    d = dsub.add_parser("dedup", help="remove exact and near duplicates (content hash + MinHash LSH)",
                        description="Remove exact duplicates (content hash) and near duplicates (MinHash LSH over "
                                    "word n-grams, confirmed by Jaccard similarity >= --threshold), within and "
                                    "across all inputs, keeping the first document of each cluster. Writes the "
                                    "kept documents (JSONL, input fields preserved) and a JSON report.")
    d.add_argument("--input", nargs="+", required=True, metavar="PATH", help=INPUTS_HELP)
    d.add_argument("--out", required=True, metavar="FILE", help="kept documents, JSONL (.gz to compress)")
    d.add_argument("--threshold", type=float, default=0.8, help="Jaccard similarity of near duplicates (0.8)")
    d.add_argument("--num-perm", type=int, default=128, metavar="N", help="MinHash permutations (default 128)")
    d.add_argument("--ngram", type=int, default=5, metavar="N", help="words per shingle (default 5)")
    d.add_argument("--verify", choices=("exact", "minhash"), default="exact",
                   help="confirm LSH candidates with the exact Jaccard of their n-gram sets (default) or with "
                        "the MinHash estimate (stores no n-gram sets)")
    d.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes computing signatures (default: 1 below 8 MB of input, else the CPU cores, "
                        "at most 8)")
    d.add_argument("--seed", type=int, default=1, help="MinHash permutation seed (default 1)")
    d.add_argument("--text-field", default="text", metavar="NAME", help="JSONL field with the text (default text)")
    d.add_argument("--report", default=None, metavar="FILE", help="JSON report (default OUT.report.json)")
    d.add_argument("--removed", default=None, metavar="FILE",
                   help="also write one JSONL line per removed document (which kept document it duplicates)")
    d.set_defaults(func=cmd_dedup)


def _bad_input_line(bad: dict) -> str:
    parts = [f"{bad[k]:,} {label}" for k, label in (
        ("unreadable_files", "unreadable file(s)"), ("not_json_lines", "non-JSON line(s)"),
        ("missing_text_field_lines", "line(s) without the text field"), ("empty_documents", "empty document(s)"),
        ("documents_with_undecodable_bytes", "document(s) with undecodable bytes (kept, U+FFFD)"),
        ("skipped_non_text_files", "non-text file(s)")) if bad[k]]
    return "bad input: " + (", ".join(parts) if parts else "none")


def cmd_quality_train(args: argparse.Namespace) -> int:
    from .quality import train_quality

    _, info = train_quality(args.positive, args.negative, args.out, text_field=args.text_field,
                            n_features=args.n_features, ngram_max=args.ngram_max, heldout=args.heldout, C=args.C,
                            seed=args.seed, max_docs=args.max_docs)
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
    from .quality import filter_quality

    r = filter_quality(args.model, args.input, args.out, alpha=args.alpha, threshold=args.threshold,
                       seed=args.seed, text_field=args.text_field, report=args.report, histogram=args.histogram,
                       rejected=args.rejected, score_field=args.score_field)
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
    from .dedup import dedup

    r = dedup(args.input, args.out, threshold=args.threshold, num_perm=args.num_perm, ngram=args.ngram,
              text_field=args.text_field, workers=args.workers, seed=args.seed, verify=args.verify,
              report=args.report, removed=args.removed)
    print(f"kept {r['kept']:,} of {r['documents_in']:,} document(s): removed {r['exact_duplicates_removed']:,} "
          f"exact and {r['near_duplicates_removed']:,} near duplicate(s) in {r['clusters']:,} cluster(s), "
          f"{r['run']['seconds']:.1f}s with {r['run']['workers']} worker(s); wrote {args.out}")
    print(_bad_input_line(r["bad_input"]))
    print(f"report {args.report or _sibling(args.out, '.report.json')}", file=sys.stdout)
    return 0


def _sibling(out: str, suffix: str) -> str:
    from .dedup import sibling_path

    return str(sibling_path(out, suffix))
