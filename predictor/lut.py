"""Lookup tables of measured block latency, and the hybrid of a table with a regression model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from predictor._base import Predictor, PredictorError, UnknownBlockError
from predictor.regression import RegressionPredictor
from profiler.blocks import BlockKeyError, BlockSpec

__all__ = ["LookupTable", "HybridPredictor", "Entry", "SOURCES"]

#: where a predictor takes a block's latency from (``sources(blocks)`` of every predictor): its lookup
#: table, its regression model, or nowhere (the zero op, a skipped layer, costs 0 ms by definition)
SOURCES = ("table", "regression", "zero")


@dataclass(frozen=True)
class Entry:
    """One measured block: ``mean_ms`` is the latency the table returns (ms; from a store it is the
    median of the samples, the robust centre), ``count`` the samples behind it, ``var_ms2`` their
    variance (ms^2; 0 when unknown)."""

    mean_ms: float
    count: int = 0
    var_ms2: float = 0.0


class LookupTable(Predictor):
    """Exact block keys -> measured latency (ms). A block not in the table raises `UnknownBlockError`.

    Keys are stored canonical (`BlockSpec.from_key(k).key`), so a key written with another token order
    or an OFA key with the same meaning finds its row.
    """

    def __init__(self, entries: Mapping[str, Entry | float], overhead_ms: float = 0.0,
                 meta: dict[str, Any] | None = None, source: str = "the lookup table"):
        self.entries: dict[str, Entry] = {}
        for k, e in entries.items():
            try:
                key = BlockSpec.from_key(k).key
            except BlockKeyError as err:
                raise PredictorError(f"{source}: {err}") from None
            e = e if isinstance(e, Entry) else Entry(float(e))
            if not (np.isfinite(e.mean_ms) and e.mean_ms >= 0):
                raise PredictorError(f"{source}: latency of {k} must be a non-negative number of ms, got {e.mean_ms}")
            if key in self.entries and self.entries[key] != e:
                raise PredictorError(f"{source}: two rows for block {key} with different latencies")
            self.entries[key] = e
        self.overhead_ms = float(overhead_ms)
        self.meta = dict(meta or {})
        self.source = source

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, block: BlockSpec | str) -> bool:
        key = block.key if isinstance(block, BlockSpec) else block
        return key in self.entries

    def blocks(self) -> list[BlockSpec]:
        return [BlockSpec.from_key(k) for k in self.entries]

    def _predict_nonzero(self, blocks: list[BlockSpec]) -> np.ndarray:
        out = np.empty(len(blocks))
        for i, b in enumerate(blocks):
            e = self.entries.get(b.key)
            if e is None:
                raise UnknownBlockError(b.key, self.source)
            out[i] = e.mean_ms
        return out

    def sources(self, blocks: Sequence[BlockSpec]) -> list[str]:
        """Where each block's latency comes from (`SOURCES`): ``table``, or ``zero`` for the zero op.

        Raises:
            UnknownBlockError: a block the table lacks (as `predict_ms` does).
        """
        out = []
        for b in blocks:
            if b.kind != "zero" and b.key not in self.entries:
                raise UnknownBlockError(b.key, self.source)
            out.append("zero" if b.kind == "zero" else "table")
        return out

    def describe(self) -> str:
        return f"lookup table ({len(self)} blocks)"

    def to_dict(self) -> dict[str, Any]:
        return {k: {"mean_ms": e.mean_ms, "count": e.count, "var_ms2": e.var_ms2} for k, e in self.entries.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any], **kw: Any) -> "LookupTable":
        try:
            return cls({k: Entry(float(v["mean_ms"]), int(v.get("count", 0)), float(v.get("var_ms2", 0.0)))
                        for k, v in d.items()}, **kw)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            if isinstance(e, PredictorError):
                raise
            raise PredictorError(f"malformed lookup table in the predictor file ({type(e).__name__}: {e})") from None


class HybridPredictor(Predictor):
    """The table's latency where a block was measured, the regression's elsewhere (ms)."""

    def __init__(self, table: LookupTable, regression: RegressionPredictor, overhead_ms: float = 0.0,
                 meta: dict[str, Any] | None = None):
        self.table = table
        self.regression = regression
        self.overhead_ms = float(overhead_ms)
        self.meta = dict(meta or {})

    def _predict_nonzero(self, blocks: list[BlockSpec]) -> np.ndarray:
        out = np.empty(len(blocks))
        miss = []
        for i, b in enumerate(blocks):
            e = self.table.entries.get(b.key)
            if e is None:
                miss.append(i)
            else:
                out[i] = e.mean_ms
        if miss:
            out[miss] = self.regression._predict_nonzero([blocks[i] for i in miss])
        return out

    def sources(self, blocks: Sequence[BlockSpec]) -> list[str]:
        """Where each block's latency comes from (`SOURCES`), the choice `predict_ms` makes: ``table``
        for a block the table holds, ``regression`` for the rest, ``zero`` for the zero op."""
        return ["zero" if b.kind == "zero" else "table" if b.key in self.table.entries else "regression"
                for b in blocks]

    def describe(self) -> str:
        return f"hybrid: {self.table.describe()}, else {self.regression.describe()}"
