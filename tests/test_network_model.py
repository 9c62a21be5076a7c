"""Network-level models (overhead, linear, auto) as saveable predictors, and calibration networks
that span a space's latency range."""

import numpy as np
import pytest

from predictor import LookupTable, PredictorError, load_predictor, save_predictor
from predictor.network import NETWORK_MODELS, choose_network_model, fit_linear, fit_network_model
from profiler.spaces import load_space


def _space_table(seed=0):
    space = load_space("tiny-mnist")
    rng = np.random.default_rng(seed)
    ms = {b.key: float(rng.uniform(0.02, 0.2)) for b in space.blocks()}
    return space, ms, LookupTable(ms)


def _networks(space, ms, n, scale, overhead, seed=0, per_block=0.0, exclude=()):
    archs = [a for _, a in space.spanning_archs(ms, n, seed=seed, exclude=exclude)]
    y = [scale * sum(ms.get(b.key, 0.0) for b in a.blocks) + per_block * sum(b.kind != "zero" for b in a.blocks)
         + overhead for a in archs]
    return [list(a.blocks) for a in archs], y


def test_the_network_model_weighs_fast_and_slow_networks_alike():
    """Networks from 0.3 to 7 ms: a model fitted on absolute errors would serve the slow end; this one
    is fitted on relative errors, so an outlier at the slow end moves the fast end's prediction little."""
    space, ms, table = _space_table()
    nets, y = _networks(space, ms, 10, scale=1.0, overhead=0.01)
    y[-1] *= 1.5  # the slowest network measured 50 % slower than its blocks say (a disturbed timing)
    pred, fit = choose_network_model(table, nets, y, models=("overhead",))
    fastest = int(np.argmin(y))
    assert abs(pred.predict_network_ms(nets[fastest]) - y[fastest]) / y[fastest] < 0.10


def test_linear_model_recovers_scale_and_overhead_and_survives_a_save(tmp_path):
    space, ms, table = _space_table()
    nets, y = _networks(space, ms, 8, scale=1.3, overhead=0.05)
    p = fit_linear(table, nets, y)
    assert p.network_scale == pytest.approx(1.3) and p.overhead_ms == pytest.approx(0.05)
    assert [p.predict_network_ms(n) for n in nets] == pytest.approx(y)
    back = load_predictor(save_predictor(p, tmp_path / "p.json"))
    assert back.network_scale == pytest.approx(1.3)
    assert [back.predict_network_ms(n) for n in nets] == pytest.approx(y)
    assert table.network_scale == 1.0  # the base is not changed


def test_auto_chooses_linear_only_when_it_predicts_held_out_networks_better():
    space, ms, table = _space_table()
    nets, y = _networks(space, ms, 8, scale=1.3, overhead=0.05)
    pred, fit = choose_network_model(table, nets, y)
    assert fit.model == "linear" and fit.metrics_loo["mape"] < 1e-6
    assert set(fit.candidates) == {"overhead", "linear", "block", "linear-block"}
    assert fit.range_ms == (min(y), max(y))
    # blocks that cost the same in a network as alone: the simpler offset model is kept
    nets, y = _networks(space, ms, 8, scale=1.0, overhead=0.02)
    pred, fit = choose_network_model(table, nets, y)
    assert fit.model == "overhead" and pred.network_scale == 1.0 and pred.overhead_ms == pytest.approx(0.02)
    assert "auto" in NETWORK_MODELS and fit_network_model(table, nets, y, "auto").overhead_ms == pytest.approx(0.02)


def test_linear_needs_enough_networks():
    space, ms, table = _space_table()
    nets, y = _networks(space, ms, 3, scale=1.2, overhead=0.0)
    with pytest.raises(PredictorError, match="at least 4"):
        fit_linear(table, nets, y)
    _, fit = choose_network_model(table, nets, y)
    assert fit.model == "overhead" and set(fit.candidates) == {"overhead"}


def test_a_bad_scale_in_a_predictor_file_is_one_line(tmp_path):
    import json

    space, ms, table = _space_table()
    path = save_predictor(table, tmp_path / "p.json")
    d = json.loads(path.read_text())
    d["network_scale"] = "lots"
    path.write_text(json.dumps(d))
    with pytest.raises(PredictorError, match="network_scale must be a positive number"):
        load_predictor(path)


