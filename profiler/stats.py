"""Statistics of raw latency samples (milliseconds) and the stopping rule of the protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["SampleStats", "summarize", "median_rel_error"]


@dataclass(frozen=True)
class SampleStats:
    """Derived from the raw samples; every field in milliseconds except where named otherwise."""

    n: int
    median_ms: float
    mean_ms: float
    trimmed_mean_ms: float  # mean of the samples between the 10th and 90th percentile (20% trimmed)
    min_ms: float
    p10_ms: float
    p90_ms: float
    std_ms: float
    cv: float  # coefficient of variation: std / mean (dimensionless)
    mad_ms: float  # median absolute deviation from the median
    rel_spread: float  # (p90 - p10) / median (dimensionless)


def summarize(samples_ms: Sequence[float]) -> SampleStats:
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no samples")
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise ValueError("samples must be finite and non-negative")
    med = float(np.median(x))
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0
    p10, p90 = (float(v) for v in np.percentile(x, [10, 90]))
    # trimmed mean: drop the lowest and highest 10% (by count, as scipy.stats.trim_mean does)
    k = int(0.1 * x.size)
    xs = np.sort(x)
    trimmed = float(xs[k: x.size - k].mean())
    return SampleStats(
        n=int(x.size), median_ms=med, mean_ms=mean, trimmed_mean_ms=trimmed, min_ms=float(xs[0]),
        p10_ms=p10, p90_ms=p90, std_ms=std, cv=std / mean if mean > 0 else 0.0,
        mad_ms=float(np.median(np.abs(x - med))), rel_spread=(p90 - p10) / med if med > 0 else 0.0,
    )


def median_rel_error(samples_ms: Sequence[float]) -> float:
    """Relative standard error of the median, estimated robustly from the MAD.

    For roughly normal samples the standard error of the median is sqrt(pi/2) * sigma / sqrt(n);
    sigma is estimated as 1.4826 * MAD, which outliers (a preempted run) barely move.
    """
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.size < 2:
        return float("inf")
    med = float(np.median(x))
    if med <= 0:
        return float("inf")
    sigma = 1.4826 * float(np.median(np.abs(x - med)))
    return float(np.sqrt(np.pi / 2) * sigma / np.sqrt(x.size) / med)
