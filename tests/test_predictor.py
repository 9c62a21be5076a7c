"""Latency predictors: tables, formats, regression, network fits, metrics, saving, CLI."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from predictor import (FEATURE_VERSION, HybridPredictor, LookupTable, PredictorError, RegressionPredictor,
                       UnknownBlockError, cross_validate, fit_networks, fit_predictor, load_predictor, metrics,
                       read_lut_yaml, save_predictor)
from predictor.features import FEATURE_NAMES, block_bytes, block_params, features
from predictor.io import read_networks, write_lut_yaml
from predictor.lut import Entry
from profiler.blocks import ArchSpec, BlockKeyError, BlockSpec, flops
from profiler.spaces import load_space

DATA = Path(__file__).parent / "data"
PROXYLESS = DATA / "lut_proxyless_tiny.yaml"
OFA = DATA / "lut_ofa_small.yaml"


def _params_torch(b: BlockSpec) -> int:
    """Parameters of the built torch module with each BatchNorm folded into a bias (an independent count)."""
    import torch.nn as nn

    m = b.build()
    n = 0
    for mod in m.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            n += mod.weight.numel() + (mod.bias.numel() if mod.bias is not None else 0)
        elif isinstance(mod, nn.BatchNorm2d):
            n += mod.num_features  # folded: one bias per channel (the conv before it has none)
    return n


# ---- features --------------------------------------------------------------------------------------

def test_params_match_the_built_torch_modules():
    blocks = load_space("tiny").blocks() + [
        BlockSpec.from_key("expanded_conv-input:16x16x24-output:16x16x24-expand:72-kernel:3-stride:1-idskip:1-se:1-hs:1")]
    for b in blocks:
        assert block_params(b) == _params_torch(b), b.key


def test_feature_matrix_columns():
    blocks = load_space("tiny").blocks()
    x = features(blocks)
    assert x.shape == (len(blocks), len(FEATURE_NAMES))
    assert np.allclose(x[:, FEATURE_NAMES.index("mflops")], [flops(b) / 1e6 for b in blocks])
    kinds = x[:, [i for i, n in enumerate(FEATURE_NAMES) if n.startswith("kind_")]]
    assert np.all(kinds.sum(axis=1) == 1)
    b = BlockSpec.mbconv(8, 16, 16, 3, 3, 1)
    rd, wr = block_bytes(b)
    # input twice (identity), weights, expanded map + depthwise map written and read back; output written
    assert rd == 4 * (2 * 8 * 8 * 16 + block_params(b) + 8 * 8 * 48 * 2)
    assert wr == 4 * (8 * 8 * 16 + 8 * 8 * 48 * 2)


# ---- lookup tables and formats ---------------------------------------------------------------------

def test_proxyless_lut_round_trip(tmp_path):
    t = read_lut_yaml(PROXYLESS)
    assert len(t) == 10 and t.meta["lut_format"] == "proxyless"
    blocks = load_space("tiny").blocks()
    ms = t.predict_ms(blocks)
    assert ms[0] == pytest.approx(0.052) and ms[-1] == pytest.approx(0.008)
    out = write_lut_yaml(tmp_path / "again.yaml", t.entries, header="test")
    t2 = read_lut_yaml(out)
    assert t2.entries == t.entries
    assert out.read_text().startswith("# test\n")
    import yaml

    raw = yaml.safe_load(out.read_text())
    assert set(next(iter(raw.values()))) == {"count", "mean", "var"}


def test_ofa_lut_read():
    t = read_lut_yaml(OFA)
    assert t.meta["lut_format"] == "ofa" and len(t) == 5
    se = BlockSpec.from_key("expanded_conv-input:16x16x24-output:16x16x24-expand:72-kernel:3-stride:1-idskip:1-se:1-hs:1")
    assert se.se and se.mid_c == 72
    assert t.predict_ms([se])[0] == pytest.approx(0.27)
    assert t.entries[se.key].var_ms2 == pytest.approx(0.015 ** 2)  # std is squared into a variance
    # the stem was written with default kernel/stride tokens: found through its canonical key
    stem = BlockSpec.conv(64, 3, 16, 3, 2, hs=True)
    assert t.predict_ms([stem])[0] == pytest.approx(0.21)


def test_unknown_key_raises_and_zero_costs_nothing():
    t = read_lut_yaml(PROXYLESS)
    missing = BlockSpec.mbconv(8, 16, 16, 6, 7, 1)
    with pytest.raises(KeyError) as ei:
        t.predict_ms([missing])
    assert isinstance(ei.value, UnknownBlockError)
    assert ei.value.args[0] == missing.key and missing.key in str(ei.value)
    zero = BlockSpec.zero(8, 16)
    assert t.predict_ms([zero]).tolist() == [0.0]


@pytest.mark.parametrize("text, words", [
    ("a: [1, 2\n", "not valid YAML"),
    ("- just\n- a list\n", "non-empty mapping"),
    ("Conv-input:32x32x3-output:16x16x8: {count: 1, mean: fast}\n", "must be numbers"),
    ("Conv-input:32x32x3-output:16x16x8: {count: 1, mean: 0.1, var: 0, colour: red}\n", "unknown field"),
    ("Conv-input:32x32x3-output:16x16x8-bogus:1: {count: 1, mean: 0.1, var: 0}\n", "unknown token"),
    ("Conv-input:32x32x3-output:16x16x8: {count: 1, mean: -0.1, var: 0}\n", "negative"),
    ("!!python/object/apply:os.system ['true']\n", "not valid YAML"),  # safe_load refuses tags
])
def test_malformed_lut_yaml(tmp_path, text, words):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(PredictorError, match=words):
        read_lut_yaml(f)


# ---- metrics and folds -----------------------------------------------------------------------------

def _tau_numpy(y, p):
    """Kendall's tau-a by counting pairs (no ties in the test data, so tau-a = tau-b)."""
    s = 0
    for i, j in combinations(range(len(y)), 2):
        s += np.sign(y[i] - y[j]) * np.sign(p[i] - p[j])
    return s / (len(y) * (len(y) - 1) / 2)


