"""A scaling study end to end: plan → run the ladder → fit → forecast [→ verify], and `fit` of any finished runs.

OUT/plan.json      the data's facts, the rules' inputs and every run (written before training; a rerun reuses it,
                   so a resumed study trains the same ladder; delete it to plan again)
OUT/runs/NAME/     one `gptkit train` run per point (and forecast-* for --verify)
OUT/results.json   each run's final validation loss (nats/token and bits/byte) or why it has none
OUT/fit.json       the laws' parameters with bootstrap intervals, approach 2's minima, N_opt/D_opt exponents
OUT/forecast.json  target_flops, largest_fitted_flops, predicted_val_loss, predicted_interval, each law's prediction
                   (+ verified_val_loss, relative_error(s))
OUT/scaling.png, OUT/isoflop.png
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..checkpoint import checkpoint_config, list_checkpoints
from ..data.bytes import val_bytes_per_token
from ..data.loader import read_manifest
from ..io import atomic_write_json, parse_json
from .fit import (
    collinear,
    compute_envelope,
    compute_groups,
    fit_envelope,
    fit_law,
    isoflop_minima,
    optimal_exponents,
)
from .forecast import caveats, check_verifiable, forecast, target_flops, verified
from .plan import MIN_POINTS, PlanSpec, Point, ScaleError, check_data, plan_ladder
from .report import fit_lines, plan_table, plot_isoflop, plot_scaling
from .runner import RunContext, final_record, run_ladder, run_settings, train_point
from .speed import MeasuredSpeed

UNITS = ("nats", "bpb")


def data_facts(data_dir: str) -> dict:
    """What the plan needs from a prepared directory: vocabulary, split sizes, the val bytes per token."""

    m = read_manifest(data_dir)
    val = int(m["splits"]["val"]["tokens"])
    if val == 0:
        raise ScaleError(f"{data_dir} has no validation split: the fit needs a validation loss (prepare it with "
                         f"--val-fraction > 0)")
    return {"data": str(data_dir), "tokenizer": m["tokenizer"]["kind"], "vocab_size": int(m["tokenizer"]["vocab_size"]),
            "train_tokens": int(m["splits"]["train"]["tokens"]), "val_tokens": val,
            "val_bytes": val_bytes_per_token(data_dir)}


def spec_of(opts: Any, facts: dict) -> PlanSpec:
    return PlanSpec(vocab_size=facts["vocab_size"], block_size=opts.block_size, train_tokens=facts["train_tokens"],
                    budget_minutes=opts.budget_minutes, ladder=opts.ladder, points=opts.points,
                    tokens_per_param=opts.tokens_per_param, aspect=opts.aspect, head_size=opts.head_size,
                    min_steps=opts.min_steps, levels=opts.levels, min_depth=opts.min_depth)


def plan_study(opts: Any, speed: Callable, say: Callable[[str], None], warn: Callable[[str], None]
               ) -> tuple[PlanSpec, list[Point], dict]:
    """The study's plan: OUT/plan.json's when it exists (a resumed study), else a new one written there."""

    out = Path(opts.out)
    saved = out / "plan.json"
    if saved.is_file():
        try:
            plan = parse_json(saved.read_text(encoding="utf-8"))
            data, spec = plan["facts"]["data"], PlanSpec(**plan["spec"])
            points = [Point.from_dict(p) for p in plan["points"]]
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ScaleError(f"{saved} is not a plan `gptkit scale` wrote ({type(e).__name__}); delete it to plan "
                             f"again") from None
        if Path(data).resolve() != Path(opts.data).resolve():
            raise ScaleError(f"{out} holds a study of {data}, not {opts.data}: choose another --out")
        say(f"continuing the plan in {saved} (delete it to plan again)")
        return spec, points, plan["facts"]
    facts = data_facts(opts.data)
    spec = spec_of(opts, facts)
    if facts["train_tokens"] < spec.block_size + 1 or facts["val_tokens"] < spec.block_size + 1:
        raise ScaleError(f"the data is too small for the plan: {opts.data} has {facts['train_tokens']:,} train and "
                         f"{facts['val_tokens']:,} val tokens, the context is {spec.block_size}")
    points = plan_ladder(spec, speed, warn)
    epochs = check_data(points, facts["train_tokens"], warn)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(saved, {"facts": facts, "spec": spec.__dict__, "largest_run_epochs": epochs,
                              "points": [p.to_dict() for p in points]})
    return spec, points, facts


def _arrays(results: list[dict], unit: str) -> dict[str, np.ndarray]:
    key = "val_loss" if unit == "nats" else "val_bpb"
    return {"flops": np.array([r["flops"] for r in results], float),
            "n": np.array([r["non_embedding_params"] for r in results], float),
            "d": np.array([r["tokens"] for r in results], float),
            "loss": np.array([r[key] for r in results], float)}


def usable(results: list[dict], unit: str, warn: Callable[[str], None]) -> list[dict]:
    """The runs with a finite loss in `unit`; the others are reported and left out."""
    key = "val_loss" if unit == "nats" else "val_bpb"
    good = []
    for r in results:
        v = r.get(key)
        if v is None or not math.isfinite(v):
            warn(f"{r['name']}: validation loss is {r.get('status') if v is None else v} (not finite): left out "
                 f"of the fit")
        else:
            good.append(r)
    if len(good) < MIN_POINTS:
        raise ScaleError(f"only {len(good)} runs have a finite validation loss; a fit needs at least {MIN_POINTS}")
    return good


def fit_results(results: list[dict], unit: str, bootstrap: int, seed: int) -> tuple[dict, dict]:
    """fit.json's content and the fitted laws ("compute" always, "size_data" when N and D vary apart)."""
    a = _arrays(results, unit)
    env = compute_envelope(a["flops"], a["loss"])
    laws: dict[str, Any] = {"compute": None, "size_data": None}
    notes = []
    if len(env) >= 3:
        laws["compute"] = fit_envelope(a["flops"], a["loss"], bootstrap, seed)
    else:
        notes.append(f"L(C) not fitted: the runs span only {len(env)} compute levels (3 are needed)")
    if collinear(a["n"], a["d"]):
        notes.append("L(N, D) not fitted: N and D grow together in these runs (one tokens-per-parameter line); "
                     "an isoflop ladder separates them")
    else:
        laws["size_data"] = fit_law("size_data", [a["n"], a["d"]], a["loss"], bootstrap, seed)
    fits: dict[str, Any] = {"unit": unit, "runs": [r["name"] for r in results],
                            "envelope": [results[i]["name"] for i in env], "notes": notes,
                            "isoflop_minima": isoflop_minima(a["flops"], a["n"], a["loss"])}
    for name, law in laws.items():
        if law is not None:
            fits[name] = law.to_dict()
    if laws["size_data"] is not None:
        fits["compute_optimal"] = optimal_exponents(laws["size_data"])
    return fits, laws


