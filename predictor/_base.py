"""The predictor interface the search uses, and the errors predictors raise."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from profiler.blocks import ArchSpec, BlockSpec
from profiler.errors import HwnasError

__all__ = ["Predictor", "UnknownBlockError", "PredictorError"]


class PredictorError(HwnasError, ValueError):
    """Bad input to a predictor (a malformed file, too few rows, a version mismatch): one line."""


class UnknownBlockError(HwnasError, KeyError):
    """A predictor has no latency for this block. ``args[0]`` is the block key.

    Derived from `KeyError` so that code asking a lookup table (the search's latency table) can catch
    it as the usual missing-key error; never replaced by a made-up number.
    """

    def __init__(self, key: str, where: str = "the lookup table"):
        super().__init__(key)
        self.key = key
        self.where = where

    def __str__(self) -> str:  # KeyError's own str() is the repr of the key, which reads badly
        return f"no latency for block {self.key} in {self.where}; measure it (`hwnas profile --block KEY`) " \
               "or use a regression or hybrid predictor"


class Predictor:
    """Latency of blocks and of whole networks, in milliseconds at batch 1.

    Subclasses implement `_predict_nonzero`; the zero op (a skipped layer) costs 0 ms by definition and
    never reaches it. ``overhead_ms`` is added once per network (runtime set-up, the first input copy,
    what the sum of isolated blocks misses); it may be negative when blocks overlap in the whole network.
    """

    overhead_ms: float = 0.0
    #: in-network cost of a block against its cost timed alone (x); 1 unless a network model (the
    #: ``linear`` entry of `predictor.network.NETWORK_MODELS`) fitted it on whole networks
    network_scale: float = 1.0
    #: what each non-zero block costs inside a network beyond its cost timed alone (ms, often negative:
    #: an isolated block's timing carries a per-call cost a network pays once); 0 unless the ``block``
    #: network model fitted it on whole networks. A block's prediction never goes below 0 ms.
    block_overhead_ms: float = 0.0
    meta: dict[str, Any]

    def predict_ms(self, blocks: Sequence[BlockSpec]) -> np.ndarray:
        """Predicted latency of each block (ms), float64 of shape (len(blocks),).

        Raises:
            UnknownBlockError: a block the predictor cannot predict (lookup tables only).
        """
        blocks = list(blocks)
        out = np.zeros(len(blocks))
        idx = [i for i, b in enumerate(blocks) if b.kind != "zero"]
        if idx:
            alone = np.asarray(self._predict_nonzero([blocks[i] for i in idx]), dtype=float)
            out[idx] = self.network_scale * alone
            if self.block_overhead_ms:
                out[idx] = np.maximum(out[idx] + self.block_overhead_ms, 0.0)
        return out

    def predict_network_ms(self, arch: ArchSpec | Sequence[BlockSpec]) -> float:
        """Sum of the block predictions plus the fitted per-network overhead (ms)."""
        blocks = arch.blocks if isinstance(arch, ArchSpec) else list(arch)
        return float(np.sum(self.predict_ms(blocks)) + self.overhead_ms)

    def _predict_nonzero(self, blocks: list[BlockSpec]) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__
