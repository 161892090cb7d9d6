"""`gptkit train`: pre-train a GPT (one process, or `--nproc N` processes launched through torchrun)."""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import TrainError
from ..options import from_args
from ..options.train import TrainConfig
from . import add_command


def add_train(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "train", TrainConfig, cmd_train, help="pre-train a GPT on prepared data (or resume a run)",
                description="Pre-train a GPT. Precedence: defaults < --config FILE < command line.", config_file=True)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of a command line; `.explicit` names what the user set (a flag or the --config file), so
    --resume keeps the run's own values for the rest."""
    return from_args(TrainConfig, args, TrainError)


def launch_torchrun(nproc: int, argv: list[str], threads: int | None = None) -> int:
    """Re-run this `gptkit train` command with `nproc` processes on this machine, through torchrun's own
    launcher (torch.distributed.launcher, what `torchrun --standalone` runs): a fresh rendezvous on a free port,
    no restarts. A process that fails has said why itself (one `gptkit: error:` line for a user's mistake);
    the launcher's report of it becomes one line and the process's exit code."""
    import logging
    import uuid

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    args = [a for i, a in enumerate(argv) if a != "--nproc" and (i == 0 or argv[i - 1] != "--nproc")
            and not a.startswith("--nproc=")]
    # as torchrun does, keep N processes from each starting a thread per core; --threads sets it
    os.environ.setdefault("OMP_NUM_THREADS", str(threads or max(1, (os.cpu_count() or 1) // nproc)))
    for name in list(logging.root.manager.loggerDict):  # each of its modules sets its own level
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.ERROR)  # its warnings as it stops the other processes
    os.environ["GPTKIT_LAUNCHER"] = "1"  # the processes leave "interrupted" to this one
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    try:
        elastic_launch(config, sys.executable)("-u", "-m", "gptkit", *args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        code = failure.exitcode
        if code == 130:  # Ctrl-C reached the processes first
            raise KeyboardInterrupt from None
        if code != 2:  # 2: a user's mistake, already explained by the process
            print(f"gptkit: error: training process {rank} of {nproc} failed (exit code {code}); its output is "
                  f"above", file=sys.stderr)
        return code if code > 0 else 1
    except SignalException as e:  # Ctrl-C / SIGTERM: the launcher has stopped the processes
        import signal

        from ..errors import Terminated

        raise (Terminated if e.sigval == signal.SIGTERM else KeyboardInterrupt) from e
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .. import distributed as D
    from ..runtime import pick_device
    from ..train import preflight, train

    cfg = config_from_args(args)
    pick_device(cfg.device)  # an unknown or absent device: one line before anything is read or launched
    if cfg.nproc and cfg.nproc > 1 and not D.launched_by_torchrun():
        from ..runlock import INHERITED, RunLock

        with RunLock(cfg.out) as lock:  # held here for the processes it starts (they do not take it again)
            os.environ[INHERITED] = str(lock.path.resolve())
            preflight(cfg, cfg.nproc)
            return launch_torchrun(cfg.nproc, args.argv, cfg.threads)
    try:
        summary = train(cfg)
    except BaseException:
        D.shutdown()
        raise
    D.shutdown(together=True)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    val = summary["val_loss"]
    print(f"done: {summary['steps']} steps in {summary['elapsed_s']:.1f} s"
          + (f", val loss {val:.4f}" if val is not None else "") + f"; run in {summary['run_dir']}")
    return 0
