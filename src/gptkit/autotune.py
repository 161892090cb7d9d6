"""Measured, remembered speed choices: where the fastest path depends on the CPU and the shape (the BLAS that
decoding multiplies through, bf16 or float32 autocast for training, the compiled or plain attention and loss of
a bf16 step), measure the candidates once, briefly, on this machine, remember the answer, and say once what was
chosen.

This is the idea of FFTW's planner and cuDNN's benchmark mode, kept small. A decision is keyed by the question,
the machine (CPU model and the instruction-set flags that matter to matrix multiplication, torch's version) and
the shape of the work; it lives in one JSON file in the user's cache directory (`$GPTKIT_CACHE_DIR`, else
`$XDG_CACHE_HOME/gptkit`, else `~/.cache/gptkit`). Explicit flags always win: callers ask `choose()` only for
"auto". A measurement that cannot tell the candidates apart keeps the first one (the simpler, default path): a
challenger must be faster by `min_gain` in its median *and* in most of the alternating rounds.

`GPTKIT_AUTOTUNE=off` skips measuring and takes the default path (the test suite sets it; a test of this module
turns it back on). This module imports no torch: callers hand in the workloads to time.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .env import switch
from .io import atomic_write_text, parse_json

FORMAT = "gptkit-decisions/1"
CACHE_FILE = "decisions.json"
MATMUL_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "amx_int8",
                "avx512_vnni", "asimd", "sve", "bf16")
"""CPU flags (as /proc/cpuinfo names them) that change which matrix-multiplication path is fastest."""


TRAINING_ROUNDS = 7
"""Alternating rounds of the measurements behind training's choices (the dtype, the bf16 attention and loss paths).
A step of a small model lasts tens of milliseconds, so a burst of other work can cover several calls: with 3
rounds one burst once made bf16 look 1.5× faster at a shape where it is 1.3× slower (docs/benchmarks.md); 7 rounds
and `pick`'s majority rule outvote it."""

PATH_MIN_GAIN = 0.10
"""How much faster a bf16 training path (gptkit.cpu_attention, gptkit.lm_loss) must measure to replace the default:
a compiled one costs each process inductor's import and first compile (2-3 s on two cores), and any must clear the
noise of a measurement that cannot tell a few percent apart."""


def cache_path() -> Path:
    if os.environ.get("GPTKIT_CACHE_DIR"):
        return Path(os.environ["GPTKIT_CACHE_DIR"]) / CACHE_FILE
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "gptkit" / CACHE_FILE
    try:
        return Path.home() / ".cache" / "gptkit" / CACHE_FILE
    except RuntimeError:  # no HOME and no passwd entry (a container's arbitrary uid): this user's temp folder
        return Path(tempfile.gettempdir()) / f"gptkit-{getattr(os, 'getuid', lambda: 'user')()}" / CACHE_FILE


def enabled() -> bool:
    return switch("GPTKIT_AUTOTUNE", True)


def cpu_flags() -> set[str]:
    """The instruction-set flags of this CPU (Linux: /proc/cpuinfo; elsewhere empty)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def has_native_bf16(flags: set[str] | None = None) -> bool:
    """AMX or AVX512-BF16: the CPUs on which bf16 matmul runs several times faster than float32."""
    flags = cpu_flags() if flags is None else flags
    return bool({"amx_bf16", "avx512_bf16"} & flags)


def machine_key() -> str:
    """What a decision depends on besides its shape: the CPU, its matmul flags, torch's version, the cores."""
    try:
        from importlib.metadata import version

        torch_version = version("torch")
    except Exception:  # not installed as a distribution (a source build): the module says
        torch_version = getattr(sys.modules.get("torch"), "__version__", "unknown")
    flags = ",".join(sorted(set(MATMUL_FLAGS) & cpu_flags()))
    return f"{cpu_model()} [{flags}] torch {torch_version} cores {os.cpu_count()}"


