"""One writer per run directory (gptkit.runlock): a second writer is refused at once with one line naming the
directory and the holder's process id; the first run's files are untouched; a lock left by `kill -9` does not
block the next run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import assert_one_line_error, run
from gptkit.checkpoint import list_checkpoints
from gptkit.runlock import INHERITED, LOCK_NAME, RunLock, RunLocked, run_lock

TINY = ["--preset", "gpt-nano", "--block-size", "32", "--batch-size", "4", "--eval-iters", "2", "--quiet"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def char_data(shared_data: Path, tmp_path_factory) -> Path:
    from gptkit.data.prepare import prepare

    out = tmp_path_factory.mktemp("data") / "shakespeare_char"
    prepare([str(shared_data / "tinyshakespeare" / "input.txt")], out, tokenizer="char")
    return out


def _wait_for(pred, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not pred():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def test_a_second_lock_is_refused_naming_the_holder(tmp_path: Path) -> None:
    d = tmp_path / "new" / "run"
    with RunLock(d) as lock:
        assert (d / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        with pytest.raises(RunLocked) as e:  # a second open file description: refused even in this process
            RunLock(d)
        assert str(d) in str(e.value) and f"process {os.getpid()}" in str(e.value) and "\n" not in str(e.value)
        assert lock.fd is not None
    assert not d.exists()  # made by the lock, nothing written into it: removed with it
    (tmp_path / "kept").mkdir()
    with RunLock(tmp_path / "kept"):
        (tmp_path / "kept" / "out.txt").write_text("x")
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["out.txt"]  # the lock file goes, outputs stay
    with RunLock(tmp_path / "kept"):  # and it can be taken again
        pass


def test_the_launchers_lock_is_not_taken_again(tmp_path: Path, monkeypatch) -> None:
    with RunLock(tmp_path):
        monkeypatch.setenv(INHERITED, str(tmp_path / LOCK_NAME))
        with run_lock(tmp_path) as held:  # a process a --nproc launcher started for this very directory
            assert held is None
        monkeypatch.setenv(INHERITED, str(tmp_path / "other" / LOCK_NAME))
        with pytest.raises(RunLocked):
            with run_lock(tmp_path):
                pass


def test_a_lock_left_by_kill_9_does_not_block(char_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from gptkit.runlock import RunLock; "
                               f"RunLock({str(out)!r}); print('held', flush=True); time.sleep(600)"],
                              env=ENV, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    rc = subprocess.run([sys.executable, "-m", "gptkit", "train", "--data", str(char_data), "--out", str(out),
                         "--max-iters", "2", *TINY], env=ENV, capture_output=True, text=True)
    assert_one_line_error(rc.returncode, rc.stderr, str(out), f"process {holder.pid}")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (out / LOCK_NAME).read_text() == f"{holder.pid}\n"  # stale: its holder is gone, the kernel freed it
    from gptkit.cli import main

    assert main(["train", "--data", str(char_data), "--out", str(out), "--max-iters", "4", "--eval-interval", "2",
                 *TINY]) == 0
    (out / LOCK_NAME).write_text("999999\n")  # a stale file beside checkpoints: neither listed nor in the way
    assert [p.name for p in list_checkpoints(out)] == ["step-00000002", "step-00000004"]
    assert main(["train", "--data", str(char_data), "--out", str(out), "--max-iters", "6", "--resume",
                 "--quiet"]) == 0
    assert list_checkpoints(out)[-1].name == "step-00000006" and not (out / LOCK_NAME).exists()


def test_two_trainings_on_one_directory(char_data: Path, tmp_path: Path) -> None:
    """Two real `gptkit train` processes on one --out: the second exits 2 at once; the first runs to its end."""
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "gptkit", "train", "--data", str(char_data), "--out", str(out),
                              "--max-minutes", "0.25", "--warmup-iters", "5", "--eval-interval", "20",
                              "--lr", "2e-3", *TINY], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    _wait_for(lambda: (out / LOCK_NAME).is_file() and (out / LOCK_NAME).read_text().strip().isdigit(), first)
    t0 = time.time()
    second = subprocess.run([sys.executable, "-m", "gptkit", "train", "--data", str(char_data), "--out", str(out),
                             "--max-iters", "7", "--lr", "1e-3", *TINY], env=ENV, capture_output=True, text=True)
    assert first.poll() is None, "the first run ended before the second was refused: the test proved nothing"
    assert_one_line_error(second.returncode, second.stderr, str(out), f"process {first.pid}")
    assert time.time() - t0 < 60
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["lr"] == 2e-3 and saved["max_iters"] != 7  # the first run's settings, not the second's
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == saved["max_iters"]
    assert list_checkpoints(out)[-1].name == f"step-{saved['max_iters']:08d}"
    assert not (out / LOCK_NAME).exists()


def test_quickstart_holds_its_directory(shared_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "qs"
    with RunLock(out):
        rc, _, err = run(capsys, "quickstart", "--input", shared_data / "tinyshakespeare" / "input.txt",
                         "--out", out, "--max-iters", "2", "--quiet")
    assert_one_line_error(rc, err, str(out), f"process {os.getpid()}")
    assert not out.exists()  # nothing written: not even the corpus copy
