"""File formats: ProxylessNAS / Once-for-All lookup-table YAML, saved predictors (JSON), training rows
from the store, and whole-network measurement files (JSONL / CSV).

- ProxylessNAS LUT YAML: a top-level mapping ``key -> {count, mean, var}``, mean in ms, var in ms^2.
- Once-for-All LUT YAML: ``key -> {count, mean, std}``, mean and std in ms (OFA keys: ``expand`` counts
  middle channels, ``-se:0|1-hs:0|1`` follow).
- A saved predictor: one JSON file (`save_predictor` / `load_predictor`), never pickle. It records the
  feature version, the device and backend, library versions, the training rows and the CV scores.
- Network measurements: JSONL lines ``{"blocks": [key, ...], "latency_ms": 17.5}``, or a CSV file with
  the columns ``blocks`` (a JSON list as text) and ``latency_ms``.

YAML is always read with ``yaml.safe_load``. Every malformed input raises `PredictorError` (one line).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from predictor._base import Predictor, PredictorError
from predictor.features import FEATURE_VERSION
from predictor.lut import Entry, HybridPredictor, LookupTable
from predictor.regression import RegressionPredictor
from profiler.blocks import BlockKeyError, BlockSpec

__all__ = ["read_lut_yaml", "write_lut_yaml", "save_predictor", "load_predictor", "store_rows",
           "read_networks", "FORMAT", "FORMAT_VERSION"]

log = logging.getLogger(__name__)

FORMAT = "hwnas-predictor"
FORMAT_VERSION = 1


# ---- lookup-table YAML ---------------------------------------------------------------------------

def read_lut_yaml(path: str | Path) -> LookupTable:
    """Read a ProxylessNAS (``count, mean, var``) or Once-for-All (``count, mean, std``) LUT (ms).

    Raises:
        PredictorError: not YAML, not a mapping of keys to entries, a bad number, or a bad key.
        FileNotFoundError: no such file.
    """
    import yaml

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        d = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise PredictorError(f"{path}: not valid YAML{line}") from None
    if not isinstance(d, dict) or not d:
        raise PredictorError(f"{path}: a lookup table is a non-empty mapping of block keys to "
                             "{count, mean, var} (ProxylessNAS) or {count, mean, std} (Once-for-All)")
    entries: dict[str, Entry] = {}
    fmt = None
    for k, v in d.items():
        if not isinstance(k, str) or not isinstance(v, dict) or "mean" not in v:
            raise PredictorError(f"{path}: entry {k!r} must map a block key to {{count, mean, var|std}}")
        extra = set(v) - {"count", "mean", "var", "std"}
        if extra:
            raise PredictorError(f"{path}: entry {k}: unknown field(s) {', '.join(sorted(map(str, extra)))}")
        this = "ofa" if "std" in v else "proxyless"
        if "std" in v and "var" in v:
            raise PredictorError(f"{path}: entry {k} has both var and std; a table has one or the other")
        fmt = fmt or this
        try:
            mean = _number(v["mean"])
            spread = _number(v.get("std" if this == "ofa" else "var", 0.0))
            count = int(v.get("count", 0))
        except (TypeError, ValueError):
            raise PredictorError(f"{path}: entry {k}: mean, var/std and count must be numbers") from None
        if mean < 0 or spread < 0 or count < 0:
            raise PredictorError(f"{path}: entry {k}: mean, var/std and count must not be negative")
        entries[k] = Entry(mean, count, spread ** 2 if this == "ofa" else spread)
    return LookupTable(entries, meta={"source": str(path), "lut_format": fmt}, source=str(path))


def _number(v: Any) -> float:
    if isinstance(v, bool):
        raise TypeError("bool")
    f = float(v)
    if not math.isfinite(f):
        raise ValueError("not finite")
    return f


def write_lut_yaml(path: str | Path, rows: dict[str, Entry], header: str = "") -> Path:
    """Write ``key -> {count, mean, var}`` (ProxylessNAS format; mean in ms, var in ms^2).

    ``header`` lines are written as YAML comments at the top (what the numbers are, where from).
    """
    import yaml

    data = {k: {"count": int(e.count), "mean": float(e.mean_ms), "var": float(e.var_ms2)} for k, e in rows.items()}
    text = "".join(f"# {line}\n" for line in header.splitlines())
    text += yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    path = Path(path)
    path.write_text(text, encoding="utf-8")
    return path


# ---- saved predictors ------------------------------------------------------------------------------

def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version(), "numpy": np.__version__}
    for dist in ("scikit-learn", "scipy", "hwnas"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def predictor_to_dict(p: Predictor) -> dict[str, Any]:
    meta = dict(p.meta)
    meta.setdefault("created_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    meta["versions"] = _versions()
    d: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, "feature_version": FEATURE_VERSION,
                         "overhead_ms": p.overhead_ms, "network_scale": p.network_scale,
                         "block_overhead_ms": p.block_overhead_ms, "meta": meta}
    if isinstance(p, HybridPredictor):
        d.update(type="hybrid", table=p.table.to_dict(), regression=p.regression.to_dict())
    elif isinstance(p, LookupTable):
        d.update(type="lut", table=p.to_dict())
    elif isinstance(p, RegressionPredictor):
        d.update(type="regression", regression=p.to_dict())
    else:
        raise TypeError(f"cannot save a {type(p).__name__}")
    return d


def save_predictor(p: Predictor, path: str | Path) -> Path:
    """Write a predictor as one JSON file (no pickle). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # allow_nan=False: a NaN score (e.g. Kendall's tau of one row) is written as null, not as NaN
    path.write_text(json.dumps(_json_safe(predictor_to_dict(p)), indent=1, allow_nan=False), encoding="utf-8")
    return path


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def load_predictor(path: str | Path) -> Predictor:
    """Read a predictor written by `save_predictor`.

    Raises:
        PredictorError: not a predictor file, another format or feature version, a corrupt model.
        FileNotFoundError: no such file.
    """
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PredictorError(f"{path}: not a JSON predictor file (write one with `hwnas fit`)") from None
    return predictor_from_dict(d, str(path))


