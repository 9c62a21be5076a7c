"""Profiling runs end to end: rows stored once, resume after SIGKILL, failures recorded, bad stores refused."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from profiler import Store, TimingProtocol, load_space, profile
from profiler.blocks import BlockSpec
from profiler.backends import BackendUnavailable
from profiler.devices import DeviceError

from conftest import ROOT, hwnas_cmd

TINY = load_space("tiny").blocks()


def test_profile_stores_every_block_once_and_rerun_skips(tmp_path, cache_dir):
    db = tmp_path / "h.db"
    r = profile(TINY, "torch", db, protocol=TimingProtocol.quick(), cache_dir=cache_dir)
    assert (r.total, r.skipped, len(r.measured), len(r.failed)) == (len(TINY), 0, len(TINY), 0)
    assert r.peak_gflops and r.peak_gflops > 0
    with Store(db) as st:
        df = st.dataframe()
    assert sorted(df.block_key) == sorted(b.key for b in TINY)
    row = df.iloc[0]
    assert row.status == "ok" and len(row.samples_ms) == row.n >= 5
    assert row.env_before["cores"] == r.config.cores and "loadavg" in row.env_after
    assert row.env_before["cpu_model"] and row.env_before["threads"] == 1
    assert row.versions["torch"]
    again = profile(TINY, "torch", db, protocol=TimingProtocol.quick(), cache_dir=cache_dir)
    assert (again.skipped, len(again.measured), again.compiled) == (len(TINY), 0, 0)


def test_timeout_is_a_recorded_failure_and_retry_replaces_it(tmp_path, cache_dir):
    db = tmp_path / "f.db"
    blocks = TINY[:2]
    hasty = TimingProtocol(**{**TimingProtocol.quick().to_dict(), "timeout_s": 0.001})
    r = profile(blocks, "torch", db, protocol=hasty, cache_dir=cache_dir)
    assert len(r.failed) == 2 and all(m.stage == "timeout" for m in r.failed)
    with Store(db) as st:
        df = st.dataframe()
    assert list(df.status) == ["failed", "failed"] and df.error.str.contains("no result within").all()
    # without --retry-failed the failures stay; with it they are measured and replaced, not duplicated
    assert profile(blocks, "torch", db, protocol=TimingProtocol.quick(), cache_dir=cache_dir).skipped == 2
    r = profile(blocks, "torch", db, protocol=TimingProtocol.quick(), cache_dir=cache_dir, retry_failed=True)
    assert len(r.measured) == 2
    with Store(db) as st:
        df = st.dataframe()
    assert len(df) == 2 and (df.status == "ok").all()


def test_damaged_artifact_is_a_recorded_load_failure(tmp_path):
    # a .pte cut short on disk: the real ExecuTorch runtime refuses it, and the row says why
    cache = tmp_path / "cache"
    block = TINY[-1]
    from profiler.backends import get_backend
    from profiler.compile import compile_model

    be = get_backend("executorch")
    art = compile_model("executorch", block.key, be.target_for("local"), {}, str(cache))
    with open(art["path"], "r+b") as f:
        f.truncate(64)
    r = profile([block], "executorch", tmp_path / "l.db", protocol=TimingProtocol.quick(), cache_dir=cache)
    assert len(r.failed) == 1 and r.failed[0].stage == "load"
    assert r.failed[0].error
    with Store(tmp_path / "l.db") as st:
        row = st.dataframe().iloc[0]
    assert row.status == "failed" and row.stage == "load" and row.median_ms is None and row.samples_ms == []


def test_bad_device_is_refused_before_anything_is_stored(tmp_path):
    db = tmp_path / "d.db"
    with pytest.raises(DeviceError, match="unknown device"):
        profile(TINY, "torch", db, device="phone")
    assert not db.exists()


def test_tuning_is_refused_where_it_cannot_apply_before_anything_is_stored(tmp_path):
    """--tune-trials tunes TVM on this host: another backend, or a remote device, gets one line."""
    db = tmp_path / "t.db"
    with pytest.raises(BackendUnavailable, match="torch has no tuning step"):
        profile(TINY, "torch", db, tune_trials=8)
    assert not db.exists()


def _run_cli(*args, **kw):
    return subprocess.run(hwnas_cmd() + list(args), capture_output=True, text=True, cwd=ROOT, **kw)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_measures_each_block_exactly_once(tmp_path, cache_dir):
    db = tmp_path / "k.db"
    env = {**os.environ, "HWNAS_CACHE_DIR": str(cache_dir)}
    cmd = hwnas_cmd() + ["profile", "--space", "tiny", "--backend", "executorch", "--db", str(db), "--quick",
                         "--json"]
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.time() + 240
    stored = 0
    while time.time() < deadline and p.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=1) as c:
                    stored = c.execute("SELECT COUNT(*) FROM measurements WHERE status='ok'").fetchone()[0]
            except sqlite3.OperationalError:
                stored = 0
            if stored >= 3:
                break
        time.sleep(0.05)
    assert p.poll() is None, "the run ended before it could be killed"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    with sqlite3.connect(db) as c:
        n_killed = c.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
    assert 3 <= n_killed < len(TINY)
    done = _run_cli("profile", "--space", "tiny", "--backend", "executorch", "--db", str(db), "--quick", "--json",
                    env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)["summary"]
    assert summary["already_stored"] == n_killed
    assert summary["measured"] == len(TINY) - n_killed
    with sqlite3.connect(db) as c:
        keys = [r[0] for r in c.execute("SELECT block_key FROM measurements WHERE status='ok'")]
    assert sorted(keys) == sorted(b.key for b in TINY)  # each exactly once


@pytest.mark.parametrize("content", [b"this is not a database at all" * 100, None])
def test_corrupt_or_foreign_store_is_refused_and_left_untouched(tmp_path, content):
    db = tmp_path / "bad.db"
    if content is None:
        with sqlite3.connect(db) as c:
            c.execute("CREATE TABLE users (name TEXT)")
            c.execute("INSERT INTO users VALUES ('ada')")
        words = "another program"
    else:
        db.write_bytes(content)
        words = "not an SQLite database"
    before = db.read_bytes()
    r = _run_cli("profile", "--block", TINY[0].key, "--backend", "torch", "--db", str(db), "--quick")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "--db" in lines[0]
    assert db.read_bytes() == before
    assert not (tmp_path / "bad.db-wal").exists()


def test_store_refuses_truncated_database(tmp_path, cache_dir):
    db = tmp_path / "t.db"
    profile(TINY[:1], "torch", db, protocol=TimingProtocol.quick(), cache_dir=cache_dir)
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2] + b"\0garbage" * 64)
    from profiler.store import StoreError

    with pytest.raises(StoreError):
        Store(db)


def test_flagged_stored_row_is_timed_again_by_the_next_profile(tmp_path, cache_dir):
    db = tmp_path / "r.db"
    block = TINY[0]
    profile([block], "torch", db, protocol=TimingProtocol.quick(), cache_dir=cache_dir, retime_flagged=0)
    with sqlite3.connect(db) as c:  # as an older hwnas stored a row timed beside a busy neighbour
        c.execute("""UPDATE measurements SET flags = '["busy"]'""")
        (old_id,) = c.execute("SELECT id FROM measurements").fetchone()
    # left alone when asked to, but reported as not timed cleanly
    kept = profile([block], "torch", db, protocol=TimingProtocol.quick(), cache_dir=cache_dir, retime_flagged=0)
    assert kept.skipped == 1 and kept.unclean == {block.key: ["busy"]}
    assert "1 block(s) could not be timed cleanly" in kept.unclean_line() and block.key in kept.unclean_line()
    # by default the next profile times it again and the new row replaces it (the quick protocol passes no
    # verdict on noise, so the new row is trusted whatever this shared machine is doing)
    r = profile([block], "torch", db, protocol=TimingProtocol.quick(), cache_dir=cache_dir, retime_wait_s=0)
    assert (r.skipped, len(r.measured), r.retimed, r.unclean) == (0, 1, 0, {})
    with Store(db) as st:
        df = st.dataframe()
        assert list(st.latest(r.config, trusted_only=True).id) == list(df.id)
    assert len(df) == 1 and df.iloc[0].id > old_id and "busy" not in df.iloc[0]["flags"]


def test_a_block_that_never_times_cleanly_is_retimed_a_bounded_number_of_times(tmp_path, cache_dir):
    # a negative drift bound: the two halves never agree, so the stopping rule is never met and every
    # timing ends flagged unconverged
    never = TimingProtocol(**{**TimingProtocol.quick().to_dict(), "drift_bound": -1.0, "flag_unconverged": True})
    db = tmp_path / "b.db"
    r = profile(TINY[:1], "torch", db, protocol=never, cache_dir=cache_dir, retime_flagged=2, retime_wait_s=0)
    assert r.retimed == 2 and len(r.measured) == 1
    assert "unconverged" in r.unclean[TINY[0].key]
    with Store(db) as st:
        assert st.latest(r.config, trusted_only=True).empty and len(st.latest(r.config)) == 1


def test_more_threads_than_cores_is_refused_before_anything_is_stored(tmp_path):
    from profiler.devices import TooManyThreads

    db = tmp_path / "t.db"
    n = len(os.sched_getaffinity(0))
    with pytest.raises(TooManyThreads, match=f"more than the {n} core"):
        profile(TINY[:1], "torch", db, threads=n + 1)
    if n >= 2:  # two threads on one named core
        with pytest.raises(ValueError, match="--cores"):  # TooManyThreads is a ValueError, as other bad options
            profile(TINY[:1], "torch", db, threads=2, cores=str(sorted(os.sched_getaffinity(0))[0]))
    assert not db.exists()
    r = _run_cli("profile", "--block", TINY[0].key, "--backend", "torch", "--db", str(db), "--threads", "10000")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--threads 10000" in lines[0] and f"--threads {n} or fewer" in lines[0]
    assert not db.exists()


def test_each_block_is_timed_in_two_processes_and_the_faster_is_kept(tmp_path, cache_dir):
    """By default a block is timed in two fresh timing processes; the row keeps the one with the lower
    median and records both medians and the two processes' ids."""
    db = tmp_path / "p.db"
    r = profile(TINY[:2], "torch", db, protocol=TimingProtocol.quick(), cache_dir=cache_dir, extra_processes=0)
    assert r.process_passes == 2
    with Store(db) as st:
        df = st.dataframe()
    for row in df.itertuples():
        proc = row.env_after["processes"]
        assert len(proc["median_ms"]) == 2 and len(set(proc["pid"])) == 2  # two different processes
        assert row.median_ms == pytest.approx(min(proc["median_ms"]))
        assert proc["median_ms"][proc["kept"]] == pytest.approx(row.median_ms)
    one = profile(TINY[:1], "torch", tmp_path / "one.db", protocol=TimingProtocol.quick(), cache_dir=cache_dir,
                  processes=1)
    assert one.process_passes == 1 and "processes" not in one.measured[0].env_after


