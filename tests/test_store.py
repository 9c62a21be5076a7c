"""The store's one query, `Store.latest`: filters, latest row per (configuration, key), trusted rows only."""

import pytest

from profiler.measurement import Config, Measurement
from profiler.store import RowFilter, Store, is_trusted
from profiler.stats import summarize

A = Config("local", "host/cpu", "executorch", "xnnpack", 1, "1")
B = Config("local", "host/cpu", "executorch", "xnnpack", 2, "0-1")


def _ok(key: str, config: Config, ms: float, flags=()) -> Measurement:
    samples = [ms, ms * 1.01, ms * 0.99]
    return Measurement(key, config, "ok", samples_ms=samples, inner_runs=1, stats=summarize(samples).__dict__.copy(),
                       flags=list(flags))


def _failed(key: str, config: Config) -> Measurement:
    return Measurement(key, config, "failed", stage="run", error="boom")


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "s.db") as st:
        st.put(_ok("k1", A, 1.0))
        st.put(_ok("k2", A, 2.0, ["busy"]))
        st.put(_failed("k3", A))
        st.put(_ok("k1", B, 0.6))
        st.put(_ok("k4", A, 4.0, ["freq_drop"]))
        yield st


def test_latest_filters_by_config_keys_and_status(store):
    df = store.latest(A)
    assert list(df.block_key) == ["k1", "k2", "k3", "k4"]
    assert list(store.latest(A, keys=["k3", "k1"]).block_key) == ["k1", "k3"]
    assert list(store.latest(A, status="failed").block_key) == ["k3"]
    assert list(store.latest(RowFilter(threads=2)).median_ms) == [pytest.approx(0.6)]
    both = store.latest(RowFilter(backend="executorch"), keys=["k1"])
    assert sorted(both.threads) == [1, 2]
    assert store.latest(A, keys=[]).empty


def test_latest_trusted_only_leaves_out_failed_and_distrusted_rows(store):
    df = store.latest(A, trusted_only=True)
    # busy is distrusted; freq_drop is recorded but does not make a row untrustworthy by itself
    assert list(df.block_key) == ["k1", "k4"]
    assert all(is_trusted(s, f) for s, f in zip(df.status, df["flags"]))
    with pytest.raises(ValueError, match="trusted_only"):
        store.latest(A, status="failed", trusted_only=True)


def test_latest_newest_per_key_picks_the_newest_configuration(store):
    df = store.latest(RowFilter(backend="executorch"), keys=["k1"], newest_per_key=True)
    assert len(df) == 1 and df.iloc[0].threads == 2  # B's row was written after A's


def test_retried_failure_becomes_the_latest_row(store):
    assert store.put(_ok("k3", A, 3.0))
    df = store.latest(A, keys=["k3"])
    assert len(df) == 1 and df.iloc[0].status == "ok"


def test_dataframe_refuses_unknown_filters(store):
    with pytest.raises(ValueError, match="cannot filter on 'colour'"):
        store.dataframe(colour="red")


def test_put_replaces_failed_and_distrusted_rows_but_never_a_trusted_one(store):
    old = store.latest(A, keys=["k2"]).iloc[0]  # flagged busy
    assert not store.put(_failed("k2", A))  # a failure says less than a number taken under interference
    assert store.put(_ok("k2", A, 2.5))
    new = store.latest(A, keys=["k2"]).iloc[0]
    assert new.id > old.id and new.median_ms == pytest.approx(2.5) and new["flags"] == []
    assert not store.put(_ok("k2", A, 9.0)) and not store.put(_ok("k1", A, 9.0, ["busy"]))
    assert store.latest(A, keys=["k2"]).iloc[0].median_ms == pytest.approx(2.5)


def test_claim_takes_a_distrusted_row_only_when_asked_to(store):
    assert not store.claim(A, "k2", "me:1", 60)
    assert store.claim(A, "k2", "me:1", 60, retime_flagged=True)
    assert not store.claim(A, "k1", "me:1", 60, retry_failed=True, retime_flagged=True)  # trusted
    assert store.claim(A, "k3", "me:1", 60, retry_failed=True)  # failed


