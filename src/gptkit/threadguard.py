"""Fewer CPU threads while another process takes the cores a training run uses.

torch splits each operator's work over all its intra-op threads and waits for the slowest. When another CPU-bound
process takes one of the cores, every operator waits for a thread the OS has descheduled: on a 2-core Xeon a
competing `python -c "while True: pass"` made the quickstart's steps 11-17× slower at two threads, where one
thread ran them 5.4× faster than two (100 steps: 5.0 s against 27.1 s). `ThreadGuard` watches the steps' own
times (evaluations and checkpoints aside; `gptkit finetune`, whose batches differ in size, hands it each step's
time scaled to a batch of the mean size) in windows of WINDOW steps. When a window is SLOWER times slower than the
fastest one on all threads, it tries half of them for a window and keeps them if that is faster; while on fewer
threads it tries all of them again now and then (and at once when the steps get faster), and goes back when they
are faster again. Each try is followed by a pause of TRY_GAP times its length, so tries that lose cost little.
A run started beside the other job has no faster window to compare with; for it the guard also reads how long its
threads waited for a CPU during the window (`RunQueueWait`, the scheduler's count in /proc/self/task/*/schedstat),
and at WAITING thread-seconds a second or more tries fewer threads all the same.

Some of torch's CPU kernels split their sums by thread (a bias gradient, at gpt-nano's shape; nanoGPT's recipe
shape, without biases, gave bitwise the same 30 steps at one and two threads on the Xeon), so a run the guard has
switched is a correct run, but not bitwise the one a quiet machine gives; in quiet running it does not switch
(steps that vary by ±30% never look like another job, and its threads wait for no CPU), and exact resume holds as
before. `--threads N` fixes the count and turns the guard off, as does torchrun (its processes share out the
cores already); GPTKIT_THREAD_GUARD=off turns it off too (the test suite does, since its parallel workers are
exactly such other processes, and its exact-resume tests need a fixed count).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .env import switch


class RunQueueWait:
    """How long this process's threads waited for a CPU between two readings: each thread's time runnable but not
    running (the second field of /proc/self/task/*/schedstat, the scheduler's own count), summed, per second of
    wall time. Quiet: ~0; two threads on two cores beside one busy process: ~0.85. Unlike the machine's load it
    counts only what this process loses, so other tenants of a container's host, on CPUs it does not run on, do
    not count. None where the file cannot be read (not Linux, a kernel without schedstats) or before a first
    reading."""

    def __init__(self, tasks: Path = Path("/proc/self/task")) -> None:
        self.tasks = tasks
        self.last = self._read()

    def _read(self) -> tuple[float, float] | None:
        total, read = 0, False
        try:
            names = os.listdir(self.tasks)
        except OSError:
            return None
        for tid in names:
            try:
                total += int((self.tasks / tid / "schedstat").read_text().split()[1])
                read = True
            except (OSError, IndexError, ValueError):  # a thread that just ended, or no schedstats
                continue
        return (total / 1e9, time.monotonic()) if read else None

    def __call__(self) -> float | None:
        now, last = self._read(), self.last
        self.last = now
        if now is None or last is None or now[1] <= last[1]:
            return None
        return max(0.0, (now[0] - last[0]) / (now[1] - last[1]))


class ThreadGuard:
    WINDOW = 8
    """Steps a speed is judged on, after one step at a new thread count to settle."""

    SLOWER = 2.0
    """A window this many times slower than the fastest on all threads makes the guard try fewer."""

    MARGIN = 0.05
    """A tried thread count is kept when its window is faster than the one before by more than this share."""

    TRY_GAP = 10.0
    """After a try, no other before TRY_GAP times its length in step time has passed: tries that lose (beside
    another job all threads can be 7× slower for a window) then cost at most ~10% of the time while it runs."""

    FASTER = 0.15
    """On fewer threads, a window this share faster than when they were chosen (the other job has ended or
    eased off) tries all threads at once, whatever the pause."""

    WAITING = 0.3
    """Thread-seconds a second this process's threads waited for a CPU during a window on all threads that make the
    guard try fewer, whatever the step times say (a run started beside another job has no faster window to compare
    with): ~0.85 beside one busy process on two cores, ~0 when quiet."""

    def __init__(self, on: bool, say: Callable[[str], None], threads: int | None = None,
                 waiting: Callable[[], float | None] | None = None) -> None:
        self.full = threads or torch.get_num_threads()
        self.fewer = max(1, self.full // 2)
        self.on = on and self.full > 1 and switch("GPTKIT_THREAD_GUARD", True)
        self.waiting = (waiting or RunQueueWait()) if self.on else None
        self.now = self.full
        self.say = say
        self.best = math.inf  # the fastest window's mean step time on all threads
        self.fewer_ref = math.inf  # the window mean on fewer threads when they were chosen (or last kept)
        self.kept = math.inf  # the last window's mean at the count in use before a try
        self.trying_since: float | None = None  # the guard's clock when the current try began
        self.trying_from = 0  # the first step of the current try
        self.times: list[float] = []
        self.settle = self.WINDOW  # the first steps (allocations, warm caches) are not judged
        self.clock = 0.0  # the steps' own seconds so far
        self.next_try = 0.0

    def after_step(self, took: float, step: int) -> None:
        """Count one step's own seconds; at the end of a window, judge it (and maybe change the thread count)."""
        if not self.on:
            return
        self.clock += took
        if self.settle:
            self.settle -= 1
            return
        self.times.append(took)
        if len(self.times) < self.WINDOW:
            return
        mean = sum(self.times) / len(self.times)
        self.times = []
        waited = self.waiting() if self.waiting else None  # read every window: each reading covers one window
        if self.now == self.full:
            self.best = min(self.best, mean)
        if self.trying_since is not None:
            self._judge(mean)
        elif self._worth_a_try(mean, waited):
            self.kept, self.trying_since, self.trying_from = mean, self.clock, step + 1
            self._use(self.fewer if self.now == self.full else self.full)

    @property
    def trying(self) -> bool:
        """Whether the steps now run on a thread count the guard is only trying (the current window decides)."""
        return self.trying_since is not None

    def _worth_a_try(self, mean: float, waited: float | None) -> bool:
        if self.now != self.full:
            return self.clock >= self.next_try or mean < (1 - self.FASTER) * self.fewer_ref
        crowded = waited is not None and waited >= self.WAITING
        return self.clock >= self.next_try and (mean > self.SLOWER * self.best or crowded)

    def _judge(self, mean: float) -> None:
        tried, before = self.now, self.full if self.now != self.full else self.fewer
        if mean < self.kept * (1 - self.MARGIN):
            why = "the CPU is busy with another process" if tried < self.full else "the CPU is free again"
            self.say(f"gptkit: training on {tried} thread{'s' * (tried > 1)} from step {self.trying_from} ({why}): "
                     f"{mean * 1e3:.0f} ms a step against {self.kept * 1e3:.0f} ms on {before}")
            self.fewer_ref = mean if tried < self.full else math.inf
        else:
            self._use(before)
            if before < self.full:
                self.fewer_ref = min(self.fewer_ref, self.kept)
        self.next_try = self.clock + self.TRY_GAP * (self.clock - self.trying_since)
        self.trying_since = None

    def close(self) -> None:
        """Give torch back the thread count the run began with."""
        if self.now != self.full:
            self._use(self.full)

    def _use(self, threads: int) -> None:
        torch.set_num_threads(threads)
        self.now, self.settle, self.times = threads, 1, []
