"""gptkit.autotune: measured, remembered choices. The measurements are faked, so the decision logic is tested
exactly: which candidate wins, that the answer is read back instead of measured again, and that a cache file
that is not ours is ignored with one warning line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from gptkit import autotune


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("GPTKIT_AUTOTUNE", "on")
    return tmp_path / autotune.CACHE_FILE


def fake(times: dict[str, list[float]]):
    """A measure function that reports `times` and counts its calls."""
    calls = []

    def measure_fn(work, rounds):
        calls.append(sorted(work))
        return {name: times[name] for name in work}

    return measure_fn, calls


def work():
    return {"numpy": lambda: None, "torch": lambda: None}


def test_pick_keeps_the_default_unless_clearly_faster():
    assert autotune.pick({"a": [1.0, 1.0, 1.0], "b": [0.5, 0.5, 0.5]}) == "b"
    assert autotune.pick({"a": [1.0, 1.0, 1.0], "b": [0.98, 0.97, 0.99]}) == "a"  # within 5%: cannot tell
    # faster in the median but not in most paired rounds: noise, keep the default
    assert autotune.pick({"a": [1.0, 0.5, 0.5], "b": [0.4, 0.6, 0.6]}) == "a"
    assert autotune.pick({"a": [1.0] * 3, "b": [0.8] * 3, "c": [0.6] * 3}) == "c"
    assert autotune.pick({"a": [1.0] * 3, "b": [2.0] * 3}) == "a"


def test_a_measurement_decides_and_is_remembered(cache, capsys):
    measure_fn, calls = fake({"numpy": [1.0, 1.1, 1.0], "torch": [0.6, 0.7, 0.6]})
    got = autotune.choose("decode blas", {"n_embd": 768}, ["numpy", "torch"], work, measure_fn=measure_fn,
                          describe=lambda c: f"decoding multiplies through {c}")
    assert got == "torch" and len(calls) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "decoding multiplies through torch" in err and str(cache) in err
    saved = json.loads(cache.read_text())
    assert saved["format"] == autotune.FORMAT
    [(key, entry)] = saved["decisions"].items()
    assert key.startswith("decode blas | n_embd=768 | ") and entry["choice"] == "torch"
    # read back: no second measurement, nothing said
    again, calls2 = fake({"numpy": [0.1] * 3, "torch": [9.0] * 3})
    assert autotune.choose("decode blas", {"n_embd": 768}, ["numpy", "torch"], work, measure_fn=again) == "torch"
    assert calls2 == [] and capsys.readouterr().err == ""
    # another shape is another decision
    third, calls3 = fake({"numpy": [0.1] * 3, "torch": [9.0] * 3})
    assert autotune.choose("decode blas", {"n_embd": 1024}, ["numpy", "torch"], work, measure_fn=third) == "numpy"
    assert len(calls3) == 1 and len(json.loads(cache.read_text())["decisions"]) == 2


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": "other", "decisions": {}}),
                                     json.dumps(["a list"]), "\udcff"])
def test_a_corrupt_or_foreign_cache_is_ignored_with_one_warning(cache, capsys, content):
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(content, encoding="utf-8", errors="surrogateescape")
    measure_fn, calls = fake({"numpy": [1.0] * 3, "torch": [0.5] * 3})
    assert autotune.choose("q", "s", ["numpy", "torch"], work, measure_fn=measure_fn) == "torch"
    err = capsys.readouterr().err.splitlines()
    warnings = [line for line in err if "warning" in line]
    assert len(warnings) == 1 and str(cache) in warnings[0], err
    assert json.loads(cache.read_text())["format"] == autotune.FORMAT  # replaced by a valid cache


def test_another_gptkit_versions_cache_is_left_alone(cache, capsys):
    """A cache in another version's format (two gptkit versions sharing ~/.cache/gptkit): ignored with one warning
    line, measured again, and left as it was, rather than replaced by this version's one record."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    theirs = json.dumps({"format": "gptkit-decisions/99", "decisions": {"k": {"choice": "x"}}})
    cache.write_text(theirs)
    measure_fn, calls = fake({"numpy": [1.0] * 3, "torch": [0.5] * 3})
    assert autotune.choose("q", "s", ["numpy", "torch"], work, measure_fn=measure_fn) == "torch"
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "gptkit-decisions/99" in warnings[0]
    assert cache.read_text() == theirs and len(calls) == 1


