"""Options of `gptkit quickstart`, the main job."""

from __future__ import annotations

from dataclasses import dataclass

from .generator import opt


@dataclass
class QuickstartOptions:
    """Train a small GPT on Shakespeare for about five minutes on a CPU, then print a sample."""

    corpus: list[str] | None = opt(None, "your own text instead (files, directories, JSONL, .gz)", nargs="+")
    out: str = opt("runs/quickstart", "working directory")
    minutes: float = opt(5.0, "about how long the whole job takes; the number of training steps is set from the "
                         "speed measured during warmup")
    max_iters: int | None = opt(None, "train exactly this many steps instead")
    prompt: str = opt("ROMEO:\n", "the sample's beginning")
    tokens: int = opt(500, "characters to sample")
    seed: int = opt(1337, "random seed (the sample)")
    device: str = opt("auto", "cpu, cuda, cuda:N or auto")
    resume: bool = opt(False, "continue an interrupted quickstart in --out")
    quiet: bool = opt(False, "no progress display")
