"""BlockSpec key codec and modules."""

import pytest
import torch

from profiler.blocks import ArchSpec, BlockKeyError, BlockSpec, flops
from profiler.spaces import list_spaces, load_space

PROXYLESS_KEYS = [
    "Conv-input:224x224x3-output:112x112x32",
    "expanded_conv-input:112x112x32-output:112x112x16-expand:1-kernel:3-stride:1-idskip:0",
    "expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:5-stride:2-idskip:0",
    "expanded_conv-input:56x56x24-output:56x56x24-expand:6-kernel:7-stride:1-idskip:1",
    "Conv_1-input:7x7x320-output:7x7x1280",
    "Logits-input:7x7x1280-output:1000",
]
OFA_KEYS = [
    "expanded_conv-input:112x112x24-output:56x56x32-expand:96-kernel:3-stride:2-idskip:0-se:0-hs:0",
    "expanded_conv-input:28x28x48-output:28x28x48-expand:144-kernel:5-stride:1-idskip:1-se:1-hs:1",
    "AvgPool2D-input:7x7x1152-output:1x1x1152",
    "Conv_2-input:1x1x1152-output:1x1x1536",
    "Logits-input:1x1x1536-output:1000",
]
EXTENDED_KEYS = [
    "Conv-input:56x56x24-output:56x56x48-kernel:1-stride:1",
    "Conv-input:224x224x3-output:112x112x16-hs:1",
    "expanded_conv-input:28x28x32-output:28x28x32-expand:6-kernel:3-stride:1-idskip:1-groups:2",
    "Zero-input:28x28x40-output:28x28x40",
]


@pytest.mark.parametrize("key", PROXYLESS_KEYS + OFA_KEYS + EXTENDED_KEYS)
def test_key_round_trip(key):
    spec = BlockSpec.from_key(key)
    assert spec.key == key
    assert BlockSpec.from_key(spec.key) == spec


def test_proxyless_expand_is_ratio_and_ofa_expand_is_channels():
    p = BlockSpec.from_key(PROXYLESS_KEYS[2])
    assert (p.in_c, p.mid_c, p.expand_ratio, p.kernel, p.stride, p.residual) == (16, 48, 3.0, 5, 2, False)
    o = BlockSpec.from_key(OFA_KEYS[1])
    assert (o.mid_c, o.se, o.hs, o.residual, o.ofa) == (144, True, True, True, True)


def test_stem_stride_comes_from_shapes():
    s = BlockSpec.from_key("Conv-input:224x224x3-output:112x112x32")
    assert (s.kernel, s.stride) == (3, 2)
    # the explicit extension naming the defaults is the same block; its canonical key is the short one
    assert BlockSpec.from_key("Conv-input:224x224x3-output:112x112x32-kernel:3-stride:2") == s


@pytest.mark.parametrize("bad, words", [
    ("expanded_conv-input:56x56x24-output:56x56x24-expand:6-kernel:7-stride:1-idskip:1-foo:2", "unknown token"),
    ("Dense-input:7x7x1280-output:1000", "unknown block kind"),
    ("expanded_conv-input:56x56x24-output:28x28x24-expand:6-kernel:7-stride:1-idskip:0", "gives 56x56"),
    ("expanded_conv-input:56x56x24-output:56x56x32-expand:6-kernel:3-stride:1-idskip:1", "idskip:1"),
    ("expanded_conv-input:56x56x24-output:56x56x24-expand:6-kernel:3-stride:1", "lacks idskip"),
    ("expanded_conv-input:56x56x24-output:56x56x24-expand:6-kernel:3-stride:1-idskip:1-se:1", "both se"),
    ("Conv-input:224x224x3-output:112x112x32-kernel:3", "together"),
    ("Conv-input:224x224-output:112x112x32", "HxWxC"),
    ("Logits-input:7x7x1280-output:1000-kernel:3", "unknown token"),
    ("expanded_conv-input:56x56x24-output:56x56x24-expand:x-kernel:3-stride:1-idskip:1", "not an integer"),
    ("expanded_conv-input:56x56x24-output:56x56x24-expand:6-kernel:3-kernel:5-stride:1-idskip:1", "twice"),
    ("", "empty"),
])
def test_bad_keys_raise(bad, words):
    with pytest.raises(BlockKeyError, match=words):
        BlockSpec.from_key(bad)


@pytest.mark.parametrize("key", PROXYLESS_KEYS[1:4] + OFA_KEYS + EXTENDED_KEYS)
def test_module_shapes(key):
    spec = BlockSpec.from_key(key)
    if spec.in_h > 60:
        pytest.skip("large input; the shape logic is the same")
    y = spec.build()(spec.example_input())
    assert tuple(y.shape) == spec.output_shape


def test_weights_are_deterministic_per_key():
    spec = BlockSpec.from_key(PROXYLESS_KEYS[3])
    a, b = spec.build(), spec.build()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_flops_match_a_hand_count():
    # 1x1 expand 24->144 at 56x56, 7x7 depthwise on 144 at 56x56, 1x1 project 144->24
    spec = BlockSpec.from_key(PROXYLESS_KEYS[3])
    macs = 56 * 56 * 24 * 144 + 56 * 56 * 144 * 49 + 56 * 56 * 144 * 24
    assert flops(spec) == 2 * macs


@pytest.mark.parametrize("name", list_spaces())
def test_every_block_of_every_space_round_trips(name):
    space = load_space(name)
    blocks = space.blocks(include_zero=True)
    assert len({b.key for b in blocks}) == len(blocks)
    for b in blocks:
        assert BlockSpec.from_key(b.key) == b
    arch = space.arch([0] * space.n_choices)  # with width choices: the stage widths after the ops
    assert ArchSpec.from_json(arch.to_json()) == arch


def test_proxyless_mobile_space_matches_the_paper():
    sp = load_space("proxyless-mobile")
    assert len(sp.searchable) == 21
    assert len(sp.blocks()) == 70  # stem, first block, 66 MBConv candidates, Conv_1, Logits
    assert sp.layers[0].candidates[0].key == "Conv-input:224x224x3-output:112x112x32"
    widths = [sp.layers[i].candidates[0].out_c for i in sp.searchable]
    assert widths == [24] * 4 + [40] * 4 + [80] * 4 + [96] * 4 + [192] * 4 + [320]
    zero_layers = [i for i in sp.searchable if sp.layers[i].has_zero]
    assert len(zero_layers) == 21 - 6  # every stage's first layer changes shape (96 and 320 too)
    assert sp.layers[-1].candidates[0].key == "Logits-input:7x7x1280-output:1000"


def test_arch_rejects_mismatched_chain():
    a = BlockSpec.conv(32, 3, 8, 3, 2)
    b = BlockSpec.mbconv(8, 16, 16, 3, 3, 1)
    with pytest.raises(BlockKeyError, match="cannot follow"):
        ArchSpec((a, b), 32, 10)
