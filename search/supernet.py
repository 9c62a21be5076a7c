"""The over-parameterised network of a search space, with binarised paths.

Implements the supernet of ProxylessNAS (Cai, Zhu, Han, ICLR 2019, arXiv 1812.00332, section 3):
each searchable layer is a mixed op over its candidate blocks with architecture parameters
``alpha`` (one logit per candidate, probabilities ``p = softmax(alpha)``).

Modes (passed to the constructor; nothing is switched on the class):

- ``"binary"`` (ProxylessNAS, section 3.2): the weight step runs one sampled path per layer; the
  architecture step samples two paths per layer, runs only the chosen one in the forward pass and
  computes the binary-gate gradient ``dL/dalpha_i = sum_j dL/dg_j p_j (delta_ij - p_i)`` over the
  two, where ``dL/dg_j = <dL/dy, o_j(x)>``; `Supernet.rescale_pairs` then offsets the two logits so
  that the paths not sampled keep their probabilities.
- ``"reinforce"`` (section 3.2.1): one sampled path per layer in both steps; the architecture
  gradient comes from the score function (see `search.train`).
- ``"all"`` (DARTS, Liu et al., ICLR 2019): every candidate runs and the layer output is the
  ``p``-weighted sum: the memory baseline.

Weights (also passed to the constructor, with any mode):

- ``"separate"`` (ProxylessNAS): every candidate block owns its weights, so a candidate is trained
  only in the steps that sample it (about 1/n of them for n candidates).
- ``"shared"``: the MBConv candidates of a layer are views of one `SharedMBConv`: the kxk depthwise
  kernels are the centres of one kmax x kmax kernel (the superkernel of Single-Path NAS, Stamoulis
  et al., 2019; the elastic kernel of Once-for-All, Cai et al., ICLR 2020, without its kernel
  transformation matrices) and a smaller expansion uses the first channels of the largest (OFA's
  elastic expand), so every weight step trains (part of) every candidate. A training device only:
  latency still comes from each candidate's own block, and the derived network is a plain
  `ArchSpec` whose weights are copies of its slices (`Supernet.derived_state_dict`).

Depth (also passed to the constructor, any mode but ``"all"``): ``"any"`` runs each layer on its own
weights, wherever the network skips. ``"tail"`` is Once-for-All's elastic depth (Cai et al., ICLR 2020,
section 3.2: a stage runs its first D layers): in a run of consecutive skippable layers with the same
candidates (inside a stage), the k-th layer that runs uses the k-th layer's weights. A network that
skips a layer of a stage is the same network (same blocks, same latency) as the one that skips the
stage's last layer instead, so ``"tail"`` runs it as that one: a layer's weights always receive the
output of the weights before them, never of the layer before that, and a sub-network that skips
inherits weights trained in exactly its configuration. The choices and the derived network keep the
skips where the search put them; `Supernet.derived_state_dict` copies each block the weights it ran on.

Width (a space with ``widths``, `profiler.spaces`): each stage's channel count is a choice with
logits of its own (`Supernet.width_choices`, one row of ``len(space.widths)`` per stage). Every
MBConv candidate and the final conv are built at the widest width and run at a narrower one on
their first channels (OFA's elastic width): with shared weights the layer's `SharedMBConv`, with
separate weights one `SharedMBConv` per candidate (a plain MBConv whose weights can be sliced).
BatchNorm is sliced too, as OFA does; the search re-estimates statistics per sub-network before it
evaluates one. The width logits' gradient is the exact one of the expected latency (`LatencyTable.
expected_ms` is bilinear in the width probabilities) plus a score-function (REINFORCE) estimate of
the cross-entropy's, with the stage widths sampled from ``softmax(alpha)``. Why sampled rather than
FBNetV2's Gumbel-softmax channel masks: a mask sum over widths equals the narrower network only if
the middle channels (input channels x expand) are masked per input width and op too, which does
not compose with the binarised op gates; sampling runs exactly one narrow network (the memory and
compute of one path, as path binarisation intends), works the same in every mode and with both
weight kinds, and three widths per stage leave the estimator's variance small next to a moving
baseline.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from profiler.blocks import ArchSpec, BlockSpec, se_channels
from profiler.spaces import SearchSpace
from search.latency import SearchError

__all__ = ["MixedOp", "Supernet", "SharedMBConv", "SlicedConv", "MODES", "WEIGHTS", "WEIGHT_PATHS", "DEPTHS"]

MODES = ("binary", "reinforce", "all")
WEIGHTS = ("separate", "shared")
#: what a weight step trains: ``one`` path sampled from p (ProxylessNAS); ``sandwich`` also the largest and
#: the smallest network of the space, their gradients summed (BigNAS's sandwich rule, as in Once-for-All);
#: ``distill`` the same three, the largest on the labels and the other two on the largest's predictions
#: (in-place distillation: Yu and Huang's slimmable networks, 2019; BigNAS, Yu et al. 2020)
WEIGHT_PATHS = ("one", "sandwich", "distill")
#: which weights a layer runs on where the network skips: ``any`` its own; ``tail`` the k-th running layer of a
#: stage the k-th layer's (Once-for-All's elastic depth; see the module docstring)
DEPTHS = ("any", "tail")


class _BinaryGateFn(torch.autograd.Function):
    """y = o_active(x) in the forward pass; the backward pass gives dL/dx through the active path
    and dL/dalpha through the binary gates of the two sampled paths (ProxylessNAS eq. 4).

    Only the active path's activations are kept for the backward pass; the other sampled path is
    run once more in the backward pass without a graph, to get its gate gradient ``<dL/dy, o_j(x)>``.
    """

    @staticmethod
    def forward(ctx, x, alpha, op: "MixedOp"):
        pair = op._pair
        assert pair is not None
        x_leaf = x.detach().requires_grad_(x.requires_grad)
        with torch.enable_grad():
            y = op.run(op._active, x_leaf)
        ctx.op, ctx.pair, ctx.active, ctx.route = op, pair, op._active, op._route
        ctx.save_for_backward(x_leaf, y, alpha)
        return y.detach()

    @staticmethod
    def backward(ctx, grad_y):
        x_leaf, y, alpha = ctx.saved_tensors
        op, pair, active = ctx.op, ctx.pair, ctx.active
        grad_x = None
        if x_leaf.requires_grad:  # the weights' gradients are not needed in an architecture step
            (grad_x,) = torch.autograd.grad(y, x_leaf, grad_y)
        gate_grad = torch.zeros(2, dtype=grad_y.dtype)
        with torch.no_grad():
            for k, j in enumerate(pair):
                out = y.detach() if j == active else (ctx.route or op).candidates[j](x_leaf.detach())
                gate_grad[k] = (grad_y * out).sum()
            p = torch.softmax(alpha.detach()[list(pair)], 0)
            # dL/dalpha_i = sum_j dL/dg_j * p_j * (delta_ij - p_i), over the two sampled paths
            a_grad = torch.zeros_like(alpha)
            for a, i in enumerate(pair):
                a_grad[i] = sum(gate_grad[b] * p[b] * ((1.0 if a == b else 0.0) - p[a]) for b in range(2))
        op.last_gate_grad = gate_grad
        return grad_x, a_grad, None


class MixedOp(nn.Module):
    """A searchable layer: its candidate modules and their architecture logits ``alpha`` (shape (n,)).

    Which path(s) run is set explicitly before each forward pass with `set_path` (one path) or
    `set_pair` (binarised architecture step); ``mode="all"`` runs every path, weighted by ``p``.
    Input and output are NCHW tensors of the layer's shapes.
    """

    def __init__(self, candidates: Sequence[nn.Module], mode: str = "binary", shared: nn.Module | None = None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
        self.candidates = nn.ModuleList(candidates)
        # the weights the candidates are views of (weights="shared"); registered here, once
        self.shared = shared
        self.alpha = nn.Parameter(torch.zeros(len(candidates)))
        self.mode = mode
        self._active: int = 0
        self._pair: tuple[int, int] | None = None
        self._fixed: int | None = None  # set by Supernet.fixed_paths: overrides the mode
        self.last_gate_grad: torch.Tensor | None = None  # dL/dg of the last binarised backward (shape (2,))
        # depth="tail": the layer whose candidates run in this one's place (set by Supernet.forward); (None,): its own.
        # A tuple, so nn.Module does not register that layer a second time (in the state dict too)
        self._routed: tuple[MixedOp | None] = (None,)

    @property
    def _route(self) -> "MixedOp | None":
        return self._routed[0]

    @property
    def chosen(self) -> int:
        """The path that runs in the forward pass now (the fixed one, else the active one)."""
        return self._active if self._fixed is None else self._fixed

    def run(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Candidate ``index`` on ``x``, on the weights of the layer it is routed to (its own by default)."""
        return (self._route or self).candidates[index](x)

    @property
    def probs(self) -> torch.Tensor:
        return torch.softmax(self.alpha, 0)

    def set_path(self, index: int) -> None:
        self._active, self._pair = int(index), None

    def set_pair(self, pair: tuple[int, int], active: int) -> None:
        if active not in pair or pair[0] == pair[1]:
            raise ValueError(f"active path {active} must be one of two distinct sampled paths {pair}")
        self._pair, self._active = (int(pair[0]), int(pair[1])), int(active)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fixed is not None:
            return self.run(self._fixed, x)
        if self.mode == "all":
            p = self.probs
            return sum(p[j] * op(x) for j, op in enumerate(self.candidates))
        if self._pair is not None and self.alpha.requires_grad and torch.is_grad_enabled():
            return _BinaryGateFn.apply(x, self.alpha, self)
        return self.run(self._active, x)

    def candidate_state_dict(self, index: int) -> dict[str, torch.Tensor]:
        """Candidate ``index``'s weights keyed as its block's own module (``BlockSpec.build()``), from the
        layer it runs on now (its route); the tensors may be the candidate's own (separate weights):
        clone before changing them."""
        c = (self._route or self).candidates[index]
        if isinstance(c, _SharedView):
            return c.owner.candidate_module(c.index).state_dict()
        return c.state_dict()


