"""The forecast: for a target compute, the compute-optimal run and its predicted validation loss with an interval.

With a fitted L(N, D) the size is Chinchilla's approach 3 on this machine's shape family: of the family's depths,
the one whose L(N, D = C / FLOPs-per-token) is lowest (the accounting of `gptkit info`, not 6ND), and the
prediction is L(N, D) at that run (interval: the bootstrap draws' 5th–95th percentile). Without one (a ratio
ladder, whose runs all sit on one tokens-per-parameter line) the size follows the ladder's own ratio and the
prediction is L(C). Both predictions are reported when both laws were fitted.
"""

from __future__ import annotations

import math
from typing import Callable

from .fit import Law
from .plan import (
    EPOCHS_MAX,
    EPOCHS_WARN,
    PlanSpec,
    Point,
    ScaleError,
    make_point,
    model_config,
    ratio_depth,
    shape_of_depth,
)

TARGET_FACTOR = 10.0
"""The default target: this many times the largest fitted run's compute (GPT-4's forecasts reached 10,000×)."""


def optimal_point(spec: PlanSpec, flops: float, size_data: Law | None, floor: int = 1) -> Point:
    """The run the laws call compute-optimal at `flops` (see the module docstring), at least `floor` layers deep."""
    if size_data is None:
        shape = shape_of_depth(max(floor, ratio_depth(spec, flops)), spec.aspect, spec.head_size)
    else:
        best = math.inf
        for depth in range(max(floor, spec.min_depth), 257):
            s = shape_of_depth(depth, spec.aspect, spec.head_size)
            cfg = model_config(s, spec.vocab_size, spec.block_size)
            loss = size_data.predict(cfg.non_embedding_params, flops / cfg.flops_per_token())
            if loss < best:
                best, shape = loss, s
    fpt = model_config(shape, spec.vocab_size, spec.block_size).flops_per_token()
    return make_point(shape, flops / fpt, spec.vocab_size, spec.block_size, spec.min_steps, prefix="forecast-")


def target_flops(largest: float, flops: float | None, minutes: float | None, spec: PlanSpec,
                 size_data: Law | None, speed: Callable | None, floor: int = 1) -> float:
    """The target compute: given, or `minutes` of training here (the optimal size at a compute depends on the
    compute, its speed on the size: three rounds settle it), or TARGET_FACTOR × the largest fitted run."""
    if flops is None and minutes is None:
        return TARGET_FACTOR * largest
    if flops is None:
        flops = TARGET_FACTOR * largest
        for _ in range(3):
            p = optimal_point(spec, flops, size_data, floor)
            tok_s = speed(model_config(p.shape, spec.vocab_size, spec.block_size), p.batch_size)
            flops = minutes * 60 * tok_s * p.flops / p.tokens
    if flops <= largest:
        raise ScaleError(f"the target ({flops:.3g} FLOPs) is not beyond the ladder: its largest fitted run used "
                         f"{largest:.3g}; a forecast extrapolates, so ask for more compute")
    return flops


def forecast(target: float, largest: float, spec: PlanSpec, laws: dict[str, Law | None], unit: str,
             floor: int = 1) -> dict:
    """forecast.json's content (before any verification). L(N, D), when fitted, chooses the run's size, no smaller
    than `floor` layers (the depth that won the largest compute level: the optimal size grows with compute, Kaplan
    §6.1, Chinchilla Fig. 3, so more compute never calls for a smaller model than the ladder's top winner). The loss
    forecast is L(C)'s when it is fitted, as GPT-4 forecast its final loss from compute (OpenAI 2023, §3: L(C) =
    aC^b + c), else L(N, D)'s. Both laws' predictions are kept under `predictions`."""
    point = optimal_point(spec, target, laws.get("size_data"), floor)
    n, d = point.non_embedding_params, point.tokens
    sd, comp = laws.get("size_data"), laws.get("compute")
    preds = {}
    if comp is not None:
        preds["compute"] = {"val_loss": comp.predict(point.flops), "interval": comp.interval(point.flops)}
    if sd is not None:
        preds["size_data"] = {"val_loss": sd.predict(n, d), "interval": sd.interval(n, d)}
    if not preds:
        raise ScaleError("no law could be fitted to these runs, so there is nothing to forecast with")
    law = "compute" if "compute" in preds else "size_data"
    return {"target_flops": target, "largest_fitted_flops": largest, "unit": unit, "point": point.to_dict(),
            "run_flops": point.flops, "law": law, "predicted_val_loss": preds[law]["val_loss"],
            "predicted_interval": preds[law]["interval"], "predictions": preds}


def caveats(fc: dict, fitted_params: list[int], train_tokens: int, warn: Callable[[str], None]) -> dict:
    """What makes a forecast less than a forecast, recorded in forecast.json and said once: the chosen run
    repeats the training data past EPOCHS_WARN times (the laws were fitted on fresher data), or its size is not
    strictly inside the fitted runs' sizes (the optimum is not bracketed: the law is extrapolated in N too)."""
    point = fc["point"]
    epochs = point["tokens"] / max(1, train_tokens)
    n = point["non_embedding_params"]
    inside = min(fitted_params) < n < max(fitted_params)
    if epochs > EPOCHS_WARN:
        warn(f"the forecast run would read the training data {epochs:.0f} times (more than {EPOCHS_WARN:.0f} "
             f"epochs): its loss will be worse than the laws, fitted on fresher data, predict")
    if not inside:
        warn(f"the forecast's compute-optimal size ({n:,} non-embedding parameters) is not inside the fitted runs' "
             f"({min(fitted_params):,} to {max(fitted_params):,}, ends excluded): the ladder does not bracket the "
             f"optimum (when one end's size wins at every compute level, extend the ladder past it)")
    return {"epochs": epochs, "size_inside_ladder": inside}


def check_verifiable(fc: dict) -> None:
    """--verify trains the forecast run: refused, as the ladder is, past EPOCHS_MAX epochs of the data."""
    if fc["epochs"] > EPOCHS_MAX:
        raise ScaleError(f"--verify: the forecast run would read the training data {fc['epochs']:.0f} times (more "
                         f"than {EPOCHS_MAX:.0f} epochs), so its loss would say little about the forecast; use "
                         f"more data or a smaller target (--target-flops, --target-minutes). fit.json and "
                         f"forecast.json are written")


def verified(fc: dict, val_loss: float | None) -> dict:
    """forecast.json after the forecast run was trained: its loss and the relative error verified / predicted − 1
    of the forecast, and of each law's prediction (`relative_errors`)."""
    if val_loss is None or not math.isfinite(val_loss):
        return {**fc, "verified_val_loss": None, "relative_error": None}
    return {**fc, "verified_val_loss": val_loss, "relative_error": val_loss / fc["predicted_val_loss"] - 1,
            "relative_errors": {k: val_loss / p["val_loss"] - 1 for k, p in fc["predictions"].items()}}