def predictor_from_dict(d: Any, source: str = "predictor") -> Predictor:
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise PredictorError(f"{source}: not an hwnas predictor file (write one with `hwnas fit`)")
    if d.get("format_version") != FORMAT_VERSION:
        raise PredictorError(f"{source}: predictor format version {d.get('format_version')}, this build reads "
                             f"version {FORMAT_VERSION}; fit it again with `hwnas fit`")
    if d.get("feature_version") != FEATURE_VERSION:
        raise PredictorError(f"{source}: fitted with feature version {d.get('feature_version')}, this build "
                             f"computes version {FEATURE_VERSION}; fit it again with `hwnas fit`")
    overhead = d.get("overhead_ms", 0.0)
    if overhead is not None and not _finite_number(overhead):
        raise PredictorError(f"{source}: overhead_ms must be a finite number of ms, got {overhead!r}; fit it again "
                             "with `hwnas fit`")
    scale = d.get("network_scale", 1.0)
    if not _finite_number(scale) or not scale > 0:
        raise PredictorError(f"{source}: network_scale must be a positive number, got {scale!r}; fit it again "
                             "with `hwnas fit`")
    per_block = d.get("block_overhead_ms", 0.0)
    if not _finite_number(per_block):
        raise PredictorError(f"{source}: block_overhead_ms must be a finite number of ms, got {per_block!r}; fit it "
                             "again with `hwnas fit`")
    p = _predictor_from_dict(d, source)
    p.network_scale = float(scale)
    p.block_overhead_ms = float(per_block)
    return p


