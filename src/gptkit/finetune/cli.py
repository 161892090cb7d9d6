"""`gptkit finetune` and `gptkit predict`: thin shells over gptkit.finetune.loop (imported only when run)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from ..train import flag_type


def add_finetune(sub: argparse._SubParsersAction) -> None:
    """Register `gptkit finetune`; its flags are the fields of FinetuneConfig (kept torch-free to import)."""
    from .loop import FinetuneConfig

    p = sub.add_parser(
        "finetune", help="GPT-1 supervised fine-tuning: a linear head on the extract token, L2 + λ·L1",
        description="Fine-tune a pre-trained GPT on a labelled task (GPT-1 §3.2-3.3). Tasks: classification "
                    "(s text e), entailment (s premise $ hypothesis e), similarity (s A $ B e and s B $ A e, "
                    "added), multiple-choice (s context $ answer_k e for each k). Defaults are GPT-1's: lr "
                    "6.25e-5, batch 32, 3 epochs, warmup 0.2% then linear decay, head dropout 0.1, λ 0.5.")
    for f in dataclasses.fields(FinetuneConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = flag_type(f)
        if kind == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=f.metadata["help"])
        else:
            default = "" if f.default is None else f" (default: {f.default})"
            p.add_argument(flag, type=kind, default=f.default, help=f"{f.metadata['help']}{default}".replace("%",
                                                                                                           "%%"))
    p.set_defaults(func=cmd_finetune)


def cmd_finetune(args: argparse.Namespace) -> int:
    from .loop import FinetuneConfig, finetune

    cfg = FinetuneConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneConfig)})
    res = finetune(cfg)
    print(json.dumps(res["metrics"]))
    print(f"done: {res['steps']} steps in {res['wall_s']:.1f} s; fine-tuned model, metrics.json and predictions "
          f"in {res['out']}")
    return 0


def add_predict(sub: argparse._SubParsersAction) -> None:
    """Register `gptkit predict`."""
    p = sub.add_parser("predict", help="predictions of a fine-tuned model, one JSON line per input example",
                       description="Run a model written by `gptkit finetune` on a data file. Each output line "
                                   "holds the prediction and the class (or answer) probabilities, or the score "
                                   "of a regression, and the file's label when it has one.")
    p.add_argument("--ckpt", required=True, help="directory written by `gptkit finetune --out`")
    p.add_argument("--input", required=True, help="data file")
    p.add_argument("--out", required=True, help="output JSONL file")
    p.add_argument("--format", default=None, help="file format (default: the one the model was fine-tuned on)")
    p.add_argument("--text-field", default=None, help="field(s) of the first text (comma-separated)")
    p.add_argument("--pair-field", default=None, help="field of the second text")
    p.add_argument("--choice-fields", default=None, help="comma-separated fields of the answers")
    p.add_argument("--label-field", default=None, help="field of the label, when the file has one")
    p.add_argument("--header", action=argparse.BooleanOptionalAction, default=None,
                   help="csv/tsv: the first row names the columns")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-examples", type=int, default=None, help="only the first N examples")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    from .loop import predict

    cols: dict[str, Any] = {}
    for name in ("text_field", "pair_field", "choice_fields", "label_field"):
        v = getattr(args, name)
        if v:
            key = name.split("_")[0] if name != "choice_fields" else "choices"
            cols[key] = tuple(x.strip() for x in v.split(",")) if key in ("text", "choices") else v.strip()
    if args.header is not None:
        cols["header"] = args.header
    metrics = predict(args.ckpt, args.input, args.out, fmt=args.format, columns=cols or None,
                      batch_size=args.batch_size, device=args.device, max_examples=args.max_examples)
    print(json.dumps(metrics))
    print(f"wrote {metrics['n']} predictions to {args.out}")
    return 0
