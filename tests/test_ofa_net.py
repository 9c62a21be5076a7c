"""Once-for-All's and ProxylessNAS's net.config read into an ArchSpec: both namings, keys the LUT readers
find, a network torch runs, the predictor's CLI (each block's latency and source), and one clear line for
what it cannot read.

The fixtures under tests/data are hand-written in the public format (the fields the two projects' layer
``config`` properties write), except tests/data/released/, which holds a published file byte for byte
(MCUNet's mcunet-in2, a ProxylessNASNets config): the first such file read refused its ``resolution``."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from predictor import PredictorError, UnknownBlockError, fit_predictor, read_lut_yaml, save_predictor
from predictor.ofa_net import ofa_net_to_arch, read_ofa_net
from profiler.blocks import ArchSpec, BlockSpec

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


# ---- the released format: ProxylessNASNets with mobile_inverted_conv / MBInvertedConvLayer ------------

PROXYLESS = DATA / "proxyless_mobile_like.config"  # 22 blocks, stage widths 24/32/64/96/160/320
MBV3_OLD = DATA / "ofa_mbv3_old_naming.net.config"  # an OFA MobileNetV3 sub-network, older naming

# written out by hand from the fixture's stage table, in the ProxylessNAS LUT key format
PROXYLESS_KEYS = [
    "Conv-input:224x224x3-output:112x112x32",
    "expanded_conv-input:112x112x32-output:112x112x16-expand:1-kernel:3-stride:1-idskip:0",
    "expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:5-stride:2-idskip:0",
    "Zero-input:56x56x24-output:56x56x24",
    "expanded_conv-input:56x56x24-output:56x56x24-expand:3-kernel:3-stride:1-idskip:1",
    "Zero-input:56x56x24-output:56x56x24",
    "expanded_conv-input:56x56x24-output:28x28x32-expand:3-kernel:7-stride:2-idskip:0",
    "expanded_conv-input:28x28x32-output:28x28x32-expand:3-kernel:3-stride:1-idskip:1",
    "expanded_conv-input:28x28x32-output:28x28x32-expand:3-kernel:5-stride:1-idskip:1",
    "Zero-input:28x28x32-output:28x28x32",
    "expanded_conv-input:28x28x32-output:14x14x64-expand:6-kernel:7-stride:2-idskip:0",
    "expanded_conv-input:14x14x64-output:14x14x64-expand:3-kernel:5-stride:1-idskip:1",
    "Zero-input:14x14x64-output:14x14x64",
    "expanded_conv-input:14x14x64-output:14x14x64-expand:3-kernel:5-stride:1-idskip:1",
    "expanded_conv-input:14x14x64-output:14x14x96-expand:6-kernel:5-stride:1-idskip:0",
    "expanded_conv-input:14x14x96-output:14x14x96-expand:3-kernel:5-stride:1-idskip:1",
    "expanded_conv-input:14x14x96-output:14x14x96-expand:3-kernel:5-stride:1-idskip:1",
    "expanded_conv-input:14x14x96-output:14x14x96-expand:3-kernel:5-stride:1-idskip:1",
    "expanded_conv-input:14x14x96-output:7x7x160-expand:6-kernel:7-stride:2-idskip:0",
    "expanded_conv-input:7x7x160-output:7x7x160-expand:6-kernel:7-stride:1-idskip:1",
    "expanded_conv-input:7x7x160-output:7x7x160-expand:3-kernel:7-stride:1-idskip:1",
    "expanded_conv-input:7x7x160-output:7x7x160-expand:3-kernel:7-stride:1-idskip:1",
    "expanded_conv-input:7x7x160-output:7x7x320-expand:6-kernel:7-stride:1-idskip:0",
    "Conv_1-input:7x7x320-output:7x7x1280",
    "Logits-input:7x7x1280-output:1000",
]


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _new_naming(cfg: dict) -> dict:
    """The same network as OFA's current code writes it: ResidualBlock / conv / MBConvLayer."""
    cfg = copy.deepcopy(cfg)
    for blk in cfg["blocks"]:
        blk["name"] = "ResidualBlock"
        blk["conv"] = blk.pop("mobile_inverted_conv")
        if blk["conv"]["name"] == "MBInvertedConvLayer":
            blk["conv"]["name"] = "MBConvLayer"
    return cfg


