"""The network descriptions Once-for-All and ProxylessNAS publish (``net.config``) read into an `ArchSpec`.

Both projects write a network as the JSON of their layers' ``config`` properties, and both namings are
read here, as the two projects' own loaders read them:

- network (``name``): ``ProxylessNASNets`` (ProxylessNAS's released proxyless_cpu / gpu / mobile
  networks, and OFA's ProxylessNAS sub-networks): ``first_conv``, ``blocks``, ``feature_mix_layer``
  (a 1x1 ConvLayer on the feature map, or null), global pooling, ``classifier``. ``MobileNetV3`` (OFA):
  ``first_conv``, ``blocks``, ``final_expand_layer`` (1x1 ConvLayer on the feature map), global pooling,
  ``feature_mix_layer`` (1x1 ConvLayer on the pooled vector), ``classifier``. ``bn`` holds training-time
  BatchNorm settings and is not part of the shape.
- block: ``ResidualBlock`` with its layer under ``conv`` (OFA's current code), or
  ``MobileInvertedResidualBlock`` with it under ``mobile_inverted_conv`` (ProxylessNAS's released files
  and older OFA); ``shortcut`` is an ``IdentityLayer`` (a residual) or null or a ``ZeroLayer`` (none).
- the block's layer: ``MBConvLayer`` or ``MBInvertedConvLayer`` (one inverted residual, two names), or
  ``ZeroLayer`` / null: a skipped layer, the block passes its input on.
- middle channels: ``mid_channels`` when given, else ``round(in_channels * expand_ratio)``; expand
  ratio 1 has no expansion conv.
- ``classifier``: a ``LinearLayer``. Dropout rates, ``use_bn`` and ``bias`` do not change the block
  keys (dropout is off at inference, BatchNorm folds into the conv).

Block keys: a ``ProxylessNASNets`` block is written in the ProxylessNAS LUT style
(``expanded_conv-...-expand:3-kernel:5-stride:2-idskip:0``) where its middle channels are a whole
multiple of its input; ``MobileNetV3`` blocks, and blocks with squeeze-excite or h-swish, in OFA's
(``expand`` = middle channels, ``-se:0|1-hs:0|1``). The keys carry h-swish or not: relu, relu6 and no
activation share a key (a cheap elementwise pass that backends fuse into the convolution).

Refused, with one line naming the part: other network classes (ResNets, PyramidTreeNet), layer classes
or fields the two projects do not write, and layers the block keys cannot describe (dilated or grouped
convolutions, other activations, shapes that do not chain). OFA and ProxylessNAS keep the input
resolution outside net.config (in run.config), so it is a parameter here; MCUNet's released
ProxylessNASNets files (mcunet-in*, mcunet-vww*) write it as ``resolution``, which is then the default.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from predictor._base import PredictorError
from profiler.blocks import ArchSpec, BlockKeyError, BlockSpec, out_size

__all__ = ["read_ofa_net", "ofa_net_to_arch", "NETWORK_CLASSES"]

#: the network classes (``name`` of a net.config) that are read
NETWORK_CLASSES = ("ProxylessNASNets", "MobileNetV3")

_NET_FIELDS = {
    "ProxylessNASNets": {"name", "bn", "first_conv", "blocks", "feature_mix_layer", "classifier", "resolution"},
    "MobileNetV3": {"name", "bn", "first_conv", "blocks", "final_expand_layer", "feature_mix_layer", "classifier"},
}
_BLOCK_CLASSES = ("ResidualBlock", "MobileInvertedResidualBlock")
_BLOCK_FIELDS = {"name", "conv", "mobile_inverted_conv", "shortcut"}
_MBCONV = ("MBConvLayer", "MBInvertedConvLayer")
# the fields each layer class's ``config`` writes, in ProxylessNAS's and OFA's versions together
_LAYER2D = {"name", "in_channels", "out_channels", "use_bn", "act_func", "dropout_rate", "ops_order"}
_MB_FIELDS = {"name", "in_channels", "out_channels", "kernel_size", "stride", "expand_ratio", "mid_channels",
              "act_func", "use_se", "groups"}
_FIELDS = {
    "ConvLayer": _LAYER2D | {"kernel_size", "stride", "dilation", "groups", "bias", "has_shuffle", "use_se"},
    "IdentityLayer": _LAYER2D,
    "LinearLayer": {"name", "in_features", "out_features", "bias", "use_bn", "act_func", "dropout_rate", "ops_order"},
    "ZeroLayer": {"name", "stride"},
    "MBConvLayer": _MB_FIELDS,
    "MBInvertedConvLayer": _MB_FIELDS,
}
# act_func -> h-swish or not; None and "none" are no activation
_HS = {"relu": False, "relu6": False, "none": False, None: False, "h_swish": True, "hswish": True}
_NO_ACT = (None, "none")


def read_ofa_net(path: str | Path, image_size: int | None = None) -> ArchSpec:
    """Read a Once-for-All or ProxylessNAS ``net.config`` file at ``image_size`` x ``image_size`` pixels
    (None: the file's ``resolution`` where it writes one, else 224).

    Raises:
        PredictorError: no such file, not JSON, or a network this reader refuses (one line, naming the part).
    """
    path = Path(path)
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PredictorError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PredictorError(f"{path}: is a folder; give the net.config file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PredictorError(f"{path}: not a JSON net.config ({e})") from None
    return ofa_net_to_arch(cfg, image_size, source=str(path))


def _show(v: Any) -> str:
    text = json.dumps(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _fields(d: dict, allowed: set[str], where: str, what: str) -> None:
    extra = sorted(set(d) - allowed)
    if extra:
        raise PredictorError(f"{where}: {what} has unknown field(s) {', '.join(map(str, extra))}; a Once-for-All "
                             f"or ProxylessNAS net.config writes only {', '.join(sorted(allowed))}")


def _layer(d: Any, classes: tuple[str, ...], where: str, what: str) -> str:
    """The class name of layer ``d`` (one of ``classes``), after checking it writes no unknown field."""
    if not isinstance(d, dict):
        raise PredictorError(f"{where}: {what} must be a layer object ({', '.join(classes)}), got {_show(d)}")
    name = d.get("name")
    if name not in classes:
        raise PredictorError(f"{where}: layer {name!r} in {what} is not supported ({', '.join(classes)})")
    _fields(d, _FIELDS[name], where, f"{what} ({name})")
    return name


def _int(d: dict, key: str, default: int | None, where: str, what: str) -> int:
    if key not in d and default is not None:
        return default
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        missing = "is missing" if key not in d else f"is {_show(v)}"
        raise PredictorError(f"{where}: {what}.{key} {missing}; it must be a positive integer")
    return v


def _act(d: dict, default: str | None, where: str, what: str) -> bool:
    act = d.get("act_func", default)
    if not (act is None or isinstance(act, str)) or act not in _HS:
        raise PredictorError(f"{where}: {what} activation {act!r} is not one of relu, relu6, h_swish, none")
    return _HS[act]


def _conv(d: Any, where: str, what: str) -> tuple[int, int, int, int, bool]:
    """A ConvLayer as (in_channels, out_channels, kernel, stride, h-swish)."""
    _layer(d, ("ConvLayer",), where, what)
    in_c, out_c = _int(d, "in_channels", None, where, what), _int(d, "out_channels", None, where, what)
    kernel, stride = _int(d, "kernel_size", 3, where, what), _int(d, "stride", 1, where, what)
    if kernel % 2 == 0:
        raise PredictorError(f"{where}: {what}.kernel_size {kernel} is even; the block keys hold odd kernels")
    if _int(d, "dilation", 1, where, what) != 1:
        raise PredictorError(f"{where}: {what} is a dilated convolution, which no block key describes")
    if _int(d, "groups", 1, where, what) != 1:
        raise PredictorError(f"{where}: {what} is a grouped convolution, which no block key describes")
    if d.get("use_se"):
        raise PredictorError(f"{where}: {what} has squeeze-excite, which no Conv block key describes")
    if d.get("ops_order", "weight_bn_act") != "weight_bn_act":
        raise PredictorError(f"{where}: {what}.ops_order {d['ops_order']!r}: the block keys describe "
                             "conv -> BN -> activation (weight_bn_act) only")
    return in_c, out_c, kernel, stride, _act(d, "relu", where, what)


def _pointwise(d: Any, c: int, where: str, what: str) -> tuple[int, bool]:
    """A 1x1 stride-1 ConvLayer taking ``c`` channels, as (out_channels, h-swish)."""
    in_c, out_c, kernel, stride, hs = _conv(d, where, what)
    if (kernel, stride) != (1, 1):
        raise PredictorError(f"{where}: {what} is a {kernel}x{kernel} stride-{stride} conv; a 1x1 stride-1 "
                             "conv is expected here")
    if in_c != c:
        raise PredictorError(f"{where}: {what} takes {in_c} channels, the network gives {c}")
    return out_c, hs


def _mid_channels(conv: dict, in_c: int, where: str, what: str) -> int:
    """Middle channels as the projects' layers compute them (see the module docstring)."""
    ratio = conv.get("expand_ratio", 6)  # 6 is the layer classes' default
    mid = conv.get("mid_channels")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float))
                              or not math.isfinite(ratio) or ratio <= 0):
        raise PredictorError(f"{where}: {what}.expand_ratio is {_show(ratio)}; it must be a positive number")
    if mid is not None:
        mid = _int(conv, "mid_channels", None, where, what)
    if ratio == 1:  # both projects drop the expansion conv at ratio 1, whatever mid_channels says
        if mid not in (None, in_c):
            raise PredictorError(f"{where}: {what} has expand_ratio 1 but mid_channels {mid} != in_channels "
                                 f"{in_c}; the layer cannot be built")
        return in_c
    if mid is not None:
        return mid
    if ratio is None:
        raise PredictorError(f"{where}: {what} gives neither mid_channels nor expand_ratio")
    return int(round(in_c * ratio))


