"""The results of `gptkit eval` as a markdown table and an accuracy-vs-K plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..io import atomic_path

ACCURACY_METRICS = ("acc", "acc_norm", "acc_per_token", "acc_uncond")
SHOWN = {"choice": ("acc", "acc_norm", "acc_per_token", "acc_uncond"), "cloze": ("acc", "perplexity"),
         "perplexity": ("word_perplexity", "token_perplexity", "byte_perplexity", "bits_per_byte")}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


def markdown_table(summary: dict[str, Any]) -> str:
    """The results as a markdown table: one row per task, K and metric."""
    lines = ["| task | K | n | metric | value | stderr |", "|---|---:|---:|---|---:|---:|"]
    for key, metrics in summary["results"].items():
        task = key.split("@")[0]
        k = summary["n-shot"][key]
        used = metrics.get("shots_used_mean", k)
        if used < k:  # demonstrations dropped to fit the context: say how many were used on average
            k = f"{k} ({used:.2f} fit)"
        n = metrics.get("n", metrics.get("documents", ""))
        shown = [m for kind in SHOWN.values() for m in kind if m in metrics]
        for m in dict.fromkeys(shown):
            lines.append(f"| {task} | {k} | {n} | {m} | {_fmt(metrics[m])} | {_fmt(metrics.get(m + '_stderr', ''))} |")
    return "\n".join(lines)


PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def plot_accuracy_vs_shots(summary: dict[str, Any], path: Path) -> None:
    """Accuracy against K, one line per task (GPT-3 Fig. 1.2 in miniature)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float]]] = {}
    for key, metrics in summary["results"].items():
        if "acc" in metrics:
            series.setdefault(key.split("@")[0], []).append((summary["n-shot"][key], metrics["acc"]))
    fig, ax = plt.subplots(figsize=(6, 4))
    for task, pts in series.items():
        pts.sort()
        ax.plot([k for k, _ in pts], [100 * a for _, a in pts], marker="o", label=task)
    ax.set_xlabel("demonstrations in the context (K)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("In-context learning: accuracy vs K")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        with atomic_path(path, ".tmp" + path.suffix) as tmp:  # the format from the name: png, pdf or svg
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)
