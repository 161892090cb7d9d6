"""gptkit.threadguard: fewer threads while another process takes the CPU, judged on the steps' own times."""

from __future__ import annotations

import pytest
import torch

from gptkit.threadguard import ThreadGuard


@pytest.fixture(autouse=True)
def _threads(monkeypatch):
    monkeypatch.setenv("GPTKIT_THREAD_GUARD", "on")  # the suite turns it off (tests/conftest.py)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def quiet() -> float:
    """No other process busy (the guard then goes by the step times alone)."""
    return 0.0


def run(guard: ThreadGuard, seconds, steps: int) -> list[int]:
    """Feed the guard `steps` steps whose time is seconds(threads in use, step); the thread count at each step."""
    used = []
    for step in range(1, steps + 1):
        used.append(torch.get_num_threads())
        guard.after_step(seconds(torch.get_num_threads(), step), step)
    return used


def test_fewer_threads_while_another_process_runs_then_all_again() -> None:
    """Two threads: 20 ms a step when quiet, 300 ms beside another job (steps 200-1,200), where one thread takes
    40 ms (and 26 ms when quiet). The guard moves to one thread soon after the job starts, tries two now and then,
    and is back on two soon after the job ends; the steps' total time is a fraction of the unguarded one."""
    def seconds(threads: int, step: int) -> float:
        busy = 200 <= step < 1200
        return {2: 0.3 if busy else 0.02, 1: 0.04 if busy else 0.026}[threads]

    said = []
    torch.set_num_threads(2)
    guard = ThreadGuard(True, said.append, others=quiet)
    used = run(guard, seconds, 2000)
    assert set(used[:200]) == {2}
    assert used[200 + 2 * 9:1200].count(1) > 0.9 * (1000 - 18)  # within two windows of the job starting
    switch_back = next(i for i in range(1200, 2000) if used[i] == 2)
    assert switch_back < 1200 + 120 and set(used[switch_back + 10:]) == {2}
    assert [s.split(" from step")[0] for s in said] == ["gptkit: training on 1 thread", "gptkit: training on 2 threads"]
    total = sum(seconds(t, s) for s, t in enumerate(used, 1))
    assert total < 0.3 * sum(seconds(2, s) for s in range(1, 2001))
    guard.close()
    assert torch.get_num_threads() == 2


def test_no_switch_in_quiet_running_and_none_when_off() -> None:
    """Quiet steps that vary ±40% never look like another job; the guard off (`--threads N`, torchrun) does
    nothing at all."""
    import random

    rng = random.Random(0)
    torch.set_num_threads(2)
    said = []
    used = run(ThreadGuard(True, said.append, others=quiet),
               lambda t, s: (0.02 if t == 2 else 0.026) * rng.uniform(0.7, 1.3), 3000)
    assert used.count(1) == 0 and not said  # quiet running: never switched (and exact resume holds)
    assert set(run(ThreadGuard(False, said.append), lambda t, s: 0.3 if t == 2 else 0.01, 500)) == {2}
    assert set(run(ThreadGuard(True, said.append, threads=1), lambda t, s: 0.01 if s < 30 else 0.3, 200)) == {2}


def test_a_run_started_beside_another_job_moves_to_fewer_threads() -> None:
    """From the first step another process keeps a core busy (two threads 300 ms a step, one 40 ms): no window
    was ever faster, but the cores busy elsewhere make the guard try one thread, keep it, and go back to two soon
    after the job ends at step 600."""
    torch.set_num_threads(2)

    def seconds(threads: int, step: int) -> float:
        return {2: 0.3 if step < 600 else 0.02, 1: 0.04 if step < 600 else 0.026}[threads]

    steps_done = [0]

    def others() -> float:
        return 1.0 if steps_done[0] < 600 else 0.0

    guard, used = ThreadGuard(True, lambda s: None, others=others), []
    for step in range(1, 1001):
        used.append(torch.get_num_threads())
        steps_done[0] = step
        guard.after_step(seconds(torch.get_num_threads(), step), step)
    assert set(used[:16]) == {2} and used[25:600].count(1) > 0.9 * 575  # tried after the first judged window
    assert set(used[720:]) == {2}
    guard.close()
    assert set(run(ThreadGuard(True, lambda s: None, others=lambda: None), seconds, 500)) == {2}  # no reading


def test_cores_busy_elsewhere_do_not_keep_a_count_that_is_not_faster() -> None:
    """Other processes busy, but fewer threads are not faster here: each try is undone, and the next waits
    TRY_GAP times its length, so nearly all steps run on all threads."""
    torch.set_num_threads(2)
    used = run(ThreadGuard(True, lambda s: None, others=lambda: 1.0), lambda t, s: 0.02 if t == 2 else 0.026, 2000)
    assert 0 < used.count(1) < 0.12 * 2000 and used[-1] == 2


def test_other_load_reads_the_machine_less_this_process(tmp_path) -> None:
    """OtherLoad against a /proc/stat written by the test: 1.5 cores' worth of busy time added over ~0.3 s of
    sleeping (this process uses next to none) reads as ~1.5 cores; an unreadable or foreign file reads None."""
    import os
    import time

    from gptkit.threadguard import OtherLoad

    tick = os.sysconf("SC_CLK_TCK")
    stat = tmp_path / "stat"

    def write(busy_jiffies: int) -> None:  # user nice system idle iowait irq softirq steal
        stat.write_text(f"cpu  {busy_jiffies} 0 0 5000 0 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")

    write(1000)
    load = OtherLoad(stat)
    t0 = time.monotonic()
    time.sleep(0.3)
    write(1000 + round(1.5 * 0.3 * tick))
    cores, dt = load(), time.monotonic() - t0
    assert 1.5 * 0.3 / dt - 0.15 < cores < 1.55, cores
    stat.write_text("intr 1 2 3\n")
    assert load() is None
    assert OtherLoad(tmp_path / "missing")() is None
