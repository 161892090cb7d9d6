"""`gptkit` command line: the parser of every subcommand, and `main`, which runs one.

Each subcommand's options are a dataclass in gptkit.options and its shell is in gptkit.commands; the heavy modules
(torch, transformers) are imported only by the subcommand that runs, so `gptkit --help` and `gptkit info` start
fast. A user mistake (a GptkitError or a missing file) prints one line, `gptkit: error: ...`, and exits with
status 2; a bug still shows its traceback.
"""

from __future__ import annotations

import argparse
import errno
import gc
import os
import signal
import sys
from typing import Callable

from . import __version__
from .commands.chat import add_chat
from .commands.data import add_data, add_prepare
from .commands.evaluate import add_eval
from .commands.finetune import add_finetune, add_predict
from .commands.info import add_export_hf, add_info
from .commands.quickstart import add_quickstart
from .commands.sample import add_sample
from .commands.scale import add_scale
from .commands.serve import add_serve
from .commands.train import add_train
from .errors import GptkitError, Terminated
from .options import as_typed


# ------------------------------------------------------------------------------------------------ main
class Parser(argparse.ArgumentParser):
    """argparse's parser whose mistakes (a flag of the wrong type, a missing required flag, an unknown command)
    are one line, `gptkit: error: ...`, as every other mistake is, not its usage block; exit status 2. Its
    subcommands' parsers are of this class too (argparse makes them with the parent's class)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"gptkit: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="gptkit", description="The GPT family end to end: pre-train, fine-tune, evaluate, "
                    "sample, serve.")
    parser.add_argument("--version", action="version", version=f"gptkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in ADDERS:
        add(sub)
    return parser


ADDERS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_quickstart, add_info, add_prepare, add_data, add_train, add_sample, add_export_hf, add_finetune,
    add_predict, add_eval, add_serve, add_scale, add_chat]


USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOSPC, errno.EROFS,
               errno.ENAMETOOLONG, errno.EDQUOT, errno.ELOOP}
"""OSErrors that come from what the user pointed gptkit at (a path, a full disk), not from a bug: one line."""


def _terminate(signum, frame) -> None:
    raise Terminated


def is_out_of_memory(e: BaseException) -> bool:
    """A model or batch too large for this machine: MemoryError (numpy's ArrayMemoryError, the interpreter's), or
    torch's allocation failures (CUDA's OutOfMemoryError, the CPU allocator's RuntimeError). torch is not imported
    here: `gptkit --help` stays fast, and a command that ran out of memory in torch has loaded it."""
    oom = getattr(sys.modules.get("torch"), "OutOfMemoryError", None)
    return isinstance(e, MemoryError) or (oom is not None and isinstance(e, oom)) or \
        "can't allocate memory" in str(e) or "out of memory" in str(e).lower()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for commands that re-launch themselves
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    # So that `kill` / `timeout` clean up as Ctrl-C does (only possible from the main thread). Not in a process
    # torchrun started: its agent stops the processes with SIGTERM and, where one sits in a collective that a
    # Python handler cannot interrupt, would wait for its SIGKILL deadline; a resume removes what they left.
    previous = None
    if "RANK" not in os.environ:
        try:
            previous = signal.signal(signal.SIGTERM, _terminate)
        except ValueError:
            pass
    launched = "RANK" in os.environ and bool(os.environ.get("GPTKIT_LAUNCHER"))  # `--nproc`: the launcher reports
    try:
        return int(args.func(args) or 0)
    except GptkitError as e:
        msg = str(e)
        if getattr(args, "options", None) is not None:
            msg = as_typed(msg, args.options, args.argv)
        print(f"gptkit: error: {msg}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"gptkit: error: {e.filename or e}: no such file or directory", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        why = (str(e).splitlines() or [type(e).__name__])[0][:160]
        print(f"gptkit: error: out of memory ({why}); use a smaller model, batch or context", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `gptkit ... | head`: the reader left; not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:
        if e.errno not in USER_ERRNOS:
            raise
        where = f"{e.filename}: " if e.filename else ""  # e.g. "out/x: permission denied"
        print(f"gptkit: error: {where}{(e.strerror or str(e)).lower()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated)
        if not launched:
            print(f"gptkit: {'terminated' if isinstance(e, Terminated) else 'interrupted'}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if argv is None:  # the `gptkit` program, about to exit: spare the interpreter's last collection
            gc.freeze()  # over every torch object still alive (0.4-0.7 s of each command); in-process calls keep it

if __name__ == "__main__":
    sys.exit(main())