def _finite_number(v: Any) -> bool:
    """A JSON number that is neither NaN nor infinite (``true`` is not a number here)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _predictor_from_dict(d: dict[str, Any], source: str) -> Predictor:
    kind = d.get("type")
    overhead = d.get("overhead_ms") or 0.0
    meta = d.get("meta") or {}
    if kind == "lut":
        return LookupTable.from_dict(d.get("table") or {}, overhead_ms=overhead, meta=meta, source=source)
    if kind in ("regression", "hybrid"):
        reg = d.get("regression")
        if not isinstance(reg, dict):
            raise PredictorError(f"{source}: the regression model is missing")
        if reg.get("feature_version", FEATURE_VERSION) != FEATURE_VERSION:
            raise PredictorError(f"{source}: regression fitted with feature version {reg.get('feature_version')}, "
                                 f"this build computes version {FEATURE_VERSION}; fit it again with `hwnas fit`")
        r = RegressionPredictor.from_dict(reg, overhead_ms=0.0 if kind == "hybrid" else overhead, meta=meta)
        if kind == "regression":
            return r
        t = LookupTable.from_dict(d.get("table") or {}, source=source)
        return HybridPredictor(t, r, overhead_ms=overhead, meta=meta)
    raise PredictorError(f"{source}: unknown predictor type {kind!r} (lut, regression, hybrid)")


# ---- training rows ---------------------------------------------------------------------------------

def _store_frame(db: str | Path, device: str | None, backend: str | None, threads: int | None,
                 tuning: str | None = None):
    """The latest trusted measured block rows of one configuration in a store (DataFrame), and metadata.

    Rows flagged busy, interference or unconverged (`profiler.store.DISTRUST_FLAGS`) are left out with a
    warning that names them (their keys are in ``meta["left_out_flagged"]``); when every row is flagged,
    `PredictorError` says how to time them again.
    """
    from profiler.store import RowFilter, Store

    if not Path(db).exists():
        raise PredictorError(f"{db}: no such store; profile first (`hwnas profile --db {db} ...`)")
    with Store(db, create=False) as st:
        df = st.latest(RowFilter(device=device, backend=backend, threads=threads, tuning=tuning, kind="block"),
                       status="ok")
    if df.empty:
        raise PredictorError(f"{db}: no measured blocks for backend {backend!r} on device {device!r}"
                             + (f" with {threads} thread(s)" if threads else "")
                             + (f" tuned {tuning!r}" if tuning else " untuned" if tuning == "" else ""))
    groups = df.groupby(["device_id", "target", "tuning", "threads", "cores"]).ngroups
    if groups > 1:
        raise PredictorError(f"{db}: the rows mix {groups} configurations (device, target, tuning, threads, cores) "
                             f"of backend {backend!r}; narrow with --device / --threads / --tune-trials")
    from profiler.store import DISTRUST_FLAGS, is_trusted

    trusted = df["flags"].map(lambda f: is_trusted("ok", f))
    flagged = {k: [x for x in f if x in DISTRUST_FLAGS] for k, f in zip(df.block_key[~trusted], df["flags"][~trusted])}
    if not trusted.any():
        raise PredictorError(f"{db}: all {len(df)} measured blocks of backend {backend!r} are flagged "
                             f"({', '.join(sorted({x for f in flagged.values() for x in f}))}): they were timed "
                             f"under interference or did not settle; run the same `hwnas profile` again on a "
                             f"quieter machine, which times flagged blocks again")
    if flagged:
        log.warning("%s: %d of %d measured blocks are flagged (%s) and left out, e.g. %s; run the same "
                    "`hwnas profile` again on a quieter machine to time them again", db, len(flagged), len(df),
                    ", ".join(sorted({x for f in flagged.values() for x in f})), next(iter(flagged)))
    df = df[trusted]
    r0 = df.iloc[0]
    meta = {"source": str(db), "device": r0.device, "device_id": r0.device_id, "backend": r0.backend,
            "target": r0.target, "threads": int(r0.threads), "cores": r0.cores, "statistic": "median_ms",
            "left_out_flagged": sorted(flagged)}
    return df, meta


def store_rows(db: str | Path, device: str | None = "local", backend: str | None = "executorch",
               threads: int | None = None, tuning: str | None = None) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """Measured blocks of one configuration from a store: (keys, median ms, metadata).

    Failures, network rows and flagged rows (left out with a warning, see `_store_frame`) are not used.
    Raises `PredictorError` when nothing matches, when every row is flagged, or when the rows mix
    configurations (devices, thread counts, core sets, tunings) that must not share one predictor.
    `tuning`: `profiler.measurement.Config.tuning` ("" untuned, "metaschedule-N"); None takes any.
    """
    df, meta = _store_frame(db, device, backend, threads, tuning)
    return list(df.block_key), df.median_ms.to_numpy(dtype=float), meta


def store_entries(db: str | Path, device: str | None = "local", backend: str | None = "executorch",
                  threads: int | None = None, tuning: str | None = None) -> tuple[dict[str, Entry], dict[str, Any]]:
    """Like `store_rows`, as lookup-table entries (median ms, sample count, variance ms^2)."""
    df, meta = _store_frame(db, device, backend, threads, tuning)
    entries = {r.block_key: Entry(float(r.median_ms), int(r.n or 0), float((r.std_ms or 0.0) ** 2))
               for r in df.itertuples()}
    return entries, meta


def read_networks(path: str | Path) -> tuple[list[list[BlockSpec]], np.ndarray]:
    """Whole-network measurements: (block lists, latency ms). JSONL or CSV, see the module docstring.

    Raises:
        PredictorError: a malformed line, a non-positive latency, a block key that does not parse
            (naming the line), or no rows.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    raw: list[tuple[int, Any, Any]] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or not {"blocks", "latency_ms"} <= set(reader.fieldnames):
            raise PredictorError(f"{path}: a network CSV needs the columns blocks and latency_ms")
        for i, row in enumerate(reader, start=2):
            try:
                blocks = json.loads(row["blocks"])
            except (json.JSONDecodeError, TypeError):
                raise PredictorError(f"{path}:{i}: blocks must be a JSON list of block keys") from None
            raw.append((i, blocks, row["latency_ms"]))
    else:
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                raise PredictorError(f"{path}:{i}: not a JSON object (JSONL: one "
                                     '{"blocks": [...], "latency_ms": ...} per line)') from None
            if not isinstance(d, dict) or "blocks" not in d or "latency_ms" not in d:
                raise PredictorError(f"{path}:{i}: a line needs \"blocks\" and \"latency_ms\"")
            raw.append((i, d["blocks"], d["latency_ms"]))
    nets, ys = [], []
    for i, blocks, lat in raw:
        if not isinstance(blocks, list) or not blocks or not all(isinstance(k, str) for k in blocks):
            raise PredictorError(f"{path}:{i}: blocks must be a non-empty list of block keys")
        try:
            y = _number(lat)
        except (TypeError, ValueError):
            raise PredictorError(f"{path}:{i}: latency_ms must be a number of milliseconds") from None
        if y <= 0:
            raise PredictorError(f"{path}:{i}: latency_ms must be positive")
        try:
            nets.append([BlockSpec.from_key(k) for k in blocks])
        except BlockKeyError as e:
            raise PredictorError(f"{path}:{i}: {e}") from None
        ys.append(y)
    if not nets:
        raise PredictorError(f"{path}: no network rows")
    return nets, np.asarray(ys)
