"""Scaling laws fitted to runs: L(C) = L∞ + (C₀/C)^α and L(N, D) = E + A/N^α + B/D^β, with scipy.

Both are fitted the way Chinchilla fits its approach 3 (Hoffmann et al. 2022, §3.3 and App. D.2): in log space,
log L̂ = LSE(terms), minimising the Huber loss (δ = 10⁻³) of log L̂ − log L with L-BFGS from a grid of starting
points, keeping the best. Each term is linear in the parameters, so the objective and its gradient are a few array
operations:

    L(C):    terms (e, k − α log C)                        L∞ = eᵉ, C₀ = e^(k/α)
    L(N, D): terms (a − α log N, b − β log D, e)           A = eᵃ, B = eᵇ, E = eᵉ

Uncertainty: the fit is repeated on bootstrap resamples of the runs (Efron), and an interval is the 5th–95th
percentile of the resampled parameters or predictions. L(C) is fitted to the lowest loss among runs of about the
same compute (within COMPUTE_GROUP of each other: one isoflop level, or one run), the envelope Kaplan et al. (2020,
§6.1) fit; its bootstrap resamples all runs and takes the envelope again (`fit_envelope`). Approach 2's parabola
minima per compute level are reported too where a level has three or more runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

HUBER_DELTA = 1e-3
COMPUTE_GROUP = 0.15
"""Runs whose compute differs by less than this fraction are one compute level."""
INTERVAL = (5.0, 95.0)
TRIED_STARTS = 8
"""L-BFGS runs from the grid points with the lowest objective (a bootstrap refit starts from the full fit)."""


@dataclass
class Law:
    """A fitted law: its parameters by name, the objective reached, and bootstrap draws of the parameters."""

    kind: str  # "compute" or "size_data"
    ref: np.ndarray  # the mean log of each input: the design is centred on it (well-conditioned L-BFGS)
    params: dict[str, float]
    theta: np.ndarray
    objective: float
    draws: list[np.ndarray] = field(default_factory=list)

    def predict(self, *x: float, theta: np.ndarray | None = None) -> float:
        g = _design(self.kind, [np.atleast_1d(np.asarray(v, dtype=float)) for v in x], self.ref)
        return float(np.exp(_logsumexp(g @ (self.theta if theta is None else theta)))[0])

    def interval(self, *x: float) -> list[float] | None:
        if not self.draws:
            return None
        preds = [self.predict(*x, theta=t) for t in self.draws]
        return [float(v) for v in np.percentile(preds, INTERVAL)]

    def to_dict(self) -> dict:
        d = {"params": self.params, "objective": self.objective, "bootstrap": len(self.draws)}
        if self.draws:
            named = [_named(self.kind, t, self.ref) for t in self.draws]
            d["intervals"] = {k: [float(v) for v in np.percentile([n[k] for n in named], INTERVAL)]
                              for k in self.params}
        return d


# ---------------------------------------------------------------------------------------- the objective
def _design(kind: str, x: list[np.ndarray], ref: np.ndarray) -> np.ndarray:
    """(n, terms, params): term j of sample i is design[i, j] @ theta, with log inputs centred on `ref`."""
    if kind == "compute":
        (c,) = x
        g = np.zeros((len(c), 2, 3))
        g[:, 0, 0] = 1.0
        g[:, 1, 1], g[:, 1, 2] = 1.0, -(np.log(c) - ref[0])
        return g
    n, d = x
    g = np.zeros((len(n), 3, 5))
    g[:, 0, 0], g[:, 0, 3] = 1.0, -(np.log(n) - ref[0])
    g[:, 1, 1], g[:, 1, 4] = 1.0, -(np.log(d) - ref[1])
    g[:, 2, 2] = 1.0
    return g


def _logsumexp(t: np.ndarray) -> np.ndarray:
    m = t.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(t - m).sum(axis=1, keepdims=True)))[:, 0]


def _objective(theta: np.ndarray, g: np.ndarray, log_l: np.ndarray) -> tuple[float, np.ndarray]:
    t = g @ theta  # (n, terms)
    pred = _logsumexp(t)
    r = pred - log_l
    small = np.abs(r) <= HUBER_DELTA
    value = np.where(small, 0.5 * r ** 2, HUBER_DELTA * (np.abs(r) - 0.5 * HUBER_DELTA)).sum()
    psi = np.where(small, r, HUBER_DELTA * np.sign(r))  # d huber / d r
    w = np.exp(t - pred[:, None])  # softmax over the terms: d pred / d term
    grad = np.einsum("i,ij,ijk->k", psi, w, g)
    return float(value), grad


def _named(kind: str, theta: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """The law's parameters from theta (whose terms are centred: k − α(log C − ref) = (k + α·ref) − α log C)."""
    if kind == "compute":
        e, k, alpha = theta
        return {"L_inf": float(np.exp(e)), "C0": float(np.exp(k / alpha + ref[0])), "alpha": float(alpha)}
    a, b, e, alpha, beta = theta
    return {"E": float(np.exp(e)), "A": float(np.exp(a + alpha * ref[0])), "B": float(np.exp(b + beta * ref[1])),
            "alpha": float(alpha), "beta": float(beta)}