def test_predictor_readers_leave_out_flagged_rows_and_say_so(tmp_path, caplog):
    from predictor import PredictorError
    from predictor.io import store_entries, store_rows

    db = tmp_path / "p.db"
    with Store(db) as st:
        st.put(_ok("k1", A, 1.0))
        st.put(_ok("k2", A, 2.0, ["interference"]))
        st.put(_ok("k3", A, 3.0, ["freq_drop"]))
    with caplog.at_level("WARNING", logger="predictor.io"):
        keys, y, meta = store_rows(db, device="local", backend="executorch", threads=1)
    assert keys == ["k1", "k3"] and list(y) == [pytest.approx(1.0), pytest.approx(3.0)]
    assert meta["left_out_flagged"] == ["k2"]
    assert "1 of 3 measured blocks are flagged (interference) and left out" in caplog.text
    entries, _ = store_entries(db, device="local", backend="executorch", threads=1)
    assert sorted(entries) == ["k1", "k3"]
    only_flagged = tmp_path / "f.db"
    with Store(only_flagged) as st:
        st.put(_ok("k2", A, 2.0, ["unconverged"]))
    with pytest.raises(PredictorError, match="all 1 measured blocks .* are flagged \\(unconverged\\)"):
        store_rows(only_flagged, device="local", backend="executorch", threads=1)


def test_tuned_and_untuned_rows_of_a_block_sit_side_by_side(tmp_path):
    """A TVM block tuned by MetaSchedule is another measurement than the untuned one: neither replaces
    the other, each configuration reads its own, and a tuned profile into a store of untuned rows
    still claims (times) every block."""
    import dataclasses

    untuned = Config("local", "host/cpu", "tvm", '{"kind": "llvm"}', 1, "1")
    tuned = dataclasses.replace(untuned, tuning="metaschedule-192")
    with Store(tmp_path / "s.db") as st:
        assert st.put(_ok("k1", untuned, 6.0))
        assert st.claim(tuned, "k1", "me", 60.0), "the untuned row must not stand in for the tuned one"
        assert st.put(_ok("k1", tuned, 0.25))
        st.release(tuned, "k1", "me")
        assert not st.claim(tuned, "k1", "me", 60.0)  # now it is stored
        assert list(st.latest(untuned).median_ms) == [pytest.approx(6.0)]
        assert list(st.latest(tuned).median_ms) == [pytest.approx(0.25)]
        assert list(st.latest(RowFilter(backend="tvm", tuning="")).median_ms) == [pytest.approx(6.0)]
        assert sorted(st.dataframe(backend="tvm").tuning) == ["", "metaschedule-192"]


def test_a_store_of_schema_1_is_migrated_keeping_its_rows_as_untuned(tmp_path):
    """Stores written before `tuning` existed (schema 1: the UNIQUE key without it) open as they are:
    rows, ids and peaks kept, every row untuned, the file at schema 2 afterwards."""
    import sqlite3

    from profiler import store as store_mod

    path = tmp_path / "v1.db"
    db = sqlite3.connect(path)
    stats = ", ".join(f"{c} REAL" for c in store_mod._STAT_COLS)
    js = ", ".join(f"{c} TEXT" for c in store_mod._JSON_COLS)
    db.executescript(f"""
        PRAGMA application_id={store_mod.APPLICATION_ID};
        PRAGMA user_version=1;
        CREATE TABLE measurements (id INTEGER PRIMARY KEY, block_key TEXT NOT NULL, kind TEXT NOT NULL,
            device TEXT NOT NULL, device_id TEXT NOT NULL, backend TEXT NOT NULL, target TEXT NOT NULL,
            threads INTEGER NOT NULL, cores TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('ok', 'failed')), stage TEXT, error TEXT, inner_runs INTEGER,
            {stats}, flops INTEGER, compile_s REAL, wall_s REAL, {js}, created_at TEXT NOT NULL,
            UNIQUE (block_key, device_id, backend, target, threads, cores));
        CREATE TABLE claims (block_key TEXT NOT NULL, device_id TEXT NOT NULL, backend TEXT NOT NULL,
            target TEXT NOT NULL, threads INTEGER NOT NULL, cores TEXT NOT NULL, owner TEXT NOT NULL,
            claimed_at REAL NOT NULL, PRIMARY KEY (block_key, device_id, backend, target, threads, cores));
        CREATE TABLE device_peaks (device_id TEXT NOT NULL, threads INTEGER NOT NULL, cores TEXT NOT NULL,
            gflops REAL NOT NULL, method TEXT NOT NULL, measured_at TEXT NOT NULL,
            PRIMARY KEY (device_id, threads, cores));
        INSERT INTO measurements (id, block_key, kind, device, device_id, backend, target, threads, cores, status,
            median_ms, flags, created_at)
            VALUES (7, 'k1', 'block', 'local', 'host/cpu', 'executorch', 'xnnpack', 1, '1', 'ok', 1.5, '[]', 'then');
        INSERT INTO device_peaks VALUES ('host/cpu', 1, '1', 30.0, 'fma', 'then');
    """)
    db.commit()
    db.close()
    with Store(path) as st:
        df = st.latest(A)
        assert list(df.id) == [7] and list(df.median_ms) == [1.5] and list(df.tuning) == [""]
        assert st.peak("host/cpu", 1, "1") == 30.0
        assert st.put(_ok("k2", A, 2.0))
        assert st.claim(A, "k3", "me", 60.0)
    with Store(path) as st:  # opened again: nothing left to migrate, nothing lost
        assert sorted(st.latest(A).block_key) == ["k1", "k2"]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == store_mod.SCHEMA_VERSION == 2
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'measurements_v1'").fetchone() is None
    db.close()


