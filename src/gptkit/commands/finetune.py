"""`gptkit finetune` and `gptkit predict`: shells over gptkit.finetune.loop (imported when they run)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..options import from_args
from ..options.finetune import FinetuneConfig, PredictOptions, check_dtype
from . import add_command


def add_finetune(sub: argparse._SubParsersAction) -> None:
    add_command(
        sub, "finetune", FinetuneConfig, cmd_finetune,
        help="GPT-1 supervised fine-tuning: a linear head on the extract token, L2 + λ·L1",
        description="Fine-tune a pre-trained GPT on a labelled task (GPT-1 §3.2-3.3). Tasks: classification "
                    "(s text e), entailment (s premise $ hypothesis e), similarity (s A $ B e and s B $ A e, "
                    "added), multiple-choice (s context $ answer_k e for each k). Defaults follow GPT-1 "
                    "(batch 32, linear warmup then decay, head dropout 0.1, λ 0.5), with lr, epochs and warmup sized "
                    "to the model and data: lr 0.048 / width (GPT-1's 6.25e-5 at 768), 3 epochs or enough for 500 "
                    "steps (at most 20), warmup 6%.")


def cmd_finetune(args: argparse.Namespace) -> int:
    from ..finetune.loop import finetune
    from ..runtime import pick_device

    cfg = from_args(FinetuneConfig, args)
    pick_device(cfg.device)  # an unknown or absent device: one line before anything is read
    res = finetune(cfg)
    print(json.dumps(res["metrics"]))
    print(f"done: {res['steps']} steps in {res['wall_s']:.1f} s; fine-tuned model, metrics.json and predictions "
          f"in {res['out']}")
    return 0


def add_predict(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "predict", PredictOptions, cmd_predict,
                help="predictions of a fine-tuned model, one JSON line per input example",
                description="Run a model written by `gptkit finetune` on a data file. Each output line holds the "
                            "prediction and the class (or answer) probabilities, or the score of a regression, "
                            "and the file's label when it has one.")


def cmd_predict(args: argparse.Namespace) -> int:
    from ..finetune.loop import predict
    from ..runtime import pick_device, set_threads

    opts = from_args(PredictOptions, args)
    device = str(pick_device(opts.device))  # an unknown or absent device: one line before the model loads
    set_threads(opts.threads)
    check_dtype(opts.dtype)
    cols: dict[str, Any] = {}
    for name, key in (("text_fields", "text"), ("pair_field", "pair"), ("choice_fields", "choices"),
                      ("label_field", "label")):
        v = getattr(opts, name)
        if v:
            cols[key] = tuple(x.strip() for x in v.split(",")) if key in ("text", "choices") else v.strip()
    if opts.header is not None:
        cols["header"] = opts.header
    metrics = predict(opts.ckpt, opts.input, opts.out, fmt=opts.format, columns=cols or None,
                      batch_size=opts.batch_size, device=device, max_examples=opts.limit,
                      dtype=opts.dtype)
    print(json.dumps(metrics))
    print(f"wrote {metrics['n']} predictions to {opts.out}")
    return 0
