"""The flags that mean the same in every command that has them: what is read (`--ckpt`), where results go
(`--out`, whose help says whether it is a directory or a file), where it runs (`--device`, `--threads`), `--seed`,
`--quiet`, and `--limit` (at most N examples or documents).

Seeds: 1337 wherever a seed matters (weights, shuffles, splits, draws), as in nanoGPT; the one exception is
`gptkit eval`, whose few-shot draw keeps lm-eval's 1234 so that its demonstrations can be compared with
lm-eval's. `gptkit sample` draws unseeded unless --seed is given (reproducible only when asked).
"""

from __future__ import annotations

from typing import Any

from .generator import opt

SEED = 1337
DEVICE_HELP = "cpu, cuda, cuda:N or auto (auto: cuda when there is one, else cpu)"
CKPT_HELP = "what is read: a gptkit checkpoint, a training run (its latest checkpoint) or a Hugging Face directory"


def ckpt(help: str = CKPT_HELP, required: bool = True) -> Any:
    return opt(None, help, required=required, metavar="PATH")


def out_dir(help: str, default: str | None = None, **kw: Any) -> Any:
    return opt(default, f"{help} (a directory)", required=default is None, metavar="DIR", **kw)


def out_file(help: str, metavar: str = "FILE", **kw: Any) -> Any:
    return opt(None, f"{help} (a file)", required=True, metavar=metavar, **kw)


def device(default: str = "auto") -> Any:
    return opt(default, DEVICE_HELP)


def threads(help: str = "CPU threads for torch (default: torch's choice)", **kw: Any) -> Any:
    return opt(None, help, metavar="N", **kw)


def guarded_threads() -> Any:
    """--threads of the commands that train (gptkit.threadguard drops to fewer while another process runs)."""
    return threads("CPU threads for torch (default: torch's choice, halved while another process takes the CPU; "
                   "a number fixes the count)")


def seed(what: str, default: int | None = SEED) -> Any:
    return opt(default, f"random seed ({what})", metavar="N")


def quiet(help: str = "no progress display", **kw: Any) -> Any:
    return opt(False, help, negatable=False, **kw)


def limit(help: str, **kw: Any) -> Any:
    return opt(None, help, metavar="N", **kw)


def tokenizer_dir() -> Any:
    return opt(None, "tokenizer directory, for a checkpoint that has none", metavar="DIR",
               old={"--tokenizer": None})
