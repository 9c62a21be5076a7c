"""The search-quality benchmark's statistics (benchmarks/search_quality.py): how well the from-scratch
reference ranks the sub-networks against itself, and whether architectures differ beyond seed noise."""

import pytest

from benchmarks.search_quality import NetResult, architecture_effect, split_half_tau


def net(name, seeds):
    return NetResult(name=name, family="random", key=name, choices=[0], test_acc=sum(seeds) / len(seeds),
                     test_acc_seeds=list(seeds))


def test_halves_that_rank_alike_give_tau_one_and_inherited_is_scored_against_each_half():
    subs = [net("a", [0.80, 0.81, 0.80, 0.82]), net("b", [0.83, 0.84, 0.84, 0.83]), net("c", [0.86, 0.85, 0.87, 0.86])]
    sh = split_half_tau(subs, inherited=[0.79, 0.78, 0.77])  # ranks them backwards
    assert sh["seeds"] == 4 and sh["halves"] == [[0, 1], [2, 3]]
    assert sh["tau_half_vs_half"] == pytest.approx(1.0)
    assert sh["tau_inherited_vs_first_half"] == pytest.approx(-1.0)
    assert sh["tau_inherited_vs_second_half"] == pytest.approx(-1.0)


def test_two_seeds_compare_seed_zero_with_seed_one():
    # seed 0 ranks a < b < c, seed 1 ranks c < b < a
    subs = [net("a", [0.80, 0.86]), net("b", [0.83, 0.83]), net("c", [0.86, 0.80])]
    sh = split_half_tau(subs, inherited=[0.1, 0.2, 0.3])
    assert sh["halves"] == [[0], [1]]
    assert sh["tau_half_vs_half"] == pytest.approx(-1.0)
    assert sh["tau_inherited_vs_first_half"] == pytest.approx(1.0)


def test_one_seed_has_no_split():
    sh = split_half_tau([net("a", [0.8]), net("b", [0.9]), net("c", [0.7])], inherited=[0.1, 0.2, 0.3])
    assert sh["tau_half_vs_half"] is None and sh["seeds"] == 1


def test_anova_tells_separated_networks_from_seed_noise():
    apart = architecture_effect([net("a", [0.80, 0.801]), net("b", [0.85, 0.851]), net("c", [0.90, 0.899])])
    assert apart["differs"] and apart["p"] < 0.001 and apart["eta_squared"] > 0.99
    noise = architecture_effect([net("a", [0.80, 0.86]), net("b", [0.86, 0.80]), net("c", [0.83, 0.83])])
    assert not noise["differs"] and noise["eta_squared"] == pytest.approx(0.0)


def test_t_margin_narrows_with_seeds_where_the_largest_gap_widens():
    from benchmarks.search_quality import t_margin

    two = t_margin(net("a", [0.8, 0.81]), net("b", [0.8, 0.81]), pooled_std=0.009, dof=20)
    four = t_margin(net("a", [0.8] * 4), net("b", [0.8] * 4), pooled_std=0.009, dof=60)
    assert four < two
    assert two == pytest.approx(2.086 * 0.009 * 1.0, rel=1e-3)  # t(0.975, 20) = 2.086


def test_each_supernet_keeps_its_own_inherited_accuracies(tmp_path, monkeypatch):
    """Two searches in one work folder (a second search seed, --skip-drop) must each be scored with their
    own supernet: the cache of inherited accuracies is per supernet, not per sub-network alone."""
    import search.train
    from benchmarks import search_quality as sq

    calls = []

    def fake_inherited(search_dir, choices, threads):  # the supernet's folder decides the numbers
        calls.append(search_dir.parent.name)
        base = 0.5 if search_dir.parent.name == "target-a" else 0.7
        return [base + 0.01 * i for i in range(len(choices))]

    monkeypatch.setattr(search.train, "inherited_accuracy", fake_inherited)
    nets = [NetResult(name=n, family="random", key=n, choices=[i], test_acc=0.8 + 0.02 * i, test_acc_seeds=[0.8, 0.81])
            for i, n in enumerate("abc")]
    got = {}
    for name in ("target-a", "target-b", "target-a"):
        run = {"run": str(tmp_path / name), "target_ms": 0.1, "key": "k", "choices": [9], "test_acc": 0.8,
               "test_acc_seeds": [0.8, 0.8], "measured_ms": 0.1}
        out = sq.part_supernet(None, tmp_path, sq._Wall(tmp_path), [run], nets)
        got.setdefault(name, []).append([r["inherited_acc"] for r in out["networks"]])
    assert got["target-a"][0] == got["target-a"][1]  # the second call for target-a reads its cache
    assert got["target-b"][0] != got["target-a"][0]
    assert calls == ["target-a", "target-b"]
