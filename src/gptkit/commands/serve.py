"""`gptkit serve`: the flags; gptkit.serve.cli loads the model and runs uvicorn (imported when it runs)."""

from __future__ import annotations

import argparse

from ..options import from_args
from ..options.serve import ServeCommandOptions
from . import add_command


def add_serve(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "serve", ServeCommandOptions, cmd_serve,
                help="serve a model over HTTP: OpenAI-compatible completions and chat, a playground page")


def cmd_serve(args: argparse.Namespace) -> int:
    from ..serve.cli import serve

    return serve(from_args(ServeCommandOptions, args))
