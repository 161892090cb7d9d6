"""Options of `gptkit sample` (the inference flags `--weights`, `--blas` are shared with `gptkit serve`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import GptkitError
from . import common
from .generator import opt

WEIGHTS = ("auto", "fp32", "fp16", "int8")
BLAS = ("auto", "torch", "numpy")


def weights() -> Any:
    return opt("auto", "CPU decoding: fp32 (exact), fp16 (half the bytes read; logits within ~1e-3) or int8 (a "
               "quarter; greedy text drifts sooner); auto: fp16 where it was measured clearly faster for this "
               "model's shape on this CPU, else fp32 (once; remembered in ~/.cache/gptkit). docs/benchmarks.md",
               choices=WEIGHTS)


def top_k() -> Any:
    return opt(None, "sample from the k most likely tokens only (0: from all of them)", metavar="K")


def top_k_or_none(k: int | None) -> int | None:
    """--top-k as SamplingParams takes it: 0 means no top-k filter, as in Hugging Face's generate (which, as this,
    refuses a negative k)."""
    if k is not None and k < 0:
        raise GptkitError(f"--top-k must be >= 0 (0: from all tokens), got {k}")
    return k or None


def blas() -> Any:
    return opt("auto", "fp32 on CPU: multiply through PyTorch's BLAS (MKL) or numpy's (OpenBLAS); auto: whichever "
               "was measured faster for this model's shape on this CPU (once; remembered in ~/.cache/gptkit)",
               choices=BLAS)


@dataclass
class SampleOptions:
    """Generate text from a checkpoint, streaming to stdout."""

    QUICK: ClassVar[dict[str, float]] = {"max_new_tokens": 100}

    ckpt: str = common.ckpt()
    prompt: str | None = opt(None, "text to continue (default: start from <|endoftext|>)")
    interactive: bool = opt(False, "read prompts from the terminal, one a line", aliases=("-i",))
    max_new_tokens: int = opt(200, "tokens to generate")
    temperature: float = opt(0.8, "0 means greedy")
    top_k: int | None = top_k()
    top_p: float | None = opt(None, "sample from the smallest set of tokens whose probability reaches p")
    presence_penalty: float = opt(0.0, "-2..2, OpenAI's definition")
    frequency_penalty: float = opt(0.0, "-2..2, OpenAI's definition")
    stop: list[str] | None = opt(None, "stop at this text (repeatable)", append=True)
    num_samples: int = opt(1, "samples per prompt")
    seed: int | None = opt(None, "random seed (the draws; default: unseeded, a new sample each run)", metavar="N")
    weights: str = weights()
    blas: str = blas()
    tokenizer_dir: str | None = common.tokenizer_dir()
    device: str = common.device()
    threads: int | None = common.threads()
