"""The weight-shared supernet (weights="shared"): candidates are slices of one set of weights,
every candidate trains in every step, BatchNorm statistics stay with their channels, and the
derived network is a plain ArchSpec computing what the supernet computes."""

import pytest
import torch
import torch.nn.functional as F

from profiler.blocks import BlockSpec
from profiler.spaces import load_space
from search.latency import SearchError
from search.supernet import MixedOp, SharedMBConv, Supernet

SPACE = "tiny-mnist"  # kernels 3/5/7 x expands 3/6, zero ops in 4 of 7 layers


def _layer(net: Supernet, i: int = 0) -> MixedOp:
    return net.mixed[i]


def _index(space, layer: int, kernel: int, expand: int) -> int:
    cands = space.layers[space.searchable[layer]].candidates
    return next(j for j, c in enumerate(cands)
                if c.kind == "mbconv" and c.kernel == kernel and c.mid_c == expand * c.in_c)


def test_candidates_are_slices_of_the_shared_weights():
    space = load_space(SPACE)
    net = Supernet(space, "binary", weights="shared")
    op = _layer(net, 1)
    sh = op.shared
    assert sh.depthwise.weight.shape == (144, 1, 7, 7)  # mid_max: expand 6 x 24 input channels
    k3e3 = _index(space, 1, 3, 3)
    mod = sh.candidate_module(k3e3)
    mid = 3 * 24
    conv_w = [m.weight for m in mod.modules() if isinstance(m, torch.nn.Conv2d)]
    assert torch.equal(conv_w[0], sh.expand.weight[:mid])  # expand 3: the first rows of expand 6
    assert torch.equal(conv_w[1], sh.depthwise.weight[:mid, :, 2:5, 2:5])  # 3x3: the centre of the 7x7
    assert torch.equal(conv_w[2], sh.project.weight[:, :mid])
    # the parameters exist once: no candidate owns any
    assert all(sum(p.numel() for p in c.parameters()) == 0 for c in op.candidates)
    separate = sum(p.numel() for p in Supernet(space, "binary").weight_parameters())
    assert sum(p.numel() for p in net.weight_parameters()) < separate / 2


def test_changing_the_shared_tensor_changes_exactly_the_candidates_that_use_it():
    space = load_space(SPACE)
    net = Supernet(space, "binary", weights="shared").eval()
    op = _layer(net, 1)
    with torch.no_grad():  # as after training: the projection's columns past expand 3 start at zero
        op.shared.project.weight.normal_()
    x = torch.randn(4, 24, 14, 14)
    k3e3, k7e3, k3e6 = (_index(space, 1, k, e) for k, e in ((3, 3), (7, 3), (3, 6)))
    before = {j: op.candidates[j](x) for j in (k3e3, k7e3, k3e6)}
    with torch.no_grad():
        op.shared.depthwise.weight[0, 0, 0, 0] += 1.0  # a corner: only the 7x7 sees it
    after = {j: op.candidates[j](x) for j in before}
    assert torch.equal(after[k3e3], before[k3e3]) and torch.equal(after[k3e6], before[k3e6])
    assert not torch.equal(after[k7e3], before[k7e3])
    with torch.no_grad():
        op.shared.depthwise.weight[0, 0, 3, 3] += 1.0  # the centre: every kernel sees it
    assert all(not torch.equal(op.candidates[j](x), after[j]) for j in before)
    with torch.no_grad():
        op.shared.expand.weight[-1] += 1.0  # the last channel of expand 6: not in expand 3
    now = {j: op.candidates[j](x) for j in before}
    with torch.no_grad():
        op.shared.expand.weight[-1] -= 3.0
    assert torch.equal(op.candidates[k3e3](x), now[k3e3]) and not torch.equal(op.candidates[k3e6](x), now[k3e6])