def write_fit(out: Path, results: list[dict], fits: dict, laws: dict, fc: dict | None, unit: str) -> None:
    a = _arrays(results, unit)
    atomic_write_json(out / "fit.json", fits)
    if fc is not None:
        atomic_write_json(out / "forecast.json", fc)
    plot_scaling(out / "scaling.png", a["flops"], a["loss"], compute_envelope(a["flops"], a["loss"]),
                 laws.get("compute"), fc, unit)
    plot_isoflop(out / "isoflop.png", a["flops"], a["n"], a["loss"], compute_groups(a["flops"]), unit)


def run_study(opts: Any, speed: Callable | None = None, trainer: Callable | None = None,
              say: Callable[[str], None] = print, warn: Callable[[str], None] = print) -> dict:
    """`gptkit scale`: returns {"plan": points, "results", "fit", "forecast"} (what it wrote to OUT)."""

    if opts.unit not in UNITS:
        raise ScaleError(f"--unit must be one of {', '.join(UNITS)}, got {opts.unit!r}")
    speed = speed or MeasuredSpeed(opts.data, opts.device, opts.threads,
                                   on_measure=lambda c, b, v: say(f"speed of {c.n_layer}×{c.n_embd} at batch {b}: "
                                                                  f"{v:,.0f} tokens/s"))
    spec, points, facts = plan_study(opts, speed, say, warn)
    say(plan_table(points))
    if opts.target_flops is not None and opts.target_flops <= max(p.flops for p in points):
        raise ScaleError(f"--target-flops {opts.target_flops:.3g} is not beyond the ladder (its largest run uses "
                         f"{max(p.flops for p in points):.3g}); a forecast extrapolates, so ask for more compute")
    if opts.plan_only:
        return {"plan": points}
    out = Path(opts.out)
    ctx = RunContext(data=str(opts.data), runs_dir=out / "runs", block_size=spec.block_size,
                     eval_tokens=opts.eval_tokens, bytes_per_token=facts["val_bytes"]["bytes_per_token"],
                     seed=opts.seed, device=opts.device, threads=opts.threads)
    results = usable(run_ladder(points, ctx, out, trainer, opts.quiet), opts.unit, warn)
    fits, laws = fit_results(results, opts.unit, opts.bootstrap, opts.seed)
    largest = max(r["flops"] for r in results)
    top = next(r for r in results if r["name"] == fits["envelope"][-1])  # the largest level's best run
    floor = top["shape"]["n_layer"]
    target = target_flops(largest, opts.target_flops, opts.target_minutes, spec, laws["size_data"], speed, floor)
    fc = forecast(target, largest, spec, laws, opts.unit, floor)
    fc["bytes_per_token"] = ctx.bytes_per_token
    fc.update(caveats(fc, [r["non_embedding_params"] for r in results], facts["train_tokens"], warn))
    # the forecast is written and said before its run trains (GPT-4 §3: predicted first, then measured)
    write_fit(out, results, fits, laws, fc, opts.unit)
    for line in fit_lines(fits):
        say(line)
    say(forecast_line(fc))
    if opts.verify:
        check_verifiable(fc)
        r = train_point(Point.from_dict(fc["point"]), ctx, trainer)
        fc = verified(fc, r["val_loss"] if opts.unit == "nats" else r["val_bpb"])
        write_fit(out, results, fits, laws, fc, opts.unit)
        say(forecast_line(fc))
    return {"plan": points, "results": results, "fit": fits, "forecast": fc}


