"""A function compiled by torch.compile on first use, and run eagerly wherever compiling it fails.

Small hot pieces of bf16 arithmetic on the CPU (the attention backward of gptkit.cpu_attention, the softmax of
gptkit.lm_loss) run several passes over memory eagerly; inductor's C++ backend fuses them into one or two. Each
new shape compiles once, in a second or so. A machine without a C++ compiler cannot compile: the first call then
says so in one warning line and the function runs eagerly from then on, with the same arithmetic.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch

_log = logging.getLogger(__name__)

SHAPES_PER_FUNCTION = 64
"""Shapes each function is compiled for, at most (dynamo's own limit, 8 a function, would run the 9th shape of a
process eagerly: a scaling study trains many shapes in one process). Set only around these calls (21 µs a call)."""


def _one_compile_worker() -> None:
    """Compile in this process: these graphs are small, and starting inductor's pool of compile workers took longer
    (0.9 s on two cores) than compiling them. Not where the user chose (TORCHINDUCTOR_COMPILE_THREADS), nor once
    something else in the process has compiled (a `--compile`d model keeps its workers)."""
    from torch._inductor import config

    if "TORCHINDUCTOR_COMPILE_THREADS" not in os.environ and not torch._dynamo.utils.counters["stats"]:
        config.compile_threads = 1


class CompiledOnUse:
    """`fn` through torch.compile(dynamic=False), compiled at its first call; eager once compiling has failed."""

    def __init__(self, fn: Callable, what: str) -> None:
        self.fn, self.what = fn, what
        self.failed = False
        self._compiled: Callable | None = None

    def __call__(self, *args):
        if self.failed:
            return self.fn(*args)
        if self._compiled is None:
            _one_compile_worker()
            self._compiled = torch.compile(self.fn, dynamic=False)
        try:
            with torch._dynamo.config.patch(recompile_limit=SHAPES_PER_FUNCTION):
                return self._compiled(*args)
        except Exception as e:  # noqa: BLE001 - inductor raises many kinds: no compiler, a failed build
            self.failed = True
            first = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
            _log.warning("gptkit: %s not compiled (%s); running it eagerly", self.what, first)
            return self.fn(*args)