def test_every_part_of_the_largest_kernel_trains_over_a_few_sampled_steps():
    space = load_space(SPACE)
    net = Supernet(space, "binary", seed=1, weights="shared")
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    seen = [torch.zeros_like(m.shared.depthwise.weight) for m in net.mixed]
    expand_seen = [torch.zeros_like(m.shared.expand.weight) for m in net.mixed]
    opt = torch.optim.SGD(net.weight_parameters(), lr=0.05)
    for step in range(12):
        choices = net.sample_paths(gen)
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
        for acc, e_acc, m, c in zip(seen, expand_seen, net.mixed, choices):
            if m.shared.depthwise.weight.grad is not None:
                acc += m.shared.depthwise.weight.grad.abs()
                e_acc += m.shared.expand.weight.grad.abs()
        if step == 0:
            # one step trains the centre tap of every depthwise kernel it ran (in the first step,
            # of the smallest expansion's channels: the projection's wider columns start at zero)
            for m, c in zip(net.mixed, choices):
                if m.candidates[c].__class__.__name__ == "_SharedView":
                    g = m.shared.depthwise.weight.grad
                    assert (g[: min(s.mid_c for s in m.shared.specs), :, 3, 3] != 0).all()
    for acc, e_acc in zip(seen, expand_seen):
        assert (acc.sum(0) > 0).all(), acc.sum(0)  # every tap of the 7x7 received a gradient
        assert (e_acc.sum(1) > 0).all()  # every channel of the largest expansion too


def test_candidates_start_as_the_smallest_and_grow_apart():
    """At initialisation every MBConv candidate of a layer computes the smallest one's function
    (zeros around the k_min centre, zero projection columns past the smallest expansion)."""
    space = load_space(SPACE)
    net = Supernet(space, "binary", weights="shared").eval()
    op = _layer(net, 1)
    x = torch.randn(4, 24, 14, 14)
    outs = [c(x) for c, spec in zip(op.candidates, space.layers[space.searchable[1]].candidates)
            if spec.kind == "mbconv"]
    assert all(torch.allclose(o, outs[0], atol=1e-6) for o in outs)
    w = op.shared.depthwise.weight
    assert float(w[:, :, 2:5, 2:5].abs().min()) >= 0 and float(w[:, :, 2:5, 2:5].abs().sum()) > 0
    assert float(w.abs().sum()) == float(w[:, :, 2:5, 2:5].abs().sum())
    # the 3x3 centre is drawn as nn.Conv2d draws a 3x3 depthwise kernel: uniform within 1/sqrt(9)
    assert 0.25 < float(w[:, :, 2:5, 2:5].abs().max()) <= 1 / 3
    # one weight step on a wide, large candidate moves it away from the others
    k7e6 = _index(space, 1, 7, 6)
    op.shared.train()
    torch.optim.SGD(op.shared.parameters(), lr=0.1).zero_grad()
    opt = torch.optim.SGD(op.shared.parameters(), lr=0.1)
    op.candidates[k7e6](x).pow(2).mean().backward()
    assert float(op.shared.depthwise.weight.grad[:, :, 0, :].abs().sum()) > 0  # the outer ring is trained
    assert float(op.shared.project.weight.grad[:, 72:].abs().sum()) > 0  # so are the wide columns
    opt.step()
    op.shared.eval()
    assert not torch.allclose(op.candidates[k7e6](x), op.candidates[_index(space, 1, 3, 3)](x), atol=1e-4)


def test_one_step_of_a_small_candidate_moves_the_large_ones():
    space = load_space(SPACE)
    net = Supernet(space, "binary", weights="shared")
    op = _layer(net, 1)
    k3e3, k7e6 = _index(space, 1, 3, 3), _index(space, 1, 7, 6)
    x = torch.randn(4, 24, 14, 14)
    op.shared.eval()
    big = op.candidates[k7e6](x).detach()
    op.shared.train()
    opt = torch.optim.SGD(op.shared.parameters(), lr=0.1)
    op.candidates[k3e3](x).pow(2).mean().backward()
    opt.step()
    op.shared.eval()
    assert not torch.allclose(op.candidates[k7e6](x), big)


