"""Candidate blocks (`BlockSpec`), whole networks (`ArchSpec`) and their string keys.

The key format is the one of the ProxylessNAS latency lookup tables (Cai et al., ICLR 2019),
for example ``expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:5-stride:2-idskip:0``;
the Once-for-All variant (Cai et al., ICLR 2020) is read too: there ``expand`` counts the middle
channels and ``-se:0|1-hs:0|1`` follow.  Our own extensions are optional trailing tokens:
``-kernel:K-stride:S`` (and ``-hs:1``) on ``Conv``, ``-groups:G`` on ``expanded_conv``.
Unknown tokens, duplicate tokens and shapes that do not agree with the block raise `BlockKeyError`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

from profiler.errors import HwnasError

__all__ = ["BlockSpec", "ArchSpec", "BlockKeyError", "KINDS", "flops", "out_size", "se_channels", "unique"]


class BlockKeyError(HwnasError, ValueError):
    """A block key or block description is malformed or inconsistent."""


# kind -> the name used in ProxylessNAS / Once-for-All keys
KINDS = {
    "conv": "Conv",  # plain conv + BN + act (the stem; any kernel/stride)
    "mbconv": "expanded_conv",  # inverted residual (MobileNetV2) block
    "zero": "Zero",  # the layer is skipped: output = input (through its residual)
    "final_conv": "Conv_1",  # 1x1 conv + BN + act before pooling
    "pool": "AvgPool2D",  # global average pooling
    "pooled_conv": "Conv_2",  # 1x1 conv on pooled features (MobileNetV3 / OFA), bias + h-swish
    "logits": "Logits",  # (global pooling if spatial) + linear classifier
}
_NAME_TO_KIND = {v: k for k, v in KINDS.items()}


def out_size(size: int, stride: int) -> int:
    """Output height or width of a 'same'-padded convolution with an odd kernel: ceil(size / stride)."""
    return (size + stride - 1) // stride


@dataclass(frozen=True, order=True)
class BlockSpec:
    """One candidate block. Shapes are NCHW at batch 1 but written HxWxC in keys.

    Attributes:
        kind: one of `KINDS`.
        in_h, in_w, in_c / out_h, out_w, out_c: input and output shape (pixels, channels).
        kernel: spatial kernel size (conv and depthwise conv); 1 for 1x1 blocks.
        stride: spatial stride (1 or 2 in the shipped spaces).
        mid_c: middle (expanded) channels of an MBConv; equals ``in_c`` for expand ratio 1.
        residual: identity skip connection (``idskip`` in keys); only when shapes allow it.
        se: squeeze-and-excite in the MBConv (OFA-style key).
        hs: h-swish instead of ReLU6.
        groups: groups of the 1x1 convolutions of an MBConv (FBNet); a channel shuffle follows
            the expansion when > 1.
        ofa: write the key in Once-for-All style (``expand`` = middle channels, se/hs tokens).
    """

    kind: str
    in_h: int
    in_w: int
    in_c: int
    out_h: int
    out_w: int
    out_c: int
    kernel: int = 1
    stride: int = 1
    mid_c: int = 0
    residual: bool = False
    se: bool = False
    hs: bool = False
    groups: int = 1
    ofa: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise BlockKeyError(f"unknown block kind {self.kind!r}; known: {', '.join(KINDS)}")
        for name in ("in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "kernel", "stride", "groups"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise BlockKeyError(f"{self.kind}: {name} must be a positive integer, got {v!r}")
        if self.kind == "mbconv":
            if self.mid_c == 0:
                object.__setattr__(self, "mid_c", self.in_c)
            if self.se or self.hs:
                object.__setattr__(self, "ofa", True)
            if self.kernel % 2 == 0:
                raise BlockKeyError(f"expanded_conv: kernel must be odd, got {self.kernel}")
            if not self.ofa and self.mid_c % self.in_c:
                raise BlockKeyError(
                    f"expanded_conv: middle channels {self.mid_c} are not a whole multiple of "
                    f"input channels {self.in_c}; write the key in Once-for-All style")
            if self.mid_c < 1:
                raise BlockKeyError("expanded_conv: middle channels must be positive")
            if self.groups > 1 and (self.in_c % self.groups or self.mid_c % self.groups
                                    or self.out_c % self.groups):
                raise BlockKeyError(
                    f"expanded_conv: groups {self.groups} must divide in/mid/out channels "
                    f"{self.in_c}/{self.mid_c}/{self.out_c}")
            if self.residual and (self.stride != 1 or self.in_c != self.out_c):
                raise BlockKeyError("expanded_conv: idskip:1 needs stride 1 and equal in/out channels")
        else:
            if self.mid_c not in (0,) or self.se or self.groups != 1 or self.residual or self.ofa:
                raise BlockKeyError(f"{KINDS[self.kind]}: expand/se/groups/idskip apply to expanded_conv only")
            if self.hs and self.kind not in ("conv", "final_conv", "pooled_conv"):
                raise BlockKeyError(f"{KINDS[self.kind]}: hs applies to conv blocks only")
        self._check_shapes()

    def _check_shapes(self) -> None:
        name = KINDS[self.kind]
        if self.kind in ("conv", "mbconv", "final_conv", "pooled_conv"):
            want = (out_size(self.in_h, self.stride), out_size(self.in_w, self.stride))
            if (self.out_h, self.out_w) != want:
                raise BlockKeyError(
                    f"{name}: input {self.in_h}x{self.in_w} with stride {self.stride} gives "
                    f"{want[0]}x{want[1]}, not {self.out_h}x{self.out_w}")
            if self.kind in ("final_conv", "pooled_conv") and (self.kernel, self.stride) != (1, 1):
                raise BlockKeyError(f"{name}: is a 1x1 stride-1 conv")
            if self.kind == "pooled_conv" and (self.in_h, self.in_w) != (1, 1):
                raise BlockKeyError(f"{name}: input must be pooled (1x1xC)")
        elif self.kind == "zero":
            if (self.in_h, self.in_w, self.in_c) != (self.out_h, self.out_w, self.out_c):
                raise BlockKeyError(f"{name}: input and output shapes must be equal")
        elif self.kind == "pool":
            if (self.out_h, self.out_w, self.out_c) != (1, 1, self.in_c):
                raise BlockKeyError(f"{name}: output must be 1x1x{self.in_c}")
        elif self.kind == "logits":
            if (self.out_h, self.out_w) != (1, 1):
                raise BlockKeyError(f"{name}: output must be a vector of classes")
        if self.kind != "conv" and self.kind != "mbconv" and self.kernel != 1:
            raise BlockKeyError(f"{name}: kernel applies to Conv and expanded_conv only")
        if self.kind in ("zero", "pool", "logits") and self.stride != 1:
            raise BlockKeyError(f"{name}: stride does not apply")

    # ---- constructors -------------------------------------------------------------------
    @classmethod
    def conv(cls, hw: int, in_c: int, out_c: int, kernel: int = 3, stride: int = 1, hs: bool = False) -> "BlockSpec":
        o = out_size(hw, stride)
        return cls("conv", hw, hw, in_c, o, o, out_c, kernel=kernel, stride=stride, hs=hs)

    @classmethod
    def mbconv(cls, hw: int, in_c: int, out_c: int, expand: float, kernel: int, stride: int,
               residual: bool | None = None, se: bool = False, hs: bool = False, groups: int = 1,
               ofa: bool = False) -> "BlockSpec":
        """`expand` is the ratio; `residual=None` means: a skip wherever shapes allow it."""
        o = out_size(hw, stride)
        if residual is None:
            residual = stride == 1 and in_c == out_c
        return cls("mbconv", hw, hw, in_c, o, o, out_c, kernel=kernel, stride=stride,
                   mid_c=int(round(in_c * expand)), residual=residual, se=se, hs=hs, groups=groups, ofa=ofa)

    @classmethod
    def zero(cls, hw: int, c: int) -> "BlockSpec":
        return cls("zero", hw, hw, c, hw, hw, c)

    @classmethod
    def final_conv(cls, hw: int, in_c: int, out_c: int, hs: bool = False) -> "BlockSpec":
        return cls("final_conv", hw, hw, in_c, hw, hw, out_c, hs=hs)

    @classmethod
    def logits(cls, hw: int, in_c: int, classes: int) -> "BlockSpec":
        return cls("logits", hw, hw, in_c, 1, 1, classes)

    # ---- derived ------------------------------------------------------------------------
    @property
    def expand_ratio(self) -> float:
        return self.mid_c / self.in_c if self.kind == "mbconv" else 1.0

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """NCHW shape of the example input (batch 1)."""
        return (1, self.in_c, self.in_h, self.in_w)

    @property
    def output_shape(self) -> tuple[int, ...]:
        if self.kind == "logits":
            return (1, self.out_c)
        return (1, self.out_c, self.out_h, self.out_w)

    # ---- key codec ------------------------------------------------------------------------
    @property
    def key(self) -> str:
        """The canonical string key (ProxylessNAS LUT format, or OFA's when ``ofa``)."""
        name = KINDS[self.kind]
        parts = [name, f"input:{self.in_h}x{self.in_w}x{self.in_c}"]
        if self.kind == "logits":
            parts.append(f"output:{self.out_c}")
        else:
            parts.append(f"output:{self.out_h}x{self.out_w}x{self.out_c}")
        if self.kind == "conv":
            default_stride = self.in_h // self.out_h if self.out_h and self.in_h % self.out_h == 0 else 0
            if self.kernel != 3 or self.stride != default_stride:
                parts += [f"kernel:{self.kernel}", f"stride:{self.stride}"]
            if self.hs:
                parts.append("hs:1")
        elif self.kind in ("final_conv", "pooled_conv"):
            if self.hs != (self.kind == "pooled_conv"):
                parts.append(f"hs:{int(self.hs)}")
        elif self.kind == "mbconv":
            expand = self.mid_c if self.ofa else self.mid_c // self.in_c
            parts += [f"expand:{expand}", f"kernel:{self.kernel}", f"stride:{self.stride}",
                      f"idskip:{int(self.residual)}"]
            if self.ofa:
                parts += [f"se:{int(self.se)}", f"hs:{int(self.hs)}"]
            if self.groups != 1:
                parts.append(f"groups:{self.groups}")
        return "-".join(parts)

    def __str__(self) -> str:
        return self.key

    @classmethod
    def from_key(cls, key: str) -> "BlockSpec":
        """Parse a ProxylessNAS or Once-for-All key. Raises `BlockKeyError` on anything unknown."""
        if not isinstance(key, str) or not key.strip():
            raise BlockKeyError(f"empty block key {key!r}")
        key = key.strip()
        # kind names contain '_' but never '-', and every token is name:value
        name, *tokens = key.split("-")
        if name not in _NAME_TO_KIND:
            raise BlockKeyError(f"unknown block kind {name!r} in key {key!r}; known: {', '.join(_NAME_TO_KIND)}")
        kind = _NAME_TO_KIND[name]
        vals: dict[str, str] = {}
        for tok in tokens:
            k, sep, v = tok.partition(":")
            if not sep or not k or not v:
                raise BlockKeyError(f"malformed token {tok!r} in key {key!r} (expected name:value)")
            if k in vals:
                raise BlockKeyError(f"token {k!r} appears twice in key {key!r}")
            vals[k] = v
        allowed = {
            "conv": {"input", "output", "kernel", "stride", "hs"},
            "mbconv": {"input", "output", "expand", "kernel", "stride", "idskip", "se", "hs", "groups"},
            "zero": {"input", "output"},
            "final_conv": {"input", "output", "hs"},
            "pool": {"input", "output"},
            "pooled_conv": {"input", "output", "hs"},
            "logits": {"input", "output"},
        }[kind]
        unknown = set(vals) - allowed
        if unknown:
            raise BlockKeyError(f"unknown token(s) {', '.join(sorted(unknown))} for {name} in key {key!r}")
        for req in ("input", "output"):
            if req not in vals:
                raise BlockKeyError(f"key {key!r} lacks {req}:...")

        def shape(tok: str, n: Sequence[int]) -> tuple[int, ...]:
            raw = vals[tok].split("x")
            if len(raw) not in n:
                raise BlockKeyError(f"{tok}:{vals[tok]} in key {key!r} must be HxWxC")
            return tuple(_int(r, tok, key) for r in raw)

        def flag(tok: str) -> bool:
            if tok not in vals:
                return False
            if vals[tok] not in ("0", "1"):
                raise BlockKeyError(f"{tok}:{vals[tok]} in key {key!r} must be 0 or 1")
            return vals[tok] == "1"

        ih, iw, ic = shape("input", (3,))
        if kind == "logits":
            out = shape("output", (1, 3))
            oh, ow, oc = (1, 1, out[0]) if len(out) == 1 else out
        else:
            oh, ow, oc = shape("output", (3,))
        kw: dict[str, Any] = {}
        if kind == "conv":
            if ("kernel" in vals) != ("stride" in vals):
                raise BlockKeyError(f"key {key!r}: kernel and stride extend Conv together")
            if "kernel" in vals:
                kw["kernel"] = _int(vals["kernel"], "kernel", key)
                kw["stride"] = _int(vals["stride"], "stride", key)
            else:
                if oh == 0 or ih % oh:
                    raise BlockKeyError(f"key {key!r}: stride cannot be read from {ih}->{oh}")
                kw["kernel"], kw["stride"] = 3, ih // oh
            kw["hs"] = flag("hs")
        elif kind in ("final_conv", "pooled_conv"):
            kw["hs"] = flag("hs") if "hs" in vals else kind == "pooled_conv"
        elif kind == "mbconv":
            for req in ("expand", "kernel", "stride", "idskip"):
                if req not in vals:
                    raise BlockKeyError(f"key {key!r} lacks {req}:...")
            ofa = "se" in vals or "hs" in vals
            if ofa and not ("se" in vals and "hs" in vals):
                raise BlockKeyError(f"key {key!r}: Once-for-All keys carry both se: and hs:")
            expand = _int(vals["expand"], "expand", key)
            kw.update(kernel=_int(vals["kernel"], "kernel", key), stride=_int(vals["stride"], "stride", key),
                      mid_c=expand if ofa else expand * ic, residual=flag("idskip"), se=flag("se"),
                      hs=flag("hs"), ofa=ofa)
            if "groups" in vals:
                kw["groups"] = _int(vals["groups"], "groups", key)
        try:
            spec = cls(kind, ih, iw, ic, oh, ow, oc, **kw)
        except BlockKeyError as e:
            raise BlockKeyError(f"inconsistent key {key!r}: {e}") from None
        return spec

    # ---- torch ------------------------------------------------------------------------------
    def build(self):
        """A fresh `torch.nn.Module` (eval mode) computing this block."""
        from profiler import modules

        return modules.build_block(self).eval()

    def example_input(self, seed: int = 0):
        import torch

        g = torch.Generator().manual_seed(seed)
        return torch.randn(*self.input_shape, generator=g)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _int(s: str, tok: str, key: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise BlockKeyError(f"{tok}:{s} in key {key!r} is not an integer") from None
    if v < 0 or str(v) != s:
        raise BlockKeyError(f"{tok}:{s} in key {key!r} is not a canonical non-negative integer")
    return v


@dataclass(frozen=True)
class ArchSpec:
    """A whole network: an ordered list of blocks, with its input size and class count."""

    blocks: tuple[BlockSpec, ...]
    input_size: int
    num_classes: int
    name: str = ""
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if not self.blocks:
            raise BlockKeyError("an ArchSpec needs at least one block")
        first = self.blocks[0]
        if (first.in_h, first.in_w) != (self.input_size, self.input_size):
            raise BlockKeyError(f"first block {first.key} does not take {self.input_size}x{self.input_size} input")
        for a, b in zip(self.blocks, self.blocks[1:]):
            if (a.out_h, a.out_w, a.out_c) != (b.in_h, b.in_w, b.in_c):
                raise BlockKeyError(f"block {b.key} cannot follow {a.key}: shapes differ")
        last = self.blocks[-1]
        if last.kind == "logits" and last.out_c != self.num_classes:
            raise BlockKeyError(f"last block gives {last.out_c} classes, not {self.num_classes}")

    @property
    def keys(self) -> list[str]:
        return [b.key for b in self.blocks]

    @property
    def key(self) -> str:
        """A stable identifier of the whole network (for the store)."""
        import hashlib

        h = hashlib.sha256("\n".join(self.keys).encode()).hexdigest()[:16]
        return f"Net-{self.name or 'arch'}-input:{self.input_size}-blocks:{len(self.blocks)}-sha:{h}"

    def input_shape(self, channels: int | None = None) -> tuple[int, int, int, int]:
        return (1, channels or self.blocks[0].in_c, self.input_size, self.input_size)

    def build(self):
        import torch.nn as nn

        return nn.Sequential(*[b.build() for b in self.blocks]).eval()

    def example_input(self, seed: int = 0):
        return self.blocks[0].example_input(seed)

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "input_size": self.input_size, "num_classes": self.num_classes,
                           "blocks": self.keys, "meta": self.meta}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "ArchSpec":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise BlockKeyError(f"not an ArchSpec JSON: {e}") from None
        if not isinstance(d, dict) or not isinstance(d.get("blocks"), list):
            raise BlockKeyError("an ArchSpec JSON needs a 'blocks' list of block keys")
        blocks = [BlockSpec.from_key(k) for k in d["blocks"]]
        return cls(blocks, int(d.get("input_size") or blocks[0].in_h),
                   int(d.get("num_classes") or blocks[-1].out_c), d.get("name", ""), d.get("meta") or {})


def unique(blocks: Iterable[BlockSpec]) -> list[BlockSpec]:
    """Distinct blocks in first-seen order."""
    seen: dict[BlockSpec, None] = {}
    for b in blocks:
        seen.setdefault(b, None)
    return list(seen)


def flops(spec: BlockSpec) -> int:
    """Multiply-accumulates x 2 of one forward pass at batch 1 (convs, linear; BN folded)."""
    ho, wo = spec.out_h, spec.out_w
    if spec.kind in ("conv", "final_conv", "pooled_conv"):
        macs = spec.kernel * spec.kernel * spec.in_c * spec.out_c * ho * wo
    elif spec.kind == "mbconv":
        mid, g = spec.mid_c, spec.groups
        macs = 0
        if mid != spec.in_c:  # expand ratio 1 has no expansion conv
            macs += spec.in_h * spec.in_w * spec.in_c * mid // g
        macs += ho * wo * mid * spec.kernel * spec.kernel
        if spec.se:
            red = se_channels(mid)
            macs += 2 * mid * red
        macs += ho * wo * mid * spec.out_c // g
    elif spec.kind == "logits":
        macs = spec.in_c * spec.out_c
    else:
        macs = 0
    return 2 * int(macs)


def se_channels(mid: int) -> int:
    """Squeeze-excite bottleneck channels of a block with ``mid`` middle channels (MobileNetV3 / OFA:
    reduction 4, rounded up to a multiple of 8)."""
    return max(8, int(math.ceil(mid / 4 / 8) * 8))