def _read(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(the decisions in `path`, "") — or (None, why) for a file that holds none: "missing"; "other version" (another
    gptkit's cache format: left alone, so two versions sharing a cache do not wipe each other's); or anything else
    (not JSON, not a cache, unreadable), which the next record replaces."""
    try:
        data = parse_json(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return None, "missing"
    except (OSError, ValueError) as e:  # ValueError: not UTF-8, not JSON
        return None, f"unreadable ({type(e).__name__})"
    fmt = data.get("format") if isinstance(data, dict) else None
    if isinstance(fmt, str) and fmt != FORMAT and fmt.startswith(FORMAT.split("/")[0] + "/"):
        return None, f"other version: written in {fmt}, not {FORMAT}"
    if fmt != FORMAT or not isinstance(data.get("decisions"), dict):
        return None, f"not a gptkit decision cache ({FORMAT})"
    return data["decisions"], ""


def _load(path: Path, warn: bool = True) -> dict[str, Any]:
    """The decisions in `path`; a missing file is empty, a corrupt or foreign one is ignored with one warning."""
    decisions, why = _read(path)
    if decisions is None and why != "missing" and warn:
        print(f"gptkit: warning: ignoring the decision cache {path}: {why}; measuring again", file=sys.stderr)
    return decisions or {}


@contextlib.contextmanager
def _locked(path: Path):
    """The cache's read-modify-write, one process at a time (an flock on a file beside it, where the OS has flock):
    two runs started together would otherwise each keep only its own new records."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: unlocked, as before
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115 - closed below
    except OSError:  # an unwritable cache folder: _store says so
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _store(path: Path, decisions: dict[str, Any]) -> bool:
    """Write the cache; False (and a warning) where it cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"format": FORMAT, "decisions": decisions}, indent=1, sort_keys=True))
        return True
    except OSError as e:  # a read-only home is no reason to fail a run: the choice is just not remembered
        print(f"gptkit: warning: could not remember the choice in {path} ({e.strerror or e})", file=sys.stderr)
        return False


def _put(path: Path, key: str, record: dict[str, Any]) -> bool:
    """Write one record into the cache, read afresh under the lock: another process may have written meanwhile,
    keep its answers. Another gptkit version's cache is left as it is (the record is not kept); a file that is
    no cache at all is replaced. Whether the record was kept."""
    with _locked(path):
        decisions, why = _read(path)
        if why.startswith("other version"):
            return False
        decisions = decisions or {}
        decisions[key] = record
        return _store(path, decisions)


def decision_key(question: str, shape: Mapping[str, Any] | Sequence[Any] | str) -> str:
    if isinstance(shape, Mapping):
        shape = ",".join(f"{k}={shape[k]}" for k in sorted(shape))
    elif not isinstance(shape, str):
        shape = ",".join(map(str, shape))
    return f"{question} | {shape} | {machine_key()}"


def measure(candidates: Mapping[str, Callable[[], Any]], rounds: int = 3,
            clock: Callable[[], float] = time.perf_counter, settle_s: float = 0.0,
            sleep: Callable[[float], Any] = time.sleep) -> dict[str, list[float]]:
    """Seconds per call of each candidate over `rounds` alternating rounds (A B A B ...), after one untimed
    warm-up call each: the machine's drift hits every candidate alike. `settle_s`: an untimed pause before each
    timed call, for candidates whose libraries keep worker threads spinning after their work (OpenBLAS's spin
    for about 0.1 s and took a core from the next candidate: docs/benchmarks.md)."""
    for run in candidates.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, run in candidates.items():
            if settle_s:
                sleep(settle_s)
            t0 = clock()
            run()
            times[name].append(clock() - t0)
    return times


def pick(times: Mapping[str, Sequence[float]], min_gain: float = 0.05) -> str:
    """The first candidate (the default), unless another is faster by `min_gain` in its median and in a
    majority of the rounds. Among several such challengers, the one with the lowest median."""
    names = list(times)
    default = names[0]
    base = times[default]
    best, best_median = default, statistics.median(base)
    for name in names[1:]:
        t = times[name]
        med = statistics.median(t)
        wins = sum(a < b * (1 - min_gain) for a, b in zip(t, base))
        if med < statistics.median(base) * (1 - min_gain) and wins > len(t) / 2 and med < best_median:
            best, best_median = name, med
    return best


def choose(question: str, shape: Mapping[str, Any] | Sequence[Any] | str, options: Sequence[str],
           build: Callable[[], Mapping[str, Callable[[], Any]]], *, rounds: int = 3, min_gain: float = 0.05,
           describe: Callable[[str], str] | None = None,
           measure_fn: Callable[..., dict[str, list[float]]] | None = None, settle_s: float = 0.0) -> str:
    """The remembered answer to `question` for this machine and `shape`, measuring it the first time.

    `options` names the candidates, the default first (kept unless another is clearly faster); `build()` returns,
    for each, a call that runs one representative piece of work, and is only called when a measurement is
    needed. `describe(choice)` words the one line said when a choice is first made; `settle_s` is passed to
    `measure`. With GPTKIT_AUTOTUNE=off the default is returned without measuring or remembering.
    """
    if not enabled() or len(options) < 2:
        return options[0]
    path = cache_path()
    key = decision_key(question, shape)
    known = _load(path).get(key)
    if isinstance(known, dict) and known.get("choice") in options:
        return known["choice"]
    work = build()
    extra = {"settle_s": settle_s} if settle_s else {}
    times = (measure_fn or measure)({name: work[name] for name in options}, rounds=rounds, **extra)
    choice = pick(times, min_gain)
    medians = {name: statistics.median(t) for name, t in times.items()}
    kept = _put(path, key, {"choice": choice, "median_s": medians, "measured": time.strftime("%Y-%m-%dT%H:%M:%S")})
    timing = ", ".join(f"{n} {1e3 * m:.1f} ms" for n, m in medians.items())
    said = describe(choice) if describe else f"{question}: {choice}"
    where = f"measured once on this CPU: {timing}; remembered in {path}" if kept else \
        f"measured on this CPU: {timing}; not remembered, so measured again next time"
    print(f"gptkit: {said} ({where})", file=sys.stderr)
    return choice


def choose_once(memo: dict, key: Any, known: str | None, question: str,
                shape: Mapping[str, Any] | Sequence[Any] | str, options: Sequence[str],
                build: Callable[[], Mapping[str, Callable[[], Any]]], **kw: Any) -> str:
    """`choose`, for a choice a process takes at run time: `memo` holds this process's answers by `key` (its
    code reads them there), answered from first (a run asks twice: the dtype's decision, then the run itself);
    `known`, when not None, is the answer a resumed run recorded, taken as it is."""
    if known is not None:
        memo[key] = known
    if key not in memo:
        memo[key] = choose(question, shape, options, build, **kw)
    return memo[key]


def recall(question: str, shape: Mapping[str, Any] | Sequence[Any] | str) -> Any:
    """A fact remembered about this machine (`remember`), or None: not known, or GPTKIT_AUTOTUNE=off."""
    if not enabled():
        return None
    known = _load(cache_path()).get(decision_key(question, shape))
    return known.get("fact") if isinstance(known, dict) else None


def remember(question: str, shape: Mapping[str, Any] | Sequence[Any] | str, fact: Any) -> None:
    """Keep a fact found on this machine (something slow to find out again, not a speed choice) beside the
    decisions, under the same kind of key."""
    if not enabled():
        return
    _put(cache_path(), decision_key(question, shape), {"fact": fact, "found": time.strftime("%Y-%m-%dT%H:%M:%S")})


def forget(question: str | None = None) -> int:
    """Drop remembered decisions (all, or those of one question); returns how many were dropped."""
    path = cache_path()
    with _locked(path):
        decisions = _load(path)
        drop = [k for k in decisions if question is None or k.split(" | ", 1)[0] == question]
        for k in drop:
            del decisions[k]
        if drop:
            _store(path, decisions)
    return len(drop)
