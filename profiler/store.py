"""The measurement store: one SQLite file (WAL), one row per measurement, written as soon as taken.

A row is unique per (block key, device id, backend, target, threads, cores): re-running a
profile skips what is stored, and a row is never duplicated, however the run was stopped.
Failures are rows too (status 'failed', with the stage and the reason). A row flagged with one of
`DISTRUST_FLAGS` is kept until a new measurement replaces it; readers that fit ask `latest` for
trusted rows only.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable

from profiler.errors import HwnasError
from profiler.measurement import Config, Measurement

__all__ = ["Store", "StoreError", "RowFilter", "DISTRUST_FLAGS", "is_trusted"]

APPLICATION_ID = 0x68776E73  # 'hwns'
SCHEMA_VERSION = 2  # 2: `tuning` is part of a row's configuration

_STAT_COLS = ("n", "median_ms", "mean_ms", "trimmed_mean_ms", "min_ms", "p10_ms", "p90_ms", "std_ms", "cv",
              "mad_ms", "rel_spread")
_JSON_COLS = ("samples_ms", "flags", "env_before", "env_after", "protocol", "versions", "per_op")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY,
    block_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    device TEXT NOT NULL,
    device_id TEXT NOT NULL,
    backend TEXT NOT NULL,
    target TEXT NOT NULL,
    tuning TEXT NOT NULL DEFAULT '',
    threads INTEGER NOT NULL,
    cores TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    stage TEXT,
    error TEXT,
    inner_runs INTEGER,
    {", ".join(f"{c} REAL" for c in _STAT_COLS)},
    flops INTEGER,
    compile_s REAL,
    wall_s REAL,
    {", ".join(f"{c} TEXT" for c in _JSON_COLS)},
    created_at TEXT NOT NULL,
    UNIQUE (block_key, device_id, backend, target, tuning, threads, cores)
);
CREATE TABLE IF NOT EXISTS claims (
    block_key TEXT NOT NULL,
    device_id TEXT NOT NULL,
    backend TEXT NOT NULL,
    target TEXT NOT NULL,
    tuning TEXT NOT NULL DEFAULT '',
    threads INTEGER NOT NULL,
    cores TEXT NOT NULL,
    owner TEXT NOT NULL,
    claimed_at REAL NOT NULL,
    PRIMARY KEY (block_key, device_id, backend, target, tuning, threads, cores)
);
CREATE TABLE IF NOT EXISTS device_peaks (
    device_id TEXT NOT NULL,
    threads INTEGER NOT NULL,
    cores TEXT NOT NULL,
    gflops REAL NOT NULL,
    method TEXT NOT NULL,
    measured_at TEXT NOT NULL,
    PRIMARY KEY (device_id, threads, cores)
);
"""


_IDENT_COLS = ("block_key", "device_id", "backend", "target", "tuning", "threads", "cores")
_IDENT_WHERE = " AND ".join(f"{c}=?" for c in _IDENT_COLS)
_FILTER_COLS = ("device", "device_id", "backend", "target", "tuning", "threads", "cores", "kind", "block_key")

#: flags that say a row's numbers were taken under interference or did not settle: such a row is re-timed
#: by the next `profile`, and readers that fit or search (``trusted_only``) leave it out
DISTRUST_FLAGS = ("busy", "interference", "unconverged")


def is_trusted(status: str, flags: Iterable[str] | None) -> bool:
    """A measured row none of whose flags is in `DISTRUST_FLAGS`."""
    return status == "ok" and not set(flags or ()) & set(DISTRUST_FLAGS)


@dataclass(frozen=True)
class RowFilter:
    """Which rows of the store to read: each field that is not None must match the column of that name."""

    device: str | None = None  # the spec string (local, adb:SERIAL, ...)
    device_id: str | None = None
    backend: str | None = None
    target: str | None = None
    tuning: str | None = None  # "" untuned, "metaschedule-N"
    threads: int | None = None
    cores: str | None = None
    kind: str | None = None  # "block" | "network"
    block_key: str | None = None

    @classmethod
    def of(cls, config: Config, kind: str | None = None) -> "RowFilter":
        """Exactly the rows of `config` (the spec string is not part of a configuration's identity)."""
        return cls(device_id=config.device_id, backend=config.backend, target=config.target,
                   tuning=config.tuning, threads=config.threads, cores=config.cores, kind=kind)

    def items(self) -> list[tuple[str, Any]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None]


