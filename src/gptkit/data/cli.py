"""`gptkit prepare`: the command-line shell over gptkit.data.prepare.prepare. The lead wires `add_prepare`
into gptkit.cli's list of subcommands."""

from __future__ import annotations

import argparse
import sys

from .prepare import TOKENIZERS


def add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare", help="tokenize text into train/val token shards for `gptkit train`",
        description="Tokenize text files, directories (recursive), JSONL and .gz of these into train/val token "
                    "shards, the tokenizer and a manifest. Documents are separated by <|endoftext|>; a corpus "
                    "that is one document (tinyshakespeare) is split at 90%% of its tokens like nanoGPT.")
    p.add_argument("--input", nargs="+", metavar="PATH",
                   help="text files, directories, .jsonl files, or .gz of these")
    p.add_argument("--source", action="append", metavar="NAME=PATH:WEIGHT",
                   help="a weighted mixture instead of --input (repeatable; GPT-3 Table 2.2): each source gets "
                        "WEIGHT / sum of weights of the train tokens, repeating small sources and sampling large "
                        "ones; a NAME given twice (same WEIGHT) adds PATH to that source")
    p.add_argument("--mix-tokens", type=int, default=None, metavar="N",
                   help="train tokens of a mixture (default: the sum of its sources' train tokens)")
    p.add_argument("--tokenizer", choices=TOKENIZERS, default="char",
                   help="char: the corpus's characters; bpe: train a byte-level BPE of --vocab-size; gpt2/gpt1: "
                        "the vocabulary in --vocab (default: char)")
    p.add_argument("--vocab", metavar="DIR", help="vocabulary directory for gpt2/gpt1 "
                   "(e.g. ../shared/data/gpt2-bpe-vocab)")
    p.add_argument("--vocab-size", type=int, default=4096, metavar="N", help="BPE vocabulary size (default 4096)")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                   help="share held out for validation (default 0.1)")
    p.add_argument("--text-field", default="text", metavar="NAME", help="JSONL field with the text (default text)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output directory (new, empty, or a previous prepare output, which is replaced)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="tokenizing processes (default: 1 for small inputs, else the CPU cores, at most 8)")
    p.add_argument("--shard-tokens", type=int, default=100_000_000, metavar="N",
                   help="tokens per shard file (default 100M)")
    p.add_argument("--seed", type=int, default=1337, help="seed of the train/val document split (default 1337)")
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args: argparse.Namespace) -> int:
    from .prepare import parse_source, prepare

    sources = [parse_source(s) for s in args.source] if args.source else None
    m = prepare(args.input, args.out, tokenizer=args.tokenizer, vocab=args.vocab, vocab_size=args.vocab_size,
                val_fraction=args.val_fraction, text_field=args.text_field, num_workers=args.workers,
                shard_tokens=args.shard_tokens, seed=args.seed, sources=sources, mix_tokens=args.mix_tokens)
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
