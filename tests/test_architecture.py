"""The module layers of docs/architecture.md, checked on the source: every import of a gptkit module (lazy ones
included) goes to the same layer or one below, engines reach other engines only where the table allows, the
foundation loads no torch, and no function grows past what a reader can hold."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "gptkit"

# layer of a module: the longest matching prefix wins
LAYERS = {
    # foundation: pure Python (no torch, numpy or tokenizer libraries); what `gptkit --help` loads
    "gptkit.errors": 0, "gptkit.env": 0, "gptkit.io": 0, "gptkit.config": 0, "gptkit.runlock": 0, "gptkit.options": 0,
    "gptkit.serve.config": 0, "gptkit.evaluate.tasks": 0, "gptkit.evaluate.yaml_task": 0,
    "gptkit.evaluate.report": 0, "gptkit.finetune.tasks": 0,
    # core: the model, its tokens, its weights on disk, and the machinery every engine shares
    "gptkit.tokenizer": 1, "gptkit.model": 1, "gptkit.lm_loss": 1, "gptkit.cpu_attention": 1, "gptkit.compiled": 1, "gptkit.flex": 1, "gptkit.generate": 1, "gptkit.chat_template": 1,
    "gptkit.checkpoint": 1, "gptkit.interop": 1, "gptkit.distributed": 1, "gptkit.runtime": 1, "gptkit.optim": 1,
    "gptkit.autotune": 1, "gptkit.threadguard": 1, "gptkit.data.shards": 1, "gptkit.data.sources": 1, "gptkit.data.records": 1,
    "gptkit.data.loader": 1, "gptkit.data.bytes": 1, "gptkit.data.outputs": 1,
    # engines: one job each
    "gptkit.data": 2, "gptkit.train": 2, "gptkit.finetune": 2, "gptkit.evaluate": 2, "gptkit.serve": 2,
    "gptkit.chat": 2, "gptkit.scaling": 2,
    # application: the commands and the jobs that compose engines
    "gptkit": 3, "gptkit.commands": 3, "gptkit.cli": 3, "gptkit.quickstart": 3, "gptkit.__main__": 3,
}
ENGINE_EDGES = {("gptkit.scaling", "gptkit.train")}  # a scaling study runs trainings
NAMES = ("foundation", "core", "engine", "application")


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(mod: str) -> int:
    best = max((p for p in LAYERS if mod == p or mod.startswith(p + ".")), key=len, default=None)
    assert best is not None, f"{mod} is in no layer: add it to LAYERS here and to docs/architecture.md"
    return LAYERS[best]


def engine_of(mod: str) -> str:
    return ".".join(mod.split(".")[:2])


def gptkit_imports(path: Path, src: Path = SRC) -> list[tuple[int, str]]:
    """(line, module) for every import of a gptkit module in `path`, at any depth."""
    me = module_name(path, src)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            if node.module is None:  # from . import x: x may be a module
                found += [(node.lineno, f"{target}.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, target))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "gptkit":
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "gptkit"]
    return found


def sources(src: Path = SRC):
    return sorted(p for p in (src / "gptkit").rglob("*.py"))


def wrong_imports(src: Path = SRC) -> list[str]:
    wrong = []
    for path in sources(src):
        me = module_name(path, src)
        if path.name == "__init__.py":  # package fronts re-export what lies below them
            continue
        for line, target in gptkit_imports(path, src):
            if target == "gptkit.__version__" or target == "gptkit":
                continue
            a, b = layer(me), layer(target)
            same_engine = engine_of(me) == engine_of(target) or (engine_of(me), engine_of(target)) in ENGINE_EDGES
            if b > a or (a == b == 2 and not same_engine):
                wrong.append(f"{path.relative_to(src)}:{line} {me} ({NAMES[a]}) imports {target} ({NAMES[b]})")
    return wrong


def test_every_import_goes_down_or_stays_in_its_engine():
    wrong = wrong_imports()
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_wrong_imports(tmp_path):
    shutil.copytree(PKG, tmp_path / "gptkit")
    with open(tmp_path / "gptkit" / "model.py", "a") as f:  # core reaching up into an engine
        f.write("\n\ndef _bad():\n    from .serve.app import create_app\n")
    with open(tmp_path / "gptkit" / "evaluate" / "runner.py", "a") as f:  # one engine into another
        f.write("\nfrom ..train import train\n")
    wrong = wrong_imports(tmp_path)
    assert len(wrong) == 2 and "gptkit.serve.app (engine)" in wrong[0] + wrong[1]


def test_the_foundation_loads_no_torch():
    foundation = sorted({module_name(p) for p in sources() if layer(module_name(p)) == 0})
    code = (f"import sys, importlib\nfor m in {foundation!r}: importlib.import_module(m)\n"
            "import gptkit.cli\n"
            "print(sorted(m for m in ('torch', 'numpy', 'tokenizers', 'tiktoken') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("limit", [100])
def test_no_function_is_longer_than_a_reader_can_hold(limit):
    long = []
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}: {n} lines")
    assert not long, "\n".join(long)
