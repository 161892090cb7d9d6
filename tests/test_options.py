"""The options layer: every command's flags come from its options dataclass through one generator. Every flag a
`--help` documents parses into its field, every old spelling reaches the new name, every `--help` shows the
defaults, building the parsers imports no torch, and a bad `--device` is one line in every command."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import dataclasses
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from cli_helpers import assert_one_line_error, run, save_char_ckpt
from gptkit.cli import build_parser
from gptkit.errors import GptkitError
from gptkit.options import add_options, from_args, opt
from gptkit.options.generator import _shown, field_default, flag_name

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {("quickstart",), ("info",), ("prepare",), ("data", "quality", "train"), ("data", "quality", "filter"),
            ("data", "dedup"), ("data", "clean"), ("train",), ("sample",), ("export-hf",), ("finetune",), ("predict",), ("eval",),
            ("serve",), ("scale",), ("scale", "fit"), ("chat",)}


def leaf_parsers(parser: argparse.ArgumentParser, prefix: tuple = ()):
    """(command words, parser) of every command that has options (`data` and `data quality` only group others)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if sub.get_default("options") is not None:
                    yield prefix + (name,), sub
                yield from leaf_parsers(sub, prefix + (name,))


LEAVES = dict(leaf_parsers(build_parser()))
IDS = [" ".join(c) for c in LEAVES]


def documented(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if a.option_strings and a.help != argparse.SUPPRESS and a.dest != "help"]


def value_for(a: argparse.Action) -> str:
    if a.choices:
        return str(list(a.choices)[-1])
    return {int: "3", float: "0.5"}.get(a.type, "v")


def required_argv(p: argparse.ArgumentParser, but: argparse.Action | None = None) -> list[str]:
    flags = [x for a in p._actions if a.required and a.option_strings and a is not but
             for x in (a.option_strings[0], value_for(a))]
    positionals = [value_for(a) for a in p._actions
                   if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]
    return flags + positionals


