"""Shared pytest fixtures. Tests run offline: no model hub, no downloads."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# transformers / huggingface_hub otherwise try the network when asked for a tokenizer or model.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# Speed choices (gptkit.autotune) take their default path without measuring, and never touch the user's cache;
# tests/test_autotune.py turns measuring back on for itself.
os.environ["GPTKIT_AUTOTUNE"] = "off"
os.environ["GPTKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="gptkit-test-cache-")
# The training thread guard (gptkit.threadguard) would see the other test workers as a competing job and change the
# thread count mid-run (not bitwise the same arithmetic): off, except in the tests that turn it on for themselves.
os.environ["GPTKIT_THREAD_GUARD"] = "off"

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
"""The real data sets (../shared/data relative to the repository root); see its README."""


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data; skips the test when that folder is absent (e.g. a bare checkout)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it sits beside the repository as ../shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module of tiny models: they gain nothing from intra-op threads, and on a shared
    2-core machine spinning threads make such a module several times slower. Restored afterwards. A module takes
    it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
