"""A function compiled by torch.compile on first use, and run eagerly wherever compiling it fails.

Small hot pieces of bf16 arithmetic on the CPU (the attention backward of gptkit.cpu_attention, the softmax of
gptkit.lm_loss) run several passes over memory eagerly; inductor's C++ backend fuses them into one or two. Each
new shape compiles once, in a second or so; within `shapes_vary` (fine-tuning) one compile serves all lengths. A
machine without a C++ compiler cannot compile: the first call then says so in one warning line and the function
runs eagerly from then on, with the same arithmetic. Inductor's check of the CPU's vector instruction sets,
repeated by every process, is done once and remembered (`ISA_PROBE`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import sys
from collections.abc import Callable

import torch

from . import autotune

_log = logging.getLogger(__name__)

SHAPES_PER_FUNCTION = 64
"""Shapes each function is compiled for in each mode, at most (dynamo's own limit, 8 a function, would run the 9th
shape of a process eagerly: a scaling study trains many shapes in one process). Set only around these calls (21 µs
a call)."""


def _nothing_compiled_yet() -> bool:
    """Whether this process has compiled nothing so far (then inductor's settings are still ours to choose)."""
    return not torch._dynamo.utils.counters["stats"]


def _one_compile_worker() -> None:
    """Compile in this process: these graphs are small, and starting inductor's pool of compile workers took longer
    (0.9 s on two cores) than compiling them. Not where the user chose (TORCHINDUCTOR_COMPILE_THREADS), nor once
    something else in the process has compiled (a `--compile`d model keeps its workers)."""
    from torch._inductor import config

    if "TORCHINDUCTOR_COMPILE_THREADS" not in os.environ and _nothing_compiled_yet():
        config.compile_threads = 1


ISA_PROBE = "inductor vector ISAs"
"""The remembered fact (gptkit.autotune) that every vector instruction set this x86 CPU lists built and loaded with
this C++ compiler. Inductor finds it out at each process's first compile by building a test library per
instruction set and loading it in a child Python: 1.0 s of every bf16 training start on a 2-core Xeon."""

_isa = {"asked": False, "trusted": False, "key": None}  # this process: probe skipped; compiler key to remember


def _compiler_identity() -> str | None:
    """The C++ compiler inductor builds with, as a file: resolved path, size, modification time (an upgrade
    changes them). None when there is none."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        name = get_cpp_compiler()
        path = os.path.realpath(shutil.which(name) or name)
        st = os.stat(path)
    except Exception:  # noqa: BLE001 - no compiler (compiling will fail and say so) or an install inductor rejects
        return None
    return f"{path} {st.st_size} {st.st_mtime_ns}"


def _listed_isas() -> list[str]:
    """The vector instruction sets inductor would use on this CPU before probing them (its own list and test)."""
    from torch._inductor import cpu_vec_isa

    flags = cpu_vec_isa.x86_isa_checker()
    return [str(isa) for isa in cpu_vec_isa.supported_vec_isa_list if all(f in flags for f in str(isa).split())]


def _isa_bookkeeping(fn: Callable) -> Callable:
    """Run `fn` and never fail for it: this is a shortcut that reads inductor's internals (another torch may have
    moved them), and without it inductor simply probes as usual."""
    def guarded(*args, **kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - see above
            _log.debug("gptkit: vector-ISA bookkeeping skipped (%s)", e)
    return guarded


@_isa_bookkeeping
def _skip_known_isa_probe() -> None:
    """Before this process's first compile: where an earlier process found every listed instruction set good
    with this compiler (`ISA_PROBE`), tell inductor so (config.cpp.vec_isa_ok) instead of probing again. Not on
    other CPUs (inductor probes only x86), nor where the user set TORCHINDUCTOR_VEC_ISA_OK, nor once something
    else in the process has compiled."""
    if _isa["asked"]:
        return
    _isa["asked"] = True
    from torch._inductor import config

    if (config.cpp.vec_isa_ok is not None or platform.machine() not in ("x86_64", "AMD64")
            or not _nothing_compiled_yet()):  # something compiled before: it has probed already
        return
    key = _compiler_identity()
    if key is None:
        return
    if autotune.recall(ISA_PROBE, key) == _listed_isas():
        config.cpp.vec_isa_ok = True
        _isa["trusted"] = True
    else:
        _isa["key"] = key


@_isa_bookkeeping
def _note_isa_probe(compiled: bool) -> None:
    """After the first compile: remember a probe that passed every listed instruction set; after a failed one
    that trusted the remembered fact, forget it, so that the next process probes again."""
    if compiled and _isa["key"] is not None:
        from torch._inductor import cpu_vec_isa

        listed = _listed_isas()
        if listed and [str(isa) for isa in cpu_vec_isa.valid_vec_isa_list()] == listed:
            autotune.remember(ISA_PROBE, _isa["key"], listed)
        _isa["key"] = None
    if not compiled and _isa["trusted"]:
        autotune.forget(ISA_PROBE)


_shapes: dict[str, bool] = {"vary": False}


def compile_events() -> int:
    """A count that grows whenever torch.compile compiles in this process (a graph, or a backward at its first call);
    0 while dynamo is not loaded. A step across which it moved paid for a compile: its time is not the step's."""
    utils = sys.modules.get("torch._dynamo.utils")
    if utils is None:
        return 0
    return utils.counters["stats"]["unique_graphs"] + sum(utils.counters["inductor"].values())


