"""Once-for-All's net.config read into an ArchSpec: keys the OFA LUT reader finds, a network torch runs,
the predictor's CLI, and one clear line for what it cannot read."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from predictor import PredictorError, read_lut_yaml, save_predictor, fit_predictor
from predictor.ofa_net import ofa_net_to_arch, read_ofa_net
from profiler.blocks import ArchSpec

DATA = Path(__file__).parent / "data"
MBV3 = DATA / "ofa_mbv3_small.net.config"


def _proxyless_cfg() -> dict:
    conv = {"name": "ConvLayer", "kernel_size": 3, "stride": 2, "in_channels": 3, "out_channels": 16,
            "act_func": "relu6", "use_bn": True}

    def mb(i, o, k, s, e):
        return {"name": "MBConvLayer", "in_channels": i, "out_channels": o, "kernel_size": k, "stride": s,
                "expand_ratio": e, "mid_channels": None}

    ident = {"name": "IdentityLayer", "in_channels": [24], "out_channels": [24]}
    return {"name": "ProxylessNASNets", "first_conv": conv,
            "blocks": [{"name": "ResidualBlock", "conv": mb(16, 8, 3, 1, 1), "shortcut": None},
                       {"name": "ResidualBlock", "conv": mb(8, 24, 5, 2, 3), "shortcut": None},
                       {"name": "ResidualBlock", "conv": {"name": "ZeroLayer", "stride": 1}, "shortcut": ident},
                       {"name": "ResidualBlock", "conv": mb(24, 24, 7, 1, 6), "shortcut": ident}],
            "feature_mix_layer": {"name": "ConvLayer", "kernel_size": 1, "stride": 1, "in_channels": 24,
                                  "out_channels": 96, "act_func": "relu6"},
            "classifier": {"name": "LinearLayer", "in_features": 96, "out_features": 7}}


def test_mobilenetv3_net_config_matches_ofa_lut_keys_and_runs():
    arch = read_ofa_net(MBV3, 64)
    assert arch.input_size == 64 and arch.num_classes == 10 and len(arch.blocks) == 8
    lut = read_lut_yaml(DATA / "lut_ofa_small.yaml")
    # the stem, the three MBConv blocks (expand as middle channels, se, hs) and Conv_1 are the LUT's rows
    assert [k in lut.entries for k in arch.keys][:5] == [True] * 5
    assert [b.kind for b in arch.blocks[5:]] == ["pool", "pooled_conv", "logits"]
    se = arch.blocks[3]
    assert se.se and se.hs and se.residual and se.mid_c == 72
    assert arch.build()(arch.example_input()).shape == (1, 10)
    # the resolution is the caller's: the same file at 96 px chains 96 -> 48 -> 24
    assert read_ofa_net(MBV3, 96).blocks[4].in_h == 24
    assert ArchSpec.from_json(arch.to_json()).keys == arch.keys


def test_proxyless_net_config_with_a_zero_layer():
    arch = ofa_net_to_arch(_proxyless_cfg(), 32)
    kinds = [b.kind for b in arch.blocks]
    assert kinds == ["conv", "mbconv", "mbconv", "zero", "mbconv", "final_conv", "logits"]
    assert arch.blocks[2].mid_c == 24 and not arch.blocks[2].ofa  # ratio-style key: expand:3
    assert "expand:3-kernel:5-stride:2" in arch.blocks[2].key
    assert arch.build()(arch.example_input()).shape == (1, 7)


@pytest.mark.parametrize("edit, words", [
    (lambda c: c.update(name="ResNets"), "ResNets' is not supported"),
    (lambda c: c["blocks"][1]["conv"].update(in_channels=12), "blocks[1]: takes 12 channels"),
    (lambda c: c["blocks"][0]["conv"].update(name="MyLayer"), "blocks[0]: layer 'MyLayer'"),
    (lambda c: c["blocks"][0]["conv"].update(act_func="gelu"), "activation 'gelu'"),
    (lambda c: c.pop("classifier"), "no 'classifier'"),
    (lambda c: c["classifier"].update(in_features=95), "classifier takes 95 features"),
])
def test_bad_net_config_is_one_line(edit, words):
    cfg = copy.deepcopy(_proxyless_cfg())
    edit(cfg)
    with pytest.raises(PredictorError, match=words.replace("[", r"\[").replace("]", r"\]")):
        ofa_net_to_arch(cfg, 32)


def test_cli_predict_ofa_net(tmp_path, capsys):
    from hwnas.cli import main

    pred = fit_predictor({k: e for k, e in read_lut_yaml(DATA / "lut_proxyless_tiny.yaml").entries.items()}, "hybrid")
    p = tmp_path / "p.json"
    save_predictor(pred, p)
    saved = tmp_path / "arch.json"
    assert main(["predict", "--predictor", str(p), "--ofa-net", str(MBV3), "--image-size", "64",
                 "--save-arch", str(saved), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    arch = read_ofa_net(MBV3, 64)
    assert [b["block_key"] for b in out["blocks"]] == arch.keys
    assert out["latency_ms"] == pytest.approx(pred.predict_network_ms(arch))
    assert {b["source"] for b in out["blocks"]} <= {"table", "regression", "zero"}
    assert ArchSpec.from_json(saved.read_text()).keys == arch.keys
    bad = tmp_path / "bad.config"
    bad.write_text("{not json")
    assert main(["predict", "--predictor", str(p), "--ofa-net", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a JSON net.config" in err[0]
