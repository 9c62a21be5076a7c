"""Search spaces, defined as data (YAML files in ``profiler/spaces/``, read with the safe loader).

A space is a chain of layers; each layer holds its candidate blocks (one for a fixed layer).
The searchable layers of a ProxylessNAS-style space hold MBConv candidates (kernel x expand) and,
where the layer may be skipped (stride 1, equal in/out channels), the zero op.

Width (optional; OFA's elastic width, Cai et al., ICLR 2020; FBNetV2's channel search, Wan et al.,
CVPR 2020): ``candidates: {..., widths: [0.5, 0.75, 1.0]}`` makes each stage's channel count a choice
of its own. Stage channels C at width w are ``max(4, 4 * floor(C * w / 4 + 1/2))``: C * w rounded
half up to a multiple of 4, at least 4 (24 -> 12 / 20 / 24; the rule of benchmarks/search_targets.py's
width-scaled networks; at width 1 the channels as written). The stem, the first block, the final
1x1 conv's output and the classifier keep their channels. A space without ``widths`` has the one
width 1.0 and is exactly what it was.

Choices (what `SearchSpace.arch` takes, what a search stores): one candidate index per searchable
layer, in network order, then, only in a space with more than one width, one width index per stage
(into `SearchSpace.widths`): ``len(choices) == len(space.searchable) + space.width_stages``.
A layer's block then depends on its op choice, its stage's width and, for a stage's first layer, the
previous stage's width (the final conv: the last stage's); `Layer.at` gives the candidates for a pair
of width indices. The zero op is offered only where input and output shapes agree at every width
(inside a stage, stride 1), so a layer's candidate list is the same at every width.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

from profiler.blocks import ArchSpec, BlockSpec, out_size, unique
from profiler.errors import HwnasError

__all__ = ["SearchSpace", "Layer", "load_space", "list_spaces", "parse_op", "scaled_channels", "SpaceError"]


class SpaceError(HwnasError, ValueError):
    """A search space name or file is unknown or malformed."""


def scaled_channels(channels: int, width: float) -> int:
    """``channels * width`` rounded half up to a multiple of 4, at least 4 (the width rule); at
    width 1 the channels as written, so a stage keeps its own channels at full width."""
    if width == 1.0:
        return int(channels)
    return max(4, int(math.floor(channels * width / 4 + 0.5)) * 4)


@dataclass(frozen=True)
class Layer:
    """One layer of a space: its candidate blocks (one for a fixed layer).

    In a space with width choices, ``candidates`` are the blocks at the widest width, and
    ``variants`` holds the candidates for every pair (input width index, output width index):
    ``in_stage`` is the stage whose width sets the input channels when that is not the layer's own
    stage (a stage's first layer, the final conv), ``out_stage`` the layer's own stage (None: no
    width choice on that side; its index is then 0). Empty ``variants``: the layer has no width.
    """

    candidates: tuple[BlockSpec, ...]
    searchable: bool
    in_stage: int | None = None
    out_stage: int | None = None
    variants: tuple[tuple[tuple[int, int], tuple[BlockSpec, ...]], ...] = ()

    @property
    def has_zero(self) -> bool:
        return any(c.kind == "zero" for c in self.candidates)

    def at(self, w_in: int, w_out: int) -> tuple[BlockSpec, ...]:
        """The candidates with input width index ``w_in`` (of ``in_stage``) and output width index
        ``w_out`` (of ``out_stage``); a side without a stage takes 0. Raises `SpaceError` for a pair
        the layer does not have."""
        if not self.variants:
            return self.candidates
        for pair, cands in self.variants:
            if pair == (w_in, w_out):
                return cands
        raise SpaceError(f"layer has no width pair ({w_in}, {w_out})")

    def all_variants(self) -> list[tuple[BlockSpec, ...]]:
        """The candidate lists of every width pair (``[candidates]`` for a layer without width)."""
        return [c for _, c in self.variants] if self.variants else [self.candidates]


@dataclass(frozen=True)
class SearchSpace:
    name: str
    description: str
    input_size: int
    in_channels: int
    num_classes: int
    layers: tuple[Layer, ...]
    widths: tuple[float, ...] = (1.0,)  # width multipliers of every stage (unitless), ascending
    stages: int = 0  # stages whose width is a choice (0 without width choices)

    @property
    def searchable(self) -> list[int]:
        return [i for i, layer in enumerate(self.layers) if layer.searchable]

    @property
    def width_stages(self) -> int:
        """How many width choices follow the op choices in a choice list (0: a space without width)."""
        return self.stages if len(self.widths) > 1 else 0

    @property
    def n_choices(self) -> int:
        """The length of a choice list: one op per searchable layer, then one width per stage."""
        return len(self.searchable) + self.width_stages

    def blocks(self, include_zero: bool = False) -> list[BlockSpec]:
        """Every distinct block of the space, once, in network order (in a space with widths, every
        block of every width pair of every layer: everything any choice list can produce).

        The zero op is left out by default: it computes nothing (the layer is skipped), so
        there is nothing to compile or time.
        """
        return unique(c for layer in self.layers for cands in layer.all_variants() for c in cands
                      if include_zero or c.kind != "zero")

    def split(self, choices: Sequence[int]) -> tuple[list[int], list[int]]:
        """``choices`` as (op choice per searchable layer, width index per stage); checked.

        Raises `SpaceError` for a wrong length or an index out of range."""
        n, s = len(self.searchable), self.width_stages
        if len(choices) != n + s:
            need = f"{n} choices" if not s else f"{n + s} choices ({n} ops, then {s} stage widths)"
            raise SpaceError(f"{self.name}: {need} needed, got {len(choices)}")
        ops, ws = [int(c) for c in choices[:n]], [int(c) for c in choices[n:]]
        for w in ws:
            if not 0 <= w < len(self.widths):
                raise SpaceError(f"{self.name}: width choice {w} out of range 0..{len(self.widths) - 1}")
        return ops, ws

    def layer_candidates(self, layer: Layer, width_choices: Sequence[int]) -> tuple[BlockSpec, ...]:
        """``layer``'s candidates under the stage widths ``width_choices`` (empty: no width)."""
        if not layer.variants:
            return layer.candidates
        a = width_choices[layer.in_stage] if layer.in_stage is not None else 0
        b = width_choices[layer.out_stage] if layer.out_stage is not None else 0
        return layer.at(a, b)

    def arch(self, choices: Sequence[int], name: str = "") -> ArchSpec:
        """The network that takes candidate ``choices[i]`` at searchable layer i (and, in a space with
        widths, width ``widths[choices[len(searchable) + s]]`` at stage s)."""
        ops, ws = self.split(choices)
        blocks = []
        it = iter(ops)
        for layer in self.layers:
            cands = self.layer_candidates(layer, ws)
            if layer.searchable:
                c = next(it)
                if not 0 <= c < len(cands):
                    raise SpaceError(f"{self.name}: choice {c} out of range 0..{len(cands) - 1}")
                blocks.append(cands[c])
            else:
                blocks.append(cands[0])
        return ArchSpec(tuple(blocks), self.input_size, self.num_classes, name or self.name)

    def width_index(self, width: float) -> int:
        """The index of multiplier ``width`` in `widths`; raises `SpaceError` for another one."""
        for i, w in enumerate(self.widths):
            if abs(w - float(width)) < 1e-9:
                return i
        raise SpaceError(f"width x{width:g} is not a width of {self.name!r}; its widths: "
                         f"{', '.join(f'{w:g}' for w in self.widths)}")

    def uniform_choices(self, op: str, width: float | None = None) -> list[int]:
        """The choices that put the same MBConv in every searchable layer; ``op`` is kernel and
        expand ratio written ``kKeE`` (``k3e6``), optionally with a width multiplier ``kKeE@W``
        (``k3e6@0.5``: every stage at that width; the widest by default). Raises `SpaceError` where a
        layer lacks it."""
        text = str(op).strip()
        if "@" in text:
            text, _, wtext = text.partition("@")
            try:
                width = float(wtext)
            except ValueError:
                raise SpaceError(f"baseline member {op!r}: write the width after @ as a number, "
                                 "e.g. k3e6@0.5") from None
        k, e = parse_op(text)
        if width is not None and len(self.widths) == 1 and abs(float(width) - self.widths[0]) > 1e-9:
            raise SpaceError(f"baseline member {op}: {self.name!r} has no width choices (only x{self.widths[0]:g})")
        out = []
        for i in self.searchable:
            idx = [j for j, c in enumerate(self.layers[i].candidates)
                   if c.kind == "mbconv" and c.kernel == k and c.mid_c == c.in_c * e]
            if not idx:
                raise SpaceError(f"baseline member {op}: layer {i} of {self.name!r} has no kernel {k} expand {e} "
                                 "candidate")
            out.append(idx[0])
        if self.width_stages:
            w = self.width_index(width) if width is not None else len(self.widths) - 1
            out += [w] * self.width_stages
        return out

    def spanning_archs(self, block_ms: Mapping[str, float], n: int, seed: int = 0,
                       exclude: Sequence[str] = (), pool: int = 4000) -> list[tuple[list[int], ArchSpec]]:
        """``n`` distinct networks whose block sums (from ``block_ms``: block key -> ms, the zero op 0)
        spread evenly (on a log scale) over the space's latency range, from its fastest network to its slowest.

        A network model fitted on them is then checked where a search may land, at either end, rather
        than only where uniform random draws cluster (the middle). Candidates are drawn layer by layer
        with probabilities ~ ms^-t, t from -3 (slow end) to 3 (fast end); the one nearest to each of
        ``n`` log-spaced latencies is kept. Networks with the blocks of a key in ``exclude``, whatever
        its name (the uniform baselines, which check the model out of sample), are never chosen.
        Blocks without a number are never drawn. In a space with widths the stage widths are drawn
        too, with probabilities ~ multiplier^-t, and the choice lists hold them after the ops. Every other
        draw skips no layer, and near each latency the deepest and the shallowest networks alternate, so
        that the number of blocks varies independently of latency (see `predictor.network`'s ``block`` model).
        """
        rng = np.random.default_rng(seed)

        def row(cands: Sequence[BlockSpec], i: int) -> np.ndarray:
            m = np.array([0.0 if c.kind == "zero" else float(block_ms.get(c.key, np.nan)) for c in cands])
            if not np.isfinite(m).any():
                raise SpaceError(f"{self.name}: no candidate of layer {i} has a latency; profile the space first")
            return m

        # per searchable layer, per width pair: the candidates' ms (one pair in a space without widths)
        ms = [{pair: row(c, i) for pair, c in (self.layers[i].variants or (((0, 0), self.layers[i].candidates),))}
              for i in self.searchable]
        fixed_layers = [layer for layer in self.layers if not layer.searchable]
        nw = self.width_stages
        # wider stages are slower: tilt the width draws like the op draws, by channels^-t
        chans = np.array([float(w) for w in self.widths])

        def pair(layer: Layer, ws: Sequence[int]) -> tuple[int, int]:
            return (ws[layer.in_stage] if layer.in_stage is not None and ws else 0,
                    ws[layer.out_stage] if layer.out_stage is not None and ws else 0)

        # by the blocks' digest, not the whole key: a key also holds the network's name, and the
        # baselines are named ("...-uniform-k3e3") where these draws are not
        excluded = {_blocks_id(k) for k in exclude}
        zero = [np.array([c.kind == "zero" for c in self.layers[i].candidates]) for i in self.searchable]
        seen: dict[str, tuple[float, list[int], int]] = {}
        for d, t in enumerate(np.linspace(-3.0, 3.0, pool)):
            ws = [int(rng.choice(len(chans), p=chans ** -t / (chans ** -t).sum())) for _ in range(nw)]
            choices = []
            for i, by_pair, z in zip(self.searchable, ms, zero):
                m = by_pair[pair(self.layers[i], ws)]
                ok = np.isfinite(m)
                if d % 2 and (ok & ~z).any():
                    ok &= ~z  # every other draw skips no layer: fast networks at full depth exist too
                w = np.where(ok, np.maximum(m, 1e-3 * np.nanmax(m) + 1e-9), 1.0) ** -t * ok
                choices.append(int(rng.choice(len(m), p=w / w.sum())))
            key = self.arch(choices + ws).key
            if _blocks_id(key) not in excluded and key not in seen:
                fixed = sum(float(block_ms.get(self.layer_candidates(layer, ws)[0].key, 0.0)) for layer in fixed_layers)
                lat = fixed + float(sum(by_pair[pair(self.layers[i], ws)][c]
                                        for i, by_pair, c in zip(self.searchable, ms, choices)))
                depth = sum(1 for c, z in zip(choices, zero) if not z[c])
                seen[key] = (lat, choices + ws, depth)
        ordered = sorted(seen.values())
        if not ordered or n <= 0:
            return []
        lo, hi = ordered[0][0], ordered[-1][0]
        picked: list[tuple[list[int], ArchSpec]] = []
        used: set[int] = set()
        sums = np.array([v[0] for v in ordered])
        depths = np.array([v[2] for v in ordered])
        # evenly on a log scale: the space spans 20x and more, and what matters is the relative error
        targets = np.geomspace(lo, hi, n) if lo > 0 else np.linspace(lo, hi, n)
        half_step = 0.5 * (np.log(hi / lo) / max(n - 1, 1)) if lo > 0 else 0.0
        for k, target in enumerate(targets):
            order = [int(j) for j in np.argsort(np.abs(sums - target)) if int(j) not in used]
            if not order:
                break
            # among the networks within half a step of this latency, alternately the deepest and the
            # shallowest: depth then varies at every latency, so a network model can tell a per-block cost
            # from a per-millisecond one (with depth following latency, the two cannot be told apart)
            near = [j for j in order if lo > 0 and abs(np.log(sums[j] / target)) <= half_step] or order[:1]
            sign = -1 if k % 2 == 0 else 1  # even steps the deepest, odd the shallowest; ties: the nearest
            j = min(near, key=lambda j: (sign * depths[j], abs(sums[j] - target)))
            used.add(j)
            choices = ordered[j][1]
            picked.append((choices, self.arch(choices, f"{self.name}-calibration")))
        return picked

    def size(self) -> int:
        """How many networks the space holds (ops times stage widths)."""
        n = len(self.widths) ** self.width_stages
        for layer in self.layers:
            n *= len(layer.candidates)
        return n


def _blocks_id(arch_key: str) -> str:
    """The part of an `ArchSpec.key` that names its blocks (input size, count, digest), not its name."""
    return arch_key[arch_key.rfind("-input:"):]


def parse_op(text: str) -> tuple[int, int]:
    """``k3e6`` -> (kernel 3, expand ratio 6); raises `SpaceError` on anything else."""
    m = re.fullmatch(r"k(\d+)e(\d+)", str(text).strip())
    if not m:
        raise SpaceError(f"baseline member {text!r}: write kernel and expand ratio as kKeE, e.g. k3e6")
    return int(m[1]), int(m[2])


def _spaces_dir() -> Path:
    return Path(str(resources.files("profiler") / "spaces"))


def list_spaces() -> list[str]:
    return sorted(p.stem for p in _spaces_dir().glob("*.yaml"))


def load_space(name_or_path: str) -> SearchSpace:
    """A shipped space by name (see `list_spaces`) or a YAML file of the same form."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        path, name = p, p.stem
    else:
        path, name = _spaces_dir() / f"{name_or_path}.yaml", name_or_path
        if not path.exists():
            raise SpaceError(f"unknown search space {name_or_path!r}; known: {', '.join(list_spaces())} "
                             "(or give a path to a .yaml file)")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpaceError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    try:
        return _build(name, doc)
    except (KeyError, TypeError, ValueError) as e:
        raise SpaceError(f"{path}: malformed search space ({type(e).__name__}: {e})") from None


def _build(name: str, d: dict[str, Any]) -> SearchSpace:
    if not isinstance(d, dict):
        raise TypeError("top level must be a mapping")
    known = {"description", "input_size", "in_channels", "stem", "first_block", "stages", "candidates",
             "zero", "final_conv", "classes"}
    extra = set(d) - known
    if extra:
        raise KeyError(f"unknown field(s) {', '.join(sorted(extra))}")
    hw, c = int(d["input_size"]), int(d.get("in_channels", 3))
    layers: list[Layer] = []

    stem = d["stem"]
    conv = BlockSpec.conv(hw, c, int(stem["channels"]), int(stem.get("kernel", 3)), int(stem.get("stride", 2)))
    layers.append(Layer((conv,), False))
    hw, c = conv.out_h, conv.out_c
    fb = d.get("first_block")
    if fb:
        b = BlockSpec.mbconv(hw, c, int(fb["channels"]), int(fb.get("expand", 1)), int(fb.get("kernel", 3)), 1)
        layers.append(Layer((b,), False))
        c = b.out_c
    cand = d["candidates"]
    extra = set(cand) - {"kernels", "expands", "widths"}
    if extra:
        raise KeyError(f"unknown candidates field(s) {', '.join(sorted(extra))} (known: kernels, expands, widths)")
    kernels = [int(k) for k in cand["kernels"]]
    expands = [int(e) for e in cand["expands"]]
    widths = tuple(sorted(float(w) for w in cand.get("widths", [1.0])))
    if not widths or any(not (math.isfinite(w) and w > 0) for w in widths) or len(set(widths)) != len(widths):
        raise ValueError("candidates.widths: give distinct positive multipliers, e.g. [0.5, 0.75, 1.0]")
    allow_zero = bool(d.get("zero", True))
    stages = d["stages"]
    if len(widths) == 1:
        for st in stages:
            width, n, stride = scaled_channels(int(st["channels"]), widths[0]), int(st["blocks"]), int(st["stride"])
            for i in range(n):
                s = stride if i == 0 else 1
                cands = [BlockSpec.mbconv(hw, c, width, e, k, s) for e in expands for k in kernels]
                if allow_zero and s == 1 and c == width:
                    cands.append(BlockSpec.zero(hw, c))
                layers.append(Layer(tuple(cands), True))
                hw, c = out_size(hw, s), width
        last_stage = None
    else:
        nw = len(widths)
        prev: int | None = None  # the stage whose width sets this layer's input (None: fixed channels)
        for si, st in enumerate(stages):
            chans = [scaled_channels(int(st["channels"]), w) for w in widths]
            n, stride = int(st["blocks"]), int(st["stride"])
            for i in range(n):
                s = stride if i == 0 else 1
                in_stage = prev if i == 0 else None
                in_chans = ([scaled_channels(int(stages[prev]["channels"]), w) for w in widths]
                            if in_stage is not None else [c] * nw) if i == 0 else chans
                variants = []
                for a in range(nw if in_stage is not None else 1):
                    for b in range(nw):
                        cin = in_chans[a] if i == 0 else chans[b]
                        cands = [BlockSpec.mbconv(hw, cin, chans[b], e, k, s) for e in expands for k in kernels]
                        # the zero op only inside a stage: the same shapes at every width
                        if allow_zero and s == 1 and i > 0:
                            cands.append(BlockSpec.zero(hw, cin))
                        variants.append(((a, b), tuple(cands)))
                widest = dict(variants)[(nw - 1 if in_stage is not None else 0, nw - 1)]
                layers.append(Layer(widest, True, in_stage, si, tuple(variants)))
                hw = out_size(hw, s)
            prev = si
        c = int(stages[-1]["channels"])  # at the widest width; the final conv's variants follow
        last_stage = len(stages) - 1
    fc = int(d["final_conv"])
    if last_stage is None:
        layers.append(Layer((BlockSpec.final_conv(hw, c, fc),), False))
    else:
        variants = tuple(((a, 0), (BlockSpec.final_conv(hw, scaled_channels(c, w), fc),)) for a, w in enumerate(widths))
        layers.append(Layer(variants[-1][1], False, last_stage, None, variants))
    classes = int(d["classes"])
    layers.append(Layer((BlockSpec.logits(hw, fc, classes),), False))
    return SearchSpace(name, str(d.get("description", "")), int(d["input_size"]), int(d.get("in_channels", 3)),
                       classes, tuple(layers), widths, len(stages) if len(widths) > 1 else 0)
