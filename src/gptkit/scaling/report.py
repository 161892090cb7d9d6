"""What a study shows: the plan and fit as printed tables, and the two plots (small PNGs, matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .fit import Law
from .plan import Point


def _count(n: float) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def plan_table(points: list[Point]) -> str:
    """One line per run: layers × width, parameters with and without embeddings, tokens, FLOPs, minutes."""
    head = (f"{'run':<24} {'layers×width':>12} {'params':>8} {'non-emb':>8} {'tokens':>8} {'FLOPs':>9} "
            f"{'batch':>5} {'steps':>6} {'lr':>8} {'minutes':>8}")
    rows = [head]
    for p in points:
        rows.append(f"{p.name:<24} {f'{p.shape.n_layer}×{p.shape.n_embd}':>12} {_count(p.params):>8} "
                    f"{_count(p.non_embedding_params):>8} {_count(p.tokens):>8} {p.flops:>9.3g} {p.batch_size:>5} "
                    f"{p.steps:>6} {p.lr:>8.2e} {(p.minutes or 0):>8.1f}")
    rows.append(f"total: {len(points)} runs, {sum(p.flops for p in points):.3g} FLOPs, about "
                f"{sum(p.minutes or 0 for p in points):.1f} minutes")
    return "\n".join(rows)


def fit_lines(fits: dict) -> list[str]:
    """The fitted laws with their bootstrap intervals, one law per line."""
    out = []
    for name, form in (("compute", "L(C) = L_inf + (C0/C)^alpha"), ("size_data", "L(N, D) = E + A/N^alpha + "
                                                                                 "B/D^beta")):
        f = fits.get(name)
        if not f:
            continue
        iv = f.get("intervals", {})
        parts = [f"{k} {v:.4g}" + (f" [{iv[k][0]:.3g}, {iv[k][1]:.3g}]" if k in iv else "")
                 for k, v in f["params"].items()]
        out.append(f"{form}: " + ", ".join(parts))
    for note in fits.get("notes", []):
        out.append(note)
    return out


def _plain_y(ax) -> None:
    """Loss ticks as plain numbers (2.5, not 2.5×10⁰) on a log axis that spans less than a decade."""
    import matplotlib.ticker as ticker

    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%.2f"))
    ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%.2f"))


def plot_scaling(path: Path, flops: np.ndarray, loss: np.ndarray, envelope: np.ndarray, law: Law | None,
                 forecast: dict | None, unit: str) -> None:
    """Log-log loss against compute: the runs, the envelope the law is fitted to, the law extended to the target,
    the forecast with its interval, and the verified point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=80)
    ax.scatter(flops, loss, c="0.6", s=14, label="runs")
    ax.scatter(flops[envelope], loss[envelope], c="C0", s=22, label="lowest loss per compute")
    hi = max(flops.max(), forecast["target_flops"] if forecast else 0) * 1.5
    if law is not None:
        c = np.geomspace(flops.min() / 1.5, hi, 200)
        ax.plot(c, [law.predict(x) for x in c], "C0-", lw=1, label="L(C) fit")
    if forecast:
        y, iv = forecast["predicted_val_loss"], forecast.get("predicted_interval")
        err = None if not iv else [[y - iv[0]], [iv[1] - y]]
        ax.errorbar([forecast["run_flops"]], [y], yerr=err, fmt="s", c="C1", capsize=3, label="forecast")
        if forecast.get("verified_val_loss") is not None:
            ax.scatter([forecast["run_flops"]], [forecast["verified_val_loss"]], marker="*", s=90, c="C3",
                       label="verified", zorder=5)
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs", ylabel=f"validation loss ({unit})")
    _plain_y(ax)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_isoflop(path: Path, flops: np.ndarray, n: np.ndarray, loss: np.ndarray, groups: list[list[int]],
                 unit: str) -> None:
    """Loss against model size (non-embedding parameters), one line per compute level (Chinchilla Fig. 3)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=80)
    for i, gr in enumerate(groups):
        order = sorted(gr, key=lambda j: n[j])
        ax.plot(n[order], loss[order], "o-", c=f"C{i % 10}", ms=4, lw=1, label=f"{np.mean(flops[gr]):.2g} FLOPs")
    ax.set(xscale="log", xlabel="non-embedding parameters N", ylabel=f"validation loss ({unit})")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # 2×10⁴, 3×10⁴... overlap at this width
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
