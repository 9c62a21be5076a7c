"""Statistics checked against an independent computation (the standard library and scipy)."""

import random
import statistics

import numpy as np
import pytest
from scipy import stats as sps

from profiler.stats import median_rel_error, summarize


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_summary_matches_independent_computation(seed):
    rng = random.Random(seed)
    x = [rng.lognormvariate(0, 0.2) for _ in range(rng.randint(5, 200))]
    s = summarize(x)
    assert s.n == len(x)
    assert s.median_ms == pytest.approx(statistics.median(x))
    assert s.mean_ms == pytest.approx(statistics.fmean(x))
    assert s.std_ms == pytest.approx(statistics.stdev(x))
    assert s.cv == pytest.approx(statistics.stdev(x) / statistics.fmean(x))
    assert s.trimmed_mean_ms == pytest.approx(sps.trim_mean(x, 0.1))
    q = statistics.quantiles(x, n=10, method="inclusive")
    assert s.p10_ms == pytest.approx(q[0])
    assert s.p90_ms == pytest.approx(q[-1])
    assert s.min_ms == min(x)
    assert s.mad_ms == pytest.approx(statistics.median([abs(v - statistics.median(x)) for v in x]))


def test_outlier_moves_mean_not_median():
    x = [1.0] * 50 + [1.02] * 49 + [50.0]
    s = summarize(x)
    assert s.median_ms == pytest.approx(1.01)
    assert s.mean_ms > 1.4
    assert s.trimmed_mean_ms < 1.02


def test_median_error_shrinks_with_samples():
    rng = np.random.default_rng(0)
    few, many = rng.normal(1, 0.05, 10), rng.normal(1, 0.05, 1000)
    assert median_rel_error(many) < median_rel_error(few)
    # sqrt(pi/2) * sigma / sqrt(n) for normal samples
    assert median_rel_error(many) == pytest.approx(np.sqrt(np.pi / 2) * 0.05 / np.sqrt(1000), rel=0.15)


def test_bad_samples_raise():
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        summarize([1.0, float("nan")])
