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
    for step in range(12):
        choices = net.sample_paths(gen)
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        for acc, e_acc, m, c in zip(seen, expand_seen, net.mixed, choices):
            if m.shared.depthwise.weight.grad is not None:
                acc += m.shared.depthwise.weight.grad.abs()
                e_acc += m.shared.expand.weight.grad.abs()
        if step == 0:
            # one step trains a k x k centre of every depthwise kernel it ran: the 3x3 centre always
            for m, c in zip(net.mixed, choices):
                if m.candidates[c].__class__.__name__ == "_SharedView":
                    g = m.shared.depthwise.weight.grad
                    assert (g[: m.shared.specs[m.candidates[c].index].mid_c, :, 3, 3] != 0).all()
    for acc, e_acc in zip(seen, expand_seen):
        assert (acc.sum(0) > 0).all(), acc.sum(0)  # every tap of the 7x7 received a gradient
        assert (e_acc.sum(1) > 0).all()  # every channel of the largest expansion too


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
    if mode != "all":
        net.sample_paths(gen)
    F.cross_entropy(net(x), y).backward()
    assert all(p.grad is not None for m in net.mixed for p in (m.shared.depthwise.weight, m.shared.project.weight))
    if mode == "binary":
        for p in net.weight_parameters():
            p.requires_grad_(False)
        net.zero_grad(set_to_none=True)
        net.sample_pairs(gen)
        F.cross_entropy(net(x), y).backward()
        assert all(m.alpha.grad is not None and m.alpha.grad.abs().sum() > 0 for m in net.mixed)
