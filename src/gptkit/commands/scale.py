"""`gptkit scale`: plan, train, fit and forecast a scaling ladder; `gptkit scale fit RUN...`: fit finished runs."""

from __future__ import annotations

import argparse
import math
import sys

from ..options import add_options, from_args
from ..options.scale import ScaleFitOptions, ScaleOptions


def _warn(msg: str) -> None:
    print(f"gptkit: warning: {msg}", file=sys.stderr)


def check_scale(opts: ScaleOptions) -> None:
    """The options a study cannot start without, each refused in one line."""
    from ..data.sources import is_prepared_dir
    from ..scaling.plan import ScaleError

    for name in ("data", "out", "budget_minutes"):
        if getattr(opts, name) is None:
            raise ScaleError(f"--{name.replace('_', '-')} is required (or use `gptkit scale fit RUN...`)")
    for name in ("budget_minutes", "target_flops", "target_minutes", "tokens_per_param"):
        v = getattr(opts, name)
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ScaleError(f"--{name.replace('_', '-')} must be a positive number, got {v}")
    for name in ("points", "levels", "aspect", "head_size", "block_size", "min_steps", "min_depth", "eval_tokens",
                 "threads"):
        v = getattr(opts, name)
        if v is not None and v <= 0:
            raise ScaleError(f"--{name.replace('_', '-')} must be positive, got {v}")
    if opts.bootstrap < 0:
        raise ScaleError(f"--bootstrap must be >= 0, got {opts.bootstrap}")
    if is_prepared_dir(opts.out):  # its runs would sit inside the data (as train refuses)
        raise ScaleError(f"--out {opts.out} is a `gptkit prepare` output (it holds manifest.json): choose another "
                         f"directory for the study")
    for name, most in UPPER.items():
        v = getattr(opts, name)
        if v is not None and v > most:
            raise ScaleError(f"--{name.replace('_', '-')} must be at most {most:,}, got {v:,}")


UPPER = {"budget_minutes": 525_600, "target_minutes": 525_600, "target_flops": 1e30, "tokens_per_param": 10_000,
         "points": 256, "levels": 16, "min_depth": 256, "aspect": 4096, "head_size": 4096, "block_size": 65_536,
         "min_steps": 10**9, "bootstrap": 100_000}
"""The largest value of each of scale's sizes: a year of minutes, a ladder of 256 runs, the planner's deepest model
(gptkit.scaling.plan.ratio_depth). Past them the plan ran for hours (a budget of 10**12 minutes probed ever larger
models) or allocated tens of GB (--min-depth 1000) before anything was said."""


def cmd_scale(args: argparse.Namespace) -> int:
    from ..scaling.study import run_study
    from ..runtime import pick_device

    opts = from_args(ScaleOptions, args)
    check_scale(opts)
    pick_device(opts.device)  # an unknown or absent device: one line before anything is read
    run_study(opts, warn=_warn)
    return 0


def cmd_scale_fit(args: argparse.Namespace) -> int:
    from ..scaling.study import fit_runs

    from ..scaling.plan import ScaleError

    opts = from_args(ScaleFitOptions, args)
    if not 0 <= opts.bootstrap <= UPPER["bootstrap"]:
        raise ScaleError(f"--bootstrap must be in 0..{UPPER['bootstrap']:,}, got {opts.bootstrap:,}")
    fit_runs(opts, warn=_warn)
    return 0


def add_scale(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scale", help="scaling laws: plan and train a ladder of runs, fit L(C) and L(N, D), forecast "
                       "a bigger run (and verify it)",
                       description="Plan a ladder of model sizes and token budgets for a time budget, train it "
                       "(resumable), fit the scaling laws and forecast a bigger run. `gptkit scale fit RUN...` fits "
                       "finished runs. See docs/scaling.md.")
    add_options(p, ScaleOptions)
    p.set_defaults(func=cmd_scale)
    modes = p.add_subparsers(dest="scale_mode", metavar="fit")
    f = modes.add_parser("fit", help="fit the laws to finished `gptkit train` runs",
                         description="Fit L(C) and L(N, D) to finished `gptkit train` runs.")
    f.add_argument("runs", nargs="+", metavar="RUN", help="run directories (from `gptkit train` or `gptkit scale`)")
    add_options(f, ScaleFitOptions)
    f.set_defaults(func=cmd_scale_fit)