def test_metrics_against_an_independent_computation():
    rng = np.random.default_rng(3)
    y = rng.uniform(0.1, 5.0, 40)
    p = y * (1 + rng.normal(0, 0.08, 40))
    m = metrics(y, p)
    assert m["n"] == 40
    assert m["rmse_ms"] == pytest.approx(np.sqrt(((p - y) ** 2).mean()))
    assert m["rmspe"] == pytest.approx(np.sqrt((((p - y) / y) ** 2).mean()))
    assert m["mape"] == pytest.approx(np.abs((p - y) / y).mean())
    assert m["within_5pct"] == pytest.approx(sum(abs(a - b) / b <= 0.05 for a, b in zip(p, y)) / 40)
    assert m["within_10pct"] == pytest.approx(sum(abs(a - b) / b <= 0.10 for a, b in zip(p, y)) / 40)
    assert m["kendall_tau"] == pytest.approx(_tau_numpy(y, p))
    assert 0 < m["within_5pct"] < m["within_10pct"] < 1


# ---- regression ------------------------------------------------------------------------------------

def _synthetic_blocks():
    """Distinct MBConv/conv blocks of many shapes (no measurement needed)."""
    out = []
    for hw in (8, 14, 28, 56):
        for c in (8, 16, 32):
            for e in (1, 3, 6):
                for k in (3, 5, 7):
                    out.append(BlockSpec.mbconv(hw, c, c, e, k, 1))
        out.append(BlockSpec.conv(hw, 3, 16, 3, 2))
    return out


LAW = {"mflops": 0.004, "mb_read": 0.3, "mb_written": 0.1, "intercept": 0.02}


