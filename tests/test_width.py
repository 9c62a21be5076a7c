"""Width as a searchable dimension: per-stage width multipliers in the spaces, their blocks, the
width-coupled latency table, the supernet at every width, derivation under a target, a short search.

The latency numbers here come from `FlopsMs`, a test double (ms proportional to a block's FLOPs):
what these tests check is arithmetic (exact expectations, exact derivations), which holds for any
positive table; the blocks of a width space are timed for real by `hwnas profile` (the README
gives the command and its cost)."""

import hashlib
import itertools
import json

import numpy as np
import pytest
import torch

from profiler.blocks import flops
from profiler.spaces import SpaceError, load_space, scaled_channels
from search.derive import derive_under_target
from search.latency import LatencyTable, SearchError
from search.supernet import Supernet

SPACE = "tiny-mnist-w"

TINY_W = """
description: the tiny test space with two widths per stage
input_size: 32
in_channels: 3
stem: {channels: 8, kernel: 3, stride: 2}
first_block: {channels: 8, expand: 1, kernel: 3}
stages:
  - {channels: 16, blocks: 2, stride: 2}
  - {channels: 24, blocks: 1, stride: 2}
candidates: {kernels: [3, 5], expands: [3], widths: [0.5, 1.0]}
zero: true
final_conv: 64
classes: 10
"""


class FlopsMs:
    """A test double for a predictor: 1 ms per MFLOP (zero op 0 ms). Positive and different for
    every width, which is all the arithmetic under test needs."""

    def predict_ms(self, blocks):
        return np.array([0.0 if b.kind == "zero" else flops(b) * 1e-6 + 1e-3 for b in blocks])


@pytest.fixture()
def tiny_w(tmp_path):
    p = tmp_path / "tiny-w.yaml"
    p.write_text(TINY_W)
    return load_space(str(p))


def _all_choices(space):
    ops = [range(len(space.layers[i].candidates)) for i in space.searchable]
    ws = [range(len(space.widths))] * space.width_stages
    return [list(c) for c in itertools.product(*ops, *ws)]


def _random_choices(space, rng):
    return ([int(rng.integers(len(space.layers[i].candidates))) for i in space.searchable]
            + [int(rng.integers(len(space.widths))) for _ in range(space.width_stages)])


# ---- spaces -----------------------------------------------------------------------------------------

# (block count, sha256 of the keys in order, zero ops included): what the spaces gave before widths existed
BEFORE = {"tiny": (10, "7c5d128a133999e5"), "tiny-mnist": (34, "4d9bd9472bfe1216"),
          "cifar-32": (46, "f09ea183f72a3584"), "proxyless-mobile": (70, "3a9688ca103208e1")}


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_spaces_without_widths_are_unchanged(name):
    space = load_space(name)
    keys = [b.key for b in space.blocks(include_zero=True)]
    assert (len(space.blocks()), hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]) == BEFORE[name]
    assert space.widths == (1.0,) and space.width_stages == 0 and space.n_choices == len(space.searchable)
    assert all(not layer.variants for layer in space.layers)


def test_full_width_is_the_space_without_widths():
    """tiny-mnist-w with every stage at x1.0 makes exactly tiny-mnist's networks (same keys)."""
    w, plain = load_space(SPACE), load_space("tiny-mnist")
    assert [len(w.layers[i].candidates) for i in w.searchable] == \
        [len(plain.layers[i].candidates) for i in plain.searchable]
    rng = np.random.default_rng(0)
    for _ in range(20):
        ops = _random_choices(plain, rng)
        assert w.arch(ops + [2, 2, 2]).keys == plain.arch(ops).keys
    assert w.uniform_choices("k3e6") == plain.uniform_choices("k3e6") + [2, 2, 2]
    assert set(b.key for b in plain.blocks()) <= set(b.key for b in w.blocks())