LAW_NAMES = {"compute": "L(C)", "size_data": "L(N, D)"}


def forecast_line(fc: dict) -> str:
    iv = fc.get("predicted_interval")
    p = fc["point"]
    s = (f"forecast at {fc['run_flops']:.3g} FLOPs ({fc['run_flops'] / fc['largest_fitted_flops']:.1f}× the largest "
         f"fitted run): {p['shape']['n_layer']}×{p['shape']['n_embd']} on {p['tokens']:,} tokens, val loss "
         f"{fc['predicted_val_loss']:.4f} {fc['unit']}" + (f" [{iv[0]:.4f}, {iv[1]:.4f}]" if iv else "")
         + f" by {LAW_NAMES[fc['law']]}")
    others = [k for k in fc["predictions"] if k != fc["law"]]
    s += "".join(f" ({LAW_NAMES[k]}: {fc['predictions'][k]['val_loss']:.4f})" for k in others)
    if fc.get("verified_val_loss") is not None:
        s += f"; verified {fc['verified_val_loss']:.4f} (relative error {fc['relative_error']:+.2%}"
        s += "".join(f"; {LAW_NAMES[k]}'s {fc['relative_errors'][k]:+.2%}" for k in others) + ")"
    return s


def run_record(run_dir: Path, bytes_per_token: float | None) -> dict:
    """A finished `gptkit train` run as a result: its shape, tokens, FLOPs (gptkit info's accounting), val loss."""

    ckpts = list_checkpoints(run_dir)
    last = final_record(run_dir)
    if not ckpts or last is None:
        raise ScaleError(f"{run_dir} is not a finished `gptkit train` run (no checkpoint, or no evaluation at its "
                         f"last step)")
    cfg = checkpoint_config(ckpts[-1])
    v = last["val_loss"]
    ok = v is not None and math.isfinite(v)
    return {"name": run_dir.name, "run_dir": str(run_dir), "tokens": last["tokens"],
            "flops": float(cfg.flops_per_token() * last["tokens"]), "params": cfg.num_params,
            "non_embedding_params": cfg.non_embedding_params, "status": "ok" if ok else "non-finite",
            "val_loss": v if ok else None,
            "val_bpb": v / (bytes_per_token * math.log(2)) if ok and bytes_per_token else None}


def fit_runs(opts: Any, say: Callable[[str], None] = print, warn: Callable[[str], None] = print) -> dict:
    """`gptkit scale fit RUN...`: the laws fitted to finished runs (bits per byte from each run's data)."""

    if opts.unit not in UNITS:
        raise ScaleError(f"--unit must be one of {', '.join(UNITS)}, got {opts.unit!r}")
    results = []
    ratios: dict[str, float] = {}
    for run in opts.runs:
        run_dir = Path(run)
        if not run_dir.is_dir():
            raise ScaleError(f"{run}: not a run directory")
        bpt = None
        if opts.unit == "bpb":
            data = run_settings(run_dir)["data"]
            if data not in ratios:
                ratios[data] = val_bytes_per_token(data)["bytes_per_token"]
            bpt = ratios[data]
        results.append(run_record(run_dir, bpt))
    results = usable(results, opts.unit, warn)
    fits, laws = fit_results(results, opts.unit, opts.bootstrap, opts.seed)
    if opts.out:
        Path(opts.out).mkdir(parents=True, exist_ok=True)
        write_fit(Path(opts.out), results, fits, laws, None, opts.unit)
    for line in fit_lines(fits):
        say(line)
    return fits
