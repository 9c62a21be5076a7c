"""depth="tail" (Once-for-All's elastic depth): in a run of skippable layers of a stage, the k-th layer
that runs uses the k-th layer's weights, so a sub-network that skips a middle layer is run, trained and
derived as the same network skipping the stage's last layer."""

import pytest
import torch
import torch.nn.functional as F

from profiler.spaces import load_space
from search.latency import SearchError
from search.supernet import Supernet, _skippable_runs

SPACE = "tiny-mnist-w"  # stages of 3, 3 and 1 layers; the last two layers of the first two may be skipped
K3E6, K5E6, SKIP = 3, 4, 6  # candidate indices of a skippable layer of tiny-mnist-w


def _random_weights(net: Supernet, seed: int = 0) -> Supernet:
    """Every weight and BN statistic drawn at random: the supernet's start (every candidate the
    smallest's function, zero columns) would hide which weights a layer runs on."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(net.named_parameters()) + list(net.named_buffers()):
            if name.endswith("alpha") or t.dtype != torch.float32:
                continue
            t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.5 if "running_var" in name
                    else torch.randn(t.shape, generator=g) * 0.3)
    return net.eval()


def test_runs_are_the_swappable_layers_of_each_stage():
    assert _skippable_runs(load_space(SPACE)) == [[3, 4], [6, 7]]
    assert _skippable_runs(load_space("proxyless-mobile"))[0] == [3, 4, 5]  # the first of a stage: never
    assert _skippable_runs(load_space("tiny")) == []  # one skippable layer per stage: nothing to route


@pytest.mark.parametrize("weights", ["shared", "separate"])
def test_skipping_a_middle_layer_runs_as_skipping_the_last(weights):
    space = load_space(SPACE)
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    middle = [K3E6, SKIP, K5E6, K3E6, SKIP, K5E6, K3E6, 1, 2, 0]  # layer 1 and 4 skipped, widths 0.75/1/0.5
    last = [K3E6, K5E6, SKIP, K3E6, K5E6, SKIP, K3E6, 1, 2, 0]   # the same network, skips at the stages' ends
    outs = {}
    for depth in ("any", "tail"):
        net = _random_weights(Supernet(space, "binary", seed=0, weights=weights, depth=depth))
        with torch.no_grad():
            with net.fixed_paths(middle):
                a = net(x)
            with net.fixed_paths(last):
                b = net(x)
        outs[depth] = (a, b)
    assert torch.equal(*outs["tail"])
    assert not torch.allclose(*outs["any"], atol=1e-3)  # each layer on its own weights: another function
    # without a skip, depth changes nothing
    full = [K3E6, K5E6, K3E6, K3E6, K5E6, K3E6, K3E6, 2, 2, 2]
    nets = [_random_weights(Supernet(space, "binary", seed=0, weights=weights, depth=d)) for d in ("any", "tail")]
    with torch.no_grad():
        ys = []
        for net in nets:
            with net.fixed_paths(full):
                ys.append(net(x))
    assert torch.equal(*ys)


@pytest.mark.parametrize("weights", ["shared", "separate"])
def test_the_derived_network_holds_the_weights_each_block_ran_on(weights):
    space = load_space(SPACE)
    net = _random_weights(Supernet(space, "binary", seed=0, weights=weights, depth="tail"))
    choices = [K5E6, SKIP, K3E6, K3E6, SKIP, SKIP, K3E6, 0, 1, 2]
    arch = space.arch(choices)
    plain = arch.build().eval()
    plain.load_state_dict(net.derived_state_dict(choices))
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), net.fixed_paths(choices):
        want = net(x)
    torch.testing.assert_close(plain(x), want, rtol=1e-4, atol=1e-5)
    # routing registers nothing: the state dict (a checkpoint) is the one of depth="any"
    assert list(net.state_dict()) == list(Supernet(space, "binary", seed=0, weights=weights).state_dict())


def test_a_weight_step_trains_the_first_layer_of_a_stage_that_runs_not_the_one_chosen():
    """Skip layer 1 and run k5e6 at layer 2: the gradient reaches layer 1's weights (where the
    stage's second running layer lives), and layer 2's get none."""
    space = load_space(SPACE)
    net = Supernet(space, "binary", seed=0, weights="shared", depth="tail")
    for m, c in zip(net.mixed, [K3E6, SKIP, K5E6, K3E6, K3E6, K3E6, K3E6]):
        m.set_path(c)
    net.set_widths([2, 2, 2])
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    F.cross_entropy(net(x), y).backward()
    l1, l2 = net.mixed[1].shared, net.mixed[2].shared
    assert l1.depthwise.weight.grad is not None and l1.depthwise.weight.grad.abs().sum() > 0
    assert l2.depthwise.weight.grad is None or l2.depthwise.weight.grad.abs().sum() == 0


def test_the_binary_architecture_step_runs_with_tail_depth():
    """The binary gates' backward runs the other sampled path on the weights the forward routed to."""
    space = load_space(SPACE)
    net = Supernet(space, "binary", seed=0, weights="shared", depth="tail")
    _random_weights(net).train()
    for p in net.weight_parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    for _ in range(3):
        net.zero_grad(set_to_none=True)
        net.sample_pairs(gen)
        net.sample_widths(gen)
        F.cross_entropy(net(x), y).backward()
        assert all(m.alpha.grad is not None and torch.isfinite(m.alpha.grad).all() for m in net.mixed)
        assert any(m.alpha.grad.abs().sum() > 0 for m in net.mixed)