def _law_ms(blocks):
    x = features(blocks)
    col = FEATURE_NAMES.index
    return (LAW["mflops"] * x[:, col("mflops")] + LAW["mb_read"] * x[:, col("mb_read")]
            + LAW["mb_written"] * x[:, col("mb_written")] + LAW["intercept"])


def test_regression_recovers_a_known_linear_law():
    blocks = _synthetic_blocks()
    y = _law_ms(blocks)
    r = RegressionPredictor.fit(blocks, y, family="auto", folds=4)
    assert r.family == "linear"  # exact data: the linear family has zero CV error and wins
    assert r.cv["scores"]["linear"]["mape"] < 1e-6 < r.cv["scores"]["forest"]["mape"]
    coef = dict(zip(r.state["columns"], r.state["coef"]))
    for k in ("mflops", "mb_read", "mb_written"):
        assert coef[k] == pytest.approx(LAW[k], rel=1e-6)
    assert r.state["intercept"] == pytest.approx(LAW["intercept"], rel=1e-6)
    unseen = [BlockSpec.mbconv(112, 24, 24, 4, 5, 1)]
    assert r.predict_ms(unseen)[0] == pytest.approx(_law_ms(unseen)[0], rel=1e-6)


def test_loglinear_recovers_a_power_law():
    blocks = _synthetic_blocks()
    y = 0.01 * (features(blocks)[:, FEATURE_NAMES.index("mflops")]) ** 0.8
    r = RegressionPredictor.fit(blocks, y, family="loglinear")
    err = np.abs(r.predict_ms(blocks) / y - 1)
    assert err.max() < 0.01  # what is left is the ridge penalty's shrinkage (collinear log sizes)


@pytest.mark.parametrize("family", ["linear", "loglinear", "gbt", "forest"])
def test_save_load_identical_predictions(tmp_path, family):
    blocks = _synthetic_blocks()
    rng = np.random.default_rng(0)
    y = _law_ms(blocks) * np.exp(rng.normal(0, 0.1, len(blocks)))
    r = RegressionPredictor.fit(blocks, y, family=family, meta={"device": "test"})
    path = save_predictor(r, tmp_path / "p.json")
    assert b"pickle" not in path.read_bytes()
    q = load_predictor(path)
    probe = blocks + load_space("proxyless-mobile").blocks()
    assert np.array_equal(q.predict_ms(probe), r.predict_ms(probe))
    d = json.loads(path.read_text())
    assert d["feature_version"] == FEATURE_VERSION and d["meta"]["device"] == "test"
    assert "scikit-learn" in d["meta"]["versions"]


def test_trees_refuse_an_edited_file(tmp_path):
    blocks = _synthetic_blocks()
    r = RegressionPredictor.fit(blocks, _law_ms(blocks), family="gbt")
    path = save_predictor(r, tmp_path / "p.json")
    d = json.loads(path.read_text())
    d["regression"]["state"]["trees"][0]["value"] = [v + 1.0 for v in d["regression"]["state"]["trees"][0]["value"]]
    path.write_text(json.dumps(d))
    with pytest.raises(PredictorError, match="does not reproduce"):
        load_predictor(path)


def test_feature_version_mismatch_refused(tmp_path):
    t = read_lut_yaml(PROXYLESS)
    path = save_predictor(fit_predictor(t.entries, "hybrid", folds=3), tmp_path / "p.json")
    d = json.loads(path.read_text())
    d["feature_version"] = FEATURE_VERSION + 1
    path.write_text(json.dumps(d))
    with pytest.raises(PredictorError, match="feature version"):
        load_predictor(path)


