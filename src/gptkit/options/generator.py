"""Dataclass fields → argparse flags: the one generator every `gptkit` command's parser is built with.

A command's options are a dataclass whose fields carry their flag's help (and, where needed, aliases, choices,
metavar, nargs, a mutually exclusive group, hidden old spellings) in `field(metadata=...)`, made with `opt()`.
`add_options` adds one flag per field: `--field-name`, `--x/--no-x` for a bool, the default shown in `--help`.
Every flag's argparse default is None, so `from_args` can tell what the user set (`explicit`) and apply the
precedence field defaults < --config FILE < command line. Imports no torch, numpy or yaml until a file is read.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from dataclasses import field, fields
from pathlib import Path
from typing import Any, TypeVar

from ..env import switch
from ..errors import GptkitError

T = TypeVar("T")
_NO_DEFAULT = dataclasses.MISSING


def opt(default: Any = None, help: str = "", *, flag: str | None = None, aliases: tuple[str, ...] = (),
        old: dict[str, Any] | None = None, choices: tuple | None = None, metavar: str | None = None,
        nargs: str | int | None = None, append: bool = False, required: bool = False, group: str | None = None,
        show_default: bool = True, negatable: bool = True) -> Any:
    """A dataclass field that is a command-line flag.

    flag: the flag's name when it is not `--field-name`; aliases: more visible spellings (e.g. "-i");
    old: hidden spellings kept working (argparse.SUPPRESS), each mapped to None (takes the flag's value) or to
    the constant it stands for (e.g. {"--no-progress": True} on `quiet`); append: the flag repeats, its values
    collected in a list; group: fields sharing a group name are mutually exclusive; negatable=False: a bool
    that is only switched on (`--quiet`, no `--no-quiet`).
    """
    meta = {"help": help, "flag": flag, "aliases": aliases, "old": old or {}, "choices": choices,
            "metavar": metavar, "nargs": nargs, "append": append, "required": required, "group": group,
            "show_default": show_default, "negatable": negatable}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def flag_type(f: dataclasses.Field) -> Any:
    """The argparse type of a field: int, float, str, or "bool" (a --flag/--no-flag pair)."""
    t = str(f.type)
    if "bool" in t:
        return "bool"
    if "int" in t:
        return int
    if "float" in t:
        return float
    return str


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not _NO_DEFAULT:
        return f.default
    if f.default_factory is not _NO_DEFAULT:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _shown(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, (list, tuple)):
        return " ".join(str(x) for x in v)
    if isinstance(v, str) and (not v or v != v.strip() or "\n" in v):
        return repr(v)  # e.g. the prompt "ROMEO:\n"
    return str(v)


def help_text(f: dataclasses.Field) -> str:
    """The field's help with its default, `(default: X)`, unless the default is None (the help then says what
    an absent flag means) or the field asks not to show it."""
    text = f.metadata.get("help", "")
    default = field_default(f)
    if f.metadata.get("show_default", True) and default is not None and not f.metadata.get("required"):
        text = f"{text} (default: {_shown(default)})" if text else f"default: {_shown(default)}"
    return text.replace("%", "%%")


def _argument_kwargs(f: dataclasses.Field) -> dict[str, Any]:
    m, kind = f.metadata, flag_type(f)
    kw: dict[str, Any] = {"dest": f.name, "default": None}
    if kind == "bool":
        kw["action"] = argparse.BooleanOptionalAction if m.get("negatable", True) else "store_true"
        return kw
    kw["type"] = kind
    if m.get("append"):
        kw["action"] = "append"
    for key in ("choices", "metavar", "nargs"):
        if m.get(key) is not None:
            kw[key] = m[key]
    if m.get("required"):
        kw["required"] = True
    return kw


def add_options(parser: argparse.ArgumentParser, cls: type, config_file: bool = False) -> argparse.ArgumentParser:
    """One flag per field of `cls` (plus `--config FILE` when the command reads a YAML file of options)."""
    if config_file:
        parser.add_argument("--config", metavar="FILE",
                            help="YAML file of options (same names as the flags, with _ or -)")
    groups: dict[str, Any] = {}
    for f in fields(cls):
        if "help" not in f.metadata:
            continue  # not a flag (set by the command, not the user)
        m = f.metadata
        target: Any = parser
        if m.get("group"):
            if m["group"] not in groups:
                groups[m["group"]] = parser.add_mutually_exclusive_group()
            target = groups[m["group"]]
        kw = _argument_kwargs(f)
        target.add_argument(flag_name(f), *m.get("aliases", ()), help=help_text(f), **kw)
        for old, const in m.get("old", {}).items():
            hidden = {k: v for k, v in kw.items() if k not in ("required", "choices")}
            if const is not None:  # an old spelling that stands for one value of the new flag
                hidden = {"dest": f.name, "default": None, "action": "store_const", "const": const}
            elif flag_type(f) == "bool":
                hidden["action"] = "store_true" if not old.startswith("--no-") else "store_false"
            parser.add_argument(old, help=argparse.SUPPRESS, **hidden)
    parser.set_defaults(options=cls)  # which dataclass the command's flags are (gptkit.cli names flags as typed)
    return parser


SEED_MAX = 2**32 - 1
"""The largest --seed of any command: numpy's RandomState (datasketch's MinHash) takes no more, and no seed may be
negative (numpy's generators refuse those)."""


THREADS_MAX = 1024
"""The most --threads of any command: far past any CPU's cores; at 20,000 OpenMP could not start them, and at
99,999 the process crashed."""


INT_MAX = 2**63 - 1
"""The largest integer any flag takes: torch and numpy hold counts and sizes in 64 bits, and a larger one failed
deep inside them (OverflowError, "Maximum allowed dimension exceeded")."""


def from_args(cls: type[T], args: argparse.Namespace, error: type[GptkitError] = GptkitError) -> T:
    """The options instance: field defaults < the --config file (if any) < the flags given. Records in
    `.explicit` the names the user set (a flag or the file)."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_yaml_options(cls, args.config, error))
    for f in fields(cls):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    explicit = frozenset(values)
    for name, v in values.items():
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > INT_MAX:
            raise error(f"--{name.replace('_', '-')} {v} is out of range (an integer of at most 2**63 - 1)")
    seed = values.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed <= SEED_MAX:
        raise error(f"--seed must be an integer in 0..{SEED_MAX} (as numpy's generators take), got {seed}")
    threads = values.get("threads")
    if isinstance(threads, int) and not isinstance(threads, bool) and threads > THREADS_MAX:
        raise error(f"--threads must be at most {THREADS_MAX}, got {threads}")  # OpenMP fails, or crashes, above
    if values.get("out") == "":
        raise error("--out must not be empty")  # it would have written into the current directory
    try:
        opts = cls(**{**values, **quick_caps(cls, values)})
    except TypeError as e:
        raise error(str(e)) from None
    opts.explicit = explicit  # type: ignore[attr-defined]
    return opts


QUICK_ENV = "GPTKIT_QUICK"
"""Set to 1, a command whose options class has QUICK caps (train, quickstart, sample) brings its budgets (steps,
minutes, tokens) down to them: a smoke run of a documented command in seconds. tests/test_readme.py runs the
README's commands this way."""


def quick_caps(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Under GPTKIT_QUICK=1, the fields of `values` (or their defaults) above the options class's `QUICK` caps,
    brought down to them, and those named in its `QUICK_FILL` set to their cap when unset (None); one line on
    stderr says what changed. {} otherwise."""
    caps = getattr(cls, "QUICK", None)
    if not caps or not switch(QUICK_ENV, False):
        return {}
    now = {f.name: values.get(f.name, field_default(f)) for f in fields(cls)}
    fill = getattr(cls, "QUICK_FILL", ())
    capped = {name: cap for name, cap in caps.items()
              if (now[name] is None and name in fill) or (isinstance(now[name], (int, float)) and now[name] > cap)}
    if capped:
        shown = ", ".join(f"{n} {now[n]} -> {c}" for n, c in capped.items())
        print(f"gptkit: {QUICK_ENV}=1: {shown}", file=sys.stderr)
    return capped


def check_types(cls: type, values: dict[str, Any], where: str, error: type[GptkitError] = GptkitError) -> None:
    """Each option has its field's type (a YAML file can say `max_iters: 2.5` or `compile: "no"`)."""
    kinds = {f.name: flag_type(f) for f in fields(cls) if "help" in f.metadata}  # not flags: set by the command
    for name, v in values.items():
        kind = kinds.get(name)
        if v is None or kind is None:
            continue
        ok = {"bool": lambda: isinstance(v, bool), int: lambda: isinstance(v, int) and not isinstance(v, bool),
              float: lambda: isinstance(v, (int, float)) and not isinstance(v, bool),
              str: lambda: isinstance(v, str)}[kind]()
        if not ok:
            want = {"bool": "true or false", int: "an integer", float: "a number", str: "a string"}[kind]
            raise error(f"{where}{name} must be {want}, got {v!r}")


def load_yaml_options(cls: type, path: str | Path, error: type[GptkitError] = GptkitError) -> dict[str, Any]:
    """The options a YAML file sets (a mapping of option: value; `-` or `_` in names), type-checked."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise error(f"config file {path} does not exist") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise error(f"config file {path} cannot be read ({type(e).__name__})") from None
    except yaml.YAMLError as e:
        raise error(f"config file {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise error(f"config file {path} must hold a mapping of option: value")
    known = {f.name for f in fields(cls) if "help" in f.metadata}
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - known)
    if unknown:
        raise error(f"config file {path}: unknown option(s) {', '.join(unknown)}")
    for f in fields(cls):  # YAML 1.1 reads `lr: 6e-4` (no dot) as a string: take it as the number
        if flag_type(f) is float and isinstance(data.get(f.name), str):
            try:
                data[f.name] = float(data[f.name])
            except ValueError:
                pass  # check_types names it
    check_types(cls, data, f"config file {path}: ", error)
    return data


def as_typed(message: str, cls: type, argv: list[str]) -> str:
    """An error message with each renamed flag spelled as the user typed it: `--tokens` if they typed the old
    spelling, the new name otherwise (messages from the engines may still name a flag the old way)."""
    for f in fields(cls):
        new = flag_name(f)
        for old, const in f.metadata.get("old", {}).items():
            if const is not None:
                continue
            typed_old = any(a == old or a.startswith(old + "=") for a in argv)
            src, dst = (new, old) if typed_old else (old, new)
            message = re.sub(rf"(?<![\w-]){re.escape(src)}(?![\w-])", dst, message)
    return message