def test_batchnorm_statistics_stay_with_their_channels():
    space = load_space(SPACE)
    net = Supernet(space, "binary", weights="shared").train()
    op = _layer(net, 1)
    sh = op.shared
    k3e3, k5e6 = _index(space, 1, 3, 3), _index(space, 1, 5, 6)
    x = torch.randn(16, 24, 14, 14) * 3 + 1
    mean0 = sh.expand_bn.running_mean.clone()
    op.candidates[k3e3](x)
    mean1 = sh.expand_bn.running_mean.clone()
    assert not torch.equal(mean1[:72], mean0[:72])  # the slice was updated in place ...
    assert torch.equal(mean1[72:], mean0[72:])  # ... and only the slice
    assert int(sh.depthwise_bn["k3"].num_batches_tracked) == 1 and int(sh.depthwise_bn["k5"].num_batches_tracked) == 0
    assert int(sh.project_bn[k3e3].num_batches_tracked) == 1 and int(sh.project_bn[k5e6].num_batches_tracked) == 0
    op.candidates[k5e6](x)
    assert not torch.equal(sh.expand_bn.running_mean[72:], mean0[72:])


@pytest.mark.parametrize("layer", range(7))
def test_derived_network_computes_what_the_supernet_computes(layer):
    """For every candidate of a layer (zero included): the exported plain network (ArchSpec.build()
    with derived_state_dict, loaded strictly) gives the supernet's output in eval mode."""
    space = load_space(SPACE)
    net = Supernet(space, "binary", weights="shared")
    gen = torch.Generator().manual_seed(layer)
    x = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        for _ in range(3):  # non-trivial BN statistics
            net.sample_paths(gen)
            net(x)
    net.eval()
    base = [0] * len(space.searchable)
    for c in range(len(space.layers[space.searchable[layer]].candidates)):
        choices = base.copy()
        choices[layer] = c
        model = space.arch(choices).build()
        model.load_state_dict(net.derived_state_dict(choices), strict=True)
        with torch.no_grad(), net.fixed_paths(choices):
            assert torch.allclose(model.eval()(x), net(x), atol=1e-5)


def test_zero_candidate_skips_the_layer():
    space = load_space(SPACE)
    net = Supernet(space, "binary", weights="shared")
    op = _layer(net, 1)
    z = next(j for j, c in enumerate(space.layers[space.searchable[1]].candidates) if c.kind == "zero")
    x = torch.randn(2, 24, 14, 14)
    op.set_path(z)
    assert torch.equal(op(x), x)


def test_derive_gives_a_valid_archspec():
    space = load_space(SPACE)
    net = Supernet(space, "binary", weights="shared")
    with torch.no_grad():
        for m in net.mixed:
            m.alpha[-1] += 1.0
    arch = net.derive(meta={"weights": "shared"})
    assert arch.blocks == space.arch(net.argmax_choices()).blocks
    assert arch.build()(torch.randn(1, 1, 28, 28)).shape == (1, 10)


def test_other_kernels_expansions_se_hswish_and_no_expansion_generalise():
    """Kernels 3..9, expansions 1/2/4 (1: no expansion conv), squeeze-excite and h-swish: each
    candidate's own module, holding its slices, computes what the shared layer computes."""
    specs = [BlockSpec.mbconv(10, 8, 8, e, k, 1, se=True, hs=True) for e in (1, 2, 4) for k in (3, 5, 7, 9)]
    sh = SharedMBConv(specs)
    assert sh.depthwise.weight.shape == (32, 1, 9, 9) and sorted(sh.depthwise_bn) == sorted(
        [f"k{k}" for k in (3, 5, 7, 9)] + [f"k{k}_noexpand" for k in (3, 5, 7, 9)])
    x = torch.randn(4, 8, 10, 10)
    sh.train()
    with torch.no_grad():
        for j in range(len(specs)):
            sh.run(j, x)
    sh.eval()
    for j, s in enumerate(specs):
        mod = sh.candidate_module(j)
        assert type(mod).__name__ == "MBConv" and torch.allclose(mod(x), sh.run(j, x), atol=1e-5), s.key


