"""Search spaces, defined as data (YAML files in ``profiler/spaces/``, read with the safe loader).

A space is a chain of layers; each layer holds its candidate blocks (one for a fixed layer).
The searchable layers of a ProxylessNAS-style space hold MBConv candidates (kernel x expand) and,
where the layer may be skipped (stride 1, equal in/out channels), the zero op.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import yaml

from profiler.blocks import ArchSpec, BlockSpec, _out_size, unique

__all__ = ["SearchSpace", "Layer", "load_space", "list_spaces", "SpaceError"]


class SpaceError(ValueError):
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

    def size(self) -> int:
        n = 1
        for layer in self.layers:
            n *= len(layer.candidates)
        return n


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
            hw, c = _out_size(hw, s), width
    fc = int(d["final_conv"])
    layers.append(Layer((BlockSpec.final_conv(hw, c, fc),), False))
    classes = int(d["classes"])
    layers.append(Layer((BlockSpec.logits(hw, fc, classes),), False))
    return SearchSpace(name, str(d.get("description", "")), int(d["input_size"]), int(d.get("in_channels", 3)),
                       classes, tuple(layers))