def test_width_rule_and_stage_channels():
    assert [scaled_channels(24, w) for w in (0.5, 0.75, 1.0)] == [12, 20, 24]  # 18 rounds half up to 20
    assert [scaled_channels(40, w) for w in (0.5, 0.75)] == [20, 32]
    assert scaled_channels(6, 0.5) == 4 and scaled_channels(10, 1.0) == 10  # at least 4; x1 as written
    space = load_space(SPACE)
    assert space.widths == (0.5, 0.75, 1.0) and space.width_stages == 3 and space.n_choices == 10
    arch = space.arch(space.uniform_choices("k3e3@0.5"))
    outs = [b.out_c for b in arch.blocks]
    assert outs == [16, 16, 12, 12, 12, 20, 20, 20, 32, 256, 10]
    # the zero op only inside a stage: a stage's first layer never has it, at any width
    firsts = [i for i in space.searchable if space.layers[i].in_stage is not None or i == space.searchable[0]]
    assert all(not any(c.kind == "zero" for cs in space.layers[i].all_variants() for c in cs) for i in firsts)


def test_choice_lists_are_checked():
    space = load_space(SPACE)
    with pytest.raises(SpaceError, match="10 choices .7 ops, then 3 stage widths"):
        space.arch([0] * 7)
    with pytest.raises(SpaceError, match="width choice 3 out of range"):
        space.arch([0] * 7 + [0, 3, 0])
    with pytest.raises(SpaceError, match="not a width of"):
        space.uniform_choices("k3e6@0.6")
    with pytest.raises(SpaceError, match="no width choices"):
        load_space("tiny-mnist").uniform_choices("k3e6@0.5")
    with pytest.raises(SpaceError, match="write the width after @"):
        space.uniform_choices("k3e6@half")


def test_blocks_cover_exactly_what_choice_lists_produce(tiny_w):
    """Every block any choice list makes is in blocks() (so `hwnas profile` times it), and nothing else."""
    made = {b for ch in _all_choices(tiny_w) for b in tiny_w.arch(ch).blocks if b.kind != "zero"}
    assert made == set(tiny_w.blocks())
    space = load_space(SPACE)
    listed = set(space.blocks())
    rng = np.random.default_rng(1)
    for _ in range(300):
        assert {b for b in space.arch(_random_choices(space, rng)).blocks if b.kind != "zero"} <= listed
    assert len(listed) == 162 and len(load_space("proxyless-mobile-w").blocks()) == 384