def flag_fields(cls: type) -> list[dataclasses.Field]:
    """The fields that are flags (a field without help is set by the command, e.g. a positional)."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def test_every_command_is_built_from_its_options_dataclass():
    assert set(LEAVES) == COMMANDS
    for cmd, p in LEAVES.items():
        cls = p.get_default("options")
        assert dataclasses.is_dataclass(cls), cmd
        dests = {a.dest for a in documented(p)} - {"config"}
        assert dests == {f.name for f in flag_fields(cls)}, cmd


@pytest.mark.parametrize("cmd", LEAVES, ids=IDS)
def test_every_documented_flag_parses_into_its_field(cmd):
    p = LEAVES[cmd]
    cls = p.get_default("options")
    checked = 0
    for a in documented(p):
        for spelling in a.option_strings:
            if a.nargs == 0:  # a switch: --x, --no-x (and -i)
                ns = p.parse_args(required_argv(p) + [spelling])
                want = not spelling.startswith("--no-")
            else:
                v = value_for(a)
                ns = p.parse_args(required_argv(p, but=a) + [spelling, v])
                want = a.type(v) if a.type else v
            got = getattr(ns, a.dest)
            if a.dest == "config":
                assert got == "v"
                continue
            value = getattr(from_args(cls, ns), a.dest)  # what the command is given
            flat = value
            while isinstance(flat, list):  # --task X (append of nargs="+"): [["X"]]
                assert len(flat) == 1, (spelling, value)
                flat = flat[0]
            assert flat == want and type(flat) is type(want), (cmd, spelling, value)
            checked += 1
    assert checked >= len(flag_fields(cls))


def old_spellings():
    for cmd, p in LEAVES.items():
        for f in flag_fields(p.get_default("options")):
            for old, const in f.metadata.get("old", {}).items():
                yield cmd, f, old, const


def test_every_old_spelling_is_hidden_and_maps_to_its_new_name():
    seen = 0
    for cmd, f, old, const in old_spellings():
        p = LEAVES[cmd]
        cls = p.get_default("options")
        new = flag_name(f)
        assert not re.search(rf"(?<![\w-]){re.escape(old)}(?![\w-])", p.format_help()), (cmd, old)
        action = next(a for a in p._actions if new in a.option_strings)
        if action.nargs == 0 or const is not None:  # a switch, or a spelling of one value (--no-progress)
            via_old = from_args(cls, p.parse_args(required_argv(p) + [old]))
            want = const if const is not None else not old.startswith("--no-")
            assert getattr(via_old, f.name) is want and f.name in via_old.explicit, (cmd, old)
            if const is not None:
                assert via_old == from_args(cls, p.parse_args(required_argv(p) + [new])), (cmd, old)
        else:
            v = value_for(action)
            via_old = from_args(cls, p.parse_args(required_argv(p, but=action) + [old, v]))
            via_new = from_args(cls, p.parse_args(required_argv(p, but=action) + [new, v]))
            assert via_old == via_new and getattr(via_new, f.name) is not None, (cmd, old)
        seen += 1
    assert seen >= 15


def test_readme_lists_every_rename():
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("|")]
    for cmd, f, old, _ in old_spellings():
        new = flag_name(f)
        assert any(f"`{old}`" in r and f"`{new}`" in r for r in rows), (cmd, old, new)


@pytest.mark.parametrize("cmd", LEAVES, ids=IDS)
def test_help_shows_every_default(cmd, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "2000")  # one line per flag: nothing wrapped inside a default
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*cmd, "--help"])
    assert e.value.code == 0
    blocks = help_blocks(capsys.readouterr().out)
    shown = 0
    for f in flag_fields(LEAVES[cmd].get_default("options")):
        d, block = field_default(f), blocks[flag_name(f)]
        if d is not None and not f.metadata.get("required"):
            assert f"(default: {_shown(d)})" in block, (cmd, block)
            shown += 1
        elif f.metadata.get("required"):
            assert "(default:" not in block, block
    assert shown or cmd == ("export-hf",)


def help_blocks(text: str) -> dict[str, str]:
    """{first spelling of a flag: its invocation and help as one line} from a --help text."""
    blocks: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if line.startswith("  -"):
            key = line.split()[0].rstrip(",")
            blocks[key] = line.strip()
        elif key and line.startswith("   "):
            blocks[key] += " " + line.strip()
        else:
            key = None
    return blocks


def test_sample_help_shows_its_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "2000")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sample", "--help"])
    text = capsys.readouterr().out
    for fragment in ("tokens to generate (default: 200)", "0 means greedy (default: 0.8)", "(default: auto)"):
        assert fragment in text


def test_parsers_and_help_import_no_torch():
    code = ("import contextlib, io, sys\n"
            "from gptkit.cli import build_parser, main\n"
            "build_parser()\n"
            f"for argv in ([\"--help\"], [\"info\"], [\"info\", \"--preset\", \"gpt2\"], "
            f"*[[*c, \"--help\"] for c in {sorted(COMMANDS)!r}]):\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try:\n"
            "            main(list(argv))\n"
            "        except SystemExit:\n"
            "            pass\n"
            "heavy = ('torch', 'numpy', 'fastapi', 'pydantic', 'transformers', 'sklearn', 'matplotlib', 'datasketch',"
            " 'yaml', 'uvicorn', 'safetensors')\n"
            "print(sorted(m for m in heavy if m in sys.modules))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------------ --device
def device_argv(cmd: str, tmp_path: Path, ckpt: Path) -> list[str]:
    return {"train": ["--data", tmp_path / "data", "--out", tmp_path / "run"],
            "finetune": ["--ckpt", ckpt, "--train", tmp_path / "t.jsonl", "--task-type", "classification",
                         "--valid-from-train", "0.1", "--out", tmp_path / "ft"],
            "predict": ["--ckpt", ckpt, "--input", tmp_path / "x.jsonl", "--out", tmp_path / "p.jsonl"],
            "eval": ["--ckpt", ckpt, "--task", "sst2", "--out", tmp_path / "res.json"],
            "sample": ["--ckpt", ckpt], "serve": ["--ckpt", ckpt, "--port", "0"], "chat": ["--ckpt", ckpt],
            "quickstart": ["--out", tmp_path / "qs"],
            "scale": ["--data", tmp_path / "data", "--out", tmp_path / "study", "--budget-minutes", "1"]}[cmd]


DEVICE_COMMANDS = ["train", "finetune", "predict", "eval", "sample", "serve", "quickstart", "scale", "chat"]


def test_device_commands_are_all_tested():
    have = {c[0] for c, p in LEAVES.items() if any("--device" in a.option_strings for a in p._actions)}
    assert have == set(DEVICE_COMMANDS)


@pytest.mark.parametrize("cmd", DEVICE_COMMANDS)
@pytest.mark.parametrize("device", ["tpu", "cuda:7x"])
def test_bad_device_is_one_line_in_every_command(cmd, device, tmp_path, capsys):
    ckpt = save_char_ckpt(tmp_path / "ckpt")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    rc, _, err = run(capsys, cmd, *device_argv(cmd, tmp_path, ckpt), "--device", device)
    assert_one_line_error(rc, err, "unknown device", device)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


THREAD_COMMANDS = ["train", "finetune", "predict", "eval", "sample", "serve", "chat", "scale", "quickstart"]
"""Commands whose --threads are torch's intra-op threads (the data commands' --threads are processes)."""


def test_thread_commands_are_all_tested():
    have = {c[0] for c, p in LEAVES.items() if any("--threads" in a.option_strings for a in p._actions)}
    assert have - {"data", "prepare"} == set(THREAD_COMMANDS)


@pytest.mark.parametrize("cmd", THREAD_COMMANDS)
def test_bad_thread_count_is_one_line_in_every_command(cmd, tmp_path, capsys):
    ckpt = save_char_ckpt(tmp_path / "ckpt")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    rc, _, err = run(capsys, cmd, *device_argv(cmd, tmp_path, ckpt), "--threads", "0")
    assert_one_line_error(rc, err, "--threads must be positive")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_sample_runs_on_the_threads_it_is_given(tmp_path, capsys):
    ckpt = save_char_ckpt(tmp_path / "ckpt")
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        rc, _, err = run(capsys, "sample", "--ckpt", ckpt, "--max-new-tokens", "3", "--seed", "0", "--threads", "1")
        assert rc == 0, err
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------- renames
def test_errors_name_the_flag_as_it_was_typed(tmp_path, capsys):
    for spelling in ("--max-new-tokens", "--tokens"):
        rc, _, err = run(capsys, "quickstart", "--out", tmp_path / "qs", spelling, "-1")
        assert_one_line_error(rc, err, f"{spelling} must be >= 0")
    docs = tmp_path / "a.jsonl"
    docs.write_text('{"text": "one two three four five six"}\n')
    for spelling in ("--min-jaccard", "--threshold"):
        rc, _, err = run(capsys, "data", "dedup", "--input", docs, "--out", tmp_path / "k.jsonl", spelling, "1.5")
        assert_one_line_error(rc, err, f"{spelling} must be in (0, 1]")
    assert not (tmp_path / "k.jsonl").exists()


def test_light_constants_agree_with_the_engines():
    from gptkit.data.prepare import TOKENIZERS
    from gptkit.finetune.loop import FinetuneConfig
    from gptkit.options.data import TOKENIZERS as OPTION_TOKENIZERS
    from gptkit.options.finetune import FinetuneConfig as OptionsFinetuneConfig
    from gptkit.options.train import TrainConfig as OptionsTrainConfig
    from gptkit.train import TrainConfig, TrainError

    assert OPTION_TOKENIZERS == TOKENIZERS
    assert TrainConfig is OptionsTrainConfig and FinetuneConfig is OptionsFinetuneConfig
    assert issubclass(TrainError, GptkitError)


# -------------------------------------------------------------------------------------------- generator
@dataclass
class Toy:
    size: int = opt(4, "a count")
    rate: float | None = opt(None, "a rate", old={"--speed": None})
    fast: bool = opt(False, "a switch")
    quiet: bool = opt(False, "no output", negatable=False, old={"--silent": True})
    a: str | None = opt(None, "one way", group="way")
    b: str | None = opt(None, "the other way", group="way")


def toy_parser() -> argparse.ArgumentParser:
    return add_options(argparse.ArgumentParser(prog="toy", exit_on_error=False), Toy, config_file=True)


def test_generator_precedence_defaults_file_flags(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("size: 7\nrate: 1e-3\n")  # YAML 1.1 reads 1e-3 as a string: taken as the number
    opts = from_args(Toy, toy_parser().parse_args(["--config", str(cfg), "--size", "9", "--fast"]))
    assert (opts.size, opts.rate, opts.fast, opts.quiet) == (9, 1e-3, True, False)
    assert opts.explicit == {"size", "rate", "fast"}
    assert from_args(Toy, toy_parser().parse_args(["--no-fast", "--speed", "2"])) == Toy(fast=False, rate=2.0)
    assert from_args(Toy, toy_parser().parse_args(["--silent"])).quiet is True
    cfg.write_text("size: 2.5\n")
    with pytest.raises(GptkitError, match="size must be an integer, got 2.5"):
        from_args(Toy, toy_parser().parse_args(["--config", str(cfg)]))
    cfg.write_text("colour: red\n")
    with pytest.raises(GptkitError, match=r"unknown option\(s\) colour"):
        from_args(Toy, toy_parser().parse_args(["--config", str(cfg)]))


SHIPPED_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=[p.name for p in SHIPPED_CONFIGS])
def test_shipped_training_configs_load(path):
    """The recipes in configs/ are valid `gptkit train --config` files: every key an option, every value typed."""
    from gptkit.options.train import TrainConfig, load_yaml_config

    assert len(SHIPPED_CONFIGS) >= 2  # pretrain-small-bpe.yaml, english-1h.yaml
    values = load_yaml_config(str(path))
    cfg = dataclasses.replace(TrainConfig(), **values)
    assert values and all(getattr(cfg, k) == v for k, v in values.items())


def test_generator_flags_and_help():
    p = toy_parser()
    text = " ".join(p.format_help().split())
    assert "a count (default: 4)" in text and "a switch (default: off)" in text
    assert "--fast, --no-fast" in text and "--no-quiet" not in text
    assert "--speed" not in text and "--silent" not in text
    with pytest.raises(argparse.ArgumentError):
        p.parse_args(["--a", "x", "--b", "y"])


# ------------------------------------------------------------------------------------------ --tokenizer-dir
def test_tokenizer_dir_gives_a_bare_checkpoint_its_tokenizer(tmp_path, capsys):
    """sample and chat, as eval and serve: a checkpoint saved without a tokenizer works with --tokenizer-dir,
    exactly as the one saved with it; without the flag it is one line that names it; a tokenizer with more ids
    than the model's vocabulary is refused."""
    import string

    from gptkit import GPT, GPTConfig
    from gptkit.tokenizer import Tokenizer

    tok = Tokenizer.train_char(string.printable)  # every character of the chat template
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=8))
    model.tokenizer = tok
    model.save_pretrained(full := tmp_path / "full")
    tok.save(tmp_path / "tok")
    model.tokenizer = None
    model.save_pretrained(tmp_path / "bare")
    Tokenizer.train_char(string.printable + "éèàüößçñ").save(tmp_path / "big")
    for cmd, flags in (("sample", ["--prompt", "hello", "--max-new-tokens", "12", "--temperature", "0"]),
                       ("chat", ["--prompt", "hello", "--max-new-tokens", "12", "--temperature", "0"])):
        rc, want, err = run(capsys, cmd, "--ckpt", full, *flags)
        assert rc == 0, err
        rc, got, err = run(capsys, cmd, "--ckpt", tmp_path / "bare", "--tokenizer-dir", tmp_path / "tok", *flags)
        assert rc == 0 and got == want, err
        rc, _, err = run(capsys, cmd, "--ckpt", tmp_path / "bare", *flags)
        assert_one_line_error(rc, err, "has no tokenizer: pass --tokenizer-dir DIR")
        rc, _, err = run(capsys, cmd, "--ckpt", full, "--tokenizer-dir", tmp_path / "big", *flags)
        assert_one_line_error(rc, err, "ids but the model only")


