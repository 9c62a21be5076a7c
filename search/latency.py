"""The edge x op latency table, expected latency and the latency losses of ProxylessNAS
(Cai, Zhu, Han, ICLR 2019, arXiv 1812.00332, section 3.3 and appendix).

The table is built once from a predictor (anything with ``predict_ms(blocks) -> array``): one row
per searchable layer with the predicted latency of each candidate (the zero op costs 0 ms), plus
the fixed layers' sum as a constant. No block key is looked up inside the loss.

In a space with width choices (`profiler.spaces`), a layer's latency depends on its op and on the
widths of one or two stages (its own; for a stage's first layer also the previous stage's), so
each layer's row is an array (input width, output width, op) (`WidthLatency`). Op and stage-width
choices are independent, and no layer depends on the same stage twice, so the expected latency

    E[LAT] = sum over layers of sum_{a, b} p_in(a) p_out(b) sum_j p_j F(o_j | a, b)

is exact (a bilinear form per layer), as ProxylessNAS's sum is for ops alone.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from profiler.blocks import BlockSpec
from profiler.errors import HwnasError
from profiler.spaces import SearchSpace

__all__ = ["LatencyPredictor", "LatencyTable", "WidthLatency", "latency_loss", "StoredMedians", "SearchError",
           "LOSSES"]

LOSSES = ("add", "mul", "ratio", "ceiling", "hinge", "abs")


class SearchError(HwnasError, ValueError):
    """Bad input to a search (target, predictor, data, checkpoint): one line that says what to do."""


@runtime_checkable
class LatencyPredictor(Protocol):
    """What the search needs from a predictor: latency in ms of each block (zero op -> 0).
    Raises a `KeyError`-derived error for a block it cannot predict."""

    def predict_ms(self, blocks: Sequence[BlockSpec]) -> np.ndarray: ...


@dataclass(frozen=True)
class WidthLatency:
    """The width-coupled part of a `LatencyTable` (a space with width choices).

    Attributes:
        n_widths: width choices per stage (count).
        stages: stages with a width choice (count).
        rows: per searchable layer, ms of shape (n_in, n_out, candidates): n_in is ``n_widths``
            where the input width comes from another stage (``row_stages[i][0]``), else 1; n_out
            likewise for the layer's own stage (``row_stages[i][1]``).
        row_stages: per searchable layer, (input stage or None, output stage or None); never the
            same stage twice.
        fixed_rows: per fixed layer whose channels depend on a width (the final conv), ms of shape
            (n_in, n_out); ``fixed_stages`` as ``row_stages``.
        const_ms: sum over the fixed layers that depend on no width (ms).
    """

    n_widths: int
    stages: int
    rows: tuple[np.ndarray, ...]
    row_stages: tuple[tuple[int | None, int | None], ...]
    fixed_rows: tuple[np.ndarray, ...]
    fixed_stages: tuple[tuple[int | None, int | None], ...]
    const_ms: float

    def assignments(self) -> Iterator[tuple[int, ...]]:
        """Every width assignment (one width index per stage): n_widths ** stages of them."""
        return itertools.product(range(self.n_widths), repeat=self.stages)

    @staticmethod
    def _pick(arr: np.ndarray, st: tuple[int | None, int | None], ws: Sequence[int]) -> np.ndarray:
        a = ws[st[0]] if st[0] is not None else 0
        b = ws[st[1]] if st[1] is not None else 0
        return arr[a, b]


@dataclass(frozen=True)
class LatencyTable:
    """Predicted latency (ms, batch 1) of every candidate of every searchable layer.

    Attributes:
        layers: per searchable layer, a float64 array of shape (candidates,) in ms. In a space
            with width choices, the rows with every stage at its widest (`at_widths` gives the
            rows of any other widths).
        fixed_ms: sum over the fixed layers (stem, first block, final conv, classifier), ms (with
            width choices: at the widest).
        width: the width-coupled rows (None in a space without width choices). Choice lists and
            probability lists then hold the stages' widths after the ops (see `profiler.spaces`).
    """

    layers: tuple[np.ndarray, ...]
    fixed_ms: float
    width: WidthLatency | None = None

    @classmethod
    def build(cls, space: SearchSpace, predictor: LatencyPredictor) -> "LatencyTable":
        """Ask the predictor once for every block of the space (every width of it).

        Raises `SearchError` (one line) when the predictor lacks a block or returns a bad value.
        """
        blocks = [b for b in space.blocks(include_zero=False)]
        try:
            ms = np.asarray(predictor.predict_ms(blocks), dtype=float)
        except KeyError as e:
            raise SearchError(f"the predictor has no latency for a candidate of {space.name!r} ({_key_of(e)}); "
                              f"profile the space (`hwnas profile --space {space.name} ...`) and fit it again") from None
        if ms.shape != (len(blocks),):
            raise SearchError(f"the predictor returned {ms.shape} values for {len(blocks)} blocks")
        bad = [b.key for b, v in zip(blocks, ms) if not (np.isfinite(v) and v >= 0)]
        if bad:
            raise SearchError(f"the predictor gave no usable latency (NaN, negative) for {bad[0]}"
                              + (f" and {len(bad) - 1} more" if len(bad) > 1 else ""))
        by_block = dict(zip(blocks, ms))

        def lat(b: BlockSpec) -> float:
            return 0.0 if b.kind == "zero" else float(by_block[b])

        if space.width_stages:
            return cls._build_width(space, lat)
        rows, fixed = [], 0.0
        for layer in space.layers:
            if layer.searchable:
                rows.append(np.array([lat(c) for c in layer.candidates]))
            else:
                fixed += lat(layer.candidates[0])
        return cls(tuple(rows), fixed)

    @classmethod
    def _build_width(cls, space: SearchSpace, lat) -> "LatencyTable":
        nw = len(space.widths)
        rows, row_st, frows, fst, const = [], [], [], [], 0.0
        for layer in space.layers:
            if not layer.variants:
                const += lat(layer.candidates[0])
                continue
            st = (layer.in_stage, layer.out_stage)
            arr = np.zeros((nw if st[0] is not None else 1, nw if st[1] is not None else 1, len(layer.candidates)))
            for (a, b), cands in layer.variants:
                arr[a, b] = [lat(c) for c in cands]
            if layer.searchable:
                rows.append(arr)
                row_st.append(st)
            else:
                frows.append(arr[:, :, 0])
                fst.append(st)
        width = WidthLatency(nw, space.width_stages, tuple(rows), tuple(row_st), tuple(frows), tuple(fst), const)
        widest = cls._plain(width, [nw - 1] * space.width_stages)
        return cls(widest.layers, widest.fixed_ms, width)

    @staticmethod
    def _plain(w: WidthLatency, ws: Sequence[int]) -> "LatencyTable":
        rows = tuple(np.asarray(WidthLatency._pick(r, st, ws), dtype=float) for r, st in zip(w.rows, w.row_stages))
        fixed = w.const_ms + sum(float(WidthLatency._pick(r, st, ws)) for r, st in zip(w.fixed_rows, w.fixed_stages))
        return LatencyTable(rows, fixed)

    @property
    def width_stages(self) -> int:
        """Width choices after the op choices in a choice list (0: no width choices)."""
        return self.width.stages if self.width is not None else 0

    def at_widths(self, width_choices: Sequence[int]) -> "LatencyTable":
        """The plain table (ops only) with stage s at width index ``width_choices[s]``; itself
        for a table without width choices (and an empty ``width_choices``)."""
        if self.width is None:
            if len(width_choices):
                raise SearchError("this latency table has no width choices")
            return self
        if len(width_choices) != self.width.stages or any(not 0 <= w < self.width.n_widths for w in width_choices):
            raise SearchError(f"give one width index (0..{self.width.n_widths - 1}) for each of the "
                              f"{self.width.stages} stages, not {list(width_choices)}")
        return self._plain(self.width, width_choices)

    def _split(self, choices: Sequence) -> tuple[list, list]:
        n = len(self.layers)
        if len(choices) != n + self.width_stages:
            raise SearchError(f"{len(choices)} choices for a table of {n} layers"
                              + (f" and {self.width_stages} width stages" if self.width_stages else ""))
        return list(choices[:n]), list(choices[n:])

    def min_ms(self) -> float:
        """The fastest network the space can make: sum of per-layer minima + fixed (ms); with
        width choices, the fastest over every width assignment."""
        if self.width is None:
            return float(sum(r.min() for r in self.layers) + self.fixed_ms)
        return min(self._plain(self.width, ws).min_ms() for ws in self.width.assignments())

    def max_ms(self) -> float:
        if self.width is None:
            return float(sum(r.max() for r in self.layers) + self.fixed_ms)
        return max(self._plain(self.width, ws).max_ms() for ws in self.width.assignments())

    def arch_ms(self, choices: Sequence[int]) -> float:
        """Predicted latency of the network that takes ``choices[i]`` at searchable layer i (then,
        with width choices, stage s at width ``choices[len(layers) + s]``) (ms)."""
        if self.width is None:
            return float(sum(r[c] for r, c in zip(self.layers, choices, strict=True)) + self.fixed_ms)
        ops, ws = self._split(choices)
        return self.at_widths([int(w) for w in ws]).arch_ms(ops)

    def expected_ms(self, probs: Sequence[torch.Tensor]) -> torch.Tensor:
        """E[LAT] = sum over layers of sum_j p_j F(o_j) + fixed (ms); differentiable in ``probs``
        (one row per searchable layer, then, with width choices, one per stage; exact: see the
        module docstring)."""
        if self.width is None:
            total = torch.tensor(self.fixed_ms, dtype=torch.float32)
            for p, r in zip(probs, self.layers, strict=True):
                total = total + (p * torch.as_tensor(r, dtype=p.dtype)).sum()
            return total
        ops, pw = self._split(probs)
        dtype = pw[0].dtype
        one = torch.ones(1, dtype=dtype)

        def side(st: int | None) -> torch.Tensor:
            return pw[st] if st is not None else one

        total = torch.tensor(self.width.const_ms, dtype=dtype)
        for p, r, (si, so) in zip(ops, self.width.rows, self.width.row_stages):
            per_pair = (torch.as_tensor(r, dtype=dtype) * p).sum(-1)  # (n_in, n_out)
            total = total + side(si) @ per_pair @ side(so)
        for r, (si, so) in zip(self.width.fixed_rows, self.width.fixed_stages):
            total = total + side(si) @ torch.as_tensor(r, dtype=dtype) @ side(so)
        return total


def latency_loss(ce: torch.Tensor, lat_ms: torch.Tensor, kind: str = "add", lam: float = 0.1,
                 target_ms: float | None = None, beta: float = 0.3, weight: float = 1.0) -> torch.Tensor:
    """The search loss from the cross-entropy ``ce`` and the (expected) latency ``lat_ms``.

    - ``"add"``: ``CE + lam * LAT`` (ProxylessNAS eq. in section 3.3; ``lam`` in 1/ms).
    - ``"mul"``: ``CE * (log LAT / log T)^beta`` with T = ``target_ms``; ``beta`` defaults to 0.3,
      the reference implementation's default. Needs T > 1 ms (log T > 0); LAT is clamped at 1 ms
      (below it log LAT < 0 and the power is undefined: no latency pressure there, far below T).
    - ``"ratio"``: ``CE * (LAT / T)^beta``, the same soft constraint without units (MnasNet's
      form): for sub-millisecond networks, where the log form is undefined. ProxylessNAS's form at
      its 80 ms phone target is close to this one with beta / ln 80 (0.3 -> 0.07).
    - ``"ceiling"``: ``CE * max(1, LAT / T)^beta``: MnasNet's hard constraint. Above T the same
      pressure as ``"ratio"``; at or below T none, so the search trades latency for accuracy up to T.

    - ``"hinge"``: ``CE + weight * max(0, LAT / T - 1)``: additive, so the latency gradient does not
      shrink with CE as training converges, and the target sets how strong it is relative to CE's
      (``weight / T`` per ms); none at or below T. ``weight`` is unitless: loss per 100 % over T.
    - ``"abs"``: ``CE + weight * |LAT / T - 1|``: TuNAS's absolute reward (Bender et al., CVPR 2020)
      as a loss: below T the latency term pulls the other way, so the search spends the budget it
      is given instead of stopping wherever CE leaves it.

    Why ``"ceiling"``, ``"hinge"`` and ``"abs"`` exist: in ``"mul"`` and ``"ratio"`` the target only multiplies the loss by a
    constant (``T^-beta``, ``(log T)^-beta``), and Adam, the architecture optimiser, is invariant to a
    constant scale of its gradients: those searches find the same network for every T
    (benchmarks/search_targets.py measured it). A loss whose shape changes at T makes T bind.
    """
    if kind == "add":
        return ce + lam * lat_ms
    if kind == "mul":
        if target_ms is None or target_ms <= 1.0:
            raise SearchError("the multiplicative loss needs --target-ms above 1 ms (log T must be positive); "
                              "use --loss ratio for faster targets")
        return ce * (torch.log(torch.clamp(lat_ms, min=1.0)) / math.log(target_ms)) ** beta
    if kind == "ratio":
        if target_ms is None or target_ms <= 0:
            raise SearchError("the ratio loss needs a positive --target-ms")
        return ce * (lat_ms / target_ms) ** beta
    if kind == "ceiling":
        if target_ms is None or target_ms <= 0:
            raise SearchError("the ceiling loss needs a positive --target-ms")
        return ce * torch.clamp(lat_ms / target_ms, min=1.0) ** beta
    if kind in ("hinge", "abs"):
        if target_ms is None or target_ms <= 0:
            raise SearchError(f"the {kind} loss needs a positive --target-ms")
        rel = lat_ms / target_ms - 1.0
        return ce + weight * (torch.clamp(rel, min=0.0) if kind == "hinge" else torch.abs(rel))
    raise SearchError(f"unknown latency loss {kind!r}; known: {', '.join(LOSSES)}")


def check_target(table: LatencyTable, target_ms: float | None) -> None:
    """Refuse a target below the fastest network the space can make."""
    if target_ms is None:
        return
    lo = table.min_ms()
    if target_ms < lo:
        raise SearchError(f"target {target_ms:g} ms is below the fastest network this space can make "
                          f"({lo:.4g} ms predicted); raise --target-ms")


def _key_of(e: KeyError) -> str:
    return str(e.args[0]) if e.args else "unknown block"


class StoredMedians:
    """A predictor made of stored medians (ms): one row per block key of one backend on one device.

    For searches without a fitted predictor (``--db DB --backend B``). The zero op costs 0 ms;
    a block not in the store raises `KeyError`.
    """

    def __init__(self, table: dict[str, float], source: str = ""):
        self.table = dict(table)
        self.source = source

    @classmethod
    def from_store(cls, db: str | Path, backend: str, device: str | None = "local",
                   threads: int | None = None, tuning: str | None = None) -> "StoredMedians":
        from profiler.store import Store

        if not Path(db).exists():
            raise SearchError(f"{db}: no such store; profile the space first (`hwnas profile --db {db} ...`)")
        from profiler.store import RowFilter

        with Store(db, create=False) as st:
            # rows timed under interference are no latency to search with: `hwnas profile` re-times them
            df = st.latest(RowFilter(backend=backend, device=device, threads=threads, tuning=tuning, kind="block"),
                           trusted_only=True)
        if df.empty:
            raise SearchError(f"{db}: no cleanly measured blocks for backend {backend!r} on device {device!r}"
                              + (f" tuned {tuning!r}" if tuning else " untuned" if tuning == "" else "")
                              + f"; profile them (`hwnas profile --db {db} ...`)")
        cfgs = df.groupby(["device_id", "tuning", "threads", "cores"]).ngroups
        if cfgs > 1:
            raise SearchError(f"{db}: {cfgs} configurations (device, tuning, threads, cores) for backend "
                              f"{backend!r}; narrow with --device / --threads / --tune-trials")
        return cls(dict(zip(df.block_key, df.median_ms.astype(float))), f"{db} ({backend}, {device})")

    def predict_ms(self, blocks: Sequence[BlockSpec]) -> np.ndarray:
        out = []
        for b in blocks:
            if b.kind == "zero":
                out.append(0.0)
            else:
                out.append(self.table[b.key])
        return np.asarray(out, dtype=float)
