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
    """No time spent waiting for a CPU (the guard then goes by the step times alone)."""
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
    guard = ThreadGuard(True, said.append, waiting=quiet)
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
    used = run(ThreadGuard(True, said.append, waiting=quiet),
               lambda t, s: (0.02 if t == 2 else 0.026) * rng.uniform(0.7, 1.3), 3000)
    assert used.count(1) == 0 and not said  # quiet running: never switched (and exact resume holds)
    assert set(run(ThreadGuard(False, said.append), lambda t, s: 0.3 if t == 2 else 0.01, 500)) == {2}
    assert set(run(ThreadGuard(True, said.append, threads=1), lambda t, s: 0.01 if s < 30 else 0.3, 200)) == {2}


def test_a_run_started_beside_another_job_moves_to_fewer_threads() -> None:
    """From the first step another process keeps a core busy (two threads 300 ms a step, one 40 ms): no window
    was ever faster, but the threads' waiting for a CPU makes the guard try one thread, keep it, and go back to two
    soon after the job ends at step 600."""
    torch.set_num_threads(2)

    def seconds(threads: int, step: int) -> float:
        return {2: 0.3 if step < 600 else 0.02, 1: 0.04 if step < 600 else 0.026}[threads]

    steps_done = [0]

    def waiting() -> float:
        return 0.85 if steps_done[0] < 600 else 0.0

    guard, used = ThreadGuard(True, lambda s: None, waiting=waiting), []
    for step in range(1, 1001):
        used.append(torch.get_num_threads())
        steps_done[0] = step
        guard.after_step(seconds(torch.get_num_threads(), step), step)
    assert set(used[:16]) == {2} and used[25:600].count(1) > 0.9 * 575  # tried after the first judged window
    assert set(used[720:]) == {2}
    guard.close()
    assert set(run(ThreadGuard(True, lambda s: None, waiting=lambda: None), seconds, 500)) == {2}  # no reading


def test_waiting_threads_do_not_keep_a_count_that_is_not_faster() -> None:
    """The threads wait for a CPU, but fewer threads are not faster here: each try is undone, and the next waits
    TRY_GAP times its length, so nearly all steps run on all threads."""
    torch.set_num_threads(2)
    used = run(ThreadGuard(True, lambda s: None, waiting=lambda: 1.0), lambda t, s: 0.02 if t == 2 else 0.026, 2000)
    assert 0 < used.count(1) < 0.12 * 2000 and used[-1] == 2


def test_run_queue_wait_sums_the_threads_waiting_per_second(tmp_path) -> None:
    """RunQueueWait over a task directory written by the test (the layout of /proc/self/task): 0.3 s of waiting
    added across two threads over ~0.3 s reads as ~1 thread-second a second; a thread gone or a file without the
    field is skipped; no readable thread, None. And the real one reads this process."""
    import time
    from pathlib import Path

    from gptkit.threadguard import RunQueueWait

    def write(tid: str, waited_ns: int) -> None:
        (tmp_path / tid).mkdir(exist_ok=True)
        (tmp_path / tid / "schedstat").write_text(f"123456 {waited_ns} 7\n")

    write("100", 5_000_000), write("101", 0)
    wait = RunQueueWait(tmp_path)
    t0 = time.monotonic()
    time.sleep(0.3)
    write("100", 5_000_000 + 200_000_000), write("101", 100_000_000)
    (tmp_path / "102").mkdir()  # a thread whose file is gone
    got, dt = wait(), time.monotonic() - t0
    assert 0.3 / dt - 0.1 < got < 1.05, got
    for tid in ("100", "101"):
        (tmp_path / tid / "schedstat").write_text("garbage\n")
    assert wait() is None and RunQueueWait(tmp_path / "missing")() is None
    if Path("/proc/self/schedstat").exists():  # Linux with the scheduler's statistics (elsewhere: no reading)
        real = RunQueueWait()
        time.sleep(0.01)
        assert real() is not None
