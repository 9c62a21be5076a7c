"""One entry point that fits the predictor a user asks for from measured blocks."""

from __future__ import annotations

from typing import Any

import numpy as np

from predictor._base import Predictor, PredictorError
from predictor.lut import Entry, HybridPredictor, LookupTable
from predictor.regression import FAMILIES, RegressionPredictor
from profiler.blocks import BlockKeyError, BlockSpec

__all__ = ["fit_predictor", "MODELS"]

#: what `fit_predictor` can make: a hybrid (table + CV-chosen regression), a table only, a regression
#: only (auto-chosen or one named family)
MODELS = ("hybrid", "lut", "regression") + FAMILIES


def fit_predictor(entries: dict[str, Entry | float], model: str = "hybrid", folds: int | str = 5, seed: int = 0,
                  meta: dict[str, Any] | None = None) -> Predictor:
    """Fit a predictor to measured blocks ``key -> Entry`` (or ms).

    ``model``: ``hybrid`` (default; the table where measured, a regression chosen by ``folds``-fold CV
    elsewhere), ``lut`` (exact keys only), ``regression`` (auto-chosen family only), or one family name.

    Raises:
        PredictorError: an unknown model, a bad key, too few rows (a table needs 1, a regression 3).
    """
    if model not in MODELS:
        raise PredictorError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
    if not entries:
        raise PredictorError("no measured blocks to fit on")
    table = LookupTable(entries, meta=meta)
    if model == "lut":
        return table
    try:
        blocks = [BlockSpec.from_key(k) for k in table.entries]
    except BlockKeyError as e:  # pragma: no cover - LookupTable has parsed them already
        raise PredictorError(str(e)) from None
    y = np.array([e.mean_ms for e in table.entries.values()])
    nonzero = y > 0
    if not nonzero.all():  # a 0 ms row (a table written with zeros) cannot enter a log-space model
        blocks = [b for b, ok in zip(blocks, nonzero) if ok]
        y = y[nonzero]
    family = "auto" if model in ("hybrid", "regression") else model
    reg = RegressionPredictor.fit(blocks, y, family=family, folds=folds, seed=seed, meta=meta)
    if model == "hybrid":
        return HybridPredictor(table, reg, meta=meta)
    return reg