def test_a_block_whose_two_processes_disagree_is_timed_in_more(tmp_path, cache_dir):
    """Two processes whose medians are not within process_agree of each other: a third, then a fourth
    (extra_processes 2), each recorded, the lowest kept. process_agree 0 makes every pair disagree."""
    from profiler.harness import processes_disagree

    r = profile(TINY[:1], "torch", tmp_path / "x.db", protocol=TimingProtocol.quick(), cache_dir=cache_dir,
                extra_processes=2, process_agree=0.0)
    m = r.measured[0]
    proc = m.env_after["processes"]
    assert r.process_passes == 4 and len(proc["median_ms"]) == 4 and len(set(proc["pid"])) == 4
    assert m.median_ms == pytest.approx(min(proc["median_ms"]))
    lone = profile(TINY[:1], "torch", tmp_path / "y.db", protocol=TimingProtocol.quick(), cache_dir=cache_dir,
                   processes=1, extra_processes=2, process_agree=0.0)
    assert lone.process_passes == 1  # one process asked for: nothing to disagree with
    row = lambda meds: m.__class__(m.block_key, m.config, "ok", stats={"median_ms": meds[0]},  # noqa: E731
                                   env_after={"processes": {"median_ms": meds, "kept": 0}})
    assert processes_disagree(row([1.0, 1.06]), 0.03) and not processes_disagree(row([1.0, 1.02]), 0.03)
    assert not processes_disagree(row([1.0, 1.2, 1.01]), 0.03)  # two agree on the lowest
    assert not processes_disagree(row([1.0, None]), 0.03) and not processes_disagree(row([1.0]), 0.03)


def test_keep_better_prefers_a_trusted_timing_then_the_lower_median():
    from profiler.harness import keep_better
    from profiler.measurement import Config, Measurement

    cfg = Config("local", "h", "torch", "{}", 1, "0")

    def m(med, flags=(), pid=1):
        return Measurement("k", cfg, "ok", stats={"median_ms": med}, flags=list(flags), env_before={"worker_pid": pid})

    k = keep_better(m(1.0, pid=1), m(0.9, pid=2))
    assert k.median_ms == 0.9 and k.env_after["processes"] == {"median_ms": [1.0, 0.9], "kept": 1, "pid": [1, 2]}
    k = keep_better(m(1.0), m(0.5, flags=["interference"], pid=2))  # faster, but taken under interference
    assert k.median_ms == 1.0 and k.env_after["processes"]["kept"] == 0
    k = keep_better(k, None, "crash: the timing worker died")  # a third process crashed: the row stays
    assert k.median_ms == 1.0 and k.env_after["processes"]["median_ms"] == [1.0, 0.5, None]
    assert k.env_after["processes"]["errors"] == ["crash: the timing worker died"]