def test_calibration_networks_span_the_space_and_leave_out_the_baselines():
    space, ms, _ = _space_table(seed=3)
    base = [space.arch(space.uniform_choices(op)).key for op in ("k3e3", "k3e6", "k5e6")]
    picked = space.spanning_archs(ms, 10, seed=1, exclude=base)
    assert len(picked) == len({a.key for _, a in picked}) == 10
    assert not {a.key for _, a in picked} & set(base)
    sums = sorted(sum(ms.get(b.key, 0.0) for b in a.blocks) for _, a in picked)
    # the space's own extremes: every layer at its cheapest / dearest candidate
    lo = sum(min((0.0 if c.kind == "zero" else ms[c.key]) for c in layer.candidates) for layer in space.layers)
    hi = sum(max((0.0 if c.kind == "zero" else ms[c.key]) for c in layer.candidates) for layer in space.layers)
    # the picked networks cover most of that range, evenly on a log scale (no gap above a quarter of it)
    span = np.log(hi / lo)
    assert np.log(sums[0] / lo) < 0.15 * span and np.log(hi / sums[-1]) < 0.15 * span
    assert max(np.diff(np.log(sums))) < 0.25 * span
    assert space.spanning_archs(ms, 10, seed=1, exclude=base) == picked  # deterministic


def test_a_per_block_cost_is_found_and_predicts_the_held_out_uniform_networks(tmp_path):
    """Each block timed alone carries a per-call cost a network pays once (here 4 us per block): the
    ``block`` model finds it on networks with skipped layers and predicts the uniform networks, which
    skip none and were not fitted on, where a plain offset misses them."""
    space, ms, table = _space_table(seed=2)
    uniform = [space.arch(space.uniform_choices(op)) for op in ("k3e3", "k3e6", "k5e6")]
    nets, y = _networks(space, ms, 10, scale=1.0, overhead=0.03, per_block=-0.004,
                        exclude=[a.key for a in uniform])
    assert len({sum(b.kind != "zero" for b in n) for n in nets}) > 2  # the networks differ in block count
    pred, fit = choose_network_model(table, nets, y)
    assert fit.model == "block" and fit.block_ms == pytest.approx(-0.004) and pred.overhead_ms == pytest.approx(0.03)
    offset, _ = choose_network_model(table, nets, y, models=("overhead",))
    for a in uniform:
        true = sum(ms[b.key] for b in a.blocks if b.kind != "zero") - 0.004 * len(a.blocks) + 0.03
        assert pred.predict_network_ms(a) == pytest.approx(true, rel=1e-6)
        assert abs(offset.predict_network_ms(a) - true) > 1e-3  # the offset alone cannot see it
    back = load_predictor(save_predictor(pred, tmp_path / "p.json"))  # the term is saved with the predictor
    assert back.block_overhead_ms == pytest.approx(-0.004)
    assert [back.predict_network_ms(n) for n in nets] == pytest.approx(y)
    assert fit_network_model(table, nets, y, "block").block_overhead_ms == pytest.approx(-0.004)
    assert table.block_overhead_ms == 0.0  # the base is not changed


def test_the_block_model_needs_networks_that_differ_in_block_count():
    space, ms, table = _space_table()
    full = [op for op in ("k3e3", "k3e6", "k5e3", "k5e6", "k7e3", "k7e6")]
    nets = [list(space.arch(space.uniform_choices(op)).blocks) for op in full]
    y = [sum(ms[b.key] for b in n if b.kind != "zero") - 0.002 * len(n) for n in nets]
    _, fit = choose_network_model(table, nets, y)
    assert "block" not in fit.candidates and "linear-block" not in fit.candidates
    with pytest.raises(PredictorError, match="different numbers of blocks"):
        fit_network_model(table, nets, y, "block")


def test_a_negative_per_block_term_never_makes_a_block_negative():
    space, ms, table = _space_table()
    import copy

    p = copy.copy(table)
    p.block_overhead_ms = -1.0  # far more than any block costs
    out = p.predict_ms(list(space.blocks()))
    assert np.all(out >= 0.0)


def test_calibration_networks_vary_in_depth_at_every_latency():
    """Fast networks drawn by latency alone skip layers and slow ones skip none, so a per-block cost and a
    per-millisecond one cannot be told apart; the calibration set holds full-depth fast networks and
    shallow slow ones too."""
    space, ms, _ = _space_table(seed=3)
    picked = [a for _, a in space.spanning_archs(ms, 10, seed=1)]
    depth = np.array([sum(b.kind != "zero" for b in a.blocks) for a in picked])
    lat = np.array([sum(ms.get(b.key, 0.0) for b in a.blocks) for a in picked])
    fast = np.argsort(lat)[:5]
    slow = np.argsort(lat)[5:]
    full = len(picked[0].blocks)
    assert depth[fast].max() == full  # a fast network that skips nothing
    assert depth[fast].min() < full and depth[slow].min() < full  # and ones that skip, at both ends
    assert abs(np.corrcoef(depth, np.log(lat))[0, 1]) < 0.75  # 0.85 when drawn by latency alone