def test_readers_take_one_tuning_and_refuse_a_mix_with_one_line(tmp_path):
    """The predictor's and the search's store readers never mix tuned and untuned TVM rows."""
    import dataclasses

    from predictor.io import PredictorError, store_rows
    from search.latency import SearchError, StoredMedians

    untuned = Config("local", "host/cpu", "tvm", '{"kind": "llvm"}', 1, "1")
    tuned = dataclasses.replace(untuned, tuning="metaschedule-192")
    db = tmp_path / "s.db"
    with Store(db) as st:
        for k, (a, b) in {"k1": (6.0, 0.25), "k2": (3.0, 0.5)}.items():
            st.put(_ok(k, untuned, a))
            st.put(_ok(k, tuned, b))
    with pytest.raises(PredictorError, match="mix 2 configurations .*--tune-trials"):
        store_rows(db, backend="tvm")
    with pytest.raises(SearchError, match="2 configurations .*--tune-trials"):
        StoredMedians.from_store(db, "tvm")
    keys, ms, _ = store_rows(db, backend="tvm", tuning="metaschedule-192")
    assert dict(zip(keys, ms)) == {"k1": pytest.approx(0.25), "k2": pytest.approx(0.5)}
    assert StoredMedians.from_store(db, "tvm", tuning="").table == {"k1": pytest.approx(6.0), "k2": pytest.approx(3.0)}
    with pytest.raises(PredictorError, match="tuned 'metaschedule-64'"):
        store_rows(db, backend="tvm", tuning="metaschedule-64")


def test_a_run_reads_the_rows_of_its_own_tuning(tmp_path):
    """`hwnas run --tune-trials N` reads (and fits on) the rows tuned with N, an untuned run the untuned
    ones, from one store that holds both."""
    import dataclasses

    from hwnas.pipeline import RunConfig, measured_rows

    untuned = Config("local", "host/cpu", "tvm", '{"kind": "llvm"}', 1, "1")
    tuned = dataclasses.replace(untuned, tuning="metaschedule-96")
    db = tmp_path / "s.db"
    with Store(db) as st:
        st.put(_ok("k1", untuned, 6.0))
        st.put(_ok("k1", tuned, 0.25))
    cfg = RunConfig(out=str(tmp_path / "run"), backend="tvm", db=str(db))
    assert measured_rows(cfg, ["k1"], "block")["k1"]["median_ms"] == pytest.approx(6.0)
    cfg.tune_trials = 96
    assert measured_rows(cfg, ["k1"], "block")["k1"]["median_ms"] == pytest.approx(0.25)
    cfg.tune_trials = 64
    assert measured_rows(cfg, ["k1"], "block") == {}
