"""The metrics GPT-1 reports (Table 2, 3): accuracy; F1 for paraphrase (MRPC); Pearson and Spearman correlation
for semantic similarity (STS-B). Plain numpy; the tests check them against scikit-learn and scipy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def accuracy(pred: Sequence[int], gold: Sequence[int]) -> float:
    pred, gold = np.asarray(pred), np.asarray(gold)
    return float((pred == gold).mean()) if len(gold) else float("nan")


def f1_binary(pred: Sequence[int], gold: Sequence[int], positive: int) -> float:
    """F1 of the positive class: 2·TP / (2·TP + FP + FN); 0 when there is no positive prediction or gold label."""
    pred, gold = np.asarray(pred) == positive, np.asarray(gold) == positive
    tp = int((pred & gold).sum())
    denom = 2 * tp + int((pred & ~gold).sum()) + int((~pred & gold).sum())
    return 2 * tp / denom if denom else 0.0


def macro_f1(pred: Sequence[int], gold: Sequence[int], n_classes: int) -> float:
    return float(np.mean([f1_binary(pred, gold, c) for c in range(n_classes)]))


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt((xc * xc).sum() * (yc * yc).sum())
    return float((xc * yc).sum() / denom) if denom > 0 else float("nan")


def rankdata(x: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties given their average rank (as Spearman's rho needs)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    xs = x[order]
    # boundaries of runs of equal values
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(x)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0  # mean of the 1-based ranks s+1 .. e
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    return pearson(rankdata(x), rankdata(y))


def classification_metrics(pred: Sequence[int], gold: Sequence[int], n_classes: int,
                           positive: int | None = None) -> dict[str, float]:
    out = {"accuracy": accuracy(pred, gold)}
    if positive is not None:
        out["f1"] = f1_binary(pred, gold, positive)
    elif n_classes > 2:
        out["macro_f1"] = macro_f1(pred, gold, n_classes)
    return out


def regression_metrics(pred: Sequence[float], gold: Sequence[float]) -> dict[str, float]:
    p, g = np.asarray(pred, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    return {"pearson": pearson(p, g), "spearman": spearman(p, g), "mse": float(((p - g) ** 2).mean())}
