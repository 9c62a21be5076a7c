"""Search spaces, defined as data (YAML files in ``profiler/spaces/``, read with the safe loader).

A space is a chain of layers; each layer holds its candidate blocks (one for a fixed layer).
The searchable layers of a ProxylessNAS-style space hold MBConv candidates (kernel x expand) and,
where the layer may be skipped (stride 1, equal in/out channels), the zero op.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

from profiler.blocks import ArchSpec, BlockSpec, out_size, unique
from profiler.errors import HwnasError

__all__ = ["SearchSpace", "Layer", "load_space", "list_spaces", "parse_op", "SpaceError"]


class SpaceError(HwnasError, ValueError):
    """A search space name or file is unknown or malformed."""


@dataclass(frozen=True)
class Layer:
    candidates: tuple[BlockSpec, ...]
    searchable: bool

    @property
    def has_zero(self) -> bool:
        return any(c.kind == "zero" for c in self.candidates)


@dataclass(frozen=True)
class SearchSpace:
    name: str
    description: str
    input_size: int
    in_channels: int
    num_classes: int
    layers: tuple[Layer, ...]

    @property
    def searchable(self) -> list[int]:
        return [i for i, layer in enumerate(self.layers) if layer.searchable]

    def blocks(self, include_zero: bool = False) -> list[BlockSpec]:
        """Every distinct block of the space, once, in network order.

        The zero op is left out by default: it computes nothing (the layer is skipped), so
        there is nothing to compile or time.
        """
        return unique(c for layer in self.layers for c in layer.candidates
                      if include_zero or c.kind != "zero")

    def arch(self, choices: Sequence[int], name: str = "") -> ArchSpec:
        """The network that takes candidate ``choices[i]`` at searchable layer i."""
        idx = self.searchable
        if len(choices) != len(idx):
            raise SpaceError(f"{self.name}: {len(idx)} choices needed, got {len(choices)}")
        blocks = []
        it = iter(choices)
        for layer in self.layers:
            if layer.searchable:
                c = next(it)
                if not 0 <= c < len(layer.candidates):
                    raise SpaceError(f"{self.name}: choice {c} out of range 0..{len(layer.candidates) - 1}")
                blocks.append(layer.candidates[c])
            else:
                blocks.append(layer.candidates[0])
        return ArchSpec(tuple(blocks), self.input_size, self.num_classes, name or self.name)

    def uniform_choices(self, op: str) -> list[int]:
        """The choices that put the same MBConv in every searchable layer; ``op`` is kernel and
        expand ratio written ``kKeE`` (``k3e6``). Raises `SpaceError` where a layer lacks it."""
        k, e = parse_op(op)
        out = []
        for i in self.searchable:
            idx = [j for j, c in enumerate(self.layers[i].candidates)
                   if c.kind == "mbconv" and c.kernel == k and c.mid_c == c.in_c * e]
            if not idx:
                raise SpaceError(f"baseline member {op}: layer {i} of {self.name!r} has no kernel {k} expand {e} "
                                 "candidate")
            out.append(idx[0])
        return out

    def spanning_archs(self, block_ms: Mapping[str, float], n: int, seed: int = 0,
                       exclude: Sequence[str] = (), pool: int = 4000) -> list[tuple[list[int], ArchSpec]]:
        """``n`` distinct networks whose block sums (from ``block_ms``: block key -> ms, the zero op 0)
        spread evenly (on a log scale) over the space's latency range, from its fastest network to its slowest.

        A network model fitted on them is then checked where a search may land, at either end, rather
        than only where uniform random draws cluster (the middle). Candidates are drawn layer by layer
        with probabilities ~ ms^-t, t from -3 (slow end) to 3 (fast end); the one nearest to each of
        ``n`` log-spaced latencies is kept. Networks whose key is in ``exclude`` (the uniform
        baselines, which check the model out of sample) are never chosen. Blocks without a number
        are never drawn.
        """
        rng = np.random.default_rng(seed)
        ms = []
        for i in self.searchable:
            m = np.array([0.0 if c.kind == "zero" else float(block_ms.get(c.key, np.nan))
                          for c in self.layers[i].candidates])
            if not np.isfinite(m).any():
                raise SpaceError(f"{self.name}: no candidate of layer {i} has a latency; profile the space first")
            ms.append(m)
        fixed = sum(float(block_ms.get(layer.candidates[0].key, 0.0)) for layer in self.layers if not layer.searchable)
        excluded = set(exclude)
        seen: dict[str, tuple[float, list[int]]] = {}
        for t in np.linspace(-3.0, 3.0, pool):
            choices = []
            for m in ms:
                ok = np.isfinite(m)
                w = np.where(ok, np.maximum(m, 1e-3 * np.nanmax(m) + 1e-9), 1.0) ** -t * ok
                choices.append(int(rng.choice(len(m), p=w / w.sum())))
            key = self.arch(choices).key
            if key not in excluded and key not in seen:
                seen[key] = (fixed + float(sum(m[c] for m, c in zip(ms, choices))), choices)
        ordered = sorted(seen.values())
        if not ordered or n <= 0:
            return []
        lo, hi = ordered[0][0], ordered[-1][0]
        picked: list[tuple[list[int], ArchSpec]] = []
        used: set[int] = set()
        sums = np.array([v[0] for v in ordered])
        # evenly on a log scale: the space spans 20x and more, and what matters is the relative error
        for target in np.geomspace(lo, hi, n) if lo > 0 else np.linspace(lo, hi, n):
            for j in np.argsort(np.abs(sums - target)):
                if int(j) not in used:
                    used.add(int(j))
                    choices = ordered[int(j)][1]
                    picked.append((choices, self.arch(choices, f"{self.name}-calibration")))
                    break
        return picked

    def size(self) -> int:
        n = 1
        for layer in self.layers:
            n *= len(layer.candidates)
        return n


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
    kernels = [int(k) for k in d["candidates"]["kernels"]]
    expands = [int(e) for e in d["candidates"]["expands"]]
    allow_zero = bool(d.get("zero", True))
    for st in d["stages"]:
        width, n, stride = int(st["channels"]), int(st["blocks"]), int(st["stride"])
        for i in range(n):
            s = stride if i == 0 else 1
            cands = [BlockSpec.mbconv(hw, c, width, e, k, s) for e in expands for k in kernels]
            if allow_zero and s == 1 and c == width:
                cands.append(BlockSpec.zero(hw, c))
            layers.append(Layer(tuple(cands), True))
            hw, c = out_size(hw, s), width
    fc = int(d["final_conv"])
    layers.append(Layer((BlockSpec.final_conv(hw, c, fc),), False))
    classes = int(d["classes"])
    layers.append(Layer((BlockSpec.logits(hw, fc, classes),), False))
    return SearchSpace(name, str(d.get("description", "")), int(d["input_size"]), int(d.get("in_channels", 3)),
                       classes, tuple(layers))
