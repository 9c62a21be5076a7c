"""Once-for-All's ``net.config`` (the JSON a sub-network of OFA is described by) read into an `ArchSpec`.

Two of OFA's network classes are understood, by their ``name``:

- ``MobileNetV3``: ``first_conv`` (ConvLayer), ``blocks`` (ResidualBlock of an MBConvLayer and an
  IdentityLayer shortcut or none), ``final_expand_layer`` (1x1 ConvLayer on the feature map), global
  pooling, ``feature_mix_layer`` (1x1 ConvLayer on the pooled vector), ``classifier`` (LinearLayer);
- ``ProxylessNASNets``: ``first_conv``, ``blocks`` (a ZeroLayer conv is a skipped layer),
  ``feature_mix_layer`` (1x1 ConvLayer on the feature map), ``classifier`` (pooling + LinearLayer).

OFA keeps the input resolution in a separate ``run.config``, so it is a parameter here
(``hwnas predict --ofa-net net.config --image-size 224``). Anything else (ResNets, unknown layer
names, shapes that do not chain) is refused with one line naming the part.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from predictor._base import PredictorError
from profiler.blocks import ArchSpec, BlockKeyError, BlockSpec, _out_size

__all__ = ["read_ofa_net", "ofa_net_to_arch"]

_HS = {"h_swish": True, "hswish": True, "relu": False, "relu6": False, None: False}


def read_ofa_net(path: str | Path, image_size: int) -> ArchSpec:
    """Read an OFA ``net.config`` file; ``image_size`` is the input height and width (pixels)."""
    path = Path(path)
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise PredictorError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PredictorError(f"{path}: not a JSON net.config ({e})") from None
    return ofa_net_to_arch(cfg, image_size, source=str(path))


def _get(d: Any, key: str, where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise PredictorError(f"{where}: no {key!r}; is this a Once-for-All net.config?")
    return d[key]


def _act(layer: dict, where: str) -> bool:
    act = layer.get("act_func")
    if act not in _HS:
        raise PredictorError(f"{where}: activation {act!r} is not one of relu, relu6, h_swish")
    return _HS[act]


def _conv_layer(d: Any, where: str) -> dict:
    if not isinstance(d, dict) or d.get("name") != "ConvLayer":
        raise PredictorError(f"{where}: expected a ConvLayer, got {d.get('name') if isinstance(d, dict) else d!r}")
    return d


def ofa_net_to_arch(cfg: dict, image_size: int, source: str = "net.config") -> ArchSpec:
    """The `ArchSpec` of a parsed OFA ``net.config`` at ``image_size`` x ``image_size`` input."""
    if not isinstance(image_size, int) or image_size < 1:
        raise PredictorError(f"--image-size {image_size!r}: give a positive number of pixels")
    kind = _get(cfg, "name", source)
    if kind not in ("MobileNetV3", "ProxylessNASNets"):
        raise PredictorError(f"{source}: network class {kind!r} is not supported (MobileNetV3, ProxylessNASNets)")
    try:
        blocks: list[BlockSpec] = []
        hw = image_size
        fc = _conv_layer(_get(cfg, "first_conv", source), f"{source}: first_conv")
        stem = BlockSpec.conv(hw, int(fc["in_channels"]), int(fc["out_channels"]), int(fc.get("kernel_size", 3)),
                              int(fc.get("stride", 2)), hs=_act(fc, f"{source}: first_conv"))
        blocks.append(stem)
        hw, c = stem.out_h, stem.out_c
        for i, blk in enumerate(_get(cfg, "blocks", source)):
            where = f"{source}: blocks[{i}]"
            conv = _get(blk, "conv", where)
            name = conv.get("name") if isinstance(conv, dict) else None
            shortcut = blk.get("shortcut")
            if name == "ZeroLayer":
                if int(conv.get("stride", 1)) != 1:
                    raise PredictorError(f"{where}: a ZeroLayer with stride {conv.get('stride')} changes the shape")
                blocks.append(BlockSpec.zero(hw, c))
                continue
            if name != "MBConvLayer":
                raise PredictorError(f"{where}: layer {name!r} is not supported (MBConvLayer, ZeroLayer)")
            in_c, out_c = int(conv["in_channels"]), int(conv["out_channels"])
            if in_c != c:
                raise PredictorError(f"{where}: takes {in_c} channels, the previous layer gives {c}")
            stride = int(conv.get("stride", 1))
            mid = conv.get("mid_channels")
            mid_c = int(mid) if mid else int(round(in_c * float(conv.get("expand_ratio", 1))))
            if shortcut is not None and (not isinstance(shortcut, dict) or shortcut.get("name") != "IdentityLayer"):
                raise PredictorError(f"{where}: shortcut {shortcut!r} is not an IdentityLayer")
            o = _out_size(hw, stride)
            blocks.append(BlockSpec("mbconv", hw, hw, in_c, o, o, out_c, kernel=int(conv.get("kernel_size", 3)),
                                    stride=stride, mid_c=mid_c, residual=shortcut is not None,
                                    se=bool(conv.get("use_se")), hs=_act(conv, where),
                                    ofa=kind == "MobileNetV3" or mid_c % in_c != 0))
            hw, c = o, out_c
        if kind == "MobileNetV3":
            fe = _conv_layer(_get(cfg, "final_expand_layer", source), f"{source}: final_expand_layer")
            blocks.append(BlockSpec.final_conv(hw, c, int(fe["out_channels"]), hs=_act(fe, f"{source}: final_expand_layer")))
            c = int(fe["out_channels"])
            blocks.append(BlockSpec("pool", hw, hw, c, 1, 1, c))
            fm = _conv_layer(_get(cfg, "feature_mix_layer", source), f"{source}: feature_mix_layer")
            blocks.append(BlockSpec("pooled_conv", 1, 1, c, 1, 1, int(fm["out_channels"]),
                                    hs=_act(fm, f"{source}: feature_mix_layer")))
            c, hw = int(fm["out_channels"]), 1
        else:
            fm = _conv_layer(_get(cfg, "feature_mix_layer", source), f"{source}: feature_mix_layer")
            blocks.append(BlockSpec.final_conv(hw, c, int(fm["out_channels"]), hs=_act(fm, f"{source}: feature_mix_layer")))
            c = int(fm["out_channels"])
        cl = _get(cfg, "classifier", source)
        if not isinstance(cl, dict) or cl.get("name") != "LinearLayer":
            raise PredictorError(f"{source}: classifier is not a LinearLayer")
        if int(cl["in_features"]) != c:
            raise PredictorError(f"{source}: classifier takes {cl['in_features']} features, the network gives {c}")
        classes = int(cl["out_features"])
        blocks.append(BlockSpec.logits(hw, c, classes))
        return ArchSpec(blocks, image_size, classes, name=f"ofa-{kind}")
    except BlockKeyError as e:
        raise PredictorError(f"{source}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, PredictorError):
            raise
        raise PredictorError(f"{source}: malformed layer ({type(e).__name__}: {e})") from None