class StoreError(HwnasError, RuntimeError):
    """The store file is missing, corrupt, foreign or from an incompatible version."""


class Store:
    """The SQLite store. Safe to share between processes (WAL, busy timeout)."""

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path)
        if self.path.exists():
            _check_existing(self.path)
        elif not create:
            raise StoreError(f"{self.path}: no such database; run `hwnas profile --db {self.path}` first")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            if self._db.execute("PRAGMA application_id").fetchone()[0] == 0:
                self._db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            if self._db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                _migrate(self._db)
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path}: cannot open the store ({e})") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- writing -----------------------------------------------------------------------------
    def put(self, m: Measurement, replace: bool = False) -> bool:
        """Store `m` in its own transaction; returns whether the row was written.

        A trusted measured row is never replaced, unless `replace` (a model re-timed on purpose: its
        measurement disagreed with its prediction). A failed row is replaced by any new result; a
        distrusted one (a flag in `DISTRUST_FLAGS`) by a new measurement, not by a failure (a number
        taken under interference says more than none). A replaced row gets a new id: ids follow time.
        """
        row = _to_row(m)
        ident = tuple(row[c] for c in _IDENT_COLS)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            old = self._db.execute(f"SELECT status, flags FROM measurements WHERE {_IDENT_WHERE}", ident).fetchone()
            if old is not None and not (replace and m.status == "ok") and not _replaceable(old[0], old[1], m.status):
                self._db.execute("COMMIT")
                return False
            # the id is taken before the old row goes: SQLite would hand the deleted row's id out again
            new_id = self._db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM measurements").fetchone()[0]
            self._db.execute(f"DELETE FROM measurements WHERE {_IDENT_WHERE}", ident)
            marks = ", ".join("?" for _ in row)
            self._db.execute(f"INSERT INTO measurements (id, {', '.join(row)}) VALUES (?, {marks})",
                             [new_id, *row.values()])
            self._db.execute("COMMIT")
            return True
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def claim(self, config: Config, block_key: str, owner: str, stale_s: float, retry_failed: bool = False,
              retime_flagged: bool = False, retime: bool = False) -> bool:
        """Take `block_key` for measuring under `config`, unless it is stored already (a failure counts
        as not stored with `retry_failed`, a distrusted row with `retime_flagged`) or another live
        process holds it. Several profiling processes sharing one store (a device farm) use this so
        that no block is measured twice. A claim whose owner died (same host, pid gone) or that is
        older than `stale_s` seconds is taken over."""
        ident = _ident(config, block_key)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            row = self._db.execute(f"SELECT status, flags FROM measurements WHERE {_IDENT_WHERE}", ident).fetchone()
            if row is not None:
                trusted = is_trusted(row[0], json.loads(row[1]) if row[1] else [])
                again = retime or (row[0] == "failed" and retry_failed) or (row[0] == "ok" and not trusted
                                                                            and retime_flagged)
                if not again:
                    self._db.execute("COMMIT")
                    return False
            held = self._db.execute(f"SELECT owner, claimed_at FROM claims WHERE {_IDENT_WHERE}", ident).fetchone()
            now = time.time()
            if held and held[0] != owner and now - held[1] < stale_s and _alive(held[0]):
                self._db.execute("COMMIT")
                return False
            self._db.execute(f"INSERT OR REPLACE INTO claims ({', '.join(_IDENT_COLS)}, owner, claimed_at) "
                             f"VALUES ({', '.join('?' for _ in _IDENT_COLS)}, ?, ?)", (*ident, owner, now))
            self._db.execute("COMMIT")
            return True
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def release(self, config: Config, block_key: str, owner: str) -> None:
        self._db.execute(f"DELETE FROM claims WHERE {_IDENT_WHERE} AND owner=?", (*_ident(config, block_key), owner))

    def put_peak(self, device_id: str, threads: int, cores: str, gflops: float, method: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO device_peaks VALUES (?, ?, ?, ?, ?, ?)",
                         (device_id, threads, cores, gflops, method, time.strftime("%Y-%m-%dT%H:%M:%S%z")))

    # ---- reading -----------------------------------------------------------------------------
    def peak(self, device_id: str, threads: int, cores: str) -> float | None:
        r = self._db.execute("SELECT gflops FROM device_peaks WHERE device_id=? AND threads=? AND cores=?",
                             (device_id, threads, cores)).fetchone()
        return r[0] if r else None

    def dataframe(self, status: str | None = None, **where: Any):
        """All rows as a pandas DataFrame (JSON columns decoded), optionally filtered by column values."""
        for k in where:
            if k not in _FILTER_COLS:
                raise ValueError(f"cannot filter on {k!r}")
        return self._frame(RowFilter(**where), status=status)

    def latest(self, where: "RowFilter | Config | None" = None, keys: Iterable[str] | None = None,
               status: str | None = None, trusted_only: bool = False, newest_per_key: bool = False):
        """The latest row per (configuration, block key) among the rows that match, as a DataFrame.

        Args:
            where: a `RowFilter` (None fields match anything) or a `Config` (exactly that configuration).
            keys: only these block keys.
            status: only rows of this status ("ok" or "failed").
            trusted_only: only rows whose numbers may be used as they are: status "ok" and none of the
                `DISTRUST_FLAGS` (see `is_trusted`).
            newest_per_key: one row per block key (the newest among the matching configurations)
                instead of one per (configuration, key).

        Returns a DataFrame like `dataframe` (JSON columns decoded, peak_gflops, gflops, peak_share),
        ordered by row id (oldest first).
        """
        if trusted_only and status not in (None, "ok"):
            raise ValueError("trusted_only selects measured rows; it cannot be combined with status="
                             f"{status!r}")
        rf = RowFilter.of(where) if isinstance(where, Config) else (where or RowFilter())
        return self._frame(rf, keys=keys, status="ok" if trusted_only else status, trusted_only=trusted_only,
                           latest_by=("block_key",) if newest_per_key else _IDENT_COLS)

    def _frame(self, rf: "RowFilter", keys: Iterable[str] | None = None, status: str | None = None,
               trusted_only: bool = False, latest_by: tuple[str, ...] | None = None):
        import pandas as pd

        clauses, args = [], []
        if status:
            clauses.append("status = ?")
            args.append(status)
        for k, v in rf.items():
            clauses.append(f"{k} = ?")
            args.append(v)
        if keys is not None:
            keys = list(keys)
            clauses.append(f"block_key IN ({', '.join('?' for _ in keys)})")
            args.extend(keys)
        if trusted_only:
            marks = ", ".join("?" for _ in DISTRUST_FLAGS)
            clauses.append(f"NOT EXISTS (SELECT 1 FROM json_each(COALESCE(flags, '[]')) WHERE value IN ({marks}))")
            args.extend(DISTRUST_FLAGS)
        cond = " AND ".join(clauses) if clauses else "1"
        if latest_by:
            sql = (f"SELECT * FROM measurements WHERE id IN (SELECT MAX(id) FROM measurements WHERE {cond} "
                   f"GROUP BY {', '.join(latest_by)}) ORDER BY id")
        else:
            sql = f"SELECT * FROM measurements WHERE {cond} ORDER BY id"
        df = pd.read_sql_query(sql, self._db, params=args)
        for c in _JSON_COLS:
            df[c] = df[c].map(lambda s: json.loads(s) if isinstance(s, str) else None)
        peaks = pd.read_sql_query("SELECT device_id, threads, cores, gflops AS peak_gflops FROM device_peaks",
                                  self._db)
        df = df.merge(peaks, how="left", on=["device_id", "threads", "cores"])
        df["gflops"] = df["flops"] / (df["median_ms"] * 1e6)
        df["peak_share"] = df["gflops"] / df["peak_gflops"]
        return df

    def export(self, out: str | Path, **where: Any) -> Path:
        """Write the rows to .parquet or .csv (JSON columns as JSON text)."""
        out = Path(out)
        df = self.dataframe(**where)
        for c in _JSON_COLS:
            df[c] = df[c].map(lambda v: json.dumps(v) if v is not None else None)
        if out.suffix == ".parquet":
            df.to_parquet(out, index=False)
        elif out.suffix == ".csv":
            df.to_csv(out, index=False)
        else:
            raise ValueError(f"{out}: export to .parquet or .csv")
        return out