def _shortcut(sc: Any, where: str) -> bool:
    """Whether the block's ``shortcut`` is a residual: IdentityLayer yes, null or ZeroLayer no."""
    if sc is None:
        return False
    name = _layer(sc, ("IdentityLayer", "ZeroLayer"), where, "shortcut")
    if name == "ZeroLayer":
        return False
    if sc.get("use_bn") or sc.get("act_func") not in _NO_ACT:
        raise PredictorError(f"{where}: an IdentityLayer shortcut with BN or an activation is not a plain "
                             "residual, which the block keys describe")
    return True


def _block(blk: Any, i: int, hw: int, c: int, ofa_keys: bool, source: str) -> tuple[BlockSpec, str]:
    """Block ``i`` taking ``hw`` x ``hw`` x ``c``, and the name its layer was found under."""
    where = f"{source}: blocks[{i}]"
    if not isinstance(blk, dict):
        raise PredictorError(f"{where}: a block must be an object, got {_show(blk)}")
    if "name" in blk and blk["name"] not in _BLOCK_CLASSES:
        raise PredictorError(f"{where}: block class {blk['name']!r} is not supported ({', '.join(_BLOCK_CLASSES)})")
    _fields(blk, _BLOCK_FIELDS, where, "the block")
    found = [k for k in ("conv", "mobile_inverted_conv") if k in blk]
    if len(found) != 1:
        raise PredictorError(f"{where}: " + ("no 'conv' or 'mobile_inverted_conv'; is this a Once-for-All or "
                                             "ProxylessNAS net.config?" if not found else
                                             "has both 'conv' and 'mobile_inverted_conv'; give one"))
    field = found[0]
    conv = blk[field]
    residual = _shortcut(blk.get("shortcut"), where)
    if conv is None:  # OFA writes a removed layer as null; the block passes its input on
        return BlockSpec.zero(hw, c), field
    name = _layer(conv, _MBCONV + ("ZeroLayer",), where, field)
    if name == "ZeroLayer":
        if _int(conv, "stride", 1, where, field) != 1:
            raise PredictorError(f"{where}: a ZeroLayer with stride {conv['stride']} changes the shape; a skipped "
                                 "layer passes its input on, so its stride must be 1")
        return BlockSpec.zero(hw, c), field
    in_c, out_c = _int(conv, "in_channels", None, where, field), _int(conv, "out_channels", None, where, field)
    if in_c != c:
        raise PredictorError(f"{where}: takes {in_c} channels, the previous layer gives {c}")
    kernel, stride = _int(conv, "kernel_size", 3, where, field), _int(conv, "stride", 1, where, field)
    if kernel % 2 == 0:
        raise PredictorError(f"{where}: {field}.kernel_size {kernel} is even; the block keys hold odd kernels")
    if conv.get("groups") is not None:
        raise PredictorError(f"{where}: {field} has groups {conv['groups']!r} (a grouped, not depthwise, middle "
                             "conv), which no block key describes")
    mid = _mid_channels(conv, in_c, where, field)
    hs, se = _act(conv, "relu6", where, field), bool(conv.get("use_se"))
    if residual and (stride != 1 or in_c != out_c):
        raise PredictorError(f"{where}: an IdentityLayer shortcut needs stride 1 and equal in/out channels "
                             f"(here stride {stride}, {in_c} -> {out_c})")
    o = out_size(hw, stride)
    spec = BlockSpec("mbconv", hw, hw, in_c, o, o, out_c, kernel=kernel, stride=stride, mid_c=mid,
                     residual=residual, se=se, hs=hs, ofa=ofa_keys or mid % in_c != 0)
    return spec, field


