"""The `gptkit` subcommands as thin shells: parse the options (gptkit.options), call the engine, print.

Each module registers its command(s) with `add_*(sub)` and holds the `cmd_*` handlers. Nothing heavy is imported
at module level (torch, numpy, fastapi load inside a handler, when that command runs), so building the whole
parser stays fast. gptkit.cli lists the adders and runs `main`.
"""

from __future__ import annotations

import argparse
from typing import Callable

from ..options import add_options

Handler = Callable[[argparse.Namespace], "int | None"]


def add_command(sub: argparse._SubParsersAction, name: str, options: type, handler: Handler, help: str,
                description: str | None = None, config_file: bool = False) -> argparse.ArgumentParser:
    """A subcommand whose flags are the fields of `options`, run by `handler(args)`."""
    p = sub.add_parser(name, help=help, description=description or help[:1].upper() + help[1:] + ".")
    add_options(p, options, config_file=config_file)
    p.set_defaults(func=handler)
    return p