def test_released_proxyless_net_config_gives_the_lut_keys_and_runs():
    arch = read_ofa_net(PROXYLESS, 224)
    assert arch.keys == PROXYLESS_KEYS
    assert arch.name == "proxyless_mobile_like" and arch.num_classes == 1000 and arch.input_size == 224
    assert arch.meta["network_class"] == "ProxylessNASNets" and arch.meta["block_naming"] == "mobile_inverted_conv"
    assert len(arch.blocks) - 3 == 22 and sum(b.kind == "zero" for b in arch.blocks) == 4
    assert all(BlockSpec.from_key(k).key == k for k in arch.keys)  # the LUT key codec reads them back
    with torch.no_grad():
        y = arch.build()(arch.example_input())
    assert y.shape == (1, 1000) and torch.isfinite(y).all()


def _variants(cfg: dict) -> dict[str, dict]:
    """The same network written in each way the two projects' loaders accept."""
    new = _new_naming(cfg)
    mid = copy.deepcopy(new)  # mid_channels given instead of null (OFA sub-networks write it)
    for blk in mid["blocks"]:
        c = blk["conv"]
        if c["name"] == "MBConvLayer":
            c["mid_channels"] = round(c["in_channels"] * c["expand_ratio"]) if c["expand_ratio"] != 1 else None
    zero_sc = copy.deepcopy(new)  # a ZeroLayer shortcut means no residual, as null does
    for blk in zero_sc["blocks"]:
        if blk["shortcut"] is None:
            blk["shortcut"] = {"name": "ZeroLayer", "stride": 1}
    null_conv = copy.deepcopy(new)  # OFA writes a removed layer as conv: null, or a ZeroLayer without stride
    for i, blk in enumerate(null_conv["blocks"]):
        if blk["conv"]["name"] == "ZeroLayer":
            blk["conv"] = None if i % 2 else {"name": "ZeroLayer"}
    no_bn = {k: v for k, v in cfg.items() if k != "bn"}
    # relu / relu6 / none share a key, dropout and BN settings are not part of it
    spelled = copy.deepcopy(new)
    spelled["first_conv"]["act_func"] = "relu"
    spelled["feature_mix_layer"].update(act_func="relu", use_bn=False, bias=True, dropout_rate=0.1)
    spelled["classifier"].update(act_func="none", dropout_rate=0.2, use_bn=True)
    for blk in spelled["blocks"]:
        if blk["conv"]["name"] == "MBConvLayer":
            blk["conv"].update(act_func="relu6", use_se=False, groups=None)
    return {"ofa-naming": new, "mid-channels": mid, "zero-shortcut": zero_sc, "null-conv": null_conv, "no-bn": no_bn,
            "spellings": spelled}


@pytest.mark.parametrize("variant", ["ofa-naming", "mid-channels", "zero-shortcut", "null-conv", "no-bn",
                                     "spellings"])
def test_every_writing_of_the_proxyless_net_gives_the_same_keys(variant):
    cfg = _variants(_load(PROXYLESS))[variant]
    assert ofa_net_to_arch(cfg, 224).keys == PROXYLESS_KEYS


def test_mobilenetv3_in_the_older_ofa_naming():
    old = read_ofa_net(MBV3_OLD, 224)
    assert old.keys == ofa_net_to_arch(_new_naming(_load(MBV3_OLD)), 224).keys
    assert old.name == "ofa_mbv3_old_naming" and old.meta["block_naming"] == "mobile_inverted_conv"
    assert old.keys[0] == "Conv-input:224x224x3-output:112x112x16-hs:1"
    # OFA key style: expand counts the middle channels; se and hs follow
    mb = "expanded_conv-input:"
    assert old.keys[2] == mb + "112x112x16-output:56x56x24-expand:96-kernel:7-stride:2-idskip:0-se:0-hs:0"
    assert old.keys[5] == mb + "28x28x40-output:28x28x40-expand:240-kernel:7-stride:1-idskip:1-se:1-hs:0"
    assert old.keys[8] == mb + "14x14x80-output:14x14x112-expand:480-kernel:3-stride:1-idskip:0-se:1-hs:1"
    assert old.keys[-4:] == ["Conv_1-input:14x14x112-output:14x14x672-hs:1", "AvgPool2D-input:14x14x672-output:1x1x672",
                             "Conv_2-input:1x1x672-output:1x1x1280", "Logits-input:1x1x1280-output:1000"]
    with torch.no_grad():
        assert old.build()(old.example_input()).shape == (1, 1000)
    # the existing new-naming fixture, rewritten in the old naming, reads the same
    small = _load(MBV3)
    for blk in small["blocks"]:
        blk["name"], blk["mobile_inverted_conv"] = "MobileInvertedResidualBlock", blk.pop("conv")
        blk["mobile_inverted_conv"]["name"] = "MBInvertedConvLayer"
        blk["mobile_inverted_conv"].pop("groups")  # older OFA did not write it
    assert ofa_net_to_arch(small, 64).keys == read_ofa_net(MBV3, 64).keys


