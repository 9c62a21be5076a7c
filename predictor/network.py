"""Network-level latency: the sum of block predictions plus a fitted per-network overhead.

Three ways to fit, from whole-network measurements (block lists + one latency in ms each):

- `fit_overhead`: keep a block predictor, fit only the overhead (the mean of measured - predicted sum).
- `fit_refined`: keep a block predictor as the prior and learn, from the networks, a factor per
  block (its cost inside a network against its cost alone: caches, layouts and operator fusion that
  a block timed in isolation does not see), shrunk toward 1 by a ridge term chosen by k-fold
  cross-validation on the networks, plus the overhead:

      y_n = sum_j A[n, j] p_j s_j + o,    minimise |A (p * s) + o - y|^2 + lam |s - 1|^2,  s >= 0

  Blocks no network contains keep their prior cost (s = 1).
- `fit_networks`: no block measurements at all. Per-block costs are learned from the sums:

      y_n = sum_j A[n, j] c_j + o        A[n, j] = how often block j occurs in network n

  solved in two stages. (1) a linear law c_j = w . [MFLOPs, MB read, MB written, 1] (w >= 0), fitted
  through the sums, which gives a cost to every block, seen or not; (2) per-block costs c_j >= 0
  shrunk toward that law with a small ridge term (``ridge``, relative to the scale of A), so that
  blocks the networks pin down get their own cost and the rest stay on the law. With more networks
  than distinct blocks and enough variety, stage 2 recovers the true costs. The result is a
  `HybridPredictor`: the learned costs as its table, the law as its regression, and the overhead.
  When every network shares some blocks (stem, classifier) their costs and the overhead cannot be
  told apart; their sum is still right, which is all a network prediction needs.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from predictor._base import Predictor, PredictorError
from predictor.features import FEATURE_NAMES, features
from predictor.lut import Entry, HybridPredictor, LookupTable
from predictor.regression import _LINEAR_COLUMNS, RegressionPredictor
from profiler.blocks import BlockSpec, unique

__all__ = ["AUTO_MODELS", "NETWORK_MODELS", "NetworkFit", "choose_network_model", "fit_linear", "fit_network_model", "fit_networks",
           "fit_overhead", "fit_refined"]

#: how a block predictor is combined with whole-network measurements (`hwnas fit --network-model`):
#: ``overhead`` y = sum + c; ``linear`` y = a sum + c (a: in-network cost against alone, 4+ networks);
#: ``block`` y = sum + d k + c (d: what each of the network's k non-zero blocks costs in a network beyond
#: its isolated timing, 4+ networks with different k); ``auto`` the best of those and ``linear-block``
#: by leave-one-out; ``refine`` a factor per block (see the module doc)
NETWORK_MODELS = ("overhead", "linear", "block", "auto", "refine")

#: ``linear`` has two parameters; with fewer networks its leave-one-out score means nothing
MIN_LINEAR_NETWORKS = 4


def _check(nets: Sequence[Sequence[BlockSpec]], y_ms: Sequence[float]) -> np.ndarray:
    y = np.asarray(y_ms, dtype=float)
    if len(nets) != len(y):
        raise PredictorError(f"{len(nets)} networks but {len(y)} latencies")
    if len(nets) < 2:
        raise PredictorError(f"fitting from whole networks needs at least 2 measured networks, got {len(nets)}")
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise PredictorError("network latencies must be positive, finite numbers of milliseconds")
    return y


def fit_overhead(base: Predictor, nets: Sequence[Sequence[BlockSpec]], y_ms: Sequence[float]) -> Predictor:
    """A copy of ``base`` whose per-network overhead (ms) is the mean of measured minus predicted sum.

    Raises `UnknownBlockError` when ``base`` is a table that lacks a block of a network.
    """
    y = _check(nets, y_ms)
    sums = np.array([np.sum(base.predict_ms(n)) for n in nets])
    p = copy.copy(base)
    p.overhead_ms = float(np.mean(y - sums))
    p.meta = dict(base.meta, overhead_from_networks=len(nets),
                  overhead_residual_rms_ms=float(np.sqrt(np.mean((y - sums - p.overhead_ms) ** 2))))
    return p


def fit_linear(base: Predictor, nets: Sequence[Sequence[BlockSpec]], y_ms: Sequence[float]) -> Predictor:
    """A copy of ``base`` with network = ``a`` x block sum + ``c`` (ms), fitted by least squares:
    ``a`` (`Predictor.network_scale`) is what a block costs inside a network against alone.

    Raises `PredictorError` with fewer than `MIN_LINEAR_NETWORKS` networks or a non-positive slope.
    """
    y = _check(nets, y_ms)
    if len(y) < MIN_LINEAR_NETWORKS:
        raise PredictorError(f"the linear network model needs at least {MIN_LINEAR_NETWORKS} measured networks, "
                             f"got {len(y)}; use the overhead model")
    sums = np.array([np.sum(base.predict_ms(n)) for n in nets])
    a, _, c = _solve("linear", sums, np.zeros_like(sums), y) or (np.nan, 0.0, np.nan)
    if not a > 0:
        raise PredictorError(f"the linear network model fitted a slope of {a:.3g}: the networks do not span enough "
                             "latency to fit it; use the overhead model or time more varied networks")
    p = copy.copy(base)
    p.network_scale = float(base.network_scale * a)
    p.overhead_ms = float(c)
    p.meta = dict(base.meta, network_model="linear", network_scale=p.network_scale, overhead_from_networks=len(y),
                  overhead_residual_rms_ms=float(np.sqrt(np.mean((a * sums + c - y) ** 2))))
    return p


#: a model with more parameters must beat the chosen one's leave-one-out MAPE by this much too (a fraction:
#: 0.1 point), so that a fit already exact is not replaced by one that is exact with an extra parameter
MIN_GAIN = 1e-3

#: the network models `choose_network_model` can fit, simplest first, as (uses a scale, uses a per-block term):
#: ``overhead`` y = sum + c; ``linear`` y = a sum + c; ``block`` y = sum + d k + c (k: the network's
#: non-zero blocks); ``linear-block`` y = a sum + d k + c
_FORMS = {"overhead": (False, False), "linear": (True, False), "block": (False, True), "linear-block": (True, True)}


def _solve(kind: str, sums: np.ndarray, counts: np.ndarray, y: np.ndarray) -> tuple[float, float, float] | None:
    """(a, d, c) of network model ``kind`` by least squares on relative residuals ((fit - y) / y): networks
    spanning 20x in latency weigh alike, so the fast end (where a latency-bound search lands) is not left
    to the slow one. None when the networks cannot pin its parameters down (too few, or every network
    has the same number of blocks)."""
    scaled, per_block = _FORMS[kind]
    cols = ([sums] if scaled else []) + ([counts] if per_block else []) + [np.ones_like(y)]
    x = np.column_stack(cols)
    if len(y) < x.shape[1] or np.linalg.matrix_rank(x / y[:, None]) < x.shape[1]:
        return None
    rhs = y - (0.0 if scaled else sums)
    sol, *_ = np.linalg.lstsq(x / y[:, None], rhs / y, rcond=None)
    sol = list(sol)
    a = sol.pop(0) if scaled else 1.0
    d = sol.pop(0) if per_block else 0.0
    return float(a), float(d), float(sol[0])


def nonzero_counts(nets: Sequence[Sequence[BlockSpec]]) -> np.ndarray:
    """How many non-zero blocks (what the per-block term is paid for) each network has."""
    return np.array([sum(1 for b in n if b.kind != "zero") for n in nets], dtype=float)


@dataclass(frozen=True)
class NetworkFit:
    """A network model chosen on whole-network measurements, and how it does on networks it was not
    fitted on (leave-one-out). Latencies in ms, one entry per network."""

    model: str  # one of _FORMS
    scale: float  # network_scale of the chosen model (x)
    overhead_ms: float
    block_sum_ms: list[float]  # the block predictor's plain sums
    measured_ms: list[float]
    predicted_loo_ms: list[float]  # each network predicted by the model fitted on the others
    metrics_block_sum: dict[str, float]
    metrics_loo: dict[str, float] | None  # None with a single network
    candidates: dict[str, dict[str, Any]]  # every model tried: scale, block_ms, overhead_ms, metrics_loo
    block_ms: float = 0.0  # the per-block term (ms per non-zero block) of the chosen model

    @property
    def range_ms(self) -> tuple[float, float]:
        """The measured latencies the model was fitted on (min, max): outside it, it extrapolates."""
        return float(min(self.measured_ms)), float(max(self.measured_ms))

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), n=len(self.measured_ms), range_ms=list(self.range_ms))


#: what `choose_network_model` tries unless told otherwise
AUTO_MODELS = tuple(_FORMS)


def choose_network_model(base: Predictor, nets: Sequence[Sequence[BlockSpec]], y_ms: Sequence[float],
                         models: Sequence[str] = AUTO_MODELS) -> tuple[Predictor, NetworkFit]:
    """Fit each of ``models`` (`_FORMS`, simplest first) on the networks' relative errors, score each by
    leave-one-out, and return the chosen predictor with the record of the choice. A model with more
    parameters replaces the one chosen so far only where its leave-one-out MAPE is below 0.9x that
    one's and at least `MIN_GAIN` lower: the simpler model wins ties and small sets. A model needs two networks more than its
    parameters; ``block`` also networks that differ in their number of blocks.
    """
    from predictor._metrics import metrics

    y = _check(nets, y_ms)
    sums = np.array([float(np.sum(base.predict_ms(n))) for n in nets])
    counts = nonzero_counts(nets)
    n = len(y)
    tried: dict[str, dict[str, Any]] = {}
    for kind in models:
        if kind not in _FORMS:
            raise PredictorError(f"unknown network model {kind!r} to choose from; known: {', '.join(_FORMS)}")
        params = sum(_FORMS[kind]) + 1
        # the offset fits from any 2 networks (its leave-one-out from 1); a model with more parameters
        # needs two networks more than it has, so that each leave-one-out fold is still overdetermined
        sol = _solve(kind, sums, counts, y) if n >= (2 if params == 1 else params + 2) else None
        if sol is None or not sol[0] > 0:
            continue  # not enough networks, no spread in block counts, or a flat or falling line
        loo = np.full(n, np.nan)
        for i in range(n):
            keep = np.arange(n) != i
            f = _solve(kind, sums[keep], counts[keep], y[keep]) or (np.nan, np.nan, np.nan)
            loo[i] = f[0] * sums[i] + f[1] * counts[i] + f[2]
        ok = bool(np.all(np.isfinite(loo)))
        tried[kind] = {"scale": sol[0], "block_ms": sol[1], "overhead_ms": sol[2], "predicted_loo_ms": loo,
                       "metrics_loo": metrics(y, loo) if ok else None}
    if not tried:
        raise PredictorError(f"no network model of {', '.join(models)} could be fitted to {n} networks: a model needs "
                             "two networks more than its parameters, and `block` networks with different numbers "
                             "of blocks; time more networks or use the overhead model")
    kind = next(iter(tried))
    for k, v in tried.items():
        if v["metrics_loo"] and tried[kind]["metrics_loo"]:
            now, new = tried[kind]["metrics_loo"]["mape"], v["metrics_loo"]["mape"]
            if new < 0.9 * now and now - new > MIN_GAIN:
                kind = k
    ch = tried[kind]
    pred = copy.copy(base)
    pred.network_scale = float(base.network_scale * ch["scale"])
    pred.block_overhead_ms = float(base.block_overhead_ms * ch["scale"] + ch["block_ms"])
    pred.overhead_ms = float(ch["overhead_ms"])
    resid = ch["scale"] * sums + ch["block_ms"] * counts + ch["overhead_ms"] - y
    pred.meta = dict(base.meta, network_model=kind, network_scale=pred.network_scale,
                     block_overhead_ms=pred.block_overhead_ms, overhead_from_networks=len(y),
                     overhead_residual_rms_ms=float(np.sqrt(np.mean(resid ** 2))))
    fit = NetworkFit(kind, float(pred.network_scale), float(pred.overhead_ms), sums.tolist(), y.tolist(),
                     ch["predicted_loo_ms"].tolist(), metrics(y, sums), ch["metrics_loo"],
                     {k: {"scale": v["scale"], "block_ms": v["block_ms"], "overhead_ms": v["overhead_ms"],
                          "metrics_loo": v["metrics_loo"]} for k, v in tried.items()},
                     block_ms=float(pred.block_overhead_ms))
    return pred, fit


def _occurrences(nets: Sequence[Sequence[BlockSpec]]) -> tuple[list[BlockSpec], np.ndarray]:
    """Distinct non-zero blocks and the count matrix A[n, j] of block j in network n."""
    blocks = unique(b for n in nets for b in n if b.kind != "zero")
    col = {b: j for j, b in enumerate(blocks)}
    a = np.zeros((len(nets), len(blocks)))
    for i, n in enumerate(nets):
        for b in n:
            if b.kind != "zero":
                a[i, col[b]] += 1
    return blocks, a


def _solve_factors(ap: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
    """min |ap s + o - y|^2 + lam |s - 1|^2 over s >= 0 and o free; ``ap`` is A scaled by the prior."""
    from scipy.optimize import lsq_linear

    k = ap.shape[1]
    s = np.sqrt(lam)
    m = np.vstack([np.column_stack([ap, np.ones(len(y))]), np.column_stack([s * np.eye(k), np.zeros(k)])])
    rhs = np.concatenate([y, s * np.ones(k)])
    r = lsq_linear(m, rhs, bounds=([0.0] * k + [-np.inf], [np.inf] * (k + 1)))
    return r.x[:-1], float(r.x[-1])


#: ridge strengths tried, relative to the mean squared column of A scaled by the prior
REFINE_RIDGES = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def fit_refined(base: Predictor, nets: Sequence[Sequence[BlockSpec]], y_ms: Sequence[float],
                ridge: float | None = None, folds: int = 5, seed: int = 0) -> Predictor:
    """Block costs of ``base`` refined on whole-network latencies (ms): a factor per block, shrunk
    toward 1; ``ridge`` (relative) chosen by ``folds``-fold CV on the networks when None.

    Raises `UnknownBlockError` when ``base`` is a table that lacks a block of a network.
    """
    from predictor._metrics import fold_indices

    y = _check(nets, y_ms)
    blocks, a = _occurrences(nets)
    prior = base.predict_ms(blocks)
    ap = a * prior
    unit = float(np.sum(ap ** 2)) / max(len(blocks), 1)
    chosen, cv_rmspe = ridge, {}
    if chosen is None:
        k = min(folds, len(y))
        if k < 2:
            chosen = 1.0
        else:
            for r in REFINE_RIDGES:
                pred = np.empty(len(y))
                for tr, te in fold_indices(len(y), k, seed):
                    f, o = _solve_factors(ap[tr], y[tr], r * unit)
                    pred[te] = ap[te] @ f + o
                cv_rmspe[r] = float(np.sqrt(np.mean(((pred - y) / y) ** 2)))
            chosen = min(cv_rmspe, key=cv_rmspe.get)
    factors, overhead = _solve_factors(ap, y, chosen * unit)
    costs = prior * factors
    entries = {}
    table = getattr(base, "table", base if isinstance(base, LookupTable) else None)
    if table is not None:
        entries.update(table.entries)
    entries.update({b.key: Entry(float(c)) for b, c in zip(blocks, costs)})
    regression = getattr(base, "regression", base if isinstance(base, RegressionPredictor) else None)
    info = {"refined_from_networks": len(y), "refined_blocks": len(blocks), "ridge": chosen,
            "ridge_cv_rmspe": {str(k): v for k, v in cv_rmspe.items()},
            "factor_range": [float(factors.min()), float(factors.max())] if len(factors) else None,
            "residual_rms_ms": float(np.sqrt(np.mean((ap @ factors + overhead - y) ** 2)))}
    meta = dict(base.meta, **info)
    if regression is None:  # a table prior: unseen blocks still raise, as the table did
        return LookupTable(entries, overhead_ms=overhead, meta=meta, source="block costs refined on networks")
    lut = LookupTable(entries, source="block costs refined on networks")
    return HybridPredictor(lut, regression, overhead_ms=overhead, meta=meta)


def fit_network_model(base: Predictor | None, nets: Sequence[Sequence[BlockSpec]], y_ms: Sequence[float],
                      model: str = "overhead", seed: int = 0, meta: dict[str, Any] | None = None) -> Predictor:
    """The network-level model of `NETWORK_MODELS` on top of ``base``; without ``base``, per-block
    costs learned from the networks alone (`fit_networks`, with ``meta``)."""
    if model not in NETWORK_MODELS:
        raise PredictorError(f"unknown network model {model!r}; known: {', '.join(NETWORK_MODELS)}")
    if base is None:
        return fit_networks(nets, y_ms, meta=meta)
    if model == "refine":
        return fit_refined(base, nets, y_ms, seed=seed)
    if model == "linear":
        return fit_linear(base, nets, y_ms)
    if model == "auto":
        return choose_network_model(base, nets, y_ms)[0]
    if model == "block":
        return choose_network_model(base, nets, y_ms, models=("block",))[0]
    return fit_overhead(base, nets, y_ms)


def fit_networks(nets: Sequence[Sequence[BlockSpec]], y_ms: Sequence[float], ridge: float = 1e-5,
                 meta: dict[str, Any] | None = None) -> HybridPredictor:
    """Learn per-block costs and a per-network overhead from whole-network latencies (ms).

    Raises:
        PredictorError: fewer than 2 networks, a network of zero ops only, bad latencies.
    """
    from scipy.optimize import lsq_linear

    y = _check(nets, y_ms)
    blocks, a = _occurrences(nets)  # the zero op costs 0 ms by definition: not a column
    if not np.all(a.sum(axis=1) > 0):
        raise PredictorError("a network row holds only zero ops; it has no block to learn a cost from")
    cols = [FEATURE_NAMES.index(c) for c in _LINEAR_COLUMNS]
    phi = np.column_stack([features(blocks)[:, cols], np.ones(len(blocks))])

    # stage 1: the linear law through the network sums; overhead unbounded (its sign is the data's)
    m1 = np.column_stack([a @ phi, np.ones(len(nets))])
    scale = np.maximum(np.abs(m1).max(axis=0), 1e-12)
    inf = np.inf
    r1 = lsq_linear(m1 / scale, y, bounds=([0] * phi.shape[1] + [-inf], [inf] * (phi.shape[1] + 1)))
    sol1 = r1.x / scale
    w, o1 = sol1[:-1], sol1[-1]
    prior = phi @ w

    # stage 2: per-block costs, shrunk toward the law; lam is relative to the mean squared column of A
    lam = ridge * float(np.sum(a ** 2)) / max(len(blocks), 1)
    s = np.sqrt(lam)
    m2 = np.vstack([np.column_stack([a, np.ones(len(nets))]),
                    np.column_stack([s * np.eye(len(blocks)), np.zeros(len(blocks))])])
    rhs = np.concatenate([y, s * prior])
    r2 = lsq_linear(m2, rhs, bounds=([0] * len(blocks) + [-inf], [inf] * (len(blocks) + 1)))
    costs, overhead = r2.x[:-1], float(r2.x[-1])

    fitted = a @ costs + overhead
    info = {"fitted_from": "networks", "networks": len(nets), "distinct_blocks": len(blocks),
            "rank": int(np.linalg.matrix_rank(np.column_stack([a, np.ones(len(nets))]))),
            "ridge": ridge, "residual_rms_ms": float(np.sqrt(np.mean((fitted - y) ** 2))),
            "law_overhead_ms": float(o1)}
    law = RegressionPredictor("linear", {"columns": list(_LINEAR_COLUMNS), "coef": w[:-1].tolist(),
                                         "intercept": float(w[-1])})
    table = LookupTable({b.key: Entry(float(c)) for b, c in zip(blocks, costs)}, source="costs learned from networks")
    return HybridPredictor(table, law, overhead_ms=overhead, meta=dict(meta or {}, **info))