# ---- weight sharing (Single-Path NAS superkernel, Once-for-All elastic kernel and expand) ----------

def _act(hs: bool, x: torch.Tensor) -> torch.Tensor:
    return F.hardswish(x) if hs else F.relu6(x)


def _bn(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``bn`` applied with its first ``x.shape[1]`` channels (statistics and affine parameters), as
    ``nn.BatchNorm2d.forward`` does for all of them; the running statistics of those channels are
    updated in place in training mode (``momentum=None``: a cumulative average, as in calibration)."""
    c = x.shape[1]
    factor = 0.0
    if bn.training:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    return F.batch_norm(x, bn.running_mean[:c], bn.running_var[:c], bn.weight[:c], bn.bias[:c],
                        bn.training, factor, bn.eps)


class _SharedView(nn.Module):
    """Candidate ``index`` of a `SharedMBConv`: what `MixedOp` runs as that candidate. It holds no
    weights; the owner is kept out of the module tree (the `MixedOp` registers it once)."""

    def __init__(self, owner: "SharedMBConv", index: int):
        super().__init__()
        self._owner = (owner,)  # a tuple, so nn.Module does not register it as a child
        self.index = index

    @property
    def owner(self) -> "SharedMBConv":
        return self._owner[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.owner.run(self.index, x)

    def extra_repr(self) -> str:
        return self.owner.specs[self.index].key


class SharedMBConv(nn.Module):
    """The MBConv candidates of one searchable layer (``specs``: same input, output, stride, skip,
    SE and activation; any kernels and expansions; groups 1) on one set of weights.

    - expansion 1x1 conv: (mid_max, in_c); a candidate with ``mid_c`` middle channels uses its
      first ``mid_c`` rows (a candidate with ``mid_c == in_c`` has no expansion, as in its block);
    - depthwise conv: (mid_max, 1, k_max, k_max); a k x k candidate uses the centre k x k of its
      first ``mid_c`` channels;
    - SE convs: the first ``mid_c`` channels and the first ``se_channels(mid_c)`` reduced ones;
    - projection 1x1 conv: (out_c, mid_max); a candidate uses its first ``mid_c`` columns.

    BatchNorm (why this split): a BN layer's statistics and scale belong to the distribution of
    its input channel, so a BN is shared exactly where that channel is the same function of the
    layer input for every candidate using it, and private where it is not. Channel i of the
    expansion is the same for every expansion (the same row of the shared conv): one expansion
    BN, sliced. Depthwise channel i depends on its kernel's size (and on whether there is an
    expansion before it), not on how many other channels there are: one depthwise BN per kernel
    size (and expansion or none), sliced. The projection sums over ``mid_c`` channels with one
    kernel, so each output channel differs per candidate: one projection BN per candidate (out_c
    channels each: small). OFA instead slices one BN everywhere and re-estimates statistics per
    sub-network afterwards; here the sub-network's statistics are honest while training too, and
    the search still re-estimates them before it evaluates a network (`search.train`).

    Input and output: NCHW tensors of the layer's shapes; `run` (candidate index, x).
    """

    def __init__(self, specs: Sequence[BlockSpec]):
        super().__init__()
        if not specs or any(s.kind != "mbconv" for s in specs):
            raise SearchError("weights='shared' shares MBConv candidates only")
        first = specs[0]
        same = ("in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "stride", "residual", "se", "hs")
        for s in specs:
            diff = [a for a in same if getattr(s, a) != getattr(first, a)]
            if diff:
                raise SearchError(f"weights='shared': candidates {first.key} and {s.key} differ in "
                                  f"{', '.join(diff)}; only kernel and expansion may differ within a layer")
            if s.groups != 1:
                raise SearchError(f"weights='shared': {s.key} has grouped 1x1 convolutions (channel shuffle); "
                                  "their first channels are not a smaller block of the same kind: use weights='separate'")
        self.specs = tuple(specs)
        # what each candidate runs as now: its spec at the current widths (`set_active`); the
        # weights are sized for ``specs`` (the widest), a narrower spec uses their first channels
        self.active: list[BlockSpec] = list(self.specs)
        self.in_c, self.out_c, self.stride = first.in_c, first.out_c, first.stride
        self.residual, self.se, self.hs = first.residual, first.se, first.hs
        self.k_max = max(s.kernel for s in specs)
        self.mid_max = max(s.mid_c for s in specs)
        expanded = any(s.mid_c != s.in_c for s in specs)
        self.expand = nn.Conv2d(self.in_c, self.mid_max, 1, bias=False) if expanded else None
        self.expand_bn = nn.BatchNorm2d(self.mid_max) if expanded else None
        self.depthwise = nn.Conv2d(self.mid_max, self.mid_max, self.k_max, self.stride, self.k_max // 2,
                                   groups=self.mid_max, bias=False)
        self.depthwise_bn = nn.ModuleDict({self._dw_key(s): nn.BatchNorm2d(self.mid_max) for s in specs})
        if self.se:
            red = se_channels(self.mid_max)
            self.se_reduce = nn.Conv2d(self.mid_max, red, 1)
            self.se_expand = nn.Conv2d(red, self.mid_max, 1)
        self.project = nn.Conv2d(self.mid_max, self.out_c, 1, bias=False)
        self.project_bn = nn.ModuleList(nn.BatchNorm2d(self.out_c) for _ in specs)
        self._start_as_smallest()

    @torch.no_grad()
    def _start_as_smallest(self) -> None:
        """Start every candidate as the same function, the smallest one's: the depthwise kernel is
        drawn as ``nn.Conv2d`` draws a k_min x k_min one, with zeros around it, and the projection's
        columns past the smallest expansion are zero. The zeros get gradients from the first step
        on (the ring from the larger kernels' outputs, the columns from the wider expansions'), so
        the larger candidates grow out of the smallest instead of starting as unrelated random
        functions that the layers after them must serve at once. Measured (benchmarks/
        supernet_quality.py, tiny-mnist, 2 epochs of weight steps, seeds 0 and 1): train accuracy
        with uniformly sampled paths on mnist5k 0.71-0.77 with nn's own initialisation, 0.885-0.889
        with this one, 0.92 for one fixed k3e3 network; on Fashion-MNIST 0.72-0.73, 0.75, 0.77-0.79."""
        k_min = min(s.kernel for s in self.specs)
        lo = (self.k_max - k_min) // 2
        centre = torch.empty(self.mid_max, 1, k_min, k_min)
        nn.init.kaiming_uniform_(centre, a=math.sqrt(5))  # nn.Conv2d.reset_parameters' draw
        self.depthwise.weight.zero_()
        self.depthwise.weight[:, :, lo:lo + k_min, lo:lo + k_min] = centre
        self.project.weight[:, min(s.mid_c for s in self.specs):] = 0.0

    @staticmethod
    def _dw_key(s: BlockSpec) -> str:
        return f"k{s.kernel}" + ("" if s.mid_c != s.in_c else "_noexpand")

    def set_active(self, index: int, spec: BlockSpec) -> None:
        """Run candidate ``index`` as ``spec``: the same op at other (no wider) widths.

        Raises `SearchError` where ``spec`` is not a narrowing of the candidate."""
        w = self.specs[index]
        if (spec.kind, spec.kernel, spec.stride, spec.se, spec.hs) != (w.kind, w.kernel, w.stride, w.se, w.hs) or \
                spec.in_c > w.in_c or spec.out_c > w.out_c or spec.mid_c > w.mid_c:
            raise SearchError(f"{spec.key} is not a narrower {w.key}")
        self.active[index] = spec

    def views(self) -> list[nn.Module]:
        """One module per spec, for `MixedOp`'s candidate list."""
        return [_SharedView(self, i) for i in range(len(self.specs))]

    def _dw_weight(self, s: BlockSpec) -> torch.Tensor:
        lo = (self.k_max - s.kernel) // 2  # the centre k x k of the k_max x k_max kernel
        return self.depthwise.weight[:s.mid_c, :, lo:lo + s.kernel, lo:lo + s.kernel]

    def run(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Candidate ``index`` (at its active widths) on ``x`` (N, in_c, H, W) -> (N, out_c, H', W')."""
        s = self.active[index]
        h = x
        if s.mid_c != s.in_c:
            h = _act(self.hs, _bn(self.expand_bn, F.conv2d(x, self.expand.weight[:s.mid_c, :s.in_c])))
        h = F.conv2d(h, self._dw_weight(s), None, self.stride, s.kernel // 2, 1, s.mid_c)
        h = _act(self.hs, _bn(self.depthwise_bn[self._dw_key(s)], h))
        if self.se:
            red = se_channels(s.mid_c)
            g = h.mean((2, 3), keepdim=True)
            g = F.relu(F.conv2d(g, self.se_reduce.weight[:red, :s.mid_c], self.se_reduce.bias[:red]))
            g = F.hardsigmoid(F.conv2d(g, self.se_expand.weight[:s.mid_c, :red], self.se_expand.bias[:s.mid_c]))
            h = h * g
        h = _bn(self.project_bn[index], F.conv2d(h, self.project.weight[:s.out_c, :s.mid_c]))
        return x + h if s.residual else h

    @torch.no_grad()
    def candidate_module(self, index: int) -> nn.Module:
        """Candidate ``index`` as its block's own module (``BlockSpec.build()``, eval mode), holding
        copies of its slices of the shared weights and statistics: the same function as `run`
        (at the candidate's active widths)."""
        from profiler.modules import ConvBNAct, SqueezeExcite

        s = self.active[index]
        mod = s.build()
        convs = [m for m in mod.body if isinstance(m, ConvBNAct)]
        parts: list[tuple[torch.Tensor, nn.BatchNorm2d]] = []
        if s.mid_c != s.in_c:
            parts.append((self.expand.weight[:s.mid_c, :s.in_c], self.expand_bn))
        parts.append((self._dw_weight(s), self.depthwise_bn[self._dw_key(s)]))
        parts.append((self.project.weight[:s.out_c, :s.mid_c], self.project_bn[index]))
        if len(convs) != len(parts):
            raise RuntimeError(f"{s.key}: the block module has {len(convs)} conv layers, the shared one {len(parts)}")
        for conv_bn, (w, src) in zip(convs, parts):
            conv, bn = conv_bn[0], conv_bn[1]
            conv.weight.copy_(w)
            c = bn.num_features
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(bn, name).copy_(getattr(src, name)[:c])
            bn.num_batches_tracked.copy_(src.num_batches_tracked)
        for m in mod.body:
            if isinstance(m, SqueezeExcite):
                red = m.reduce.out_channels
                m.reduce.weight.copy_(self.se_reduce.weight[:red, :s.mid_c])
                m.reduce.bias.copy_(self.se_reduce.bias[:red])
                m.expand.weight.copy_(self.se_expand.weight[:s.mid_c, :red])
                m.expand.bias.copy_(self.se_expand.bias[:s.mid_c])
        return mod


class SlicedConv(nn.Module):
    """A fixed conv block (the final 1x1 conv) whose input channels follow a stage's width: built
    at the widest input (``spec``), it runs on the first ``x.shape[1]`` input channels of its
    weight; its output channels and BatchNorm do not change with the width. Input NCHW."""

    def __init__(self, spec: BlockSpec):
        super().__init__()
        if spec.kind not in ("conv", "final_conv"):
            raise SearchError(f"{spec.key}: only a plain conv block takes a narrower input")
        self.spec = spec
        self.active = spec
        self.body = spec.build().train()

    def set_active(self, spec: BlockSpec) -> None:
        if (spec.kind, spec.out_c, spec.kernel, spec.stride) != (self.spec.kind, self.spec.out_c, self.spec.kernel,
                                                                 self.spec.stride) or spec.in_c > self.spec.in_c:
            raise SearchError(f"{spec.key} is not {self.spec.key} on fewer input channels")
        self.active = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.body[0]
        h = F.conv2d(x, conv.weight[:, :self.active.in_c], None, conv.stride, conv.padding)
        for m in list(self.body)[1:]:
            h = m(h)
        return h

    def derived_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights of ``self.active.build()``: the input-channel slice of the conv, the rest as is."""
        sd = dict(self.body.state_dict())
        sd["0.weight"] = sd["0.weight"][:, :self.active.in_c]
        return sd


class _WidthChoice(nn.Module):
    """The width logits of one stage (shape (len(widths),)); a module so its parameter is named
    ``...alpha`` like the op logits (what the data-parallel set-up keeps out of DDP)."""

    def __init__(self, n: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(n))


def _reinit(module: nn.Module) -> None:
    for m in module.modules():
        if m is not module and hasattr(m, "reset_parameters"):
            m.reset_parameters()


class Supernet(nn.Module):
    """The whole over-parameterised network of `space` (input NCHW (B, C, H, W) -> logits (B, classes)).

    Fixed layers are plain modules; each searchable layer is a `MixedOp` over its candidates (the
    zero op is an identity: the layer is skipped): with ``weights="separate"``, ``BlockSpec.build()``
    of each; with ``weights="shared"``, views of one `SharedMBConv` per layer.
    Weights are initialised from ``seed`` (blocks built by key share a fixed seed otherwise).

    Raises `SearchError` for ``weights="shared"`` on a layer whose candidates cannot share weights.
    """

    def __init__(self, space: SearchSpace, mode: str = "binary", seed: int = 0, weights: str = "separate",
                 depth: str = "any"):
        super().__init__()
        if weights not in WEIGHTS:
            raise ValueError(f"unknown weights {weights!r}; known: {', '.join(WEIGHTS)}")
        if depth not in DEPTHS:
            raise ValueError(f"unknown depth {depth!r}; known: {', '.join(DEPTHS)}")
        if depth != "any" and mode == "all":
            raise ValueError(f"depth={depth!r} routes the path that runs; the all-paths mode runs every path")
        self.depth = depth
        self.space = space
        self.mode = mode
        self.weights = weights
        self.width_stages = space.width_stages
        layers: list[nn.Module] = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for layer in space.layers:
                if layer.searchable and weights == "shared":
                    layers.append(_shared_mixed_op(layer.candidates, mode))
                    continue
                if layer.variants and layer.searchable:  # separate weights, sliceable for the widths
                    layers.append(_sliceable_mixed_op(layer.candidates, mode))
                    continue
                if layer.variants:
                    sliced = SlicedConv(layer.candidates[0])
                    _reinit(sliced.body)
                    layers.append(sliced)
                    continue
                mods = [c.build().train() for c in layer.candidates]
                for m in mods:
                    _reinit(m)
                layers.append(MixedOp(mods, mode) if layer.searchable else mods[0])
        self.layers = nn.ModuleList(layers)
        # one row of width logits per stage (none in a space without width choices)
        self.width_choices = nn.ModuleList(_WidthChoice(len(space.widths)) for _ in range(self.width_stages))
        self._widths: list[int] = [len(space.widths) - 1] * self.width_stages
        # per searchable layer, the index of its zero op (the layer skipped), or None
        self._zero_ops = [next((j for j, c in enumerate(layer.candidates) if c.kind == "zero"), None)
                          for layer in space.layers if layer.searchable]
        self._runs = _skippable_runs(space) if depth == "tail" else []

    # ---- parameters -----------------------------------------------------------------------
    @property
    def mixed(self) -> list[MixedOp]:
        return [m for m in self.layers if isinstance(m, MixedOp)]

    def arch_parameters(self) -> list[nn.Parameter]:
        """The op logits of every searchable layer, then the width logits of every stage."""
        return [m.alpha for m in self.mixed] + [w.alpha for w in self.width_choices]

    def weight_parameters(self) -> list[nn.Parameter]:
        ids = {id(a) for a in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def probs(self, temperature: float = 1.0) -> list[torch.Tensor]:
        """Per searchable layer, the candidate probabilities (differentiable); with ``temperature``
        below 1, ``softmax(alpha / temperature)``: sharpened toward the argmax network."""
        return [torch.softmax(m.alpha / temperature, 0) for m in self.mixed] + \
            [torch.softmax(w.alpha / temperature, 0) for w in self.width_choices]

    # ---- widths (a space with width choices) ---------------------------------------------------
    @property
    def widths(self) -> list[int]:
        """The stage width indices the network runs at now (empty without width choices)."""
        return list(self._widths)

    def set_widths(self, widths: Sequence[int]) -> None:
        """Run stage s at width index ``widths[s]``: every layer whose channels follow a stage is set
        to its candidates at those widths."""
        if len(widths) != self.width_stages:
            raise ValueError(f"{self.width_stages} stage widths needed, got {len(widths)}")
        self._widths = [int(w) for w in widths]
        if not self.width_stages:
            return
        for layer, mod in zip(self.space.layers, self.layers):
            if not layer.variants:
                continue
            cands = self.space.layer_candidates(layer, self._widths)
            if isinstance(mod, SlicedConv):
                mod.set_active(cands[0])
                continue
            for spec, cand in zip(cands, mod.candidates, strict=True):
                if isinstance(cand, _SharedView):
                    cand.owner.set_active(cand.index, spec)

    def sample_widths(self, gen: torch.Generator, uniform: bool = False) -> list[int]:
        """One width per stage drawn from its ``softmax(alpha)`` (``uniform``: each width equally
        likely); set. Returns the width indices."""
        if uniform:
            ws = [int(torch.randint(len(self.space.widths), (1,), generator=gen)) for _ in self.width_choices]
        else:
            ws = [int(torch.multinomial(torch.softmax(w.alpha.detach(), 0), 1, generator=gen))
                  for w in self.width_choices]
        self.set_widths(ws)
        return ws

    def log_prob(self, choices: Sequence[int]) -> torch.Tensor:
        """log p(choices) under the logits (ops, then widths): differentiable, for score-function gradients."""
        logits = [m.alpha for m in self.mixed] + [w.alpha for w in self.width_choices]
        return sum(torch.log_softmax(a, 0)[int(c)] for a, c in zip(logits, choices, strict=True))

    def width_log_prob(self) -> torch.Tensor:
        """log p of the current stage widths (0 without width choices); differentiable."""
        return sum((torch.log_softmax(w.alpha, 0)[c] for w, c in zip(self.width_choices, self._widths)),
                   torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._set_routes()
        for layer in self.layers:
            x = layer(x)
        return x

    def _set_routes(self) -> None:
        """depth="tail": in each run of skippable layers, the k-th layer whose path is not the zero op
        runs on the k-th layer's candidates (`MixedOp.chosen` decides; a no-op for depth="any")."""
        for run in self._runs:
            k = 0
            for i in run:
                m = self.layers[i]
                m._routed = (None if run[k] == i else self.layers[run[k]],)
                if self.space.layers[i].candidates[m.chosen].kind != "zero":
                    k += 1

    # ---- sampling (the generator is shared and seeded, so every rank draws the same paths) --
    def sample_paths(self, gen: torch.Generator, widths: bool = True, skip_drop: float = 0.0) -> list[int]:
        """One path per layer, drawn from ``p``, and (with width choices and ``widths``) one width
        per stage; set as the active paths. Returns the choices (ops, then any widths drawn).

        ``skip_drop`` (weight steps only): each layer that has a zero op takes it with this
        probability, else a path from ``p`` (stochastic depth, Huang et al. 2016, as the weight steps'
        path sampler). Later layers then see inputs with a layer dropped as often as a sub-network
        that skips one gives them, which is what a skipping sub-network inherits; with 0 no extra
        random number is drawn, so the default's paths are unchanged."""
        choices = []
        for m, zero in zip(self.mixed, self._zero_ops):
            if skip_drop > 0 and zero is not None and float(torch.rand(1, generator=gen)) < skip_drop:
                c = zero
            else:
                c = int(torch.multinomial(m.probs.detach(), 1, generator=gen))
            m.set_path(c)
            choices.append(c)
        if self.width_stages and widths:
            choices += self.sample_widths(gen)
        return choices

    def sample_pairs(self, gen: torch.Generator) -> list[tuple[tuple[int, int], int]]:
        """Two distinct paths per layer drawn from ``p`` without replacement, and the active one of
        the two drawn from their renormalised probabilities (ProxylessNAS section 3.2.1)."""
        out = []
        for m in self.mixed:
            p = m.probs.detach()
            pair = tuple(int(i) for i in torch.multinomial(p, 2, replacement=False, generator=gen))
            q = p[list(pair)] / p[list(pair)].sum()
            active = pair[int(torch.multinomial(q, 1, generator=gen))]
            m.set_pair(pair, active)
            out.append((pair, active))
        return out

    def clear_pairs(self) -> None:
        for m in self.mixed:
            m._pair = None

    def mask_arch_grads_to_pairs(self) -> None:
        """Zero the logits' gradients outside the sampled pairs (the expected-latency term's
        gradient reaches every logit); with `rescale_pairs` the unsampled probabilities stay put."""
        for m in self.mixed:
            if m.alpha.grad is not None and m._pair is not None:
                keep = torch.zeros_like(m.alpha.grad)
                keep[list(m._pair)] = 1.0
                m.alpha.grad.mul_(keep)

    @torch.no_grad()
    def rescale_pairs(self, before: Sequence[torch.Tensor]) -> None:
        """After an optimiser step on the logits, offset the two sampled logits of each layer so
        ``sum_{j in pair} exp(alpha_j)`` is what it was: the other paths' probabilities are unchanged."""
        for m, old in zip(self.mixed, before):
            if m._pair is None:
                continue
            idx = list(m._pair)
            offset = torch.logsumexp(old[idx], 0) - torch.logsumexp(m.alpha[idx], 0)
            m.alpha[idx] += offset

    @contextlib.contextmanager
    def fixed_paths(self, choices: Sequence[int]) -> Iterator[None]:
        """Run one given path per layer (whatever the mode), e.g. to evaluate the argmax network;
        ``choices`` as `SearchSpace.arch` takes them (with width choices: the stage widths last)."""
        ops, ws = self.space.split(choices)
        before = self.widths
        for m, c in zip(self.mixed, ops, strict=True):
            m._fixed = int(c)
        self.set_widths(ws)
        try:
            yield
        finally:
            for m in self.mixed:
                m._fixed = None
            self.set_widths(before)

    # ---- the result ------------------------------------------------------------------------
    def argmax_choices(self) -> list[int]:
        """The most likely op per layer, then (with width choices) the most likely width per stage."""
        return [int(torch.argmax(m.alpha.detach())) for m in self.mixed] + \
            [int(torch.argmax(w.alpha.detach())) for w in self.width_choices]

    def derive(self, name: str = "", meta: dict | None = None) -> ArchSpec:
        """The most likely network (argmax per layer) as an ArchSpec, with the probabilities in meta
        (with width choices, also ``widths``: the chosen multiplier per stage)."""
        choices = self.argmax_choices()
        arch = self.space.arch(choices, name or f"{self.space.name}-searched")
        m = {"space": self.space.name, "choices": choices,
             "probabilities": [[round(float(v), 6) for v in p.detach()] for p in self.probs()]}
        if self.width_stages:
            m["widths"] = [self.space.widths[w] for w in self.space.split(choices)[1]]
        m.update(meta or {})
        return ArchSpec(arch.blocks, arch.input_size, arch.num_classes, arch.name, m)

    def derived_state_dict(self, choices: Sequence[int]) -> dict[str, torch.Tensor]:
        """The weights of the network with ``choices``, keyed for ``ArchSpec.build()`` (an nn.Sequential);
        with shared weights or width choices, copies of the chosen candidates' slices."""
        ops, _ = self.space.split(choices)
        with self.fixed_paths(choices):
            self._set_routes()  # depth="tail": each block's weights are those it runs on
            it = iter(ops)
            out: dict[str, torch.Tensor] = {}
            for i, layer in enumerate(self.layers):
                if isinstance(layer, MixedOp):
                    sd = layer.candidate_state_dict(next(it))
                elif isinstance(layer, SlicedConv):
                    sd = layer.derived_state_dict()
                else:
                    sd = layer.state_dict()
                out.update({f"{i}.{k}": v.clone() for k, v in sd.items()})
            return out


def _skippable_runs(space: SearchSpace) -> list[list[int]]:
    """The runs (two layers or more) of consecutive searchable layers that may be skipped and hold the
    same candidates (the same blocks at every width pair): layers whose places in a network can be
    swapped without changing it. Indices into ``space.layers``."""
    def sig(layer) -> tuple:
        return tuple((pair, tuple(c.key for c in cands)) for pair, cands in
                     (layer.variants or (((0, 0), layer.candidates),)))

    runs: list[list[int]] = []
    cur: list[int] = []
    for i, layer in enumerate(space.layers):
        if layer.searchable and layer.has_zero and cur and sig(space.layers[cur[-1]]) == sig(layer):
            cur.append(i)
            continue
        if len(cur) > 1:
            runs.append(cur)
        cur = [i] if layer.searchable and layer.has_zero else []
    if len(cur) > 1:
        runs.append(cur)
    return runs


def _shared_mixed_op(candidates: Sequence[BlockSpec], mode: str) -> MixedOp:
    """A searchable layer whose MBConv candidates share one `SharedMBConv` (zero ops stay identities)."""
    blocks = [c for c in candidates if c.kind != "zero"]
    shared = SharedMBConv(blocks).train()  # drawn from the supernet's seeded RNG as it is built
    views = iter(shared.views())
    mods = [nn.Identity() if c.kind == "zero" else next(views) for c in candidates]
    return MixedOp(mods, mode, shared=shared)


def _sliceable_mixed_op(candidates: Sequence[BlockSpec], mode: str) -> MixedOp:
    """A searchable layer of a space with width choices, separate weights: each MBConv candidate
    is its own one-spec `SharedMBConv` (a plain MBConv whose first channels run the narrower
    widths); zero ops stay identities."""
    owners, mods = [], []
    for c in candidates:
        if c.kind == "zero":
            mods.append(nn.Identity())
            continue
        owner = SharedMBConv([c]).train()
        owners.append(owner)
        mods.append(owner.views()[0])
    return MixedOp(mods, mode, shared=nn.ModuleList(owners))
