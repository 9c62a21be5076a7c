"""Accuracy metrics of latency predictions and the cross-validation folds (pure numpy/scipy)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["metrics", "fold_indices", "METRIC_KEYS"]

METRIC_KEYS = ("n", "rmse_ms", "rmspe", "mape", "within_5pct", "within_10pct", "kendall_tau")


def metrics(y_true_ms: Sequence[float], y_pred_ms: Sequence[float]) -> dict[str, float]:
    """Accuracy of predictions against measurements (both in ms).

    Returns a dict with `METRIC_KEYS`: ``n`` rows; ``rmse_ms`` root mean squared error (ms); ``rmspe``
    root mean squared relative error and ``mape`` mean absolute relative error (fractions of the
    measured value: 0.05 is 5 %); ``within_5pct`` / ``within_10pct`` the share of rows whose relative
    error is at most 5 % / 10 % (0..1); ``kendall_tau`` Kendall's tau-b between the two rankings
    (how well the predictor orders blocks, which is what a search needs; NaN under 2 rows).
    """
    y = np.asarray(y_true_ms, dtype=float)
    p = np.asarray(y_pred_ms, dtype=float)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"measured {y.shape} and predicted {p.shape} must be two vectors of one length")
    if len(y) == 0:
        raise ValueError("no rows to score")
    if np.any(y <= 0):
        raise ValueError("measured latencies must be positive to compute relative errors")
    rel = (p - y) / y
    if len(y) >= 2:
        from scipy.stats import kendalltau

        tau = float(kendalltau(y, p).statistic)
    else:
        tau = float("nan")
    return {
        "n": int(len(y)),
        "rmse_ms": float(np.sqrt(np.mean((p - y) ** 2))),
        "rmspe": float(np.sqrt(np.mean(rel ** 2))),
        "mape": float(np.mean(np.abs(rel))),
        "within_5pct": float(np.mean(np.abs(rel) <= 0.05)),
        "within_10pct": float(np.mean(np.abs(rel) <= 0.10)),
        "kendall_tau": tau,
    }


def fold_indices(n: int, folds: int | str, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs: k shuffled folds (``folds`` an int >= 2) or leave-one-out ("loo").

    k is lowered to ``n`` when there are fewer rows than folds (then it is leave-one-out).
    """
    if folds == "loo":
        k = n
    else:
        try:
            k = int(folds)
        except (TypeError, ValueError):
            raise ValueError(f"folds must be an integer of at least 2 or 'loo', got {folds!r}") from None
        if k < 2:
            raise ValueError(f"folds must be at least 2, got {k}")
        k = min(k, n)
    if n < 2:
        raise ValueError(f"cross-validation needs at least 2 rows, got {n}")
    order = np.random.default_rng(seed).permutation(n) if k < n else np.arange(n)
    parts = np.array_split(order, k)
    all_idx = np.arange(n)
    return [(np.setdiff1d(all_idx, t), np.sort(t)) for t in parts]