def ofa_net_to_arch(cfg: Any, image_size: int | None = None, source: str = "net.config") -> ArchSpec:
    """The `ArchSpec` of a parsed ``net.config`` (either project, either naming) at ``image_size`` pixels
    (None: the file's ``resolution`` where it writes one, else 224, ImageNet's).

    ``source`` names the file in messages and the arch (its name up to the first dot; the network
    class for OFA's generic ``net.config``); ``meta`` records the source, the network class and the
    block naming (``conv`` or ``mobile_inverted_conv``).

    Raises:
        PredictorError: a network, block, layer or field this reader refuses (see the module docstring).
    """
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                   or image_size < 1):
        raise PredictorError(f"--image-size {image_size!r}: give a positive number of pixels")
    if not isinstance(cfg, dict) or "name" not in cfg:
        raise PredictorError(f"{source}: no 'name'; is this a Once-for-All or ProxylessNAS net.config?")
    kind = cfg["name"]
    if kind not in NETWORK_CLASSES:
        raise PredictorError(f"{source}: network class {kind!r} is not supported ({', '.join(NETWORK_CLASSES)})")
    _fields(cfg, _NET_FIELDS[kind], source, f"the {kind} network")
    for key in _NET_FIELDS[kind] - {"bn", "resolution"}:
        if key not in cfg:
            raise PredictorError(f"{source}: no {key!r}; is this a Once-for-All or ProxylessNAS net.config?")
    published = _int(cfg, "resolution", None, source, f"the {kind} network") if "resolution" in cfg else None
    if image_size is None:
        image_size = published or 224
    if not isinstance(cfg["blocks"], list):
        raise PredictorError(f"{source}: 'blocks' must be a list of blocks, got {_show(cfg['blocks'])}")
    try:
        in_c, c, kernel, stride, hs = _conv(cfg["first_conv"], source, "first_conv")
        blocks = [BlockSpec.conv(image_size, in_c, c, kernel, stride, hs=hs)]
        hw = blocks[0].out_h
        namings = []
        for i, blk in enumerate(cfg["blocks"]):
            spec, naming = _block(blk, i, hw, c, kind == "MobileNetV3", source)
            blocks.append(spec)
            namings.append(naming)
            hw, c = spec.out_h, spec.out_c
        if kind == "MobileNetV3":
            c2, hs = _pointwise(cfg["final_expand_layer"], c, source, "final_expand_layer")
            blocks.append(BlockSpec.final_conv(hw, c, c2, hs=hs))
            blocks.append(BlockSpec("pool", hw, hw, c2, 1, 1, c2))
            c3, hs = _pointwise(cfg["feature_mix_layer"], c2, source, "feature_mix_layer")
            blocks.append(BlockSpec("pooled_conv", 1, 1, c2, 1, 1, c3, hs=hs))
            hw, c = 1, c3
        elif cfg["feature_mix_layer"] is not None:  # ProxylessNASNets may leave it out
            c2, hs = _pointwise(cfg["feature_mix_layer"], c, source, "feature_mix_layer")
            blocks.append(BlockSpec.final_conv(hw, c, c2, hs=hs))
            c = c2
        cl = cfg["classifier"]
        _layer(cl, ("LinearLayer",), source, "classifier")
        features = _int(cl, "in_features", None, source, "classifier")
        classes = _int(cl, "out_features", None, source, "classifier")
        _act(cl, None, source, "classifier")  # an activation on the class vector costs nothing to speak of
        if features != c:
            raise PredictorError(f"{source}: classifier takes {features} features, the network gives {c}")
        blocks.append(BlockSpec.logits(hw, c, classes))
        meta = {"source": source, "network_class": kind, "resolution_in_file": published,
                "block_naming": "+".join(sorted(set(namings))) if namings else None}
        stem = Path(source).name.split(".")[0]  # proxyless_mobile.config -> proxyless_mobile
        return ArchSpec(blocks, image_size, classes, name=kind if stem in ("", "net") else stem, meta=meta)
    except BlockKeyError as e:
        raise PredictorError(f"{source}: {e}") from None
