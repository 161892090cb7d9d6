"""Options of `gptkit chat` (the sampling flags mean what they mean in `gptkit sample`)."""

from __future__ import annotations

from dataclasses import dataclass

from . import common
from .generator import opt
from .sample import blas, top_k, weights


@dataclass
class ChatOptions:
    """Chat with a model in the terminal, through the chat template of the server's /v1/chat/completions."""

    ckpt: str = common.ckpt()
    prompt: str | None = opt(None, "one message: print the reply and exit (for scripts)")
    system: str | None = opt(None, "a system message that opens the conversation")
    max_new_tokens: int = opt(200, "most tokens per reply (fewer when the context is nearly full)")
    temperature: float = opt(0.8, "0 means greedy (/temperature X changes it during the chat)")
    top_k: int | None = top_k()
    top_p: float | None = opt(None, "sample from the smallest set of tokens whose probability reaches p")
    seed: int | None = opt(None, "make the replies reproducible (default: unseeded)", metavar="N")
    weights: str = weights()
    blas: str = blas()
    tokenizer_dir: str | None = common.tokenizer_dir()
    device: str = common.device()
    threads: int | None = common.threads()
