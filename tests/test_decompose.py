"""Decomposing torch modules into blocks (predictor/decompose.py) and `hwnas predict --model`."""

from __future__ import annotations

import json

import numpy as np
import pytest

import decompose_models as dm
from predictor import PredictorError, load_predictor
from predictor.decompose import decompose, decompose_factory
from profiler.blocks import ArchSpec, BlockSpec
from profiler.spaces import list_spaces, load_space

from test_predictor import PROXYLESS, _main


def _random_archs(space, n, seed):
    rng = np.random.default_rng(seed)
    return [space.arch([int(rng.integers(len(space.layers[i].candidates))) for i in space.searchable]
                       + [int(rng.integers(len(space.widths))) for _ in range(space.width_stages)])
            for _ in range(n)]


@pytest.mark.parametrize("name", list_spaces())
def test_arch_specs_decompose_into_their_own_keys(name):
    for arch in _random_archs(load_space(name), 2, seed=3):
        d = decompose(arch.build(), arch.input_shape())
        # a skipped layer (the zero op) builds an nn.Identity: no node, 0 ms, so no block either
        assert d.keys == [b.key for b in arch.blocks if b.kind != "zero"]
        assert d.complete and d.unmatched == []


def test_every_block_variant_decomposes_back():
    """SE + h-swish, grouped 1x1 convs with a channel shuffle, and the pooled MobileNetV3 head."""
    stem = BlockSpec.conv(32, 3, 16, 3, 2, hs=True)
    blocks = [stem,
              BlockSpec.mbconv(16, 16, 16, 4, 5, 1, groups=2),
              BlockSpec.mbconv(16, 16, 24, 3, 3, 2, se=True, hs=True),
              BlockSpec.mbconv(8, 24, 24, 6, 7, 1, se=True),
              BlockSpec.final_conv(8, 24, 48, hs=True),
              BlockSpec("pool", 8, 8, 48, 1, 1, 48),
              BlockSpec("pooled_conv", 1, 1, 48, 1, 1, 64),
              BlockSpec.logits(1, 64, 5)]
    arch = ArchSpec(tuple(blocks), 32, 5)
    d = decompose(arch.build(), arch.input_shape())
    assert d.keys == arch.keys and d.complete


def test_a_torchvision_style_mobilenet_v2():
    """torchvision's MobileNetV2 code (not our modules): the expected keys come from its settings."""
    hw, cin = 32, 32  # 64x64 input, stride-2 stem
    want = [BlockSpec.conv(64, 3, 32, 3, 2).key]
    for t, c, n, s in dm.MBV2_SETTING:
        for i in range(n):
            b = BlockSpec.mbconv(hw, cin, c, t, 3, s if i == 0 else 1)
            want.append(b.key)
            hw, cin = b.out_h, c
    want += [BlockSpec.final_conv(hw, 320, 1280).key, BlockSpec.logits(hw, 1280, 1000).key]
    d = decompose_factory("decompose_models:mobilenet_v2", image_size=64)
    assert d.keys == want and d.complete
    assert d.input_shape == (1, 3, 64, 64)


def test_unknown_ops_are_reported_not_dropped():
    d = decompose_factory("decompose_models:WithLSTM", image_size=8)
    ops = [u.op for u in d.unmatched]
    assert "aten.lstm.input" in ops and not d.complete
    assert d.keys[0] == BlockSpec.conv(8, 3, 8, 3, 2).key  # the part that matches is still there
    # a custom op between two blocks: every block around it is found, the op is listed by name
    plain = decompose_factory("decompose_models:mobilenet_v2_small", image_size=64)
    d = decompose_factory("decompose_models:WithCustomOp", image_size=64)
    assert d.keys == plain.keys and plain.complete
    assert [(u.op, u.node) for u in d.unmatched] == [("hwnas_test.mystery.default", "mystery")]
    assert d.unmatched[0].output_shape == (1, 16, 32, 32)
    assert d.to_dict()["unmatched"][0]["op"] == "hwnas_test.mystery.default"
    # a conv + BN + SiLU: all three listed (the conv says why), the classifier after it still matched
    d = decompose_factory("decompose_models:WithSiLU", image_size=16)
    assert [u.op for u in d.unmatched] == ["aten.conv2d.default", "aten.batch_norm.default", "aten.silu.default"]
    assert "silu" in d.unmatched[0].reason and d.keys == [BlockSpec.logits(8, 8, 4).key]


@pytest.mark.parametrize("spec, words", [
    ("no_colon", "package.module:factory"),
    ("no_such_module_xyz:f", "cannot import"),
    ("decompose_models:nope", "has no attribute"),
    ("decompose_models:MBV2_SETTING", "not callable"),
    ("decompose_models:not_a_module", "not a torch nn.Module"),
    ("decompose_models:broken", "weights file missing"),
])
def test_bad_factories(spec, words):
    with pytest.raises(PredictorError, match=words):
        decompose_factory(spec, 32)


# ---- the CLI -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    out = tmp_path_factory.mktemp("dec") / "p.json"
    assert _main(["fit", "--lut", PROXYLESS, "--out", out, "--folds", "3", "--json"]) == 0
    return out


def test_cli_predict_model(fitted, capsys):
    capsys.readouterr()
    p = load_predictor(fitted)
    assert _main(["predict", "--predictor", fitted, "--model", "decompose_models:mobilenet_v2_small",
                  "--image-size", 64, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    d = decompose_factory("decompose_models:mobilenet_v2_small", 64)
    assert out["complete"] and out["unmatched"] == []
    assert [b["block_key"] for b in out["blocks"]] == d.keys
    assert out["latency_ms"] == pytest.approx(p.predict_network_ms(d.blocks))

    # our own ArchSpec's network: the same number as --arch on its arch.json
    space = load_space("tiny")
    arch = space.arch([len(space.layers[i].candidates) - 1 for i in space.searchable])
    assert _main(["predict", "--predictor", fitted, "--model", "decompose_models:tiny_arch", "--image-size", 32,
                  "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["latency_ms"] == pytest.approx(p.predict_network_ms(arch))


def test_cli_predict_model_says_what_it_leaves_out(fitted, capsys):
    capsys.readouterr()
    p = load_predictor(fitted)
    assert _main(["predict", "--predictor", fitted, "--model", "decompose_models:WithCustomOp",
                  "--image-size", 64, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert not out["complete"] and [u["op"] for u in out["unmatched"]] == ["hwnas_test.mystery.default"]
    blocks = decompose_factory("decompose_models:mobilenet_v2_small", 64).blocks
    assert out["latency_ms"] == pytest.approx(p.predict_network_ms(blocks))  # the matched part only
    assert _main(["predict", "--predictor", fitted, "--model", "decompose_models:WithCustomOp",
                  "--image-size", 64]) == 0
    text = capsys.readouterr().out
    assert "covers only the matched part" in text and "hwnas_test.mystery.default" in text


@pytest.mark.parametrize("spec", ["no_colon", "decompose_models:broken"])
def test_cli_bad_model_is_one_line(fitted, capsys, spec):
    capsys.readouterr()
    assert _main(["predict", "--predictor", fitted, "--model", spec, "--image-size", 32]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hwnas ") and "\n" not in err and "--model" in err
