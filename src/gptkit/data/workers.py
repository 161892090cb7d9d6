"""Worker processes for the data commands (`gptkit prepare`'s tokenizing, `gptkit data dedup`'s signatures).

One policy for both: one process below `SMALL_CORPUS_BYTES` of input (starting workers costs more than they save),
else the usable cores, at most 8; batches go to the workers and come back in input order, at most
2 · workers + 2 in flight, so memory stays bounded whatever the corpus size (`Pool.imap` would read the whole
corpus ahead). The output never depends on the number of workers.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

SMALL_CORPUS_BYTES = 8 << 20
K = TypeVar("K")


def default_workers(total_bytes: int) -> int:
    """Processes for `total_bytes` of input (module docstring)."""
    if total_bytes < SMALL_CORPUS_BYTES:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


@contextlib.contextmanager
def worker_pool(workers: int, progress, initializer: Callable[..., None] | None = None,
                initargs: tuple = ()) -> Iterator[ProcessPoolExecutor | None]:
    """`workers` processes (None for one: the work runs in the caller), shut down when the block ends.

    A ProcessPoolExecutor rather than a multiprocessing.Pool: when a worker dies, e.g. killed for memory, it
    raises instead of waiting forever. fork where the platform has it (Linux): workers start in milliseconds and,
    unlike spawn, do not re-run the caller's `__main__`, so the data functions also work from a script without an
    `if __name__ == "__main__":` guard and from notebooks. The `progress` display's thread is stopped while the
    workers are forked (one is started at once), so no other thread runs at the fork. TOKENIZERS_PARALLELISM=false
    in the workers keeps Hugging Face tokenizers from warning that the parent already used its thread pool, and
    keeps N workers from each starting a pool of their own. Elsewhere (macOS, Windows): spawn.
    """
    if workers <= 1:
        yield None
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods and sys.platform == "linux" else "spawn")
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    progress.stop()
    try:
        pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_start, initargs=(initializer,
                                                                                                 initargs))
    finally:
        if saved is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
    try:
        with _signals_held():  # the workers are forked here (all at the first submit): none may run the caller's
            started = pool.submit(int)  # SIGTERM handler; start them now, while no other thread runs
        started.result()
        progress.start()
        yield pool
    except BaseException:  # Ctrl-C, SIGTERM (Terminated), an error: stop the workers, do not wait for them
        _stop_now(pool)
        raise
    pool.shutdown(wait=True, cancel_futures=True)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGTERM and SIGINT held back (blocked, not lost) in this thread while workers are forked: a forked worker
    starts with them blocked and the caller's handlers installed, and `_worker_start` puts its own in place before
    it lets them through. A signal that arrives meanwhile reaches the caller when this block ends."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX: spawned workers start with default handlers anyway
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _worker_start(initializer: Callable[..., None] | None, initargs: tuple) -> None:
    """A worker's first act: SIGTERM ends it at once (the default: a forked worker inherited the caller's handler,
    which raised inside the pool and, hit during start-up, hung `pool.shutdown` for good), and SIGINT is left to
    the caller (Ctrl-C reaches the whole process group; the caller stops the workers). Then the caller's
    initializer."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if initializer is not None:
        initializer(*initargs)


def _stop_now(pool: ProcessPoolExecutor) -> None:
    """Shut `pool` down without waiting for its work: cancel what is queued and end the workers (a worker in the
    middle of a batch, or one that died with a task's data still in the pipe, left `shutdown(wait=True)` waiting
    for ever)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # the executor's own (private) record
    calls = getattr(pool, "_call_queue", None)
    if calls is not None:  # its feeder thread may sit writing a task into a pipe no worker will read: exit anyway
        calls.cancel_join_thread()
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        with contextlib.suppress(Exception):
            p.terminate()
    for p in processes:
        with contextlib.suppress(Exception):
            p.join(timeout=5)


def ordered_map(fn: Callable[..., Any], jobs: Iterable[tuple[K, tuple]], pool: ProcessPoolExecutor | None,
                workers: int) -> Iterator[tuple[K, Any]]:
    """(key, fn(*args)) for each (key, args) of `jobs`, in order: computed here when `pool` is None, else in the
    pool's workers with at most 2 · workers + 2 jobs in flight. Only `args` travel to a worker, never `key`."""
    if pool is None:
        for key, args in jobs:
            yield key, fn(*args)
        return
    inflight: collections.deque = collections.deque()
    for key, args in jobs:
        inflight.append((key, pool.submit(fn, *args)))
        if len(inflight) >= 2 * workers + 2:
            k, fut = inflight.popleft()
            yield k, fut.result()
    while inflight:
        k, fut = inflight.popleft()
        yield k, fut.result()
