"""A skip for tests that need torch.compile to build CPU kernels, i.e. a C++ compiler on the machine."""

import shutil

import pytest

needs_compiler = pytest.mark.skipif(not any(map(shutil.which, ("g++", "c++", "clang++"))),
                                    reason="no C++ compiler: torch.compile cannot build CPU kernels here")