@pytest.mark.parametrize("argv", [
    ["train", "--data", "d", "--out", "o"], ["prepare", "--input", "i", "--out", "o"],
    ["data", "dedup", "--input", "i", "--out", "o.jsonl"], ["data", "quality", "train", "--positive", "p",
                                                            "--negative", "n", "--out", "m"],
    ["data", "quality", "filter", "--model", "m", "--input", "i", "--out", "o.jsonl"],
    ["finetune", "--ckpt", "c", "--train", "t", "--out", "o", "--valid", "v"], ["sample", "--ckpt", "c"]])
@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_a_seed_out_of_range_is_one_line_before_anything_runs(argv, seed, tmp_path, capsys, monkeypatch):
    """numpy's generators take seeds in 0..2**32-1 (a negative one was a traceback from deep in training, after
    the run directory was written); every command says so in one line before it reads or writes anything."""
    monkeypatch.chdir(tmp_path)
    rc, _, err = run(capsys, *argv, "--seed", seed)
    assert_one_line_error(rc, err, f"--seed must be an integer in 0..{2**32 - 1}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags, fragment", [
    (["--threads", "99999"], "--threads must be at most 1024"),  # OpenMP crashed the process (signal 11) there
    (["--out", ""], "--out must not be empty"),  # it trained into the current directory
    (["--n-embd", str(2**20), "--n-head", "1", "--n-layer", "1"], "GiB of memory")])  # a 13 TB model: one line
def test_absurd_sizes_are_one_line_and_write_nothing(flags, fragment, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    (tmp_path / "t.txt").write_text("hello world, the quick brown fox\n" * 200)
    assert run(capsys, "prepare", "--input", tmp_path / "t.txt", "--out", data, "--quiet")[0] == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = ["train", "--data", data, "--max-iters", "1", "--block-size", "16", "--quiet"]
    rc, _, err = run(capsys, *argv, *(["--out", tmp_path / "run"] if "--out" not in flags else []), *flags)
    assert_one_line_error(rc, err, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
