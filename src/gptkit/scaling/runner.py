"""Training the ladder: each point an ordinary `gptkit train` run in OUT/runs/NAME, resumable point by point.

A run is *finished* when its metrics.jsonl ends with an evaluation at the planned last step; a run with
checkpoints but not finished is resumed (`resume=True`, the trainer's exact resume); a run directory without a
checkpoint starts over. So a killed `gptkit scale` trains only what is missing when started again. A run whose loss
turns non-finite is recorded in OUT/results.json as diverged, reported, and left out of the fit (a rerun does not
retry it).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..checkpoint import list_checkpoints
from ..errors import TrainError
from ..io import atomic_write_json, parse_json
from ..options.train import TrainConfig
from .plan import BASE_PRESET, Point, ScaleError

RESULTS = "results.json"


@dataclass
class RunContext:
    """What every run of a study shares."""

    data: str
    runs_dir: Path
    block_size: int
    eval_tokens: int
    bytes_per_token: float
    seed: int = 1337
    device: str = "auto"
    threads: int | None = None


def train_config(point: Point, ctx: RunContext, resume: bool = False):
    """The TrainConfig of a point: the ladder's shape and rules, one evaluation (on eval_tokens) at the end."""

    eval_iters = max(1, math.ceil(ctx.eval_tokens / (point.batch_size * ctx.block_size)))
    return TrainConfig(data=ctx.data, out=str(ctx.runs_dir / point.name), preset=BASE_PRESET,
                       n_layer=point.shape.n_layer, n_head=point.shape.n_head, n_embd=point.shape.n_embd,
                       block_size=ctx.block_size, dropout=0.0, batch_size=point.batch_size, max_iters=point.steps,
                       lr=point.lr, min_lr=point.lr / 10, warmup_iters=point.warmup_iters,
                       eval_interval=point.steps, eval_iters=eval_iters, save_interval=max(1, point.steps // 4),
                       log_interval=max(1, point.steps // 20), keep_last=1, seed=ctx.seed, device=ctx.device,
                       threads=ctx.threads, resume=resume, quiet=True)


def run_settings(run_dir: Path) -> dict:
    """A run's train_config.json, or one line (ScaleError) saying it cannot be read."""
    path = run_dir / "train_config.json"
    try:
        settings = parse_json(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ScaleError(f"{path} is not the JSON `gptkit train` writes ({type(e).__name__})") from None
    if not isinstance(settings, dict) or not isinstance(settings.get("max_iters"), int) or \
            not isinstance(settings.get("data"), str):
        raise ScaleError(f"{path} is not the settings `gptkit train` writes (a mapping with max_iters and data)")
    return settings


def final_record(run_dir: Path, steps: int | None = None) -> dict | None:
    """The last metrics record of a run when it is an evaluation at its last step (`steps`, or its config's)."""
    metrics, cfg_path = run_dir / "metrics.jsonl", run_dir / "train_config.json"
    if not metrics.is_file() or not cfg_path.is_file():
        return None
    if steps is None:
        steps = run_settings(run_dir)["max_iters"]
    lines = [ln for ln in metrics.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    try:
        last = parse_json(lines[-1]) if lines else None
    except ValueError:  # a line cut by a kill (or damaged): not finished
        return None
    if not isinstance(last, dict) or last.get("step") != steps or "val_loss" not in last or \
            not isinstance(last.get("tokens"), int):
        return None
    return last


def result_of(point: Point, val_loss: float | None, ctx: RunContext, status: str, elapsed_s: float | None) -> dict:
    ok = val_loss is not None and math.isfinite(val_loss)
    return {**point.to_dict(), "status": status if ok or status != "ok" else "non-finite",
            "val_loss": val_loss if ok else None,
            "val_bpb": val_loss / (ctx.bytes_per_token * math.log(2)) if ok else None,
            "run_dir": str(ctx.runs_dir / point.name), "elapsed_s": elapsed_s}


def train_point(point: Point, ctx: RunContext, trainer: Callable[[Any], dict] | None = None) -> dict:
    """Train (or resume, or just read) one point; returns its result."""

    run_dir = ctx.runs_dir / point.name
    done = final_record(run_dir, point.steps)
    if done is not None:
        return result_of(point, done["val_loss"], ctx, "ok", done.get("elapsed_s"))
    if trainer is None:
        from ..train import train as trainer
    try:
        summary = trainer(train_config(point, ctx, resume=bool(list_checkpoints(run_dir))))
    except TrainError as e:
        if "diverged" not in str(e):
            raise
        return result_of(point, None, ctx, "diverged", None)
    return result_of(point, summary["val_loss"], ctx, "ok", summary["elapsed_s"])


def read_results(out: Path) -> dict[str, dict]:
    path = out / RESULTS
    if not path.is_file():
        return {}
    try:
        return {r["name"]: r for r in parse_json(path.read_text(encoding="utf-8"))}
    except (ValueError, KeyError, TypeError):
        return {}


def run_ladder(points: list[Point], ctx: RunContext, out: Path, trainer: Callable | None = None,
               quiet: bool = False) -> list[dict]:
    """Train every point not yet finished (smallest first), with one progress display for the whole ladder."""

    results = read_results(out)
    total = sum(p.flops for p in points)
    display = LadderDisplay(total, len(points), quiet)
    try:
        for p in sorted(points, key=lambda p: p.flops):
            if results.get(p.name, {}).get("status") not in ("diverged", "non-finite"):
                display.start(p)
                results[p.name] = train_point(p, ctx, trainer)
            display.finish(p, results[p.name])
            atomic_write_json(out / RESULTS, [results[q.name] for q in points if q.name in results])
    finally:
        display.close()
    return [results[p.name] for p in points]


class LadderDisplay:
    """A rich progress bar over the ladder's FLOPs on a terminal; one line per run otherwise."""

    def __init__(self, total_flops: float, n: int, quiet: bool) -> None:
        self.quiet, self.progress, self.n, self.done = quiet, None, n, 0
        if not quiet and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("[bold]scale"), BarColumn(), TextColumn("{task.fields[info]}"),
                                     TimeElapsedColumn(), console=Console(stderr=True))
            self.task = self.progress.add_task("scale", total=total_flops, info="")
            self.progress.start()

    def start(self, p: Point) -> None:
        if self.progress is not None:
            self.progress.update(self.task, info=f"run {self.done + 1}/{self.n}: {p.name}")

    def finish(self, p: Point, r: dict) -> None:
        self.done += 1
        loss = f"val loss {r['val_loss']:.4f}" if r["val_loss"] is not None else r["status"]
        line = f"[{self.done}/{self.n}] {p.name}: {loss}"
        if self.progress is not None:
            self.progress.advance(self.task, p.flops)
            self.progress.console.print(line)
        elif not self.quiet:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
