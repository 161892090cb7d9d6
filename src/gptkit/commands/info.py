"""`gptkit info` (a preset's parameters, FLOPs and memory) and `gptkit export-hf`."""

from __future__ import annotations

import argparse
import json

from .. import __version__
from ..options import from_args
from ..options.info import ExportHFOptions, InfoOptions
from . import add_command


def _fmt_count(n: float) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(int(n))


def info_record(name: str) -> dict:
    from ..config import GPTConfig

    c = GPTConfig.from_preset(name)
    return {
        "preset": name, "params": c.num_params, "non_embedding_params": c.non_embedding_params,
        "flops_per_token": c.flops_per_token(), "context": c.block_size, "n_layer": c.n_layer,
        "n_head": c.n_head, "n_embd": c.n_embd, "head_size": c.head_size, "vocab_size": c.vocab_size,
        "norm": c.norm, "attention": c.attention, "pos": c.pos,
        "weights_bytes_fp32": 4 * c.num_params, "weights_bytes_bf16": 2 * c.num_params,
    }


def cmd_info(args: argparse.Namespace) -> int:
    from ..config import PRESETS

    args = from_args(InfoOptions, args)

    if args.preset is None:
        rows = [info_record(n) for n in PRESETS]
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"gptkit {__version__} presets")
        for col in ("preset", "params", "non-emb", "layers×heads×width", "context", "norm", "attention",
                    "train GFLOP/token"):
            table.add_column(col, justify="left" if col in ("preset", "norm", "attention") else "right")
        for r in rows:
            table.add_row(r["preset"], _fmt_count(r["params"]), _fmt_count(r["non_embedding_params"]),
                          f"{r['n_layer']}×{r['n_head']}×{r['n_embd']}", str(r["context"]), r["norm"],
                          r["attention"], f"{r['flops_per_token'] / 1e9:.2f}")
        console = Console()
        # Never truncate names or numbers: off a terminal rich assumes 80 columns, too narrow for this table.
        console.width = max(console.width, Console(width=10_000).measure(table).maximum)
        console.print(table)
        return 0
    r = info_record(args.preset)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"preset              {r['preset']}")
    print(f"parameters          {r['params']:,} ({_fmt_count(r['params'])})")
    print(f"non-embedding       {r['non_embedding_params']:,}")
    print(f"train FLOPs/token   {r['flops_per_token']:,} (6N + 12·L·d·T at T={r['context']})")
    print(f"weights             {r['weights_bytes_fp32'] / 2**30:.2f} GiB fp32, "
          f"{r['weights_bytes_bf16'] / 2**30:.2f} GiB bf16")
    print(f"shape               {r['n_layer']} layers × {r['n_head']} heads × {r['n_embd']} wide "
          f"(head size {r['head_size']}), context {r['context']}, vocab {r['vocab_size']:,}")
    print(f"architecture        {r['norm']}-LN, {r['attention']} attention, {r['pos']} positions")
    return 0


def add_info(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "info", InfoOptions, cmd_info,
                help="parameters, FLOPs and memory of a preset (all presets without --preset)")


def cmd_export_hf(args: argparse.Namespace) -> int:
    from ..interop.hf import export_checkpoint

    opts = from_args(ExportHFOptions, args)
    out = export_checkpoint(opts.ckpt, opts.out)
    print(f"wrote {out} (load with transformers.AutoModelForCausalLM.from_pretrained({str(out)!r}))")
    return 0


def add_export_hf(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "export-hf", ExportHFOptions, cmd_export_hf,
                help="write a checkpoint as a Hugging Face transformers directory")
