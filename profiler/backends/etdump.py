"""ExecuTorch's per-operator timings: an ETDump, read by the devtools Inspector, as plain rows.

Shared by the two places that run a ``.pte`` with event tracing: the host runner
(`profiler.backends._executorch`) and a phone (`profiler.adb.device`).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["summarise_ops"]

#: the Inspector's bookkeeping events around a run, not operators
_NOT_OPS = ("Method::execute", "Program::load_method", "Method::init")


def summarise_ops(df) -> list[dict[str, Any]]:
    """One row per operator event of the Inspector's table (``Inspector.to_dataframe()``).

    Each row: ``event`` (name), ``block`` (event block), ``delegate`` (backend name, '' when not
    delegated), ``p50_ms``, ``avg_ms``, ``p10_ms``, ``p90_ms`` (ms, as the Inspector reports them; None
    where it has no number) and ``runs`` (timed executions of the event).
    """
    rows = []
    for _, r in df.iterrows():
        name = _text(r.get("event_name"))
        if name in _NOT_OPS or not name:
            continue
        rows.append({
            "event": name,
            "block": _text(r.get("event_block_name")),
            "delegate": _text(r.get("delegate_backend_name")),
            "p50_ms": _float(r.get("p50 (ms)")), "avg_ms": _float(r.get("avg (ms)")),
            "p10_ms": _float(r.get("p10 (ms)")), "p90_ms": _float(r.get("p90 (ms)")),
            "runs": len(r.get("raw", []) or []),
        })
    return rows


def _text(v: Any) -> str:
    # pandas' string columns hold a missing value as NaN, not None: an op run outside any delegate
    # would otherwise be said to run in a delegate called "nan"
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v)


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f