def _lut_of(keys: list[str], tmp_path: Path, leave_out: tuple[str, ...] = ()) -> tuple[Path, dict[str, float]]:
    """A ProxylessNAS-format LUT (count/mean/var) of the distinct non-zero keys, with known numbers (ms)."""
    import yaml

    ms = {}
    for k in keys:
        if not k.startswith("Zero") and k not in ms:
            ms[k] = round(0.013 * (len(ms) + 1) + 0.002 * len(ms) ** 1.5, 6)
    path = tmp_path / "lut.yaml"
    path.write_text(yaml.safe_dump({k: {"count": 10, "mean": v, "var": 1e-6} for k, v in ms.items()
                                    if k not in leave_out}))
    return path, ms


def test_released_network_from_a_lut_is_the_sum_of_its_entries(tmp_path):
    path, ms = _lut_of(PROXYLESS_KEYS, tmp_path)
    want = sum(ms.get(k, 0.0) for k in PROXYLESS_KEYS)  # from the hand-written keys; zero ops cost 0
    arch = read_ofa_net(PROXYLESS, 224)
    lut = read_lut_yaml(path)
    # a pure sum of table rows: equal to rounding (the brief asks within 1 %)
    assert lut.predict_network_ms(arch) == pytest.approx(want, rel=1e-9)
    assert fit_predictor(lut.entries, "hybrid", folds=3).predict_network_ms(arch) == pytest.approx(want, rel=1e-9)


def _cli(argv) -> int:
    from hwnas.cli import main

    return main([str(a) for a in argv])