def test_hybrid_table_where_measured_regression_elsewhere(tmp_path):
    t = read_lut_yaml(PROXYLESS)
    h = fit_predictor(t.entries, "hybrid", folds=3)
    assert isinstance(h, HybridPredictor)
    tiny = load_space("tiny").blocks()
    assert np.array_equal(h.predict_ms(tiny), t.predict_ms(tiny))
    new = BlockSpec.mbconv(8, 16, 16, 6, 7, 1)
    assert h.predict_ms([new])[0] == pytest.approx(h.regression.predict_ms([new])[0])
    assert h.predict_ms([new])[0] > 0
    q = load_predictor(save_predictor(h, tmp_path / "h.json"))
    assert np.array_equal(q.predict_ms(tiny + [new]), h.predict_ms(tiny + [new]))


def test_too_few_rows_refused():
    with pytest.raises(PredictorError, match="at least 3"):
        fit_predictor({"Conv-input:32x32x3-output:16x16x8": 0.05}, "hybrid")
    with pytest.raises(PredictorError, match="no measured blocks"):
        fit_predictor({}, "lut")


def test_cross_validation_is_out_of_fold():
    blocks = _synthetic_blocks()
    y = _law_ms(blocks)
    ev = cross_validate(blocks, y, family="linear", folds=5)
    assert ev.scores["mape"] < 1e-6  # an exact law is learned from any 4/5 of the rows
    # a FLOPs-only line cannot follow the memory terms
    assert ev.scores["flops_baseline"]["mape"] > 0.05
    # a lookup-like model (forest) cannot predict a held-out row exactly: the rows are truly held out
    ev2 = cross_validate(blocks[::4], y[::4], family="forest", folds="loo")
    assert ev2.scores["n"] == len(blocks[::4]) and ev2.scores["mape"] > 1e-3


# ---- network level ---------------------------------------------------------------------------------

def test_network_fit_recovers_block_costs():
    pool = [BlockSpec.mbconv(8, 16, 16, e, k, 1) for e in (3, 6) for k in (3, 5, 7)] + \
           [BlockSpec.mbconv(16, 8, 8, 1, 3, 1), BlockSpec.mbconv(16, 8, 8, 3, 5, 1)]
    rng = np.random.default_rng(1)
    true = rng.uniform(0.05, 0.5, len(pool))
    overhead = 0.4
    nets, y = [], []
    for _ in range(60):
        idx = rng.integers(0, len(pool), rng.integers(2, 9))
        nets.append([pool[i] for i in idx] + [BlockSpec.zero(8, 16)])  # zero ops cost nothing
        y.append(true[idx].sum() + overhead)
    p = fit_networks(nets, y)
    assert p.predict_ms(pool) == pytest.approx(true, rel=1e-3)
    assert p.overhead_ms == pytest.approx(overhead, abs=1e-3)
    arch = ArchSpec((pool[0], pool[1]), 8, 16)
    assert p.predict_network_ms(arch) == pytest.approx(true[0] + true[1] + overhead, rel=1e-3)
    # a block no network held: priced by the law fitted through the sums, positive
    assert p.predict_ms([BlockSpec.mbconv(8, 16, 16, 4, 3, 1)])[0] > 0


