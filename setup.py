"""Build steps pyproject.toml cannot say: put ``gptkit_lm_eval.pth`` at the root of site-packages.

The metadata is all in pyproject.toml. The .pth file imports ``_gptkit_lm_eval`` (src/_gptkit_lm_eval.py) at
interpreter start-up, which lets lm-eval's own ``lm_eval --model gptkit`` command find gptkit's model with lm-eval
releases that read no plugin entry points (see that module). A .pth file only runs from a site-packages folder
itself, so it must sit at the root of the wheel, beside the packages:

- wheel (``pip install .``, ``pip wheel``, ``python -m build``): ``build_py`` writes it at the root of build_lib,
  whose whole tree goes into the wheel;
- editable (``pip install -e .``, PEP 660): setuptools builds an editable wheel holding only its own
  ``__editable__.*.pth`` (the path to src/); ``editable_wheel`` here adds ours to that wheel, with its RECORD line,
  so pip installs and uninstalls it like any other file.

The file is written here rather than shipped, so an sdist needs no MANIFEST entry for it. Its name sorts after
``__editable__.gptkit-*.pth``: site-packages' .pth files run in name order, and in an editable install the hook
module is found through that file's path line.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import zipfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH_NAME = "gptkit_lm_eval.pth"
# one line; site runs lines that start with "import". A missing module (a removed editable checkout) stays silent.
PTH_TEXT = 'import sys; exec("try:\\n    import _gptkit_lm_eval\\nexcept ImportError:\\n    pass")\n'


class build_py_with_pth(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:  # the editable wheel gets it from editable_wheel_with_pth
            target = Path(self.build_lib, PTH_NAME)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(PTH_TEXT, encoding="utf-8")

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        return outputs if self.editable_mode else [*outputs, os.path.join(self.build_lib, PTH_NAME)]


def _add_to_wheel(wheel: Path, name: str, data: bytes) -> None:
    """Add a file at the root of a wheel and its line to the wheel's RECORD (rewrites the zip)."""
    with zipfile.ZipFile(wheel) as z:
        members = [(info, z.read(info)) for info in z.infolist()]
    records = [info for info, _ in members if info.filename.endswith(".dist-info/RECORD")]
    if len(records) != 1:
        raise RuntimeError(f"{wheel.name}: expected one .dist-info/RECORD, found {len(records)}")
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    tmp = wheel.with_name(wheel.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
        for info, content in members:
            if info is records[0]:
                rows = [row for row in csv.reader(io.StringIO(content.decode())) if row and row[0] != name]
                own = [row for row in rows if row[0] == info.filename]  # RECORD's own row stays last
                rows = [row for row in rows if row[0] != info.filename] + [[name, f"sha256={digest}", str(len(data))]]
                text = io.StringIO()
                csv.writer(text, lineterminator="\n").writerows(rows + own)
                content = text.getvalue().encode()
            elif info.filename == name:
                continue
            out.writestr(info, content)
        entry = zipfile.ZipInfo(name, date_time=records[0].date_time)
        entry.external_attr, entry.compress_type = 0o644 << 16, zipfile.ZIP_DEFLATED
        out.writestr(entry, data)
    tmp.replace(wheel)


class editable_wheel_with_pth(editable_wheel):
    def run(self) -> None:
        before = {p: p.stat().st_mtime_ns for p in Path(self.dist_dir).glob("*.whl")} \
            if self.dist_dir and Path(self.dist_dir).is_dir() else {}
        super().run()
        built = [p for p in Path(self.dist_dir).glob("*.whl") if before.get(p) != p.stat().st_mtime_ns]
        if len(built) != 1:
            raise RuntimeError(f"expected one editable wheel in {self.dist_dir}, found {[p.name for p in built]}")
        _add_to_wheel(built[0], PTH_NAME, PTH_TEXT.encode())


setup(cmdclass={"build_py": build_py_with_pth, "editable_wheel": editable_wheel_with_pth})
