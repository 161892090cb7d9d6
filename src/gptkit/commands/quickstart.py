"""`gptkit quickstart`: the main job (gptkit.quickstart does the work)."""

from __future__ import annotations

import argparse

from ..options import from_args
from ..options.quickstart import QuickstartOptions
from . import add_command


def add_quickstart(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "quickstart", QuickstartOptions, cmd_quickstart,
                help="the main job: train a small GPT on Shakespeare for ~5 minutes on a CPU and print a sample")


def cmd_quickstart(args: argparse.Namespace) -> int:
    from ..quickstart import run

    return run(from_args(QuickstartOptions, args))