def test_a_malformed_width_list_is_refused(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(TINY_W.replace("widths: [0.5, 1.0]", "widths: [0.5, 0.5]"))
    with pytest.raises(SpaceError, match="distinct positive multipliers"):
        load_space(str(p))


def test_spanning_archs_draw_widths_too():
    space = load_space(SPACE)
    ms = dict(zip([b.key for b in space.blocks()], FlopsMs().predict_ms(space.blocks())))
    picked = space.spanning_archs(ms, 6, seed=0)
    assert len(picked) == 6 and all(len(c) == space.n_choices and space.arch(c).keys == a.keys for c, a in picked)
    assert len({tuple(c[-3:]) for c, _ in picked}) > 1  # not all at one width


# ---- latency table ------------------------------------------------------------------------------------

def test_expected_latency_is_exact_by_enumeration(tiny_w):
    table = LatencyTable.build(tiny_w, FlopsMs())
    pred = FlopsMs()
    rng = np.random.default_rng(0)
    probs = [torch.tensor(rng.dirichlet(np.ones(len(tiny_w.layers[i].candidates)))) for i in tiny_w.searchable]
    probs += [torch.tensor(rng.dirichlet(np.ones(2))) for _ in range(tiny_w.width_stages)]
    total = 0.0
    for ch in _all_choices(tiny_w):
        blocks = tiny_w.arch(ch).blocks
        ms = float(pred.predict_ms(blocks).sum())
        assert table.arch_ms(ch) == pytest.approx(ms, rel=1e-12)
        total += float(np.prod([float(p[c]) for p, c in zip(probs, ch)])) * ms
    assert float(table.expected_ms(probs)) == pytest.approx(total, rel=1e-9)
    every = [table.arch_ms(ch) for ch in _all_choices(tiny_w)]
    assert table.min_ms() == pytest.approx(min(every)) and table.max_ms() == pytest.approx(max(every))


def test_expected_latency_matches_sampled_networks_on_tiny_mnist_w():
    space = load_space(SPACE)
    table = LatencyTable.build(space, FlopsMs())
    rng = np.random.default_rng(2)
    probs = [rng.dirichlet(np.ones(len(space.layers[i].candidates))) for i in space.searchable]
    probs += [rng.dirichlet(np.ones(3)) for _ in range(space.width_stages)]
    draws = [[int(rng.choice(len(p), p=p)) for p in probs] for _ in range(20000)]
    sampled = np.array([table.arch_ms(ch) for ch in draws])
    exact = float(table.expected_ms([torch.tensor(p) for p in probs]))
    assert abs(sampled.mean() - exact) < 4 * sampled.std() / np.sqrt(len(sampled))


# ---- derivation under a target ------------------------------------------------------------------------

def test_derive_with_widths_matches_brute_force(tiny_w):
    table = LatencyTable.build(tiny_w, FlopsMs())
    every = _all_choices(tiny_w)
    rng = np.random.default_rng(3)
    for _ in range(15):
        probs = [rng.dirichlet(np.ones(len(tiny_w.layers[i].candidates))) for i in tiny_w.searchable]
        probs += [rng.dirichlet(np.ones(2)) for _ in range(tiny_w.width_stages)]
        target = float(rng.uniform(table.min_ms(), table.max_ms()))

        def score(ch):
            return sum(np.log(p[c]) for p, c in zip(probs, ch))

        feasible = [ch for ch in every if table.arch_ms(ch) <= target]
        best = max(score(ch) for ch in feasible)
        got = derive_under_target(table, probs, target)
        assert table.arch_ms(got) <= target + 1e-12
        assert score(got) == pytest.approx(best, abs=1e-9)
    # no target: the argmax of every row; an impossible one: the fastest network there is
    assert derive_under_target(table, probs, None) == [int(np.argmax(p)) for p in probs]
    fastest = derive_under_target(table, probs, table.min_ms() * 0.5)
    assert table.arch_ms(fastest) == pytest.approx(table.min_ms())
    with pytest.raises(SearchError, match="width"):
        derive_under_target(table, probs[:-1], target)


# ---- supernet -----------------------------------------------------------------------------------------

def _scramble_bn(net, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.weight.normal_(1, 0.2, generator=g)
                m.bias.normal_(0, 0.2, generator=g)


@pytest.mark.parametrize("weights", ["shared", "separate"])
def test_supernet_at_every_width_is_the_plain_network(weights):
    """At any ops and stage widths, the supernet computes what the derived plain network (ArchSpec.build()
    with `derived_state_dict`, strictly loaded) computes; narrower widths run on the first channels."""
    space = load_space(SPACE)
    net = Supernet(space, "binary", 0, weights=weights)
    _scramble_bn(net)
    net.eval()
    n_params = sum(p.numel() for p in net.weight_parameters())
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    rng = np.random.default_rng(4)
    outs = {}
    for ws in itertools.product(range(3), repeat=3):
        ops = _random_choices(space, rng)[:7]
        ch = ops + list(ws)
        with torch.no_grad(), net.fixed_paths(ch):
            y = net(x)
        plain = space.arch(ch).build()
        plain.load_state_dict(net.derived_state_dict(ch))  # strict: every shape is the narrow block's
        with torch.no_grad():
            assert torch.allclose(plain.eval()(x), y, atol=1e-5)
        outs[ws] = y
    assert net.widths == [2, 2, 2]  # fixed_paths puts the widths back
    assert sum(p.numel() for p in net.weight_parameters()) == n_params  # no weights per width
    assert not torch.allclose(outs[(0, 0, 0)], outs[(2, 2, 2)])
    # a narrower candidate is the first channels of the wider one's weights
    first = net.layers[space.searchable[0]]
    owner = first.candidates[0].owner
    with net.fixed_paths([0] * 7 + [0, 2, 2]):
        mod = owner.candidate_module(first.candidates[0].index)
    conv_w = [m.weight for m in mod.modules() if isinstance(m, torch.nn.Conv2d)]
    assert conv_w[-1].shape[0] == 12 and torch.equal(conv_w[-1], owner.project.weight[:12, :conv_w[-1].shape[1]])


def test_width_logits_are_architecture_parameters():
    space = load_space(SPACE)
    net = Supernet(space, "binary", 0, weights="shared")
    arch = net.arch_parameters()
    assert len(arch) == 7 + 3 and len(net.probs()) == 10
    assert {id(p) for p in arch}.isdisjoint(id(p) for p in net.weight_parameters())
    assert all(n.endswith("alpha") for n, p in net.named_parameters() if any(p is a for a in arch))
    gen = torch.Generator().manual_seed(0)
    ch = net.sample_paths(gen)
    assert len(ch) == 10 and net.widths == ch[7:]
    assert net.argmax_choices() == [0] * 7 + [0, 0, 0]
    lp = net.log_prob(ch)
    assert float(lp) == pytest.approx(sum(np.log(1 / len(space.layers[i].candidates)) for i in space.searchable)
                                      + 3 * np.log(1 / 3))


# ---- a short search -----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, weights", [("binary", "shared"), ("reinforce", "separate")])
def test_short_search_on_tiny_mnist_w(tmp_path, mode, weights):
    """search.train on tiny-mnist-w: a few steps on a small subset run end to end; the width logits
    move; the found network is a plain ArchSpec of the space whose weights load into it."""
    from search.export import load_network
    from search.train import SearchConfig, run_search

    cfg = SearchConfig(space=SPACE, data="digits", out=str(tmp_path / "s"), epochs=2, warmup_epochs=1,
                       batch_size=32, arch_every=1, arch_lr=0.05, limit=300, mode=mode, weights=weights,
                       loss="hinge", target_ms=0.5 * LatencyTable.build(load_space(SPACE), FlopsMs()).max_ms())
    res = run_search(cfg, FlopsMs())
    arch = res.arch
    space = load_space(SPACE)
    ch = arch.meta["choices"]
    assert len(ch) == 10 and arch.blocks == space.arch(ch).blocks
    assert arch.meta["widths"] == [space.widths[w] for w in ch[7:]]
    assert len(arch.meta["probabilities"]) == 10
    assert any(max(p) > min(p) + 1e-4 for p in arch.meta["probabilities"][7:])  # the width logits moved
    assert arch.meta["predicted_ms"] == pytest.approx(res.table.arch_ms(ch), abs=1e-5)
    net = load_network(tmp_path / "s" / "arch.json", tmp_path / "s" / "weights.pt")
    assert net(arch.example_input()).shape == (1, 10)
    log = json.loads((tmp_path / "s" / "log.json").read_text())
    assert log[1]["arch_steps"] > 0 and len(log[1]["choices"]) == 10


def test_hwnas_spaces_lists_the_widths_and_block_counts(capsys):
    from hwnas.cli import main

    assert main(["spaces", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["tiny-mnist-w"]["widths"] == [0.5, 0.75, 1.0] and rows["tiny-mnist-w"]["distinct_blocks"] == 162
    assert rows["proxyless-mobile-w"]["distinct_blocks"] == 384 and rows["tiny-mnist"]["widths"] == [1.0]


def test_spanning_archs_leave_out_named_baselines():
    """A baseline's key carries its name ("...-uniform-k3e3"); it is left out by its blocks all the same."""
    space = load_space("tiny")  # 12 networks: a pool of 4,000 draws sees every one
    ms = dict(zip([b.key for b in space.blocks()], FlopsMs().predict_ms(space.blocks())))
    base = space.arch(space.uniform_choices("k3e3"), "tiny-uniform-k3e3")
    every = space.spanning_archs(ms, 12, seed=0)
    assert base.keys in [a.keys for _, a in every]
    picked = space.spanning_archs(ms, 12, seed=0, exclude=[base.key])
    assert base.keys not in [a.keys for _, a in picked] and len(picked) == len(every) - 1


def test_a_width_search_resumes_where_it_stopped(tmp_path, tiny_w):
    """The width logits' score-function baseline is in the checkpoint: a resumed search ends as a whole one."""
    from search.train import SearchConfig, SearchProgress, run_search

    class StopAt(SearchProgress):
        def epoch_start(self, epoch, epochs, steps, phase):
            if epoch == 2:
                raise KeyboardInterrupt

    space_file = tmp_path / "tiny-w.yaml"

    def cfg(out):
        return SearchConfig(space=str(space_file), data="digits", out=str(out), epochs=3, warmup_epochs=1,
                            batch_size=64, arch_every=2, arch_lr=0.05, limit=400, weights="shared")

    whole = run_search(cfg(tmp_path / "a"), FlopsMs())
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg(tmp_path / "b"), FlopsMs(), progress=StopAt())
    res = run_search(cfg(tmp_path / "b"), FlopsMs(), resume=True)
    assert res.resumed_from == 2 and res.arch.meta["probabilities"] == whole.arch.meta["probabilities"]
    assert len(res.arch.meta["choices"]) == 3 + 2


def test_weight_steps_train_every_width_even_when_p_leans_to_one(tmp_path):
    """The weight steps draw each stage's width uniformly, not from p: with p pinned to the narrowest
    width, the channels only the widest width uses (final 1x1 conv's inputs 48..63) still train as
    much as the ones every width uses (0..31). Drawn from p they would move by weight decay alone,
    and the wide networks would inherit untrained channels (Kendall tau -0.02 on tiny-mnist-w)."""
    from search.supernet import SlicedConv
    from search.train import SearchConfig, SearchProgress, _epoch, _setup

    cfg = SearchConfig(space=SPACE, data="digits", out=str(tmp_path / "s"), epochs=2, warmup_epochs=1,
                       batch_size=32, limit=300, weights="shared", loss="hinge", target_ms=1e3)
    s = _setup(cfg, FlopsMs(), False, SearchProgress())
    with torch.no_grad():
        for w in s.net.width_choices:
            w.alpha.copy_(torch.tensor([20.0, 0.0, 0.0]))  # p(x0.5) = 1 - 4e-9
    conv = next(m for m in s.net.modules() if isinstance(m, SlicedConv)).body[0]
    assert conv.weight.shape[1] == 64
    before = conv.weight.detach().clone()
    _epoch(s, 0, SearchProgress())  # a warm-up epoch: weight steps only
    moved = (conv.weight.detach() - before).abs().mean(dim=(0, 2, 3))
    shared, widest = float(moved[:32].mean()), float(moved[48:].mean())
    assert shared > 0 and widest > 0.2 * shared, (shared, widest)


def test_the_sandwich_trains_the_largest_network_even_when_p_leans_to_the_smallest(tmp_path):
    """--weight-paths sandwich: each weight step also trains the space's largest network (k7e6 at full
    width) and its smallest (k3e3 at x0.5). With p pinned to k3e3, the outer ring of the 7x7
    superkernel (only k7 uses it) moves only with the sandwich."""
    from search.supernet import SharedMBConv
    from search.train import SearchConfig, SearchProgress, _epoch, _setup, sandwich_ends

    def ring_moved(paths):
        cfg = SearchConfig(space=SPACE, data="digits", out=str(tmp_path / paths), epochs=2, warmup_epochs=1,
                           batch_size=32, limit=200, weights="shared", loss="hinge", target_ms=1e3,
                           weight_paths=paths)
        s = _setup(cfg, FlopsMs(), False, SearchProgress())
        with torch.no_grad():
            for m in s.net.mixed:
                m.alpha.fill_(-20.0)
                m.alpha[0] = 20.0  # p(candidate 0: k3e3) = 1
        conv = next(m for m in s.net.modules() if isinstance(m, SharedMBConv)).depthwise
        before = conv.weight.detach().clone()
        _epoch(s, 0, SearchProgress())
        moved = (conv.weight.detach() - before).abs()
        ring = moved.clone()
        ring[:, :, 1:6, 1:6] = 0.0
        return s, float(ring.sum())

    s, with_sandwich = ring_moved("sandwich")
    space = load_space(SPACE)
    largest, smallest = sandwich_ends(space, s.table)
    assert largest[7:] == [2, 2, 2] and smallest[7:] == [0, 0, 0]
    assert all(space.layers[i].candidates[c].kernel == 7 for i, c in zip(space.searchable, largest[:7]))
    assert all(space.layers[i].candidates[c].kind != "zero" for i, c in zip(space.searchable, smallest[:7]))
    _, without = ring_moved("one")
    assert with_sandwich > 0 and without < 1e-3 * with_sandwich, (with_sandwich, without)


def test_distill_trains_the_smaller_networks_on_the_largest_ones_predictions_not_the_labels(tmp_path):
    """--weight-paths distill: the largest network learns the labels, the sampled path and the
    smallest network the largest's predictions. So relabelling a batch changes a distill step's
    gradients exactly as much as it changes the largest network's own cross-entropy gradients; in
    the plain sandwich, where all three learn the labels, it changes them by more."""
    import torch.nn.functional as F

    from search.train import SearchConfig, SearchProgress, _setup, _weight_grads

    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y1 = torch.arange(16) % 10
    y2 = (y1 + 3) % 10

    def grads(paths, y, teacher_only=False):
        cfg = SearchConfig(space=SPACE, data="digits", out=str(tmp_path / f"{paths}-{teacher_only}"), epochs=1,
                           batch_size=16, limit=200, weights="shared", loss="hinge", target_ms=1e3,
                           weight_paths=paths)
        s = _setup(cfg, FlopsMs(), False, SearchProgress())
        s.net.sample_paths(torch.Generator().manual_seed(5))
        if teacher_only:
            s.w_opt.zero_grad(set_to_none=True)
            with s.net.fixed_paths(s.sandwich[0]):
                F.cross_entropy(s.net(x), y).backward()
        else:
            _weight_grads(s, x, y)
        return torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).flatten()
                          for p in s.net.weight_parameters()])

    teacher = grads("distill", y1, True) - grads("distill", y2, True)
    distill = grads("distill", y1) - grads("distill", y2)
    sandwich = grads("sandwich", y1) - grads("sandwich", y2)
    assert float(teacher.abs().max()) > 0
    torch.testing.assert_close(distill, teacher, rtol=1e-4, atol=1e-6)
    assert float((sandwich - teacher).abs().max()) > 10 * float((distill - teacher).abs().max()) + 1e-6


