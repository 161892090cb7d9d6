"""A skip for tests that need torch.compile to build CPU kernels, i.e. a C++ compiler on the machine (inductor's
choice: $CXX where set, else the usual names)."""

import os
import shutil

import pytest

_COMPILERS = (os.environ["CXX"],) if os.environ.get("CXX") else ("g++", "c++", "clang++")

needs_compiler = pytest.mark.skipif(not any(map(shutil.which, _COMPILERS)),
                                    reason="no C++ compiler: torch.compile cannot build CPU kernels here")