def test_refined_fit_learns_in_network_factors_out_of_fold():
    """Blocks cost a factor more (or less) inside a network than alone; a prior of isolated costs
    plus a ridge toward factor 1 learns them from the sums and predicts held-out networks better."""
    from predictor.network import fit_refined

    pool = [BlockSpec.mbconv(8, 16, 16, e, k, 1) for e in (3, 6) for k in (3, 5, 7)] + \
           [BlockSpec.mbconv(16, 8, 8, 1, 3, 1), BlockSpec.mbconv(16, 8, 8, 3, 5, 1)]
    rng = np.random.default_rng(2)
    alone = rng.uniform(0.05, 0.5, len(pool))
    factor = rng.uniform(0.8, 1.6, len(pool))
    prior = LookupTable({b.key: float(c) for b, c in zip(pool, alone)})
    unseen = BlockSpec.mbconv(8, 16, 16, 4, 3, 1)

    def sample(n):
        nets, y = [], []
        for _ in range(n):
            idx = rng.integers(0, len(pool), rng.integers(3, 9))
            nets.append([pool[i] for i in idx] + [BlockSpec.zero(8, 16)])
            y.append(float((alone[idx] * factor[idx]).sum() + 0.3) * rng.normal(1, 0.01))
        return nets, np.array(y)

    nets, y = sample(80)
    test_nets, test_y = sample(40)
    p = fit_refined(prior, nets, y)
    err_prior = np.abs([prior.predict_network_ms(n) for n in test_nets] - test_y) / test_y
    err_refined = np.abs([p.predict_network_ms(n) for n in test_nets] - test_y) / test_y
    assert np.median(err_refined) < 0.03 < np.median(err_prior)
    assert p.meta["ridge"] in p.meta["ridge_cv_rmspe"] or str(p.meta["ridge"]) in p.meta["ridge_cv_rmspe"]
    with pytest.raises(UnknownBlockError):  # a table prior still refuses what it never measured
        p.predict_ms([unseen])
    hybrid = fit_refined(fit_predictor({b.key: Entry(float(c)) for b, c in zip(pool, alone)}, "hybrid"), nets, y)
    assert hybrid.predict_ms([unseen])[0] > 0  # a hybrid prior answers it by regression


def test_network_files(tmp_path):
    k1, k2 = load_space("tiny").blocks()[0].key, load_space("tiny").blocks()[1].key
    f = tmp_path / "n.jsonl"
    f.write_text(json.dumps({"blocks": [k1, k2], "latency_ms": 1.5}) + "\n\n"
                 + json.dumps({"blocks": [k1], "latency_ms": 1.0}) + "\n")
    nets, y = read_networks(f)
    assert [len(n) for n in nets] == [2, 1] and y.tolist() == [1.5, 1.0]
    c = tmp_path / "n.csv"
    import csv

    with c.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["blocks", "latency_ms"])
        w.writerow([json.dumps([k1, k2]), 1.5])
    nets2, y2 = read_networks(c)
    assert nets2[0] == nets[0] and y2.tolist() == [1.5]
    f.write_text(json.dumps({"blocks": [k1, "expanded_conv-input:1x1x1-wat:3"], "latency_ms": 1.0}) + "\n")
    with pytest.raises(PredictorError, match=r"n\.jsonl:1: .*unknown token"):
        read_networks(f)


# ---- CLI -------------------------------------------------------------------------------------------

def _main(argv):
    from hwnas.cli import main

    return main([str(a) for a in argv])


