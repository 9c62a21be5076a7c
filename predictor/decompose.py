"""Decompose any torch `nn.Module` into the `BlockSpec`s a predictor knows, through its exported graph.

``torch.export.export`` gives an ATen graph whose nodes carry their output shapes. It is walked and
matched against the block kinds of `profiler.blocks` (the modules of `profiler.modules`):

- ``Conv``: a KxK convolution (groups 1, 'same' padding) + BatchNorm + activation (the stem);
- ``expanded_conv``: the inverted residual of MobileNetV2 (Sandler et al. 2018): an optional 1x1
  expansion conv + BN + act (with a channel shuffle when grouped), a KxK depthwise conv + BN + act,
  an optional squeeze-excite (mean -> 1x1 conv -> ReLU -> 1x1 conv -> (hard) sigmoid -> mul), a 1x1
  projection conv + BN without activation, and the identity add when it adds the block's own input;
- ``Conv_1``: a 1x1 stride-1 conv + BN + act on a feature map (the final conv);
- ``AvgPool2D`` + ``Conv_2``: global average pooling that keeps its dims, then a 1x1 conv with bias and
  an activation on the pooled 1x1 map (MobileNetV3 / Once-for-All heads);
- ``Logits``: global average pooling (or an already pooled map) -> flatten / dropout -> linear.

Activations: ReLU6 (``hardtanh(0, 6)``) and ReLU are the default activation of a key (``hs:0``;
Once-for-All's keys write ReLU as hs:0 too), hard-swish is ``hs:1``. Anything else (an LSTM, an
attention layer, a convolution with SiLU, a custom op, a dilated or unpadded convolution, an add that
is not a block's own skip) matches no block kind: it is returned in `Decomposition.unmatched`, one
entry per graph node, never dropped silently. Layout-only nodes (view, reshape, flatten, dropout in
eval mode, getitem, clone) cost nothing to match and are not listed; a transpose or permute is listed
unless it is part of a matched pattern (a channel shuffle, a flatten before the classifier).

Skipped layers (the zero op, an ``nn.Identity``) leave no node in the graph and cost 0 ms, so they do
not appear among the blocks either.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from predictor._base import PredictorError
from profiler.blocks import BlockKeyError, BlockSpec

__all__ = ["Decomposition", "Unmatched", "decompose", "decompose_factory", "load_factory"]


@dataclass(frozen=True)
class Unmatched:
    """One graph node that no block kind covers: its ATen op, node name, output shape and why."""

    op: str
    node: str
    output_shape: tuple[int, ...] | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "node": self.node,
                "output_shape": list(self.output_shape) if self.output_shape is not None else None,
                "reason": self.reason}


@dataclass
class Decomposition:
    """Blocks in network order and the nodes that matched none (see the module docstring)."""

    blocks: list[BlockSpec]
    unmatched: list[Unmatched] = field(default_factory=list)
    input_shape: tuple[int, ...] = ()
    source: str = ""

    @property
    def complete(self) -> bool:
        """True when every computing node of the graph belongs to a block."""
        return not self.unmatched

    @property
    def keys(self) -> list[str]:
        return [b.key for b in self.blocks]

    def unmatched_summary(self) -> str:
        """'aten.lstm.input x1, aten.zeros.default x2' (op counts, in graph order)."""
        counts: dict[str, int] = {}
        for u in self.unmatched:
            counts[u.op] = counts.get(u.op, 0) + 1
        return ", ".join(f"{op} x{n}" for op, n in counts.items())

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "input_shape": list(self.input_shape), "blocks": self.keys,
                "complete": self.complete, "unmatched": [u.to_dict() for u in self.unmatched]}


# ---- loading a user's model ------------------------------------------------------------------------

def load_factory(spec: str) -> Callable[[], Any]:
    """The callable named by ``package.module:factory`` (``factory`` may be dotted: ``mod:Class.make``).

    The current directory is searched too (as ``python -m`` would), so a user's own module is found.

    Raises:
        PredictorError: a malformed spec, a module that does not import, a missing or non-callable name.
    """
    mod_name, sep, attr = (spec or "").partition(":")
    if not sep or not mod_name or not attr or any(not p.isidentifier() for p in mod_name.split(".") + attr.split(".")):
        raise PredictorError(f"--model {spec!r}: give package.module:factory (a callable returning a torch nn.Module)")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as e:
        raise PredictorError(f"--model {spec}: cannot import {mod_name} ({e}); is it on PYTHONPATH?") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PredictorError(f"--model {spec}: {mod_name} has no attribute {attr}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise PredictorError(f"--model {spec}: {attr} is not callable; name a function or class returning an nn.Module")
    return obj


def _first_conv_channels(module) -> int:
    import torch.nn as nn

    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return 3


def decompose_factory(spec: str, image_size: int = 224, channels: int | None = None) -> Decomposition:
    """Build the model of ``package.module:factory`` and decompose it at a 1 x C x S x S input
    (C: ``channels``, else the first Conv2d's input channels, else 3).

    Raises:
        PredictorError: see `load_factory`; a factory that fails or returns no nn.Module; an export failure.
    """
    import torch.nn as nn

    if image_size < 1:
        raise PredictorError(f"--image-size {image_size}: give a positive number of pixels")
    factory = load_factory(spec)
    try:
        module = factory()
    except Exception as e:  # the user's code: any error, one line
        raise PredictorError(f"--model {spec}: the factory raised {type(e).__name__}: {_line(e)}") from None
    if not isinstance(module, nn.Module):
        raise PredictorError(f"--model {spec}: the factory returned a {type(module).__name__}, not a torch nn.Module")
    c = channels or _first_conv_channels(module)
    return decompose(module, (1, c, image_size, image_size), source=spec)


def _line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else ""


# ---- the graph walk ----------------------------------------------------------------------------------

def decompose(module, input_shape: Sequence[int], source: str = "") -> Decomposition:
    """Export ``module`` (eval mode, no grad) at ``input_shape`` (NCHW, batch 1) and match its graph.

    Raises:
        PredictorError: a batch other than 1, or ``torch.export`` cannot trace the module.
    """
    import torch

    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 4 or shape[0] != 1 or min(shape) < 1:
        raise PredictorError(f"input shape {shape}: give 1 x C x H x W (batch 1)")
    module = module.eval()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            ep = torch.export.export(module, (x,))
    except Exception as e:  # the exporter raises many types; keep the reason
        raise PredictorError(f"{source or type(module).__name__}: torch.export could not trace the module at input "
                             f"{'x'.join(map(str, shape))} ({type(e).__name__}: {_line(e)})") from None
    return _Matcher(ep.graph).run(shape, source or type(module).__name__)


def _aten(name: str):
    import torch

    ns, _, rest = name.partition(".")
    op, _, overload = rest.partition(".")
    return getattr(getattr(getattr(torch.ops, ns), op, None), overload, None)


def _ops(*names: str) -> set:
    return {o for o in (_aten(n) for n in names) if o is not None}


class _Matcher:
    def __init__(self, graph) -> None:
        import operator

        self.graph = graph
        self.nodes = [n for n in graph.nodes if n.op == "call_function"]
        self.order = {n: i for i, n in enumerate(graph.nodes)}
        self.conv_ops = _ops("aten.conv2d.default", "aten.conv2d.padding", "aten.convolution.default")
        self.bn_ops = _ops("aten.batch_norm.default", "aten._native_batch_norm_legit_no_training.default")
        self.relu_ops = _ops("aten.relu.default", "aten.relu_.default")
        self.hardtanh_ops = _ops("aten.hardtanh.default", "aten.hardtanh_.default")
        self.hs_ops = _ops("aten.hardswish.default", "aten.hardswish_.default")
        self.gate_ops = _ops("aten.hardsigmoid.default", "aten.hardsigmoid_.default", "aten.sigmoid.default")
        self.mean_ops = _ops("aten.mean.dim")
        self.adaptive_ops = _ops("aten.adaptive_avg_pool2d.default")
        self.linear_ops = _ops("aten.linear.default")
        self.add_ops = _ops("aten.add.Tensor", "aten.add_.Tensor")
        self.mul_ops = _ops("aten.mul.Tensor")
        self.other_acts = _ops("aten.silu.default", "aten.silu_.default", "aten.gelu.default", "aten.sigmoid.default",
                               "aten.tanh.default", "aten.leaky_relu.default", "aten.elu.default",
                               "aten.prelu.default", "aten.mish.default")
        # no computation worth a block: never reported
        self.layout_ops = _ops("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default",
                               "aten.flatten.using_ints", "aten.dropout.default", "aten.dropout_.default",
                               "aten.feature_dropout.default", "aten.clone.default", "aten.contiguous.default",
                               "aten.alias.default", "aten.detach.default", "aten.squeeze.dim", "aten.squeeze.dims",
                               "aten.unsqueeze.default") | {operator.getitem}
        # data movement that is matched only inside a pattern (channel shuffle)
        self.move_ops = _ops("aten.transpose.int", "aten.permute.default")
        self.used: set = set()
        self.blocks: list[tuple[int, BlockSpec]] = []
        self.reasons: dict[Any, str] = {}

    # -- helpers -----------------------------------------------------------------------------------------
    @staticmethod
    def shape(n) -> tuple[int, ...] | None:
        v = n.meta.get("val") if hasattr(n, "meta") else None
        return tuple(int(s) for s in v.shape) if hasattr(v, "shape") else None

    @staticmethod
    def users(n) -> list:
        return list(n.users)

    def single_user(self, n):
        u = self.users(n)
        return u[0] if len(u) == 1 else None

    def forward(self, n, moves: bool = False) -> tuple[Any, list]:
        """Follow single-user layout nodes (and transposes/permutes when ``moves``) from ``n``'s output:
        (the first other consumer or None, the layout nodes passed)."""
        passed = []
        while True:
            u = self.single_user(n)
            if u is None or u.op != "call_function":
                return None, passed
            if u.target in self.layout_ops or (moves and u.target in self.move_ops):
                passed.append(u)
                n = u
                continue
            return u, passed

    def back(self, n) -> tuple[Any, list]:
        """Walk back through layout nodes from input ``n``: (the producer, the layout nodes passed)."""
        passed = []
        while getattr(n, "op", None) == "call_function" and n.target in self.layout_ops and n.args:
            passed.append(n)
            n = n.args[0]
        return n, passed

    def act_kind(self, n) -> str | None:
        if n.target in self.relu_ops:
            return "relu"
        if n.target in self.hardtanh_ops:
            lo = n.args[1] if len(n.args) > 1 else n.kwargs.get("min_val", -1.0)
            hi = n.args[2] if len(n.args) > 2 else n.kwargs.get("max_val", 1.0)
            return "relu6" if (float(lo), float(hi)) == (0.0, 6.0) else None
        if n.target in self.hs_ops:
            return "hs"
        return None

    # -- conv units: conv (+ BN) (+ act) ---------------------------------------------------------------------
    def conv_unit(self, c) -> dict[str, Any] | None:
        a = list(c.args)
        kw = c.kwargs
        if c.target == _aten("aten.convolution.default"):
            # input, weight, bias, stride, padding, dilation, transposed, output_padding, groups
            if a[6]:
                self.reasons[c] = "a transposed convolution"
                return None
            bias, stride, pad, dil, groups = a[2], a[3], a[4], a[5], a[8]
        else:
            def arg(i, name, default):
                return a[i] if len(a) > i else kw.get(name, default)

            bias, stride = arg(2, "bias", None), arg(3, "stride", [1, 1])
            pad, dil, groups = arg(4, "padding", [0, 0]), arg(5, "dilation", [1, 1]), arg(6, "groups", 1)
        w = self.shape(a[1])
        xin, out = self.shape(a[0]), self.shape(c)
        if w is None or xin is None or out is None or len(w) != 4 or len(xin) != 4:
            self.reasons[c] = "a convolution of unknown shape"
            return None
        stride = [stride] * 2 if isinstance(stride, int) else list(stride)
        dil = [dil] * 2 if isinstance(dil, int) else list(dil)
        k = w[2]
        if w[2] != w[3] or len(set(stride)) != 1 or dil != [1, 1] or xin[2] != xin[3]:
            self.reasons[c] = "a non-square, dilated or anisotropic convolution"
            return None
        if isinstance(pad, str):
            same = pad == "same" or (pad == "valid" and k == 1)
        else:
            pad = [pad] * 2 if isinstance(pad, int) else list(pad)
            same = pad == [k // 2, k // 2]
        if not same or k % 2 == 0:
            self.reasons[c] = f"a {k}x{k} convolution without 'same' padding"
            return None
        nodes = [c]
        last = c
        bn = self.single_user(c)
        has_bn = bn is not None and bn.target in self.bn_ops
        if has_bn:
            nodes.append(bn)
            last = bn
            if isinstance(bn.meta.get("val"), (tuple, list)):  # the tuple-returning form: take item 0
                g = self.single_user(bn)
                if g is None:
                    return None
                nodes.append(g)
                last = g
        act = None
        u = self.single_user(last)
        if u is not None and u.op == "call_function":
            act = self.act_kind(u)
            if act is not None:
                nodes.append(u)
                last = u
            elif u.target in self.other_acts:
                self.reasons[c] = f"a convolution followed by {u.target}, an activation no block kind has"
        return {"conv": c, "input": a[0], "output": last, "nodes": nodes, "act": act, "bn": has_bn,
                "bias": bias is not None, "k": k, "stride": stride[0], "groups": int(groups),
                "cin": xin[1], "cout": out[1], "in_hw": xin[2], "out_hw": out[2],
                "depthwise": int(groups) == xin[1] == out[1] and int(groups) > 1}

    # -- matching ------------------------------------------------------------------------------------------
    def take(self, nodes: list, spec: BlockSpec) -> None:
        self.used.update(nodes)
        self.blocks.append((min(self.order[n] for n in nodes), spec))

    def block(self, nodes: list, make: Callable[[], BlockSpec]) -> bool:
        try:
            spec = make()
        except BlockKeyError as e:
            for n in nodes:
                self.reasons.setdefault(n, f"shapes fit no block ({e})")
            return False
        self.take(nodes, spec)
        return True

    def run(self, input_shape: tuple[int, ...], source: str) -> Decomposition:
        units = {}
        for n in self.nodes:
            if n.target in self.conv_ops:
                u = self.conv_unit(n)
                if u is not None:
                    units[n] = u
        for n in self.nodes:
            if n in units and n not in self.used:
                self.match_mbconv(units[n], units) or self.match_conv(units[n])
        for n in self.nodes:
            if n not in self.used and (n.target in self.mean_ops or n.target in self.adaptive_ops):
                self.match_head(n, units)
        for n in self.nodes:  # a classifier on an already pooled map (after Conv_2, or 1x1 features)
            if n not in self.used and n.target in self.linear_ops:
                self.match_linear(n, None, [])
        unmatched = []
        for n in self.nodes:
            if n in self.used or n.target in self.layout_ops:
                continue
            op = getattr(n.target, "__name__", str(n.target))
            name = str(n.target) if hasattr(n.target, "_schema") else op
            unmatched.append(Unmatched(name, n.name, self.shape(n),
                                       self.reasons.get(n, "no block kind has this operation here")))
        blocks = [b for _, b in sorted(self.blocks, key=lambda t: t[0])]
        return Decomposition(blocks, unmatched, input_shape, source)

    def match_mbconv(self, u: dict, units: dict) -> bool:
        expand, dw, shuffle = None, None, []
        if u["depthwise"]:
            dw = u
        elif u["k"] == 1 and u["stride"] == 1 and u["act"] is not None:
            nxt, passed = self.forward(u["output"], moves=u["groups"] > 1)
            if nxt is None or nxt not in units or not units[nxt]["depthwise"] or units[nxt]["input"] is not (
                    passed[-1] if passed else u["output"]):
                return False
            expand, dw, shuffle = u, units[nxt], passed
        else:
            return False
        if dw["act"] is None or dw["conv"] in self.used:
            return False
        if expand is not None and expand["act"] != dw["act"] and "hs" in (expand["act"], dw["act"]):
            return False
        x = expand["input"] if expand else dw["input"]
        nodes = (expand["nodes"] if expand else []) + shuffle + dw["nodes"]
        se = False
        users = self.users(dw["output"])
        proj_in = dw["output"]
        if len(users) == 2:  # squeeze-excite: mean(D) -> conv -> relu -> conv -> gate; mul(D, gate)
            se_nodes = self.match_se(dw["output"], users)
            if se_nodes is None:
                return False
            se, proj_in = True, se_nodes[-1]
            nodes += se_nodes
        elif len(users) != 1:
            return False
        proj = [p for p in units.values() if p["input"] is proj_in]
        if len(proj) != 1:
            return False
        p = proj[0]
        if p["k"] != 1 or p["stride"] != 1 or p["act"] is not None or p["conv"] in self.used:
            return False
        nodes += p["nodes"]
        out = p["output"]
        residual = False
        add = self.single_user(out)
        if add is not None and add.target in self.add_ops and len(add.args) == 2 and x in add.args \
                and out in add.args and add.kwargs.get("alpha", 1) == 1:
            residual = True
            nodes.append(add)
        xs, ys = self.shape(x), self.shape(out)
        groups = expand["groups"] if expand else 1
        if expand is not None and p["groups"] != groups:
            return False
        mid = dw["cout"]
        hs = dw["act"] == "hs"
        ofa = se or hs or mid % xs[1] != 0
        return self.block(nodes, lambda: BlockSpec(
            "mbconv", xs[2], xs[3], xs[1], ys[2], ys[3], ys[1], kernel=dw["k"], stride=dw["stride"], mid_c=mid,
            residual=residual, se=se, hs=hs, groups=groups, ofa=ofa))

    def match_se(self, d, users) -> list | None:
        mean = next((n for n in users if n.target in self.mean_ops | self.adaptive_ops), None)
        mul = next((n for n in users if n.target in self.mul_ops), None)
        if mean is None or mul is None:
            return None
        chain = [mean]
        n = mean
        for want in ("conv", "act", "conv", "gate"):
            n = self.single_user(n)
            if n is None:
                return None
            ok = (n.target in self.conv_ops if want == "conv" else
                  n.target in self.relu_ops | self.hardtanh_ops if want == "act" else n.target in self.gate_ops)
            if not ok:
                return None
            chain.append(n)
        if self.single_user(n) is not mul or set(mul.args) != {d, n}:
            return None
        return chain + [mul]

    def match_conv(self, u: dict) -> bool:
        if u["act"] is None:
            self.reasons.setdefault(u["conv"], "a convolution without activation that is not the projection "
                                               "of an inverted residual")
            for n in u["nodes"][1:]:
                self.reasons.setdefault(n, "part of an unmatched convolution")
            return False
        if u["groups"] != 1:
            self.reasons.setdefault(u["conv"], "a grouped or depthwise convolution outside an inverted residual")
            return False
        hs = u["act"] == "hs"
        hw, cin, cout = u["in_hw"], u["cin"], u["cout"]
        if u["k"] == 1 and u["stride"] == 1 and hw == 1 and not u["bn"]:
            return self.block(u["nodes"], lambda: BlockSpec("pooled_conv", 1, 1, cin, 1, 1, cout, hs=hs))
        if u["k"] == 1 and u["stride"] == 1:
            return self.block(u["nodes"], lambda: BlockSpec.final_conv(hw, cin, cout, hs=hs))
        return self.block(u["nodes"], lambda: BlockSpec.conv(hw, cin, cout, u["k"], u["stride"], hs=hs))

    def match_head(self, m, units: dict) -> bool:
        xs = self.shape(m.args[0])
        if xs is None or len(xs) != 4:
            return False
        if m.target in self.mean_ops:
            dims = {d % 4 for d in m.args[1]} if len(m.args) > 1 and m.args[1] is not None else set()
            if dims != {2, 3}:
                return False
            keep = bool(m.args[2]) if len(m.args) > 2 else bool(m.kwargs.get("keepdim", False))
        else:
            size = m.args[1]
            if list(size) != [1, 1]:
                return False
            keep = True
        nxt, passed = self.forward(m, moves=False)
        if keep and nxt is not None and nxt in units and units[nxt]["input"] is (passed[-1] if passed else m):
            u = units[nxt]
            if u["k"] == 1 and not u["bn"] and u["act"] is not None and u["groups"] == 1:
                ok = self.block([m] + passed, lambda: BlockSpec("pool", xs[2], xs[3], xs[1], 1, 1, xs[1]))
                # the conv on the pooled map was matched already (as Conv_2) when convs were walked
                return ok and (u["conv"] in self.used or self.match_conv(u))
        if nxt is not None and nxt.target in self.linear_ops:
            return self.match_linear(nxt, m, passed)
        return False

    def match_linear(self, lin, pool, passed: list) -> bool:
        w = self.shape(lin.args[1])
        out = self.shape(lin)
        if w is None or out is None or len(out) != 2:
            return False
        if pool is not None:
            xs = self.shape(pool.args[0])
            nodes = [pool] + passed + [lin]
        else:
            src, back = self.back(lin.args[0])
            xs = self.shape(src)
            if xs is None or (len(xs) == 4 and xs[2:] != (1, 1)) or len(xs) not in (2, 4):
                self.reasons.setdefault(lin, "a linear layer on an unpooled tensor")
                return False
            xs = xs if len(xs) == 4 else (xs[0], xs[1], 1, 1)
            nodes = back + [lin]
        return self.block(nodes, lambda: BlockSpec("logits", xs[2], xs[3], xs[1], 1, 1, out[1]))
