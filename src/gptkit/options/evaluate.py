"""Options of `gptkit eval`."""

from __future__ import annotations

from dataclasses import dataclass

from . import common
from .generator import opt


@dataclass
class EvalOptions:
    """Zero-, one- and few-shot evaluation of a checkpoint (GPT-2 §3, GPT-3 §2)."""

    ckpt: str | None = common.ckpt(required=False)
    task: list[list[str]] | None = opt(None, "task name(s) or YAML file(s); repeat or separate by commas",
                                       append=True, nargs="+", metavar="NAME")
    shots: list[int] = opt([0], "demonstrations per prompt; several values evaluate each", nargs="+", metavar="K")
    limit: int | None = common.limit("score only the first N examples of each task")
    seed: int = opt(1234, "random seed (the demonstration draw; lm-eval's 1234, so draws compare with lm-eval's)",
                    metavar="N")
    batch_size: int = opt(32, "packed rows per forward pass")
    out: str | None = opt(None, "write the results as JSON here (a file; the .md table, and a .png when several K, "
                          "go beside it)", metavar="FILE.json")
    write_samples: str | None = opt(None, "write one JSON line per scored example", metavar="FILE.jsonl")
    plot: str | None = opt(None, "where to draw accuracy vs K (default: beside --out)", metavar="FILE.png")
    data_dir: str | None = opt(None, "folder of the data sets (default: $GPTKIT_DATA, else ../shared/data)")
    description: str | None = opt(None, "task description put before the demonstrations (overrides the task's)")
    unconditional: bool = opt(False, "also report acc_uncond: GPT-3's normalisation by P(completion | 'Answer:')")
    overflow: str = opt("drop-demos", "a prompt longer than the context: drop demonstrations until it fits "
                        "(GPT-3), or keep them and left-truncate (lm-eval). Either way a prompt still too long is "
                        "left-truncated", choices=("drop-demos", "truncate"))
    stride: int | None = opt(None, "perplexity window step in tokens (default: context/2)")
    tokenizer_dir: str | None = common.tokenizer_dir()
    device: str = common.device()
    threads: int | None = common.threads()
    quiet: bool = common.quiet(old={"--no-progress": True})
    export_lm_eval: str | None = opt(None, "instead of evaluating, write the tasks as lm-eval task YAML + JSONL "
                                     "files into DIR", metavar="DIR")