def owner_id() -> str:
    """Who holds a claim: this host and process."""
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(owner: str) -> bool:
    """False only when the owner is a process of this host that no longer exists."""
    import os
    import socket

    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's claim: trust it until it is stale
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _replaceable(old_status: str, old_flags: str | None, new_status: str) -> bool:
    if old_status == "failed":
        return True
    return new_status == "ok" and not is_trusted(old_status, json.loads(old_flags) if old_flags else [])


def _ident(config: Config, block_key: str) -> tuple:
    """The identity columns (`_IDENT_COLS`) of `block_key` under `config`."""
    return (block_key, config.device_id, config.backend, config.target, config.tuning, config.threads,
            config.cores)


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a store of an older schema to `SCHEMA_VERSION`, in one transaction (a second process
    opening the same file at once waits, then finds it done). Schema 1 had no `tuning`: its rows
    were all taken with the compiler's default schedules (tuned TVM rows could not be told apart,
    so a tuned profile into such a store timed nothing), and become ``tuning = ''``. SQLite cannot
    widen a UNIQUE constraint in place, so the table is rebuilt; claims are transient and dropped."""
    db.execute("BEGIN IMMEDIATE")
    try:
        ver = db.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if ver == 1 and "measurements" in tables:
            cols = [r[1] for r in db.execute("PRAGMA table_info(measurements)")]
            db.execute("ALTER TABLE measurements RENAME TO measurements_v1")
            db.execute("DROP TABLE IF EXISTS claims")
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    db.execute(stmt)
            db.execute(f"INSERT INTO measurements ({', '.join(cols)}, tuning) "
                       f"SELECT {', '.join(cols)}, '' FROM measurements_v1")
            db.execute("DROP TABLE measurements_v1")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _to_row(m: Measurement) -> dict[str, Any]:
    c = m.config
    row: dict[str, Any] = {
        "block_key": m.block_key, "kind": m.kind, "device": c.device, "device_id": c.device_id,
        "backend": c.backend, "target": c.target, "tuning": c.tuning, "threads": c.threads, "cores": c.cores,
        "status": m.status,
        "stage": m.stage, "error": m.error, "inner_runs": m.inner_runs,
    }
    for k in _STAT_COLS:
        row[k] = m.stats.get(k)
    row.update(flops=m.flops, compile_s=m.compile_s, wall_s=m.wall_s)
    for k in _JSON_COLS:
        v = getattr(m, k)
        row[k] = json.dumps(v) if v is not None else None
    row["created_at"] = m.created_at or time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return row


def _check_existing(path: Path) -> None:
    """Refuse a file that is not our store, without writing a byte to it."""
    if path.is_dir():
        raise StoreError(f"{path} is a folder; pass a database file path with --db")
    if path.stat().st_size == 0:
        return  # an empty file is an empty SQLite database: ours to initialise
    with path.open("rb") as f:
        head = f.read(16)
    if head != b"SQLite format 3\x00":
        raise StoreError(f"{path} is not an SQLite database (corrupt or another kind of file); "
                         "move it away or pass another --db")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            app = db.execute("PRAGMA application_id").fetchone()[0]
            ver = db.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            check = db.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{path} is a damaged SQLite database ({e}); move it away or pass another --db") from None
    if check != "ok":
        raise StoreError(f"{path} is a damaged SQLite database ({check}); move it away or pass another --db")
    if app != APPLICATION_ID:
        if app == 0 and not tables:
            return
        raise StoreError(f"{path} is an SQLite database of another program (tables: "
                         f"{', '.join(sorted(tables)) or 'none'}); pass another --db")
    if ver > SCHEMA_VERSION:
        raise StoreError(f"{path} was written by a newer hwnas (schema {ver} > {SCHEMA_VERSION}); upgrade hwnas")