def _starts(kind: str, x: list[np.ndarray], loss: np.ndarray) -> list[np.ndarray]:
    """A grid of starting points scaled to the data: the irreducible term a fraction of the lowest loss, the
    rest of the mean loss shared among the power terms, several exponents."""
    out = []
    for frac in (0.1, 0.5, 0.9):
        e = math.log(frac * loss.min())
        rest = max(loss.mean() - frac * loss.min(), 1e-3 * loss.mean())
        if kind == "compute":
            out += [np.array([e, math.log(rest), al]) for al in (0.05, 0.2, 0.5, 1.0)]
            continue
        for al in (0.1, 0.3, 0.6):
            for be in (0.1, 0.3, 0.6):
                for share in (0.25, 0.5, 0.75):
                    out.append(np.array([math.log(share * rest), math.log((1 - share) * rest), e, al, be]))
    return out


def _minimise(kind: str, g: np.ndarray, log_l: np.ndarray, starts: list[np.ndarray]) -> tuple[np.ndarray, float]:
    from scipy.optimize import minimize

    n_params = g.shape[2]
    bounds = [(None, None)] * (n_params - (1 if kind == "compute" else 2)) + \
        [(1e-4, 5.0)] * (1 if kind == "compute" else 2)  # exponents positive (a law that falls with scale)
    best, best_val = None, math.inf
    if len(starts) > TRIED_STARTS:  # L-BFGS from the grid's most promising points only
        starts = sorted(starts, key=lambda s: _objective(s, g, log_l)[0])[:TRIED_STARTS]
    for s in starts:
        r = minimize(_objective, s, args=(g, log_l), jac=True, method="L-BFGS-B", bounds=bounds,
                     options={"maxiter": 1000, "ftol": 1e-13, "gtol": 1e-10})
        if np.all(np.isfinite(r.x)) and r.fun < best_val:
            best, best_val = r.x, float(r.fun)
    if best is None:
        raise ValueError("no starting point converged")
    return best, best_val


def fit_law(kind: str, x: list[np.ndarray], loss: np.ndarray, bootstrap: int = 0, seed: int = 0,
            starts: Callable | None = None) -> Law:
    """Fit `kind` ("compute": x = [C]; "size_data": x = [N, D]) to `loss`, with `bootstrap` resampled refits."""
    x = [np.asarray(v, dtype=float) for v in x]
    loss = np.asarray(loss, dtype=float)
    ref = np.array([np.log(v).mean() for v in x])
    g, log_l = _design(kind, x, ref), np.log(loss)
    grid = (starts or _starts)(kind, x, loss)
    theta, value = _minimise(kind, g, log_l, grid)
    law = Law(kind, ref, _named(kind, theta, ref), theta, value)
    rng = np.random.default_rng(seed)
    if len(loss) <= g.shape[2]:  # as many runs as parameters: the law passes through them, no spread to resample
        bootstrap = 0
    for _ in range(bootstrap):
        idx = rng.integers(0, len(loss), size=len(loss))
        if len(np.unique(idx)) <= g.shape[2]:  # no more distinct runs than parameters: an exact fit, not a draw
            continue
        try:
            law.draws.append(_minimise(kind, g[idx], log_l[idx], [theta])[0])
        except ValueError:
            continue
    return law


