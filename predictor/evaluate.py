"""How accurate a predictor is: metrics, k-fold / leave-one-out cross-validation, a FLOPs baseline and
a predicted-vs-measured plot.

The baseline is what a FLOPs-only latency model gives: latency_ms = a * FLOPs + b (least squares),
always fitted on the same training rows as the model it is compared with, so the two numbers are
comparable. All latencies are ms; relative errors are fractions (0.05 = 5 %).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from predictor._base import Predictor, PredictorError
from predictor._metrics import METRIC_KEYS, fold_indices, metrics
from predictor.features import FEATURE_NAMES, features
from predictor.regression import FAMILIES, MIN_ROWS, fit_state, predict_state, select_family
from profiler.blocks import BlockSpec, flops

__all__ = ["Evaluation", "cross_validate", "cross_validate_networks", "score", "score_networks", "metrics", "plot",
           "METRIC_KEYS"]

_MFLOPS = FEATURE_NAMES.index("mflops")


@dataclass
class Evaluation:
    """Predictions of one evaluation, row by row, and their scores (``metrics`` keys, plus the same keys
    under ``flops_baseline``)."""

    keys: list[str]
    measured_ms: np.ndarray
    predicted_ms: np.ndarray
    baseline_ms: np.ndarray
    how: dict[str, Any] = field(default_factory=dict)
    unit: str = "block"  # what a row is: "block" (keys are block keys) or "network" (keys name the rows)

    @property
    def scores(self) -> dict[str, Any]:
        s: dict[str, Any] = metrics(self.measured_ms, self.predicted_ms)
        s["flops_baseline"] = metrics(self.measured_ms, self.baseline_ms)
        return s

    def to_dict(self, rows: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = dict(self.scores, **self.how)
        if rows:
            name = "block_key" if self.unit == "block" else self.unit
            d["rows"] = [{name: k, "measured_ms": float(m), "predicted_ms": float(p), "flops_baseline_ms": float(b)}
                         for k, m, p, b in zip(self.keys, self.measured_ms, self.predicted_ms, self.baseline_ms)]
        return d


def _fit_flops(x_mflops: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    a = np.column_stack([x_mflops, np.ones(len(x_mflops))])
    (slope, icpt), *_ = np.linalg.lstsq(a, y, rcond=None)
    return float(slope), float(icpt)


def cross_validate(blocks: Sequence[BlockSpec], y_ms: Sequence[float], family: str = "auto",
                   folds: int | str = 5, seed: int = 0) -> Evaluation:
    """Out-of-fold predictions: each row is predicted by a model fitted without it (ms).

    ``family="auto"`` with k folds: the family is chosen inside each training fold by an inner CV
    (nested, so the choice never sees the held-out rows). With ``folds="loo"`` the choice is made
    once on all rows (nested leave-one-out would fit the families n x k times); the report says so.

    Raises:
        PredictorError: fewer than `MIN_ROWS` + 1 rows, an unknown family, bad folds.
    """
    blocks = list(blocks)
    y = np.asarray(y_ms, dtype=float)
    if len(blocks) < MIN_ROWS + 1:
        raise PredictorError(f"cross-validation needs at least {MIN_ROWS + 1} measured blocks, got {len(blocks)}")
    if family != "auto" and family not in FAMILIES:
        raise PredictorError(f"unknown regression family {family!r}; known: auto, {', '.join(FAMILIES)}")
    try:
        splits = fold_indices(len(y), folds, seed)
    except ValueError as e:
        raise PredictorError(str(e)) from None
    x = features(blocks)
    how: dict[str, Any] = {"mode": "cross-validation", "folds": folds, "seed": seed, "family": family}
    fixed = family
    if family == "auto" and folds == "loo":
        fixed, _ = select_family(x, y, FAMILIES, 5, seed)
        how["selection"] = f"once on all rows by 5-fold CV: {fixed}"
    pred, base = np.empty(len(y)), np.empty(len(y))
    chosen = []
    for tr, te in splits:
        fam = fixed
        if fam == "auto":
            # inner folds: at most 5, and at least MIN_ROWS rows to fit in each
            inner = max(2, min(5, len(tr) - MIN_ROWS + 1)) if len(tr) > MIN_ROWS else "loo"
            fam, _ = select_family(x[tr], y[tr], FAMILIES, inner, seed)
        chosen.append(fam)
        pred[te] = predict_state(fam, fit_state(fam, x[tr], y[tr], seed), x[te])
        slope, icpt = _fit_flops(x[tr, _MFLOPS], y[tr])
        base[te] = slope * x[te, _MFLOPS] + icpt
    if family == "auto":
        how["chosen_per_fold"] = chosen
    return Evaluation([b.key for b in blocks], y, pred, base, how)


def score(pred: Predictor, blocks: Sequence[BlockSpec], y_ms: Sequence[float], folds: int | str = 5,
          seed: int = 0) -> Evaluation:
    """Scores of a fitted predictor on measured blocks (ms).

    The FLOPs baseline here is cross-validated on the same rows (``folds``), since it has no training
    rows of its own. Rows the predictor was trained on (its table, its regression's training keys) are
    counted in ``how["seen_in_training"]``: scores on them are not a test of generalisation.

    Raises:
        UnknownBlockError: a lookup table lacks a block.
    """
    blocks = list(blocks)
    y = np.asarray(y_ms, dtype=float)
    if not blocks:
        raise PredictorError("no measured blocks to score the predictor on")
    p = pred.predict_ms(blocks)
    x = features(blocks)
    base = np.empty(len(y))
    if len(y) >= 2:
        for tr, te in fold_indices(len(y), folds, seed):
            slope, icpt = _fit_flops(x[tr, _MFLOPS], y[tr])
            base[te] = slope * x[te, _MFLOPS] + icpt
    else:
        base[:] = np.nan
    seen = set(getattr(pred, "entries", {})) | set(getattr(getattr(pred, "table", None), "entries", {}))
    seen |= set(getattr(pred, "train_keys", [])) | set(getattr(getattr(pred, "regression", None), "train_keys", []))
    how = {"mode": "score", "predictor": pred.describe(), "seen_in_training": sum(b.key in seen for b in blocks)}
    return Evaluation([b.key for b in blocks], y, p, base, how)


# ---- whole networks ----------------------------------------------------------------------------------

def _network_inputs(nets: Sequence[Sequence[BlockSpec]], y_ms: Sequence[float], least: int) -> tuple[list, np.ndarray,
                                                                                                   np.ndarray]:
    nets = [list(n) for n in nets]
    y = np.asarray(y_ms, dtype=float)
    if len(nets) != len(y):
        raise PredictorError(f"{len(nets)} networks but {len(y)} latencies")
    if len(nets) < least:
        raise PredictorError(f"this needs at least {least} measured networks, got {len(nets)}")
    mflops = np.array([sum(flops(b) for b in n) / 1e6 for n in nets])
    return nets, y, mflops


def _network_keys(nets: list) -> list[str]:
    return [f"network {i + 1} ({len(n)} blocks)" for i, n in enumerate(nets)]


def score_networks(pred: Predictor, nets: Sequence[Sequence[BlockSpec]], y_ms: Sequence[float],
                   folds: int | str = 5, seed: int = 0) -> Evaluation:
    """Scores of a fitted predictor on whole-network latencies (ms): block sum + its overhead per network.

    The FLOPs baseline (latency = a * network FLOPs + b) is cross-validated on the same networks.

    Raises:
        PredictorError: no networks. UnknownBlockError: a lookup table lacks a block of a network.
    """
    nets, y, mf = _network_inputs(nets, y_ms, 1)
    p = np.array([pred.predict_network_ms(n) for n in nets])
    base = np.full(len(y), np.nan)
    if len(y) >= 2:
        for tr, te in fold_indices(len(y), folds, seed):
            slope, icpt = _fit_flops(mf[tr], y[tr])
            base[te] = slope * mf[te] + icpt
    how = {"mode": "score", "predictor": pred.describe(), "overhead_ms": pred.overhead_ms,
           "networks_in_training": pred.meta.get("networks") if pred.meta.get("fitted_from") == "networks" else None}
    return Evaluation(_network_keys(nets), y, p, base, how, unit="network")


_NETWORK_MODEL_WORDS = {"overhead": "overhead", "linear": "scale and overhead",
                        "block": "per-block cost and overhead", "auto": "network model chosen by leave-one-out and",
                        "refine": "factors per block and overhead"}
_NETWORK_MODEL_LABELS = {"overhead": "blocks + overhead", "linear": "blocks x scale + overhead",
                         "block": "blocks + per-block cost + overhead", "auto": "blocks + network model (auto)",
                         "refine": "blocks refined + overhead"}


def cross_validate_networks(nets: Sequence[Sequence[BlockSpec]], y_ms: Sequence[float], folds: int | str = 5,
                            seed: int = 0, base: Predictor | None = None, network_model: str = "overhead") -> Evaluation:
    """Out-of-fold network predictions (ms): each network is predicted by a model fitted without it.

    Without ``base``: per-block costs and an overhead learned from the training networks alone
    (`fit_networks`). With ``base`` (a block predictor fitted on separate block measurements): only
    the per-network overhead is fitted on the training networks (`fit_overhead`), or with
    ``network_model="refine"`` also a factor per block shrunk toward 1 (`fit_refined`, its ridge chosen
    by an inner CV on the training networks only). The FLOPs baseline
    (a * network FLOPs + b) is fitted on the same folds.

    Raises:
        PredictorError: fewer than 3 networks, bad folds. UnknownBlockError: ``base`` is a table that
            lacks a block of a network.
    """
    from predictor.network import fit_network_model

    nets, y, mf = _network_inputs(nets, y_ms, 3)
    try:
        splits = fold_indices(len(y), folds, seed)
    except ValueError as e:
        raise PredictorError(str(e)) from None
    if any(len(tr) < 2 for tr, _ in splits):
        raise PredictorError(f"{folds} folds of {len(y)} networks leave fewer than 2 to fit on; use fewer folds")
    pred, bl = np.empty(len(y)), np.empty(len(y))
    for tr, te in splits:
        train = [nets[i] for i in tr]
        m = fit_network_model(base, train, y[tr], network_model, seed)
        pred[te] = [m.predict_network_ms(nets[i]) for i in te]
        slope, icpt = _fit_flops(mf[tr], y[tr])
        bl[te] = slope * mf[te] + icpt
    how = {"mode": "cross-validation", "folds": folds, "seed": seed,
           "model": (f"block predictor ({base.describe()}), {_NETWORK_MODEL_WORDS[network_model]} fitted per fold")
           if base is not None else "per-block costs and overhead learned from the training networks (fit_networks)",
           "label": _NETWORK_MODEL_LABELS[network_model] if base is not None else "network fit"}
    return Evaluation(_network_keys(nets), y, pred, bl, how, unit="network")


def plot(ev: Evaluation, path: str | Path, title: str = "") -> Path:
    """Scatter of predicted against measured latency (log-log, ms) with the +-10 % band; the FLOPs
    baseline in grey. Written with the Agg canvas (no display, no global backend switch).

    The format follows the file's suffix (`plot_formats`); a path without one gets ``.png``. Returns the
    path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    y, p, b = ev.measured_ms, ev.predicted_ms, ev.baseline_ms
    fig = Figure(figsize=(5.5, 5.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    pos = np.concatenate([y, p[p > 0], b[np.isfinite(b) & (b > 0)]])
    lo, hi = pos.min() / 1.5, pos.max() * 1.5
    line = np.geomspace(lo, hi, 100)
    ax.fill_between(line, line * 0.9, line * 1.1, color="tab:green", alpha=0.15, label="±10 %")
    ax.plot(line, line, color="tab:green", lw=0.8)
    s = ev.scores
    fb = s["flops_baseline"]
    ok = np.isfinite(b) & (b > 0)
    ax.scatter(y[ok], b[ok], s=12, color="0.6", marker="x",
               label=f"FLOPs baseline (MAPE {100 * fb['mape']:.1f} %)")
    ax.scatter(y, np.maximum(p, lo), s=16, color="tab:blue",
               label=f"predictor (MAPE {100 * s['mape']:.1f} %, τ {s['kendall_tau']:.2f})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import NullFormatter

    for axis in (ax.xaxis, ax.yaxis):  # minor labels of a narrow log range overlap each other
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(title or f"{ev.how.get('mode', '')}: n = {s['n']}", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = plot_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_formats() -> list[str]:
    """File suffixes (without the dot) that `plot` can write: matplotlib's Agg canvas's list."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    return sorted(FigureCanvasAgg.get_supported_filetypes())


def plot_path(path: str | Path) -> Path:
    """The file `plot` writes for ``path``: itself, or with ``.png`` added when it has no suffix (as
    matplotlib would, silently)."""
    path = Path(path)
    return path if path.suffix else path.with_name(path.name + ".png")