def test_writers_in_two_processes_keep_each_others_records(cache):
    """The cache's read-modify-write under a lock: two processes remembering 40 facts each at once keep all 80
    (without the lock a review's run kept 108 of 200)."""
    code = ("import sys; from gptkit import autotune\n"
            "for i in range(40): autotune.remember('q', f'{sys.argv[1]}-{i}', i)")
    env = {**os.environ, "GPTKIT_CACHE_DIR": str(cache.parent), "GPTKIT_AUTOTUNE": "on"}
    procs = [subprocess.Popen([sys.executable, "-c", code, name], env=env) for name in ("a", "b")]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    assert len(json.loads(cache.read_text())["decisions"]) == 80


def test_no_home_directory_falls_back_to_a_temporary_folder(monkeypatch):
    """No HOME and no passwd entry (a container's arbitrary uid): Path.home() raises; the cache goes to this user's
    temporary folder instead of the choice crashing."""
    for name in ("GPTKIT_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: (_ for _ in ()).throw(RuntimeError("no home"))))
    assert autotune.cache_path().parent.parent == Path(tempfile.gettempdir())


def test_a_remembered_choice_that_is_no_longer_offered_is_measured_again(cache):
    m1, _ = fake({"numpy": [1.0] * 3, "torch": [0.5] * 3})
    autotune.choose("q", "s", ["numpy", "torch"], work, measure_fn=m1)
    m2, calls = fake({"numpy": [1.0] * 3, "other": [2.0] * 3})
    assert autotune.choose("q", "s", ["numpy", "other"], lambda: {"numpy": None, "other": None},
                           measure_fn=m2) == "numpy"
    assert len(calls) == 1


def test_off_takes_the_default_without_measuring(cache, monkeypatch):
    monkeypatch.setenv("GPTKIT_AUTOTUNE", "off")
    measure_fn, calls = fake({"numpy": [1.0] * 3, "torch": [0.1] * 3})

    def build():
        raise AssertionError("nothing is built when autotuning is off")

    assert autotune.choose("q", "s", ["numpy", "torch"], build, measure_fn=measure_fn) == "numpy"
    assert calls == [] and not cache.exists()


@pytest.mark.parametrize("value, on, warned", [("off", False, False), (" FALSE ", False, False), ("no", False, False),
                                              ("0", False, False), ("yes", True, False), ("", True, False),
                                              ("of", True, True), ("banana", True, True)])
def test_a_switch_is_on_or_off_and_a_typo_says_so(monkeypatch, capsys, value, on, warned):
    """GPTKIT_AUTOTUNE=of (a typo) silently measured; GPTKIT_QUICK=false turned the quick caps on. A value that is
    neither on nor off keeps the default and says so once."""
    from gptkit import env

    monkeypatch.setattr(env, "_warned", set())
    monkeypatch.setenv("GPTKIT_AUTOTUNE", value)
    assert autotune.enabled() is on and autotune.enabled() is on
    err = capsys.readouterr().err
    assert (err.count("warning: GPTKIT_AUTOTUNE=") == 1) is warned and err.count("\n") == int(warned), err
    monkeypatch.setenv("GPTKIT_QUICK", value)
    assert env.switch("GPTKIT_QUICK", False) is (on and value.strip() not in ("",) and not warned)


def test_measure_alternates_and_times_each_call():
    order = []
    ticks = iter(range(100))
    times = autotune.measure({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, rounds=2,
                             clock=lambda: float(next(ticks)))
    assert order == ["a", "b", "a", "b", "a", "b"]  # one warm-up each, then alternating rounds
    assert times == {"a": [1.0, 1.0], "b": [1.0, 1.0]}


def test_measure_pauses_untimed_before_each_timed_call():
    events = []
    ticks = iter(range(100))
    autotune.measure({"a": lambda: events.append("a"), "b": lambda: events.append("b")}, rounds=2,
                     clock=lambda: float(next(ticks)), settle_s=0.25, sleep=lambda s: events.append(s))
    assert events == ["a", "b", 0.25, "a", 0.25, "b", 0.25, "a", 0.25, "b"]  # not before the warm-ups


def test_an_unwritable_cache_warns_and_still_answers(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("GPTKIT_CACHE_DIR", str(blocker / "sub"))  # a directory under a file: cannot be made
    monkeypatch.setenv("GPTKIT_AUTOTUNE", "on")
    m, _ = fake({"numpy": [1.0] * 3, "torch": [0.5] * 3})
    assert autotune.choose("q", "s", ["numpy", "torch"], work, measure_fn=m) == "torch"
    err = capsys.readouterr().err
    assert "could not remember" in err and "not remembered, so measured again" in err  # it said "remembered in"
    assert "remembered in" not in err


def test_forget(cache):
    m, _ = fake({"numpy": [1.0] * 3, "torch": [0.5] * 3})
    autotune.choose("q1", "s", ["numpy", "torch"], work, measure_fn=m)
    autotune.choose("q2", "s", ["numpy", "torch"], work, measure_fn=m)
    assert autotune.forget("q1") == 1
    assert [k.split(" | ")[0] for k in json.loads(cache.read_text())["decisions"]] == ["q2"]
    assert autotune.forget() == 1


def test_machine_key_names_the_cpu_and_torch():
    key = autotune.machine_key()
    assert "torch" in key and autotune.cpu_model() in key
    assert autotune.has_native_bf16({"avx2", "avx512_bf16"}) and autotune.has_native_bf16({"amx_bf16"})
    assert not autotune.has_native_bf16({"avx2", "fma"})


def test_a_remembered_fact_is_read_back_per_key_beside_the_decisions(cache, monkeypatch):
    assert autotune.recall("a fact", "k1") is None
    autotune.remember("a fact", "k1", ["x", "y"])
    autotune.choose("decoding blas", {"n": 1}, ("torch", "numpy"), work, measure_fn=fake(
        {"torch": [1.0] * 3, "numpy": [2.0] * 3})[0])
    assert autotune.recall("a fact", "k1") == ["x", "y"] and autotune.recall("a fact", "k2") is None
    assert len(json.loads(cache.read_text())["decisions"]) == 2  # the decision did not drop the fact
    assert autotune.forget("a fact") == 1 and autotune.recall("a fact", "k1") is None
    autotune.remember("a fact", "k1", "z")
    monkeypatch.setenv("GPTKIT_AUTOTUNE", "off")  # off: nothing is read or kept
    assert autotune.recall("a fact", "k1") is None


def test_choose_once_answers_from_the_process_first_and_takes_a_known_answer(cache, monkeypatch):
    measured = []
    monkeypatch.setattr(autotune, "measure", lambda work, rounds, **kw: measured.append(1) or
                        {"a": [1.0] * rounds, "b": [0.5] * rounds})
    memo = {}
    args = ("q", {"n": 1}, ("a", "b"), lambda: {"a": lambda: None, "b": lambda: None})
    assert autotune.choose_once(memo, "k", None, *args) == "b" and memo == {"k": "b"} and measured == [1]
    cache.unlink()  # not on disk any more: the process's own answer still holds, nothing is measured again
    assert autotune.choose_once(memo, "k", None, *args) == "b" and measured == [1]
    assert autotune.choose_once(memo, "k", "a", *args) == "a" and memo == {"k": "a"}  # a resumed run's answer
    assert autotune.choose_once({}, "k2", "a", *args) == "a" and measured == [1]