def test_cli_predict_net_config_gives_each_blocks_latency_and_source(tmp_path, capsys):
    missing = (PROXYLESS_KEYS[22], PROXYLESS_KEYS[23])  # the 320-wide block and Conv_1: the regression's
    path, ms = _lut_of(PROXYLESS_KEYS, tmp_path, leave_out=missing)
    pred = fit_predictor(read_lut_yaml(path).entries, "hybrid", folds=3)
    p = tmp_path / "hybrid.json"
    save_predictor(pred, p)
    assert _cli(["predict", "--predictor", p, "--net-config", PROXYLESS, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [b["block_key"] for b in out["blocks"]] == PROXYLESS_KEYS
    want_src = ["zero" if k.startswith("Zero") else "regression" if k in missing else "table" for k in PROXYLESS_KEYS]
    assert [b["source"] for b in out["blocks"]] == want_src
    for b in out["blocks"]:
        if b["source"] == "table":
            assert b["latency_ms"] == pytest.approx(ms[b["block_key"]])
        elif b["source"] == "zero":
            assert b["latency_ms"] == 0.0
        else:
            assert b["latency_ms"] > 0
    arch = read_ofa_net(PROXYLESS, 224)
    assert out["latency_ms"] == pytest.approx(pred.predict_network_ms(arch))
    assert out["blocks_ms"] == pytest.approx(sum(b["latency_ms"] for b in out["blocks"]))
    # --ofa-net is the same option under its old name
    assert _cli(["predict", "--predictor", p, "--ofa-net", PROXYLESS, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == dict(out, arch=str(PROXYLESS))
    # the table form says the same per block
    assert _cli(["predict", "--predictor", p, "--net-config", PROXYLESS]) == 0
    text = capsys.readouterr().out.splitlines()
    assert len(text) == len(PROXYLESS_KEYS) + 1
    assert "regression" in text[22] and PROXYLESS_KEYS[22] in text[22] and "zero" in text[3]
    assert "19 from the table, 2 regressed, 4 skipped" in text[-1]


def test_cli_predict_block_gives_the_source(tmp_path, capsys):
    path, ms = _lut_of(PROXYLESS_KEYS, tmp_path, leave_out=(PROXYLESS_KEYS[1],))
    p = tmp_path / "hybrid.json"
    save_predictor(fit_predictor(read_lut_yaml(path).entries, "hybrid", folds=3), p)
    assert _cli(["predict", "--predictor", p, "--block", PROXYLESS_KEYS[0], "--block", PROXYLESS_KEYS[1],
                 "--block", PROXYLESS_KEYS[3], "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [b["source"] for b in out["blocks"]] == ["table", "regression", "zero"]
    assert out["blocks"][0]["latency_ms"] == pytest.approx(ms[PROXYLESS_KEYS[0]])


def test_predictors_say_where_each_latency_comes_from(tmp_path):
    path, _ = _lut_of(PROXYLESS_KEYS, tmp_path, leave_out=(PROXYLESS_KEYS[1],))
    lut = read_lut_yaml(path)
    hybrid = fit_predictor(lut.entries, "hybrid", folds=3)
    reg = fit_predictor(lut.entries, "linear")
    blocks = [BlockSpec.from_key(k) for k in PROXYLESS_KEYS[:4]]
    assert hybrid.sources(blocks) == ["table", "regression", "table", "zero"]
    assert reg.sources(blocks) == ["regression", "regression", "regression", "zero"]
    assert lut.sources([blocks[0], blocks[3]]) == ["table", "zero"]
    with pytest.raises(UnknownBlockError):
        lut.sources(blocks)
    # the choice sources() reports is the one predict_ms makes
    per = hybrid.predict_ms(blocks)
    assert per[0] == lut.entries[blocks[0].key].mean_ms and per[3] == 0.0
    assert per[1] == pytest.approx(hybrid.regression.predict_ms([blocks[1]])[0], rel=1e-12)


def _edit_block(i: int, **kw):
    def edit(c):
        c["blocks"][i]["mobile_inverted_conv"].update(kw)
    return edit


@pytest.mark.parametrize("edit, words", [
    (lambda c: c.update(name="PyramidTreeNet"), "network class 'PyramidTreeNet' is not supported"),
    (_edit_block(1, name="DepthConvLayer"), "blocks[1]: layer 'DepthConvLayer' in mobile_inverted_conv is not"),
    (lambda c: c["blocks"][1].update(name="ResNetBottleneckBlock"), "block class 'ResNetBottleneckBlock'"),
    (_edit_block(1, width_mult=1.4), "unknown field(s) width_mult"),
    (lambda c: c.update(run_config={}), "unknown field(s) run_config"),
    (lambda c: c["blocks"][1].pop("mobile_inverted_conv"), "blocks[1]: no 'conv' or 'mobile_inverted_conv'"),
    (lambda c: c["blocks"][1].update(conv=None), "has both 'conv' and 'mobile_inverted_conv'"),
    (_edit_block(1, groups=2), "blocks[1]: mobile_inverted_conv has groups 2"),
    (_edit_block(1, act_func="tanh"), "activation 'tanh'"),
    (_edit_block(1, kernel_size=[5, 5]), "mobile_inverted_conv.kernel_size is [5, 5]"),
    (_edit_block(1, expand_ratio="3"), "expand_ratio is \"3\""),
    (_edit_block(1, kernel_size=4), "blocks[1]: mobile_inverted_conv.kernel_size 4 is even"),
    (_edit_block(1, act_func=["relu"]), "activation ['relu']"),
    (_edit_block(0, mid_channels=64), "expand_ratio 1 but mid_channels 64"),
    (_edit_block(2, stride=2), "ZeroLayer with stride 2"),
    (lambda c: c["blocks"][1].update(shortcut=copy.deepcopy(c["blocks"][2]["shortcut"])),
     "IdentityLayer shortcut needs stride 1"),
    (lambda c: c["first_conv"].update(dilation=2), "first_conv is a dilated convolution"),
    (lambda c: c["first_conv"].update(ops_order="bn_act_weight"), "ops_order 'bn_act_weight'"),
    (lambda c: c["feature_mix_layer"].update(kernel_size=3), "feature_mix_layer is a 3x3 stride-1 conv"),
    (lambda c: c["classifier"].update(name="MultiHeadLinearLayer"), "layer 'MultiHeadLinearLayer' in classifier"),
    (lambda c: c.update(blocks={}), "'blocks' must be a list"),
    (lambda c: c["blocks"].__setitem__(4, "zero"), "blocks[4]: a block must be an object"),
])
def test_bad_released_net_config_is_one_line(edit, words):
    cfg = _load(PROXYLESS)
    edit(cfg)
    with pytest.raises(PredictorError) as e:
        ofa_net_to_arch(cfg, 224, source="p.config")
    msg = str(e.value)
    assert words in msg and "\n" not in msg and msg.startswith("p.config: ")


def test_cli_refuses_an_unknown_layer_in_one_line_and_writes_nothing(tmp_path, capsys):
    p = tmp_path / "lut.json"
    save_predictor(read_lut_yaml(_lut_of(PROXYLESS_KEYS, tmp_path)[0]), p)
    cfg = _load(PROXYLESS)
    cfg["blocks"][5]["mobile_inverted_conv"]["name"] = "MixedEdge"
    bad = tmp_path / "bad.config"
    bad.write_text(json.dumps(cfg))
    saved = tmp_path / "arch.json"
    assert _cli(["predict", "--predictor", p, "--net-config", bad, "--save-arch", saved]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "blocks[5]: layer 'MixedEdge'" in err[0]
    # a table that lacks a block: exit 2, and the arch file is not written either
    short = tmp_path / "short.json"
    save_predictor(read_lut_yaml(_lut_of(PROXYLESS_KEYS, tmp_path, leave_out=(PROXYLESS_KEYS[6],))[0]), short)
    assert _cli(["predict", "--predictor", short, "--net-config", PROXYLESS, "--save-arch", saved]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and PROXYLESS_KEYS[6] in err[0]
    assert not saved.exists()


# --- a released file, byte for byte (tests/data/released/README.md says where it was published) ---
MCUNET = DATA / "released" / "mcunet-in2.json"


def test_released_mcunet_net_config_reads_at_its_own_resolution_and_runs():
    """MCUNet publishes ProxylessNASNets files with a ``resolution`` field, no feature-mix layer, expand
    ratios 1/3/4/5/6 with ``mid_channels`` written out, and shortcuts whose channels are lists."""
    arch = read_ofa_net(MCUNET)
    assert arch.input_size == 160 and arch.num_classes == 1000 and arch.name == "mcunet-in2"
    assert arch.meta["resolution_in_file"] == 160 and arch.meta["block_naming"] == "mobile_inverted_conv"
    mb = [b for b in arch.blocks if b.kind == "mbconv"]
    assert len(mb) == 18 and len(arch.blocks) == 20  # stem + 18 blocks + classifier
    assert sorted({b.mid_c // b.in_c for b in mb}) == [1, 3, 4, 5, 6]
    assert sum(b.residual for b in mb) == 11 and arch.blocks[-2].out_c == 160
    assert arch.keys[3] == "expanded_conv-input:40x40x16-output:40x40x16-expand:6-kernel:7-stride:1-idskip:1"
    assert all(BlockSpec.from_key(k).key == k for k in arch.keys)
    with torch.no_grad():
        y = arch.build()(arch.example_input())
    assert y.shape == (1, 1000) and torch.isfinite(y).all()
    assert read_ofa_net(MCUNET, 224).input_size == 224  # --image-size wins over the file


def test_cli_predict_released_mcunet_notes_a_resolution_it_overrides(tmp_path, capsys):
    from hwnas.cli import main

    ms = {k: 0.01 * (i + 1) for i, k in enumerate(read_ofa_net(MCUNET).keys)}
    pred = tmp_path / "p.json"
    save_predictor(fit_predictor(ms, model="lut"), pred)
    assert main(["predict", "--predictor", str(pred), "--net-config", str(MCUNET), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [b["source"] for b in out["blocks"]] == ["table"] * 20
    assert out["blocks_ms"] == pytest.approx(sum(ms.values()), rel=1e-9)  # the table sum, to rounding
    save_predictor(fit_predictor(ms, model="hybrid", folds=3), pred)  # 224 px blocks are not in the table
    assert main(["predict", "--predictor", str(pred), "--net-config", str(MCUNET), "--image-size", "224"]) == 0
    assert "published at 160 px; predicting at --image-size 224" in capsys.readouterr().err
