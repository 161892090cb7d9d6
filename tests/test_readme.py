"""Executable docs: every shell command in README.md runs, in order, in a fresh directory, as a user who copies
them would run it, and what it makes has the shape the README describes.

Two things differ from a user's terminal, both documented in the README: the install prefix of the two quick-start
commands (`python3 -m venv .venv && . .venv/bin/activate && pip install ... && `) is left out, since the suite
runs inside that environment already, and GPTKIT_QUICK=1 is set, which brings every budget (steps, minutes,
sampled tokens) down to seconds (gptkit.options.generator.quick_caps). The second quick-start command, the test
suite itself, is not run from inside the test suite: it is the command CI runs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL = re.compile(r"^python3 -m venv \.venv && \. \.venv/bin/activate && pip install [^&]+&& ")
TEST_COMMAND = re.compile(r"(^|\s)python -m pytest\b")


def shell_blocks(markdown: str, lang: str = "bash") -> list[str]:
    """The fenced ```bash blocks of a Markdown text, in order."""
    return re.findall(rf"^```{lang}\n(.*?)^```", markdown, flags=re.S | re.M)


def commands(markdown: str) -> list[str]:
    """Each shell command of the README's bash blocks: continuation lines joined, comments and blank lines
    dropped, the install prefix taken off, the test-suite command left out."""
    out = []
    for block in shell_blocks(markdown):
        for cmd in re.sub(r"\\\n\s*", "", block).splitlines():
            cmd = cmd.strip()
            if not cmd or cmd.startswith("#"):
                continue
            cmd = INSTALL.sub("", cmd)
            if not TEST_COMMAND.search(cmd):
                out.append(cmd)
    return out


def user_env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # the environment's `gptkit` and `python`
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "GPTKIT_QUICK": "1",
            "PYTHONPATH": str(REPO / "src")}


def run(cmd: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, env=user_env(), capture_output=True, text=True,
                          timeout=timeout)


def check_shape(cmd: str, res: subprocess.CompletedProcess, cwd: Path) -> None:
    """What the README says each kind of command prints or writes."""
    if cmd.startswith("gptkit quickstart"):
        assert res.stdout.startswith("ROMEO:") and len(res.stdout) > len("ROMEO:\n") + 20, res.stdout
        assert re.search(r"trained \d+ steps, val loss \d+\.\d{3}", res.stderr), res.stderr
        assert (cwd / "runs/quickstart/corpus").is_dir()  # what the tour starts from
    elif cmd.startswith("gptkit prepare"):
        out = cwd / re.search(r"--out (\S+)", cmd).group(1)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["tokenizer"]["kind"] == re.search(r"--tokenizer-kind (\S+)", cmd).group(1)
    elif cmd.startswith("gptkit train"):
        run_dir = cwd / re.search(r"--out (\S+)", cmd).group(1)
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert rows and all({"step", "train_loss", "lr", "elapsed_s"} <= r.keys() for r in rows)
        assert any("val_loss" in r for r in rows)
        assert (run_dir / "loss.png").stat().st_size > 1000
        assert "warmup_iters" in json.loads((run_dir / "train_config.json").read_text())
        assert any(p.name.startswith("step-") for p in (run_dir / "checkpoints").iterdir())
    elif cmd.startswith("gptkit sample"):
        prompt = re.search(r'--prompt "([^"]*)"', cmd).group(1)
        assert res.stdout.startswith(prompt) and len(res.stdout) > len(prompt), res.stdout


def test_readme_commands_parse():
    cmds = commands((REPO / "README.md").read_text())
    assert cmds[0].startswith("gptkit quickstart"), "the main job runs first: the tour starts from its corpus"
    assert all(not c.startswith(("python3 -m venv", "pip ")) for c in cmds), cmds
    assert sum(bool(TEST_COMMAND.search(b)) for b in shell_blocks((REPO / "README.md").read_text())) == 1


def test_a_broken_command_fails_the_run(tmp_path):
    broken = "```bash\ngptkit prepare --input no/such/corpus --tokenizer-kind char --out data/x\n```\n"
    [cmd] = commands(broken)
    res = run(cmd, tmp_path, timeout=120)
    assert res.returncode != 0 and "no/such/corpus" in res.stderr


def test_every_readme_command_runs_in_order(tmp_path):
    """The quick start's main job, then the tour on the corpus it wrote, then the README's Python."""
    for cmd in commands((REPO / "README.md").read_text()):
        res = run(cmd, tmp_path)
        assert res.returncode == 0, f"README command failed ({res.returncode}): {cmd}\n{res.stderr[-3000:]}"
        check_shape(cmd, res, tmp_path)
    for code in shell_blocks((REPO / "README.md").read_text(), lang="python"):
        res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=user_env(), capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0, f"README Python failed:\n{code}\n{res.stderr[-3000:]}"
        assert res.stdout.strip(), "the README's Python prints a sample"


@pytest.mark.parametrize("name", ["train", "quickstart", "sample"])
def test_quick_mode_caps_budgets_and_says_so(name, monkeypatch, capsys):
    from gptkit.cli import build_parser
    from gptkit.options import from_args
    from gptkit.options.quickstart import QuickstartOptions
    from gptkit.options.sample import SampleOptions
    from gptkit.options.train import TrainConfig

    cls, argv = {"train": (TrainConfig, ["train", "--max-iters", "5000"]),
                 "quickstart": (QuickstartOptions, ["quickstart"]),
                 "sample": (SampleOptions, ["sample", "--ckpt", "x", "--max-new-tokens", "999"])}[name]
    args = build_parser().parse_args(argv)
    monkeypatch.delenv("GPTKIT_QUICK", raising=False)
    full = from_args(cls, args)
    monkeypatch.setenv("GPTKIT_QUICK", "1")
    quick = from_args(cls, args)
    changed = {k for k in cls.QUICK if getattr(full, k) != getattr(quick, k)}
    assert changed and all(getattr(quick, k) == cls.QUICK[k] for k in changed)
    assert "GPTKIT_QUICK=1" in capsys.readouterr().err
    assert quick.explicit == full.explicit  # a cap is not the user's choice (a resume keeps the run's own)
