"""Options of `gptkit quickstart`, the main job."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from . import common
from .generator import opt


@dataclass
class QuickstartOptions:
    """Train a small GPT on Shakespeare for about five minutes on a CPU, then print a sample."""

    QUICK: ClassVar[dict[str, float]] = {"minutes": 0.5, "max_iters": 20, "max_new_tokens": 200}
    QUICK_FILL: ClassVar[tuple[str, ...]] = ("max_iters",)  # a fixed short run, not a time budget

    input: list[str] | None = opt(None, "your own text instead of the plays: text files, directories, .jsonl "
                                  "files, or .gz of these (as `gptkit prepare --input`)", nargs="+",
                                  metavar="PATH", old={"--corpus": None})
    out: str = common.out_dir("working directory: the corpus, its shards and the run", default="runs/quickstart")
    minutes: float = opt(5.0, "about how long the whole job takes; the number of training steps is set from the "
                         "speed measured during warmup")
    max_iters: int | None = opt(None, "train exactly this many steps instead")
    prompt: str = opt("ROMEO:\n", "the sample's beginning")
    max_new_tokens: int = opt(500, "tokens (characters) to sample", old={"--tokens": None})
    seed: int = common.seed("the sample")
    device: str = common.device()
    threads: int | None = common.guarded_threads()
    resume: bool = opt(False, "continue an interrupted quickstart in --out")
    quiet: bool = common.quiet()
