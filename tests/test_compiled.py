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