def test_cli_fit_predict_export_from_lut(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert _main(["fit", "--lut", PROXYLESS, "--out", out, "--folds", "3", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["family"] in ("linear", "loglinear", "gbt", "forest") and set(s["cv"]["scores"]) >= {"linear", "gbt"}
    key = load_space("tiny").blocks()[0].key
    assert _main(["predict", "--predictor", out, "--block", key, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["latency_ms"] == pytest.approx(0.052)
    arch = load_space("tiny").arch([0] * len(load_space("tiny").searchable))
    (tmp_path / "arch.json").write_text(arch.to_json())
    assert _main(["predict", "--predictor", out, "--arch", tmp_path / "arch.json", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["latency_ms"]
    assert got == pytest.approx(read_lut_yaml(PROXYLESS).predict_network_ms(arch))
    lut = tmp_path / "space.yaml"
    assert _main(["export-lut", "--predictor", out, "--space", "tiny-mnist", "--out", lut]) == 0
    capsys.readouterr()
    t = read_lut_yaml(lut)
    assert len(t) == len(load_space("tiny-mnist").blocks())


def _bad(tmp_path, name, text):
    f = tmp_path / name
    f.write_text(text)
    return f


@pytest.mark.parametrize("case", ["yaml", "token", "network", "empty", "one-row", "lut-miss", "not-a-predictor"])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, case):
    key = load_space("tiny").blocks()[0].key
    lut = tmp_path / "lut.json"
    save_predictor(read_lut_yaml(PROXYLESS), lut)
    argv = {
        "yaml": ["fit", "--lut", _bad(tmp_path, "a.yaml", "x: [1,\n"), "--out", tmp_path / "o.json"],
        "token": ["predict", "--predictor", lut, "--block", key + "-foo:1"],
        "network": ["fit", "--networks", _bad(tmp_path, "n.jsonl", json.dumps(
            {"blocks": ["Nope-input:1x1x1-output:1x1x1"], "latency_ms": 1}) + "\n"), "--out", tmp_path / "o.json"],
        "empty": ["fit", "--lut", _bad(tmp_path, "e.yaml", "{}\n"), "--out", tmp_path / "o.json"],
        "one-row": ["fit", "--lut", _bad(tmp_path, "o.yaml", f"{key}: {{count: 3, mean: 0.1, var: 0}}\n"),
                    "--out", tmp_path / "o.json"],
        "lut-miss": ["predict", "--predictor", lut, "--block", BlockSpec.mbconv(8, 16, 16, 6, 7, 1).key],
        "not-a-predictor": ["predict", "--predictor", _bad(tmp_path, "x.json", "[1, 2]"), "--block", key],
    }[case]
    assert _main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hwnas ") and "error:" in err and "\n" not in err, err
    assert not (tmp_path / "o.json").exists()


def test_cli_networks_fit(tmp_path, capsys):
    blocks = load_space("tiny").blocks()
    rng = np.random.default_rng(2)
    true = {b.key: float(v) for b, v in zip(blocks, rng.uniform(0.1, 1.0, len(blocks)))}
    lines = []
    for _ in range(40):
        pick = [blocks[i].key for i in rng.integers(0, len(blocks), rng.integers(2, 7))]
        lines.append(json.dumps({"blocks": pick, "latency_ms": sum(true[k] for k in pick) + 0.25}))
    f = _bad(tmp_path, "nets.jsonl", "\n".join(lines) + "\n")
    out = tmp_path / "net.json"
    assert _main(["fit", "--networks", f, "--out", out]) == 0
    capsys.readouterr()
    p = load_predictor(out)
    assert p.predict_ms(blocks) == pytest.approx([true[b.key] for b in blocks], rel=1e-3)
    assert p.overhead_ms == pytest.approx(0.25, abs=1e-3)


# ---- real measurements -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def measured_db(tmp_path_factory, cache_dir):
    """The `tiny` space timed with the torch backend and the quick protocol (a few seconds)."""
    from profiler import TimingProtocol, profile

    db = tmp_path_factory.mktemp("pred") / "tiny.db"
    res = profile(load_space("tiny").blocks(), "torch", db, protocol=TimingProtocol.quick(), cache_dir=cache_dir)
    assert not res.failed
    return db


def test_real_measurements_fit_evaluate(measured_db, tmp_path, capsys):
    out = tmp_path / "p.json"
    assert _main(["fit", "--db", measured_db, "--backend", "torch", "--out", out, "--folds", "3"]) == 0
    capsys.readouterr()
    p = load_predictor(out)
    assert p.meta["backend"] == "torch" and p.meta["device"] == "local" and len(p.regression.train_keys) == 10
    blocks = load_space("tiny").blocks()
    from predictor.io import store_rows

    keys, y, _ = store_rows(measured_db, backend="torch")
    by = dict(zip(keys, y))
    assert p.predict_ms(blocks) == pytest.approx([by[b.key] for b in blocks])  # the table part is exact
    png = tmp_path / "cv.png"
    assert _main(["evaluate", "--db", measured_db, "--backend", "torch", "--cv", "loo", "--model", "loglinear",
                  "--plot", png, "--json", "--rows"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["n"] == 10 and set(s["flops_baseline"]) == set(s) & set(s["flops_baseline"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the JSON scores agree with the rows they were computed from
    m = metrics([r["measured_ms"] for r in s["rows"]], [r["predicted_ms"] for r in s["rows"]])
    assert m["mape"] == pytest.approx(s["mape"])
    assert _main(["evaluate", "--db", measured_db, "--backend", "torch", "--predictor", out, "--json"]) == 0
    s2 = json.loads(capsys.readouterr().out)
    assert s2["mape"] == pytest.approx(0.0) and s2["seen_in_training"] == 10


def test_cli_evaluate_needs_one_mode(measured_db, capsys):
    assert _main(["evaluate", "--db", measured_db, "--backend", "torch"]) == 2
    assert "--cv" in capsys.readouterr().err


# ---- network-level evaluation ----------------------------------------------------------------------

def _network_rows(tmp_path, n, cost, overhead, seed):
    """n random networks of tiny-space blocks, latency = sum of `cost` + overhead; JSONL and CSV files."""
    import csv

    blocks = load_space("tiny").blocks()
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        pick = [blocks[i].key for i in rng.integers(0, len(blocks), rng.integers(2, 8))]
        rows.append({"blocks": pick, "latency_ms": sum(cost[k] for k in pick) + overhead})
    f = tmp_path / "nets.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = tmp_path / "nets.csv"
    with c.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["blocks", "latency_ms"])
        for r in rows:
            w.writerow([json.dumps(r["blocks"]), r["latency_ms"]])
    return f, c, rows


def test_cli_evaluate_networks_cv_fits_on_the_folds(tmp_path, capsys):
    blocks = load_space("tiny").blocks()
    rng = np.random.default_rng(4)
    cost = {b.key: float(v) for b, v in zip(blocks, rng.uniform(0.1, 1.0, len(blocks)))}
    f, c, rows = _network_rows(tmp_path, 50, cost, 0.25, seed=5)
    png = tmp_path / "nets.png"
    assert _main(["evaluate", "--networks", f, "--cv", 5, "--json", "--rows", "--plot", png]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["n"] == 50 and s["mode"] == "cross-validation" and png.read_bytes()[:4] == b"\x89PNG"
    assert [r["measured_ms"] for r in s["rows"]] == pytest.approx([r["latency_ms"] for r in rows])
    # the sums are exactly linear in the block counts: models fitted on 40 networks predict the other 10
    assert s["mape"] < 1e-3 and s["within_5pct"] == 1.0
    assert s["flops_baseline"]["mape"] > 10 * s["mape"]  # random costs are not proportional to FLOPs
    m = metrics([r["measured_ms"] for r in s["rows"]], [r["predicted_ms"] for r in s["rows"]])
    assert m["rmspe"] == pytest.approx(s["rmspe"])
    # held out for real: with fewer networks than distinct blocks + 1 the folds cannot recover the costs
    (tmp_path / "few").mkdir()
    f2, _, _ = _network_rows(tmp_path / "few", 6, cost, 0.25, seed=6)
    assert _main(["evaluate", "--networks", f2, "--cv", "loo", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mape"] > 1e-3
    # CSV, leave-one-out
    assert _main(["evaluate", "--networks", c, "--cv", "loo", "--json"]) == 0
    s2 = json.loads(capsys.readouterr().out)
    assert s2["n"] == 50 and s2["folds"] == "loo" and s2["mape"] < 1e-3


def test_cli_refine_network_model_learns_what_blocks_cost_inside_networks(tmp_path, capsys):
    """Networks whose blocks cost a factor more than in the table: `--network-model refine` learns the
    factors on the folds and beats a constant overhead out of fold; `fit` saves such a predictor."""
    t = read_lut_yaml(PROXYLESS)
    keys = [b.key for b in load_space("tiny").blocks()]
    rng = np.random.default_rng(8)
    factor = dict(zip(keys, rng.uniform(1.0, 1.8, len(keys))))
    cost = {k: t.entries[k].mean_ms * factor[k] for k in keys}
    f, _, rows = _network_rows(tmp_path, 80, cost, 0.3, seed=9)
    scores = {}
    for model in ("overhead", "refine"):
        assert _main(["evaluate", "--networks", f, "--lut", PROXYLESS, "--model", "lut", "--cv", 5,
                      "--network-model", model, "--json"]) == 0
        scores[model] = json.loads(capsys.readouterr().out)
    assert "factors per block" in scores["refine"]["model"]
    assert scores["refine"]["mape"] < 0.02 < scores["overhead"]["mape"]
    out = tmp_path / "refined.json"
    assert _main(["fit", "--lut", PROXYLESS, "--model", "lut", "--networks", f, "--network-model", "refine",
                  "--out", out, "--json"]) == 0
    capsys.readouterr()
    p = load_predictor(out)
    assert p.predict_network_ms([BlockSpec.from_key(k) for k in rows[0]["blocks"]]) == \
        pytest.approx(rows[0]["latency_ms"], rel=0.02)


def test_cli_evaluate_networks_on_a_block_predictor(tmp_path, capsys):
    """--lut + --networks --cv: the table prices the blocks, the overhead is fitted on each fold."""
    t = read_lut_yaml(PROXYLESS)
    cost = {k: e.mean_ms for k, e in t.entries.items()}
    f, _, rows = _network_rows(tmp_path, 20, cost, 0.3, seed=7)
    assert _main(["evaluate", "--networks", f, "--lut", PROXYLESS, "--model", "lut", "--cv", 4, "--json",
                  "--rows"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert "overhead fitted per fold" in s["model"] and s["mape"] < 1e-9
    # a saved predictor scored on the networks: block sum + its overhead; without one, the sums are 0.3 ms short
    out = tmp_path / "lut.json"
    save_predictor(t, out)
    assert _main(["evaluate", "--networks", f, "--predictor", out, "--json", "--rows"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert [r["measured_ms"] - r["predicted_ms"] for r in s["rows"]] == pytest.approx([0.3] * 20)
    assert s["rows"][0]["network"].startswith("network 1")
    p = fit_networks(*read_networks(f))
    save_predictor(p, out)
    assert _main(["evaluate", "--networks", f, "--predictor", out]) == 0
    assert "fitted on 20 networks" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing", "too-few", "both"])
def test_cli_evaluate_networks_bad_input(tmp_path, capsys, case):
    cost = {k: e.mean_ms for k, e in read_lut_yaml(PROXYLESS).entries.items()}
    f, _, _ = _network_rows(tmp_path, 2, cost, 0.3, seed=8)
    lut = tmp_path / "lut.json"
    save_predictor(read_lut_yaml(PROXYLESS), lut)
    argv = {"missing": ["evaluate", "--networks", tmp_path / "nope.jsonl", "--cv", 5],
            "too-few": ["evaluate", "--networks", f, "--cv", 5],
            "both": ["evaluate", "--networks", f, "--lut", PROXYLESS, "--predictor", lut]}[case]
    assert _main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hwnas ") and "\n" not in err
    assert {"missing": "no such file", "too-few": "at least 3", "both": "--cv only"}[case] in err


@pytest.mark.parametrize("command", ["fit", "evaluate", "predict", "export-lut"])
def test_help_renders_percent_signs_once(command, capsys):
    """argparse %-formats argument help but not descriptions: a '%%' must never reach the reader."""
    with pytest.raises(SystemExit) as ei:
        _main([command, "--help"])
    assert ei.value.code == 0
    text = capsys.readouterr().out
    assert "%%" not in text and text.startswith(f"usage: hwnas {command}")
    if command == "evaluate":
        assert "(0.05 = 5 %)" in " ".join(text.split())