def test_skip_drop_reaches_the_weight_steps_of_a_search(tmp_path):
    """--skip-drop P from the search's options to its weight steps: with p pinned to k3e3, only the
    stochastic depth can skip a layer, and it does in about P of the skippable layers' steps."""
    from search.train import SearchConfig, SearchProgress, _epoch, _setup

    cfg = SearchConfig(space=SPACE, data="digits", out=str(tmp_path / "s"), epochs=2, warmup_epochs=1,
                       batch_size=32, limit=400, weights="shared", loss="hinge", target_ms=1e3, skip_drop=0.5)
    s = _setup(cfg, FlopsMs(), False, SearchProgress())
    with torch.no_grad():
        for m in s.net.mixed:
            m.alpha.fill_(-20.0)
            m.alpha[0] = 20.0  # p(candidate 0: k3e3) = 1
    space = load_space(SPACE)
    zero = [next((j for j, c in enumerate(space.layers[i].candidates) if c.kind == "zero"), None)
            for i in space.searchable]
    drawn = []
    sample = s.net.sample_paths
    s.net.sample_paths = lambda gen, **kw: drawn.append(sample(gen, **kw)) or drawn[-1]
    _epoch(s, 0, SearchProgress())  # a warm-up epoch: weight steps only
    skips = [c == z for d in drawn for c, z in zip(d, zero) if z is not None]
    assert len(drawn) >= 8 and 0.25 < sum(skips) / len(skips) < 0.75, (len(drawn), sum(skips), len(skips))
    assert all(c == 0 for d in drawn for c, z in zip(d, zero) if z is None)  # the others follow p
