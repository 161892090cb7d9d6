"""`gptkit info` (a preset's or a checkpoint's parameters, FLOPs, memory and shape) and `gptkit export-hf`."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import PRESETS, GPTConfig
from ..io import parse_json
from ..quickstart import DEFAULTS as QUICKSTART
from ..options import from_args
from ..options.info import ExportHFOptions, InfoOptions
from . import add_command


def _fmt_count(n: float) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(int(n))


SHAPE = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")


def config_record(c: GPTConfig, preset: str | None = None) -> dict[str, Any]:
    return {
        "preset": preset, "params": c.num_params, "non_embedding_params": c.non_embedding_params,
        "flops_per_token": c.flops_per_token(), "context": c.block_size, "n_layer": c.n_layer,
        "n_head": c.n_head, "n_embd": c.n_embd, "head_size": c.head_size, "vocab_size": c.vocab_size,
        "norm": c.norm, "attention": c.attention, "pos": c.pos,
        "weights_bytes_fp32": 4 * c.num_params, "weights_bytes_bf16": 2 * c.num_params,
    }


def info_record(name: str) -> dict[str, Any]:
    return config_record(GPTConfig.from_preset(name), name)


def run_preset(ckpt: Path) -> tuple[str | None, str]:
    """The preset a checkpoint's training run started from, as its RUN/train_config.json records it, and where
    that was read (a Hugging Face directory or a bare checkpoint has none: (None, ""))."""
    for run in (ckpt, ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None):
        if run is not None and (run / "train_config.json").is_file():
            try:
                preset = parse_json((run / "train_config.json").read_text(encoding="utf-8")).get("preset")
            except (OSError, ValueError, AttributeError):
                continue
            if preset in PRESETS:
                return preset, str(run / "train_config.json")
    return None, ""


def same_shape_preset(c: GPTConfig) -> str | None:
    def shape(x: GPTConfig) -> tuple:
        return tuple(getattr(x, n) for n in SHAPE[:4])

    return next((name for name, p in PRESETS.items() if shape(p) == shape(c)), None)


def checkpoint_record(path: str, preset: str | None) -> dict[str, Any]:
    """A checkpoint's (or a run's latest checkpoint's) shape, and each config field where it differs from its
    preset: the one given, else the one its run recorded, else a preset of the same shape. The weight files must
    fit the config, as `sample` requires; only their headers are read."""
    from ..checkpoint import read_model, resolve_checkpoint

    p = resolve_checkpoint(path)
    config = read_model(p, map_location="meta", tokenizer=False).config
    source = "--preset"
    if preset is None:
        preset, source = run_preset(p)
    if preset is None:
        preset, source = same_shape_preset(config), "the same shape"
    r = config_record(config, preset)
    r["checkpoint"], r["preset_from"] = str(p), source if preset else None
    if preset is not None:
        ref = GPTConfig.from_preset(preset)
        names = sorted((f.name for f in dataclasses.fields(GPTConfig)),  # the shape first, in SHAPE's order
                       key=lambda n: SHAPE.index(n) if n in SHAPE else len(SHAPE))
        r["differs_from_preset"] = {n: [getattr(config, n), getattr(ref, n)] for n in names
                                    if getattr(config, n) != getattr(ref, n)}
    return r


def print_presets_table(rows: list[dict[str, Any]]) -> None:
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


def print_record(r: dict[str, Any]) -> None:
    if "checkpoint" in r:
        print(f"checkpoint          {r['checkpoint']}")
    print(f"preset              {r['preset'] or '(none of the presets has this shape)'}"
          + (f" (from {r['preset_from']})" if r.get("preset_from") else ""))
    print(f"parameters          {r['params']:,} ({_fmt_count(r['params'])})")
    print(f"non-embedding       {r['non_embedding_params']:,}")
    print(f"train FLOPs/token   {r['flops_per_token']:,} (6N + 12·L·d·T at T={r['context']})")
    print(f"weights             {r['weights_bytes_fp32'] / 2**30:.2f} GiB fp32, "
          f"{r['weights_bytes_bf16'] / 2**30:.2f} GiB bf16")
    print(f"shape               {r['n_layer']} layers × {r['n_head']} heads × {r['n_embd']} wide "
          f"(head size {r['head_size']}), context {r['context']}, vocab {r['vocab_size']:,}")
    print(f"architecture        {r['norm']}-LN, {r['attention']} attention, {r['pos']} positions")
    if "differs_from_preset" in r:
        diff = r["differs_from_preset"]
        print(f"differs from preset {', '.join(f'{k} {v[0]} (preset {v[1]})' for k, v in diff.items()) or 'nothing'}")
    elif "checkpoint" not in r and r["preset"] == QUICKSTART["preset"]:
        q = QUICKSTART
        print(f"note                `gptkit quickstart` trains {r['preset']} at {q['n_layer']}×{q['n_head']}×"
              f"{q['n_embd']}, context {q['block_size']} (its own overrides; `gptkit info --ckpt RUN` shows a run's "
              f"shape)")


def cmd_info(args: argparse.Namespace) -> int:
    opts = from_args(InfoOptions, args)
    if opts.ckpt is not None:
        r = checkpoint_record(opts.ckpt, opts.preset)
    elif opts.preset is None:
        rows = [info_record(n) for n in PRESETS]
        if opts.json:
            print(json.dumps(rows, indent=2))
        else:
            print_presets_table(rows)
        return 0
    else:
        r = info_record(opts.preset)
    if opts.json:
        print(json.dumps(r, indent=2))
    else:
        print_record(r)
    return 0


def add_info(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "info", InfoOptions, cmd_info,
                help="parameters, FLOPs and memory of a preset (all presets without --preset) or of a checkpoint "
                     "(--ckpt: its shape, and where it differs from its preset)")


def cmd_export_hf(args: argparse.Namespace) -> int:
    from ..interop.hf import export_checkpoint

    opts = from_args(ExportHFOptions, args)
    out = export_checkpoint(opts.ckpt, opts.out)
    print(f"wrote {out} (load with transformers.AutoModelForCausalLM.from_pretrained({str(out)!r}))")
    return 0


def add_export_hf(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "export-hf", ExportHFOptions, cmd_export_hf,
                help="write a checkpoint as a Hugging Face transformers directory")