@contextlib.contextmanager
def shapes_vary():
    """Within it, each CompiledOnUse compiles for shapes that vary from call to call (torch.compile's automatic
    dynamic shapes: a second shape recompiles once with the sizes that changed as run-time symbols, the rest stay
    fixed) instead of once per shape: for loops whose every batch has a shape of its own, as fine-tuning's, each
    padded to its longest example. A tiny bf16 fine-tune of 64 steps compiled 32 graphs per shape and 4 within
    it (benchmarks/compiled_shapes.py)."""
    before = _shapes["vary"]
    _shapes["vary"] = True
    try:
        yield
    finally:
        _shapes["vary"] = before


class CompiledOnUse:
    """`fn` through torch.compile, compiled at its first call: once per shape (dynamic=False), or within
    `shapes_vary` for shapes that vary; eager in a mode once compiling has failed there (in both, when it failed
    before anything compiled: no compiler, say)."""

    MODES = (False, True)  # shapes vary?

    def __init__(self, fn: Callable, what: str) -> None:
        self.fn, self.what = fn, what
        self._compiled: dict[bool, Callable] = {}  # shapes vary? → the compiled function
        self._worked: set[bool] = set()  # the modes that have compiled and run
        self._failed: set[bool] = set()  # the modes that run eagerly

    @property
    def failed(self) -> bool:
        """Whether calls in the current mode (shapes fixed, or within `shapes_vary`) run eagerly."""
        return _shapes["vary"] in self._failed

    def __call__(self, *args):
        vary = _shapes["vary"]
        if vary in self._failed:
            return self.fn(*args)
        first = not self._compiled
        if first:
            _one_compile_worker()
            _skip_known_isa_probe()
        if vary not in self._compiled:
            self._compiled[vary] = torch.compile(self.fn, dynamic=None if vary else False)
        try:  # both modes' graphs are cached on fn's one code object, under one dynamo limit: room for both
            with torch._dynamo.config.patch(recompile_limit=len(self.MODES) * SHAPES_PER_FUNCTION):
                out = self._compiled[vary](*args)
            if first:
                _note_isa_probe(compiled=True)
            self._worked.add(vary)
            return out
        except Exception as e:  # noqa: BLE001 - inductor raises many kinds: no compiler, a failed build
            self._failed.update([vary] if self._worked else self.MODES)
            _note_isa_probe(compiled=False)
            first = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
            _log.warning("gptkit: %s not compiled%s (%s); running it eagerly", self.what,
                         " for shapes that vary" if self._worked else "", first)
            return self.fn(*args)
