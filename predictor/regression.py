"""Regression predictors of block latency, fitted to measured blocks (scikit-learn, numpy, scipy).

Families (`FAMILIES`), all fitted on `predictor.features` of the blocks:

- ``linear``: latency_ms = w . [MFLOPs, MB read, MB written, 1] with w >= 0 (non-negative least
  squares of the relative error): a roofline-like additive law that extrapolates sanely and never
  predicts below zero.
- ``loglinear``: ridge regression of log(latency) on the log sizes and flags (alpha chosen by inner
  leave-one-out); multiplicative effects, e.g. ms ~ FLOPs^0.8.
- ``gbt``: gradient-boosted trees (scikit-learn) on the same inputs, log target.
- ``forest``: a random forest (scikit-learn) on the same inputs, log target.

``family="auto"`` picks the family with the lowest cross-validated MAPE on the user's rows; the
scores of every family are kept with the predictor.

Saving: a fitted model is reduced to plain arrays, so a saved predictor is JSON and loads without
pickle and without running scikit-learn: coefficients for the linear models, and for the tree
ensembles every tree's arrays (children, split feature, threshold, leaf value), which this module
walks in numpy exactly as scikit-learn does (inputs cast to float32, ``x <= threshold`` goes left).
`_freeze` checks that the arrays reproduce scikit-learn's own predictions before anything is saved,
and `RegressionPredictor.from_dict` checks them again on the saved training rows when loading.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from predictor._base import Predictor, PredictorError
from predictor._metrics import fold_indices, metrics
from predictor.features import FEATURE_NAMES, FEATURE_VERSION, features, log_features
from profiler.blocks import BlockSpec

__all__ = ["RegressionPredictor", "FAMILIES", "MIN_ROWS"]

FAMILIES = ("linear", "loglinear", "gbt", "forest")
#: fewest measured blocks a regression is fitted on (3 rows still allow a leave-one-out selection)
MIN_ROWS = 3

_LINEAR_COLUMNS = ("mflops", "mb_read", "mb_written")
_GBT = dict(n_estimators=200, learning_rate=0.05, max_depth=3, min_samples_leaf=2, subsample=1.0)
_FOREST = dict(n_estimators=100, min_samples_leaf=1, max_features=1.0)
_RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-4, 3, 15))


# ---- the families: fit -> a JSON-able state; predict from the state ------------------------------

def _fit_linear(x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, Any]:
    from scipy.optimize import nnls

    cols = [FEATURE_NAMES.index(c) for c in _LINEAR_COLUMNS]
    a = np.column_stack([x[:, cols], np.ones(len(x))])
    # NNLS is scale-sensitive: solve on columns scaled to a max of 1, then scale the weights back
    scale = np.maximum(np.abs(a).max(axis=0), 1e-12)
    # rows divided by y: least squares of the relative error, so that the many small blocks are not
    # sacrificed to the few large ones (latency spans two to three decades in a space)
    w, _ = nnls(a / scale / y[:, None], np.ones_like(y))
    w = w / scale
    return {"columns": list(_LINEAR_COLUMNS), "coef": w[:-1].tolist(), "intercept": float(w[-1])}


def _predict_linear(s: dict[str, Any], x: np.ndarray) -> np.ndarray:
    cols = [FEATURE_NAMES.index(c) for c in s["columns"]]
    return x[:, cols] @ np.asarray(s["coef"]) + s["intercept"]


def _fit_loglinear(x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, Any]:
    from sklearn.linear_model import RidgeCV

    z = log_features(x)
    mean = z.mean(axis=0)
    scale = z.std(axis=0)
    scale[scale == 0] = 1.0  # a constant column (a kind absent from the data) stays 0 after centring
    m = RidgeCV(alphas=_RIDGE_ALPHAS).fit((z - mean) / scale, np.log(y))
    return {"mean": mean.tolist(), "scale": scale.tolist(), "coef": m.coef_.tolist(),
            "intercept": float(m.intercept_), "alpha": float(m.alpha_)}


def _predict_loglinear(s: dict[str, Any], x: np.ndarray) -> np.ndarray:
    z = (log_features(x) - np.asarray(s["mean"])) / np.asarray(s["scale"])
    return np.exp(z @ np.asarray(s["coef"]) + s["intercept"])


def _tree_arrays(tree) -> dict[str, list]:
    t = tree.tree_
    return {"left": t.children_left.tolist(), "right": t.children_right.tolist(),
            "feature": t.feature.tolist(), "threshold": t.threshold.tolist(), "value": t.value[:, 0, 0].tolist()}


def _walk(tree: dict[str, Any], x32: np.ndarray) -> np.ndarray:
    """Leaf values of one regression tree for each row (scikit-learn's traversal rule)."""
    arr = tree.get("_np")
    if arr is None:  # converted once, kept beside the lists
        arr = tree["_np"] = tuple(np.asarray(tree[k]) for k in ("left", "right", "feature", "threshold", "value"))
    left, right, feat, thr, val = arr
    rows = np.arange(len(x32))
    node = np.zeros(len(x32), dtype=np.int64)
    while True:
        inner = left[node] != -1
        if not inner.any():
            return val[node]
        f = np.where(inner, feat[node], 0)
        go_left = x32[rows, f] <= thr[node]  # float32 input against a float64 threshold, as in sklearn
        node = np.where(inner, np.where(go_left, left[node], right[node]), node)


def _fit_gbt(x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, Any]:
    from sklearn.ensemble import GradientBoostingRegressor

    z = log_features(x)
    m = GradientBoostingRegressor(random_state=seed, **_GBT).fit(z, np.log(y))
    s = {"hyper": dict(_GBT, random_state=seed), "init": float(m.init_.predict(z[:1])[0]),
         "learning_rate": float(m.learning_rate), "trees": [_tree_arrays(t[0]) for t in m.estimators_]}
    _check_frozen(s, _predict_gbt, x, np.exp(m.predict(z)), "gbt")
    return s


def _predict_gbt(s: dict[str, Any], x: np.ndarray) -> np.ndarray:
    z32 = log_features(x).astype(np.float32)
    raw = np.full(len(x), s["init"])
    for t in s["trees"]:
        raw += s["learning_rate"] * _walk(t, z32)
    return np.exp(raw)


def _fit_forest(x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, Any]:
    from sklearn.ensemble import RandomForestRegressor

    z = log_features(x)
    m = RandomForestRegressor(random_state=seed, n_jobs=1, **_FOREST).fit(z, np.log(y))
    s = {"hyper": dict(_FOREST, random_state=seed), "trees": [_tree_arrays(t) for t in m.estimators_]}
    _check_frozen(s, _predict_forest, x, np.exp(m.predict(z)), "forest")
    return s


def _predict_forest(s: dict[str, Any], x: np.ndarray) -> np.ndarray:
    z32 = log_features(x).astype(np.float32)
    return np.exp(np.mean([_walk(t, z32) for t in s["trees"]], axis=0))


def _check_frozen(state, predict, x, want, family) -> None:
    got = predict(state, x)
    if not np.allclose(got, want, rtol=1e-9, atol=0):
        raise RuntimeError(f"{family}: the saved tree arrays do not reproduce scikit-learn's predictions "
                           f"(max rel. diff {np.max(np.abs(got / want - 1)):.3g}); a scikit-learn change?")


_FIT = {"linear": _fit_linear, "loglinear": _fit_loglinear, "gbt": _fit_gbt, "forest": _fit_forest}
_PREDICT = {"linear": _predict_linear, "loglinear": _predict_loglinear, "gbt": _predict_gbt,
            "forest": _predict_forest}


def fit_state(family: str, x: np.ndarray, y_ms: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Fit one family on a feature matrix and latencies (ms); the portable state."""
    return _FIT[family](x, y_ms, seed)


def predict_state(family: str, state: dict[str, Any], x: np.ndarray) -> np.ndarray:
    return _PREDICT[family](state, x)


def cross_val_predict(family: str, x: np.ndarray, y_ms: np.ndarray, folds: int | str = 5,
                      seed: int = 0) -> np.ndarray:
    """Out-of-fold predictions (ms) of one family: each row predicted by a model that never saw it."""
    out = np.empty(len(y_ms))
    for tr, te in fold_indices(len(y_ms), folds, seed):
        out[te] = predict_state(family, fit_state(family, x[tr], y_ms[tr], seed), x[te])
    return out


def select_family(x: np.ndarray, y_ms: np.ndarray, families: Sequence[str] = FAMILIES, folds: int | str = 5,
                  seed: int = 0) -> tuple[str, dict[str, dict[str, float]]]:
    """The family with the lowest cross-validated MAPE, and every family's CV metrics.

    Ties go to the family listed first (the simpler one).
    """
    scores = {f: metrics(y_ms, cross_val_predict(f, x, y_ms, folds, seed)) for f in families}
    best = min(families, key=lambda f: (round(scores[f]["mape"], 12), families.index(f)))
    return best, scores


def _check_rows(blocks: Sequence[BlockSpec], y_ms: np.ndarray) -> None:
    if len(blocks) != len(y_ms):
        raise PredictorError(f"{len(blocks)} blocks but {len(y_ms)} latencies")
    if len(blocks) < MIN_ROWS:
        raise PredictorError(f"a regression needs at least {MIN_ROWS} measured blocks, got {len(blocks)}; "
                             "profile more blocks (e.g. a whole space)")
    if not np.all(np.isfinite(y_ms)) or np.any(y_ms <= 0):
        raise PredictorError("latencies must be positive, finite numbers of milliseconds")
    if any(b.kind == "zero" for b in blocks):
        raise PredictorError("the zero op costs 0 ms by definition; leave it out of the training rows")


class RegressionPredictor(Predictor):
    """A regression model of block latency (ms). Never raises for a valid block: it extrapolates.

    Attributes:
        family: one of `FAMILIES`.
        state: the model's portable parameters (see the module docstring).
        cv: per family, cross-validated metrics on the training rows (``metrics`` keys), when chosen
            by cross-validation.
        train_keys, train_ms: the training rows (block keys, measured ms).
    """

    def __init__(self, family: str, state: dict[str, Any], train_keys: Sequence[str] = (),
                 train_ms: Sequence[float] = (), cv: dict[str, Any] | None = None, overhead_ms: float = 0.0,
                 meta: dict[str, Any] | None = None):
        if family not in FAMILIES:
            raise PredictorError(f"unknown regression family {family!r}; known: {', '.join(FAMILIES)}")
        self.family = family
        self.state = state
        self.train_keys = list(train_keys)
        self.train_ms = [float(v) for v in train_ms]
        self.cv = cv or {}
        self.overhead_ms = float(overhead_ms)
        self.meta = dict(meta or {})

    @classmethod
    def fit(cls, blocks: Sequence[BlockSpec], y_ms: Sequence[float], family: str = "auto",
            folds: int | str = 5, seed: int = 0, meta: dict[str, Any] | None = None) -> "RegressionPredictor":
        """Fit to measured blocks (latency in ms). ``family="auto"``: chosen by ``folds``-fold CV MAPE.

        Raises:
            PredictorError: fewer than `MIN_ROWS` rows, non-positive latencies, an unknown family.
        """
        blocks = list(blocks)
        y = np.asarray(y_ms, dtype=float)
        _check_rows(blocks, y)
        x = features(blocks)
        cv: dict[str, Any] = {}
        if family == "auto":
            family, scores = select_family(x, y, FAMILIES, folds, seed)
            cv = {"folds": folds, "seed": seed, "selected_by": "mape", "scores": scores}
        elif family not in FAMILIES:
            raise PredictorError(f"unknown regression family {family!r}; known: auto, {', '.join(FAMILIES)}")
        state = fit_state(family, x, y, seed)
        return cls(family, state, [b.key for b in blocks], y, cv, meta=meta)

    def _predict_nonzero(self, blocks: list[BlockSpec]) -> np.ndarray:
        # a tiny floor: the log models are positive anyway; the linear one can reach 0 for a free block
        return np.maximum(predict_state(self.family, self.state, features(blocks)), 0.0)

    def sources(self, blocks: Sequence[BlockSpec]) -> list[str]:
        """Where each block's latency comes from: ``regression``, or ``zero`` for the zero op (0 ms)."""
        return ["zero" if b.kind == "zero" else "regression" for b in blocks]

    def describe(self) -> str:
        return f"regression ({self.family}, {len(self.train_keys)} training rows)"

    # ---- saving ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        state = _strip_cache(self.state)
        train_pred = self.predict_ms([BlockSpec.from_key(k) for k in self.train_keys]).tolist() \
            if self.train_keys else []
        return {"family": self.family, "state": state, "train_keys": self.train_keys, "train_ms": self.train_ms,
                "train_pred_ms": train_pred, "cv": self.cv, "feature_version": FEATURE_VERSION,
                "feature_names": list(FEATURE_NAMES)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], overhead_ms: float = 0.0,
                  meta: dict[str, Any] | None = None) -> "RegressionPredictor":
        try:
            p = cls(d["family"], d["state"], d.get("train_keys", []), d.get("train_ms", []), d.get("cv"),
                    overhead_ms, meta)
            want = np.asarray(d.get("train_pred_ms", []), dtype=float)
            if len(want):
                got = p.predict_ms([BlockSpec.from_key(k) for k in p.train_keys])
                ok = np.allclose(got, want, rtol=1e-9, atol=1e-12)
            else:
                ok = True
        except (KeyError, TypeError, IndexError, ValueError) as e:
            if isinstance(e, PredictorError):
                raise
            raise PredictorError(f"malformed regression model in the predictor file ({type(e).__name__}: {e})") \
                from None
        if not ok:
            raise PredictorError("the saved regression model does not reproduce its saved predictions on its "
                                 "training rows; the file was edited or is corrupt, fit it again")
        return p


def _strip_cache(obj: Any) -> Any:
    """A deep copy without the numpy arrays cached by `_walk` (they are not JSON)."""
    if isinstance(obj, dict):
        return {k: _strip_cache(v) for k, v in obj.items() if k != "_np"}
    if isinstance(obj, list):
        return [_strip_cache(v) for v in obj]
    return obj
