"""The flags that mean the same in every command that has them: what is read (`--ckpt`), where results go
(`--out`), where and how it runs (`--device`, `--dtype`, `--threads`), `--seed`, `--quiet`.

One rule for seeds: 1337 wherever a seed matters (weights, shuffles, splits, draws), as in nanoGPT; a command
whose randomness is off by default (sampling) says so in its own help.
"""

from __future__ import annotations

from typing import Any

from .generator import opt

SEED = 1337
DEVICE_HELP = "cpu, cuda, cuda:N or auto (auto: cuda when there is one, else cpu)"
CKPT_HELP = "what is read: a gptkit checkpoint, a training run (its latest checkpoint) or a Hugging Face directory"


def ckpt(required: bool = True, help: str = CKPT_HELP) -> Any:
    return opt(None, help, required=required, metavar="PATH")


def out(help: str, required: bool = True, metavar: str = "PATH", default: str | None = None, **kw: Any) -> Any:
    return opt(default, help, required=required and default is None, metavar=metavar, **kw)


def device(default: str = "auto") -> Any:
    return opt(default, DEVICE_HELP)


def dtype() -> Any:
    return opt("auto", "float32, bfloat16 or float16 autocast; auto: bfloat16 on GPUs that have it, else float32")


def threads(**kw: Any) -> Any:
    return opt(None, "CPU threads for torch (default: torch's choice)", metavar="N", **kw)


def seed(what: str, default: int | None = SEED) -> Any:
    return opt(default, f"random seed ({what})", metavar="N")


def quiet(**kw: Any) -> Any:
    return opt(False, "no progress display", **kw)
