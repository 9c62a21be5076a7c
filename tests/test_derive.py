"""Deriving the most likely network under a latency target (the closed loop's re-derivation)."""

import itertools

import numpy as np
import pytest

from profiler.blocks import flops
from profiler.spaces import load_space
from search.derive import derive_network, derive_under_target
from search.latency import LatencyTable, SearchError


def _brute(table, probs, target):
    best, arg = -np.inf, None
    for ch in itertools.product(*[range(len(r)) for r in table.layers]):
        if table.arch_ms(ch) <= target:
            s = sum(np.log(p[c]) for p, c in zip(probs, ch))
            if s > best:
                best, arg = s, list(ch)
    return arg, best


def test_matches_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(20):
        layers = tuple(rng.uniform(0.1, 1.0, size=4) for _ in range(5))
        table = LatencyTable(layers, 0.5)
        probs = [rng.dirichlet(np.ones(4)) for _ in layers]
        target = rng.uniform(table.min_ms(), table.max_ms())
        ch = derive_under_target(table, probs, target)
        assert table.arch_ms(ch) <= target + 1e-9  # always meets the target
        _, best = _brute(table, probs, target)
        got = sum(np.log(p[c]) for p, c in zip(probs, ch))
        # exact up to the budget's rounding into 4,000 steps
        assert got == pytest.approx(best, abs=1e-9) or table.arch_ms(_brute(table, probs, target)[0]) > target * 0.999


def test_argmax_kept_when_it_meets_the_target_and_fastest_when_nothing_does():
    table = LatencyTable((np.array([1.0, 0.2]), np.array([0.5, 0.1])), 0.0)
    probs = [[0.9, 0.1], [0.8, 0.2]]
    assert derive_under_target(table, probs, None) == [0, 0]
    assert derive_under_target(table, probs, 1.5) == [0, 0]
    assert derive_under_target(table, probs, 1.2) == [0, 1]  # the cheaper sacrifice in log-probability
    assert derive_under_target(table, probs, 0.05) == [1, 1]
    with pytest.raises(SearchError, match="do not match"):
        derive_under_target(table, [[1.0]], 1.0)


class _FlopsModel:
    """Latency from FLOPs (1 ms per MFLOP) plus a per-network constant: a stand-in with a known answer."""

    def __init__(self, overhead_ms: float):
        self.overhead_ms = overhead_ms

    def predict_ms(self, blocks):
        return np.array([0.0 if b.kind == "zero" else flops(b) / 1e6 for b in blocks])

    def predict_network_ms(self, arch):
        return float(self.predict_ms(arch.blocks).sum()) + self.overhead_ms


def test_derive_network_bounds_the_whole_network_with_the_predictors_overhead():
    space = load_space("tiny-mnist")
    model = _FlopsModel(overhead_ms=0.3)
    table = LatencyTable.build(space, model)
    rng = np.random.default_rng(1)
    probs = [rng.dirichlet(np.ones(len(r))) for r in table.layers]
    target = (table.min_ms() + table.max_ms()) / 2 + model.overhead_ms  # whole network, ms
    arch = derive_network(space, model, probs, target, "found-again", meta={"round": 2})
    assert arch.meta["choices"] == derive_under_target(table, probs, target - model.overhead_ms)
    assert arch.keys == space.arch(arch.meta["choices"]).keys and arch.name == "found-again"
    assert list(arch.meta) == ["choices", "round", "predicted_network_ms"]
    assert arch.meta["predicted_network_ms"] == pytest.approx(model.predict_network_ms(arch))
    assert arch.meta["predicted_network_ms"] <= target + 1e-9
    # without a target: the most likely network
    free = derive_network(space, model, probs, None)
    assert free.meta["choices"] == [int(np.argmax(p)) for p in probs]
    with pytest.raises(SearchError, match="do not match"):
        derive_network(space, model, probs[:-1], target)
