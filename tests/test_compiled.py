"""gptkit.compiled: compiled on first use, in this process unless the user chose compile workers."""

import os
import subprocess
import sys

import pytest
from needs_compiler import needs_compiler

PROBE = """
import torch
from torch._inductor import config
from gptkit.compiled import CompiledOnUse
double = CompiledOnUse(lambda x: x * 2, "a probe")
assert torch.equal(double(torch.arange(3.0)), torch.tensor([0.0, 2.0, 4.0]))
assert not double.failed
print(config.compile_threads)
"""


@needs_compiler
@pytest.mark.parametrize(("env", "threads"), [({}, "1"), ({"TORCHINDUCTOR_COMPILE_THREADS": "2"}, "2")])
def test_it_compiles_in_process_unless_the_user_chose_workers(env, threads):
    clean = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_COMPILE_THREADS"}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == [threads]


@needs_compiler
def test_more_shapes_than_dynamos_default_limit_are_all_compiled():
    import torch

    from gptkit.compiled import CompiledOnUse

    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    triple = CompiledOnUse(lambda x: x * 3, "a probe")
    for n in range(1, 10):  # 9 shapes: dynamo's default limit is 8 a function
        assert torch.equal(triple(torch.ones(n)), torch.full((n,), 3.0))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - before == 9
    assert torch._dynamo.config.recompile_limit == 8  # only around the calls


@needs_compiler
def test_shapes_that_vary_compile_once_for_all_lengths():
    """Within `shapes_vary` (fine-tuning's batches, each of its own length) a second shape recompiles once with the
    changed sizes symbolic, and later lengths reuse it; the width that never changes stays fixed. Outside, each
    shape compiles its own graph again."""
    import torch

    from gptkit.compiled import CompiledOnUse, shapes_vary

    def rows_softmax(x):
        return torch.softmax(x.float() * 2, -1)

    counters = torch._dynamo.utils.counters["stats"]
    f = CompiledOnUse(rows_softmax, "a probe")
    before = counters["unique_graphs"]
    with shapes_vary():
        for n in range(2, 12):
            x = torch.randn(n, 16)
            assert torch.allclose(f(x), rows_softmax(x))
    assert counters["unique_graphs"] - before == 2
    before = counters["unique_graphs"]
    for n in (2, 3, 4):
        f(torch.randn(n, 16))
    assert counters["unique_graphs"] - before == 3


# ------------------------------------------------------------ inductor's vector-ISA probe, remembered
X86 = pytest.mark.skipif(__import__("platform").machine() not in ("x86_64", "AMD64"),
                         reason="inductor probes vector instruction sets only on x86 CPUs")

ISA_PROBE = """
import torch
from torch._inductor import config, cpu_vec_isa
from gptkit.compiled import CompiledOnUse, _listed_isas
double = CompiledOnUse(lambda x: x * 2, "a probe")
assert torch.equal(double(torch.arange(3.0)), torch.tensor([0.0, 2.0, 4.0])) and not double.failed
assert [str(i) for i in cpu_vec_isa.valid_vec_isa_list()] == _listed_isas()
print(config.cpp.vec_isa_ok)
"""


@needs_compiler
@X86
def test_a_passed_isa_probe_is_remembered_and_the_next_process_skips_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_VEC_ISA_OK"}
    env.update(GPTKIT_CACHE_DIR=str(tmp_path), GPTKIT_AUTOTUNE="on")

    def run() -> str:
        return subprocess.run([sys.executable, "-c", ISA_PROBE], env=env, capture_output=True, text=True,
                              check=True).stdout.strip()

    assert run() == "None"  # the first process probes, as inductor always does
    facts = [v["fact"] for k, v in __import__("json").loads((tmp_path / "decisions.json").read_text())[
        "decisions"].items() if k.startswith("inductor vector ISAs | ")]
    assert len(facts) == 1 and facts[0]
    assert run() == "True"  # the next one is told, and lands on the same instruction sets