def test_depth_options_are_checked_in_one_line(tmp_path):
    from hwnas.pipeline import RunConfig, RunError
    from search.train import SearchConfig

    with pytest.raises(SearchError, match="--depth"):
        SearchConfig(space=SPACE, data="digits", out=str(tmp_path / "s"), depth="deep").check()
    with pytest.raises(SearchError, match="all-paths"):
        SearchConfig(space=SPACE, data="digits", out=str(tmp_path / "s"), mode="all", depth="tail").check()
    with pytest.raises(RunError, match="--depth"):
        RunConfig(out=str(tmp_path / "r"), target_ms=1.0, depth="deep").check()
    with pytest.raises(ValueError, match="depth"):
        Supernet(load_space(SPACE), "all", depth="tail")


def test_a_tail_depth_search_records_its_depth_and_inherits_equal_accuracies_for_equal_networks(tmp_path):
    """A short search with --depth tail, end to end: its checkpoint keeps the option, so the
    inherited accuracy (BN recalibrated) of a network skipping a middle layer is the one of the same
    network skipping the stage's last, and the found weights load into the plain network."""
    import json

    from search.export import load_network
    from search.latency import LatencyTable
    from search.train import SearchConfig, inherited_accuracy, run_search
    from test_width import FlopsMs

    space = load_space(SPACE)
    cfg = SearchConfig(space=SPACE, data="digits", out=str(tmp_path / "s"), epochs=2, warmup_epochs=1,
                       batch_size=32, arch_every=1, arch_lr=0.05, limit=300, weights="shared", depth="tail",
                       loss="hinge", target_ms=0.5 * LatencyTable.build(space, FlopsMs()).max_ms())
    res = run_search(cfg, FlopsMs())
    assert json.loads((tmp_path / "s" / "arch.json").read_text())["blocks"]  # a plain network of the space
    net = load_network(tmp_path / "s" / "arch.json", tmp_path / "s" / "weights.pt")
    assert net(res.arch.example_input()).shape == (1, 10)
    middle = [K3E6, SKIP, K5E6, K3E6, SKIP, K5E6, K3E6, 1, 2, 0]
    last = [K3E6, K5E6, SKIP, K3E6, K5E6, SKIP, K3E6, 1, 2, 0]
    a = inherited_accuracy(tmp_path / "s", [middle, last])
    assert a[0] == a[1] and 0 < a[0] <= 1
