"""The latency losses stay defined for sub-millisecond networks (tiny spaces on a desktop CPU)."""

import math

import pytest
import torch

from search.latency import SearchError, latency_loss


def test_mul_loss_is_finite_below_one_ms_and_pulls_above_it():
    ce = torch.tensor(2.0)
    lat = torch.tensor(0.8, requires_grad=True)  # below 1 ms: log LAT < 0 would make the power NaN
    loss = latency_loss(ce, lat, "mul", target_ms=1.5, beta=0.3)
    loss.backward()
    assert torch.isfinite(loss) and lat.grad == 0  # no pressure far below the target
    lat = torch.tensor(3.0, requires_grad=True)
    loss = latency_loss(ce, lat, "mul", target_ms=1.5, beta=0.3)
    loss.backward()
    assert float(loss) == pytest.approx(2.0 * (math.log(3.0) / math.log(1.5)) ** 0.3)
    assert lat.grad > 0


def test_ratio_loss_is_unit_free():
    ce = torch.tensor(1.7)
    a = latency_loss(ce, torch.tensor(0.3), "ratio", target_ms=0.2, beta=0.5)
    b = latency_loss(ce, torch.tensor(300.0), "ratio", target_ms=200.0, beta=0.5)
    assert float(a) == pytest.approx(float(b)) == pytest.approx(1.7 * 1.5 ** 0.5)
    assert float(latency_loss(ce, torch.tensor(0.2), "ratio", target_ms=0.2)) == pytest.approx(1.7)
    with pytest.raises(SearchError, match="positive"):
        latency_loss(ce, torch.tensor(0.2), "ratio", target_ms=None)


def test_ratio_target_is_only_a_constant_scale_but_ceiling_binds():
    """Adam ignores a constant scale of the gradient: with `ratio` two targets give gradients that
    differ by a constant factor (same search); with `ceiling` a target above LAT removes the latency
    pressure entirely while one below it keeps it."""
    ce = torch.tensor(1.3)

    def grad(kind, target):
        lat = torch.tensor(0.5, requires_grad=True)
        latency_loss(ce, lat, kind, target_ms=target, beta=0.6).backward()
        return float(lat.grad)

    g1, g2 = grad("ratio", 0.4), grad("ratio", 0.8)
    assert g1 / g2 == pytest.approx((0.8 / 0.4) ** 0.6)  # a constant: the same Adam steps
    assert grad("ceiling", 0.8) == 0.0 and grad("ceiling", 0.4) == pytest.approx(g1)
    assert float(latency_loss(ce, torch.tensor(0.5), "ceiling", target_ms=0.8)) == pytest.approx(1.3)


def test_hinge_and_abs_set_the_balance_of_latency_and_ce_by_the_target():
    """Additive forms: the latency gradient is weight / T per ms whatever CE is, so a lower target
    weighs latency more against CE (what Adam sees); hinge stops at T, abs pulls up from below."""
    def grads(kind, target, lat_ms=0.5):
        ce = torch.tensor(1.3, requires_grad=True)
        lat = torch.tensor(lat_ms, requires_grad=True)
        latency_loss(ce, lat, kind, target_ms=target, weight=2.0).backward()
        return float(ce.grad), float(lat.grad)

    (c1, l1), (c2, l2) = grads("hinge", 0.25), grads("hinge", 0.4)
    assert c1 == c2 == 1.0 and l1 == pytest.approx(2.0 / 0.25) and l2 == pytest.approx(2.0 / 0.4)
    assert grads("hinge", 0.8)[1] == 0.0  # at or below T: no latency pressure
    assert grads("abs", 0.8)[1] == pytest.approx(-2.0 / 0.8)  # below T: pulled towards it
    assert float(latency_loss(torch.tensor(1.0), torch.tensor(0.6), "hinge", target_ms=0.4, weight=2.0)) \
        == pytest.approx(1.0 + 2.0 * 0.5)
    with pytest.raises(SearchError, match="positive --target-ms"):
        latency_loss(torch.tensor(1.0), torch.tensor(0.6), "abs", target_ms=None)


def test_sharpened_expected_latency_approaches_the_argmax_network():
    """E[LAT] under softmax(alpha / t): t = 1 is ProxylessNAS's; as t falls it tends to the latency of
    the argmax network, which is what the search returns (a tail of slow candidates no longer counts)."""
    import numpy as np

    from search.latency import LatencyTable
    from search.train import SearchConfig

    table = LatencyTable((np.array([0.1, 0.2, 2.0]), np.array([0.05, 1.0])), fixed_ms=0.3)
    alphas = [torch.tensor([1.0, 0.2, 0.0]), torch.tensor([0.5, 0.0])]

    def expected(t):
        return float(table.expected_ms([torch.softmax(a / t, 0) for a in alphas]))

    argmax_ms = table.arch_ms([0, 0])
    e1, e025, e005 = expected(1.0), expected(0.25), expected(0.05)
    assert e1 > e025 > e005 > argmax_ms and e005 == pytest.approx(argmax_ms, rel=0.01)
    with pytest.raises(SearchError, match="lat-temperature"):
        SearchConfig(space="tiny-mnist", data="digits", out="x", lat_temperature=0).check()