@pytest.fixture
def isa_state(monkeypatch, tmp_path):
    """compiled.py's probe logic in a fresh state: nothing compiled yet, a known compiler, a real cache."""
    from collections import Counter, defaultdict

    import torch
    from torch._inductor import config

    from gptkit import compiled

    monkeypatch.setenv("GPTKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("GPTKIT_AUTOTUNE", "on")
    monkeypatch.setattr(compiled, "_isa", {"asked": False, "trusted": False, "key": None})
    monkeypatch.setattr(compiled, "_compiler_identity", lambda: "c++ 1 2")
    monkeypatch.setattr(torch._dynamo.utils, "counters", defaultdict(Counter))
    with config.patch({"cpp.vec_isa_ok": None}):  # config objects undo their own patches
        yield compiled, config


@X86
def test_only_the_same_remembered_isas_are_trusted(isa_state):
    compiled, config = isa_state
    from gptkit import autotune

    autotune.remember(compiled.ISA_PROBE, "c++ 1 2", ["some other list"])
    compiled._skip_known_isa_probe()
    assert config.cpp.vec_isa_ok is None and compiled._isa["key"] == "c++ 1 2"  # probes, and will remember
    compiled._isa.update(asked=False, key=None)
    autotune.remember(compiled.ISA_PROBE, "c++ 1 2", compiled._listed_isas())
    compiled._skip_known_isa_probe()
    assert config.cpp.vec_isa_ok is True and compiled._isa["trusted"]


@X86
def test_the_users_setting_wins_and_a_failed_compile_forgets_the_fact(isa_state):
    compiled, config = isa_state
    from gptkit import autotune

    autotune.remember(compiled.ISA_PROBE, "c++ 1 2", compiled._listed_isas())
    config.cpp.vec_isa_ok = False  # TORCHINDUCTOR_VEC_ISA_OK=0
    compiled._skip_known_isa_probe()
    assert config.cpp.vec_isa_ok is False and not compiled._isa["trusted"]
    config.cpp.vec_isa_ok = None
    compiled._isa["asked"] = False
    compiled._skip_known_isa_probe()
    assert compiled._isa["trusted"]
    compiled._note_isa_probe(compiled=False)  # the trusted compile failed: the next process probes again
    assert autotune.recall(compiled.ISA_PROBE, "c++ 1 2") is None


@X86
def test_the_isa_shortcut_never_breaks_a_compile_when_inductors_internals_move(isa_state, monkeypatch):
    compiled, config = isa_state
    from torch._inductor import cpu_vec_isa

    monkeypatch.delattr(cpu_vec_isa, "x86_isa_checker")  # as if another torch had renamed it
    compiled._skip_known_isa_probe()  # no exception: inductor just probes as usual
    assert config.cpp.vec_isa_ok is None
    compiled._isa["key"] = "c++ 1 2"
    compiled._note_isa_probe(compiled=True)  # no exception either


def test_compile_events_move_only_when_something_compiles():
    """gptkit.compiled.compile_events: what fine-tuning's thread guard reads to leave out a step that compiled."""
    import torch

    from gptkit.compiled import compile_events

    f = torch.compile(lambda x: x * 2 + 1, backend="eager", dynamic=False)  # dynamo alone: no C++ compiler needed
    before = compile_events()
    f(torch.randn(3))
    once = compile_events()
    f(torch.randn(3))  # the same shape: the graph is reused
    assert once > before and compile_events() == once
    f(torch.randn(5))  # a new shape: compiled again
    assert compile_events() > once


def test_a_failure_in_one_mode_leaves_the_other_compiled(monkeypatch, caplog):
    """Compiling for shapes that vary failing (and only that) runs those calls eagerly while fixed shapes stay
    compiled (one flag turned both off); failing before anything compiled (no compiler) turns off both, in one
    warning line."""
    import torch

    from gptkit import compiled
    from gptkit.compiled import CompiledOnUse, shapes_vary

    calls = []

    def fake_compile(fn, dynamic):
        def run(*args):
            if dynamic is None or broken_everywhere:
                raise RuntimeError("inductor could not build this")
            calls.append("compiled")
            return fn(*args)
        return run

    monkeypatch.setattr(compiled.torch, "compile", fake_compile)
    monkeypatch.setattr(compiled, "_isa", {"asked": True, "trusted": False, "key": None})  # no probe, state kept
    monkeypatch.setattr(compiled, "_one_compile_worker", lambda: None)
    broken_everywhere = False
    f = CompiledOnUse(lambda x: x + 1, "a probe")
    x = torch.zeros(2)
    with caplog.at_level("WARNING", logger="gptkit.compiled"):
        assert torch.equal(f(x), x + 1) and calls == ["compiled"]
        with shapes_vary():
            assert torch.equal(f(x), x + 1) and f.failed
            f(x)
        assert not f.failed and torch.equal(f(x), x + 1) and calls == ["compiled", "compiled"]
    assert [r.getMessage() for r in caplog.records] == [
        "gptkit: a probe not compiled for shapes that vary (inductor could not build this); running it eagerly"]
    caplog.clear()
    broken_everywhere = True
    g = CompiledOnUse(lambda x: x + 1, "another probe")
    with caplog.at_level("WARNING", logger="gptkit.compiled"):
        assert torch.equal(g(x), x + 1) and g.failed
        with shapes_vary():
            assert torch.equal(g(x), x + 1) and g.failed
    assert len(caplog.records) == 1