# ---------------------------------------------------------------------------------------- run sets
def compute_groups(flops: np.ndarray) -> list[list[int]]:
    """Indices of runs grouped by compute level: within COMPUTE_GROUP of the group's smallest, in compute order."""
    groups: list[list[int]] = []
    for i in np.argsort(flops):
        if groups and flops[i] <= flops[groups[-1][0]] * (1 + COMPUTE_GROUP):
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
    return groups


def compute_envelope(flops: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of the lowest-loss run of each compute level."""
    return np.array([min(gr, key=lambda j: loss[j]) for gr in compute_groups(flops)], dtype=int)


def fit_envelope(flops: np.ndarray, loss: np.ndarray, bootstrap: int = 0, seed: int = 0) -> Law:
    """L(C) fitted to the compute envelope, its uncertainty by a bootstrap over *all* runs: each resample's
    envelope is taken again (a level whose best run was not drawn offers its next best, a level with no run drawn
    drops out), so with one envelope point per level the intervals still show how much the levels' best runs
    decide the law. Resamples whose envelope has no more levels than the law has parameters are skipped."""
    flops, loss = np.asarray(flops, dtype=float), np.asarray(loss, dtype=float)
    env = compute_envelope(flops, loss)
    law = fit_law("compute", [flops[env]], loss[env])
    if len(env) <= len(law.theta):
        return law
    rng = np.random.default_rng(seed)
    for _ in range(bootstrap):
        idx = rng.integers(0, len(loss), size=len(loss))
        e = idx[compute_envelope(flops[idx], loss[idx])]
        if len(e) <= len(law.theta):
            continue
        try:
            law.draws.append(_minimise("compute", _design("compute", [flops[e]], law.ref), np.log(loss[e]),
                                       [law.theta])[0])
        except ValueError:
            continue
    return law


def isoflop_minima(flops: np.ndarray, n: np.ndarray, loss: np.ndarray) -> list[dict]:
    """Chinchilla approach 2: at each compute level with ≥ 3 sizes, the minimum of a parabola in log N."""
    out = []
    for gr in compute_groups(flops):
        if len(set(n[gr])) < 3:
            continue
        c2, c1, c0 = np.polyfit(np.log(n[gr]), loss[gr], 2)
        if c2 <= 0:  # no minimum: the level does not bracket its optimum
            out.append({"flops": float(np.mean(flops[gr])), "n_opt": None, "loss_min": None})
            continue
        x = -c1 / (2 * c2)
        out.append({"flops": float(np.mean(flops[gr])), "n_opt": float(np.exp(x)),
                    "loss_min": float(c0 + c1 * x + c2 * x * x),
                    "inside": bool(np.log(n[gr]).min() <= x <= np.log(n[gr]).max())})
    return out


def collinear(n: np.ndarray, d: np.ndarray) -> bool:
    """True when N and D move together (every size on one token ratio): L(N, D) cannot separate α from β."""
    if len(set(zip(n.tolist(), d.tolist()))) < 5:
        return True
    r = np.corrcoef(np.log(n), np.log(d))[0, 1]
    return not np.isfinite(r) or abs(r) > 0.99


def optimal_exponents(law: Law) -> dict[str, float]:
    """Chinchilla eq. 4: with C ≈ 6ND, N_opt ∝ C^(β/(α+β)) and D_opt ∝ C^(α/(α+β))."""
    al, be = law.params["alpha"], law.params["beta"]
    return {"n_opt_exponent": be / (al + be), "d_opt_exponent": al / (al + be)}
