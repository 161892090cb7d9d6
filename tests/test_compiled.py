"""gptkit.compiled: compiled on first use, in this process unless the user chose compile workers."""

import os
import subprocess
import sys

import pytest

PROBE = """
import torch
from torch._inductor import config
from gptkit.compiled import CompiledOnUse
double = CompiledOnUse(lambda x: x * 2, "a probe")
assert torch.equal(double(torch.arange(3.0)), torch.tensor([0.0, 2.0, 4.0]))
assert not double.failed
print(config.compile_threads)
"""


@pytest.mark.parametrize(("env", "threads"), [({}, "1"), ({"TORCHINDUCTOR_COMPILE_THREADS": "2"}, "2")])
def test_it_compiles_in_process_unless_the_user_chose_workers(env, threads):
    clean = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_COMPILE_THREADS"}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == [threads]
