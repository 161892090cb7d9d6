"""Options of `gptkit scale` (plan, run, fit and forecast a scaling ladder) and `gptkit scale fit RUN...`."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import common
from .generator import opt


@dataclass
class ScaleOptions:
    """A scaling study: a ladder of runs planned for a time budget, the laws fitted to them, a forecast."""

    data: str = opt(None, "prepared data directory (from `gptkit prepare`; it needs a val split)", metavar="DIR")
    out: str = opt(None, "study directory: plan.json, runs/, results.json, fit.json, forecast.json, plots (a "
                         "directory)", metavar="DIR")
    budget_minutes: float = opt(None, "wall-clock minutes for the whole ladder on this machine (the forecast run "
                                      "of --verify comes on top)")
    plan_only: bool = opt(False, "print the plan (and write plan.json) without training")
    target_flops: float | None = opt(None, "forecast at this training compute (default 10x the largest fitted "
                                           "run)", group="target")
    target_minutes: float | None = opt(None, "forecast for a run of this many minutes on this machine",
                                       group="target")
    verify: bool = opt(False, "train the forecast run and report the forecast's relative error")
    ladder: str = opt("isoflop", "isoflop: Chinchilla approach 2 (a few compute levels, several sizes each; "
                                 "fits L(N, D) too); ratio: one size per point at --tokens-per-param",
                      choices=("isoflop", "ratio"))
    points: int = opt(12, "runs in the ladder (at least 5); isoflop spreads them over --levels, at least 3 a "
                          "level, so it trains --levels x max(3, ceil(points / levels)) runs")
    levels: int = opt(4, "isoflop compute levels, each 4x the one below (L(C) has 3 parameters: 4 levels give "
                                  "it an interval)")
    tokens_per_param: float = opt(20.0, "tokens per non-embedding parameter of a ratio run, and where an isoflop "
                                        "level is centred (Chinchilla: about 20)")
    aspect: int = opt(32, "model width per layer (width = aspect x depth)")
    min_depth: int = opt(2, "the family's shallowest model (Kaplan et al. 2020, Fig. 6: models of fewer than 2 "
                            "layers fall off the laws' trend)")
    head_size: int = opt(32, "attention head size (heads = width / head size)")
    block_size: int = opt(256, "context length of every run")
    min_steps: int = opt(100, "the batch is halved until a run has at least this many steps")
    eval_tokens: int = opt(131072, "validation tokens of each run's final evaluation")
    unit: str = opt("nats", "fit the loss in nats per token or in bits per byte of the val text",
                    choices=("nats", "bpb"))
    bootstrap: int = opt(100, "bootstrap resamples of the runs for the laws' intervals")
    seed: int = common.seed("every run and the bootstrap")
    device: str = common.device()
    threads: int | None = common.threads()
    quiet: bool = common.quiet(old={"--no-quiet": None})


@dataclass
class ScaleFitOptions:
    """The laws fitted to finished `gptkit train` runs."""

    runs: list[str] = field(default_factory=list)  # positional RUN... (added by the command)
    out: str | None = opt(None, "write fit.json, scaling.png and isoflop.png here (a directory)", metavar="DIR")
    unit: str = opt("nats", "fit the loss in nats per token or in bits per byte of each run's val text",
                    choices=("nats", "bpb"))
    bootstrap: int = opt(100, "bootstrap resamples of the runs for the laws' intervals")
    seed: int = common.seed("the bootstrap")
