"""gptkit.threadguard: fewer threads while another process takes the CPU, judged on the steps' own times."""

from __future__ import annotations

import pytest
import torch

from gptkit.threadguard import ThreadGuard


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


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
    guard = ThreadGuard(True, said.append)
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
    used = run(ThreadGuard(True, said.append), lambda t, s: (0.02 if t == 2 else 0.026) * rng.uniform(0.7, 1.3),
               3000)
    assert used.count(1) == 0 and not said  # quiet running: never switched (and exact resume holds)
    assert set(run(ThreadGuard(False, said.append), lambda t, s: 0.3 if t == 2 else 0.01, 500)) == {2}
    assert set(run(ThreadGuard(True, said.append, threads=1), lambda t, s: 0.01 if s < 30 else 0.3, 200)) == {2}