def test_candidates_that_cannot_share_are_refused():
    with pytest.raises(SearchError, match="differ in out_h, out_w, stride"):
        SharedMBConv([BlockSpec.mbconv(8, 8, 16, 3, 3, 1), BlockSpec.mbconv(8, 8, 16, 3, 3, 2)])
    with pytest.raises(SearchError, match="grouped"):
        SharedMBConv([BlockSpec.mbconv(8, 8, 16, 4, 3, 1, groups=2)])
    with pytest.raises(ValueError, match="unknown weights"):
        Supernet(load_space(SPACE), "binary", weights="tied")


@pytest.mark.parametrize("mode", ["binary", "reinforce", "all"])
def test_shared_weights_work_with_every_architecture_mode(mode):
    """One weight step and one binary-gate architecture step run with shared weights."""
    space = load_space("tiny")
    net = Supernet(space, mode, weights="shared")
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    opt = torch.optim.SGD(net.weight_parameters(), lr=0.1)
    for _ in range(4):  # the candidates start as one function; a few weight steps set them apart
        ran = net.sample_paths(gen) if mode != "all" else [0] * len(net.mixed)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        for m, c in zip(net.mixed, ran):
            if not isinstance(m.candidates[c], torch.nn.Identity):  # the zero op trains nothing
                assert m.shared.depthwise.weight.grad is not None and m.shared.project.weight.grad is not None
        opt.step()
    if mode == "binary":
        for p in net.weight_parameters():
            p.requires_grad_(False)
        net.zero_grad(set_to_none=True)
        net.sample_pairs(gen)
        F.cross_entropy(net(x), y).backward()
        assert all(m.alpha.grad is not None and m.alpha.grad.abs().sum() > 0 for m in net.mixed)


def test_skip_drop_skips_each_skippable_layer_at_its_rate_and_leaves_the_default_paths_alone():
    """--skip-drop P: in a weight step each layer with a zero op takes it with probability P (the
    others draw from p as always); P = 0 draws exactly the default's paths, from the same stream."""
    space = load_space(SPACE)
    net = Supernet(space, "binary", weights="shared")
    zero = [next((j for j, c in enumerate(space.layers[i].candidates) if c.kind == "zero"), None)
            for i in space.searchable]
    assert sum(z is not None for z in zero) == 4
    with torch.no_grad():  # p pinned away from the zero ops: a skip can only come from skip_drop
        for m, z in zip(net.mixed, zero):
            if z is not None:
                m.alpha[z] = -30.0
    gen = torch.Generator().manual_seed(3)
    draws = [net.sample_paths(gen, widths=False, skip_drop=0.4) for _ in range(500)]
    for i, z in enumerate(zero):
        share = sum(d[i] == z for d in draws) / len(draws) if z is not None else None
        if z is None:
            continue
        assert 0.33 < share < 0.47, (i, share)  # 0.4 +- 3.5 standard errors of 500 draws
    a, b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert [net.sample_paths(a, widths=False) for _ in range(20)] == \
        [net.sample_paths(b, widths=False, skip_drop=0.0) for _ in range(20)]


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan")])
def test_skip_drop_outside_0_to_1_is_refused_in_one_line(tmp_path, bad):
    from hwnas.pipeline import RunConfig, RunError
    from search.train import SearchConfig

    with pytest.raises(SearchError, match="--skip-drop"):
        SearchConfig(space=SPACE, data="digits", out=str(tmp_path / "s"), skip_drop=bad).check()
    with pytest.raises(RunError, match="--skip-drop"):
        RunConfig(out=str(tmp_path / "r"), target_ms=1.0, skip_drop=bad).check()
