"""Profiling through a real TVM RPC tracker and servers on loopback (a device farm in miniature)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from profiler import Store, TimingProtocol, load_space, profile

from conftest import ROOT, hwnas_cmd

TINY = load_space("tiny").blocks()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 30) -> None:
    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def _listed(tracker_port: int, key: str) -> int:
    from tvm import rpc

    summary = rpc.connect_tracker("127.0.0.1", tracker_port).summary()
    return sum(1 for s in summary.get("server_info", []) if s.get("key", "").endswith(key))


@pytest.fixture()
def farm(tmp_path):
    """A tracker and two servers of key 'hostcpu' on 127.0.0.1; yields (tracker_port, procs)."""
    procs = []
    tport = _free_port()
    env = {**os.environ, "TVM_NUM_THREADS": "1"}
    procs.append(subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                                   str(tport), "--port-end", str(tport + 1)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
    _wait_port(tport)
    servers = []
    for _ in range(2):
        sport = _free_port()
        p = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{tport}",
                              "--key", "hostcpu", "--host", "127.0.0.1", "--port", str(sport), "--port-end",
                              str(sport + 1)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        procs.append(p)
        servers.append(p)
    end = time.time() + 60
    while _listed(tport, "hostcpu") < 2 and time.time() < end:
        time.sleep(0.2)
    yield tport, servers
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()


def test_profile_through_the_tracker(farm, tmp_path, cache_dir):
    tport, _ = farm
    db = tmp_path / "farm.db"
    r = profile(TINY[:3], "tvm", db, device=f"rpc:127.0.0.1:{tport}/hostcpu", protocol=TimingProtocol.quick(),
                cache_dir=cache_dir)
    assert len(r.measured) == 3 and not r.failed, [m.error for m in r.failed]
    with Store(db) as st:
        df = st.dataframe()
    assert (df.device_id == f"rpc:hostcpu@127.0.0.1:{tport}").all() and (df.cores == "remote").all()
    assert (df.median_ms > 0).all()
    assert df.env_before.iloc[0]["remote"]


@pytest.mark.slow
def test_two_processes_share_the_work_without_measuring_a_block_twice(farm, tmp_path, cache_dir):
    tport, _ = farm
    db = tmp_path / "shared.db"
    env = {**os.environ, "HWNAS_CACHE_DIR": str(cache_dir)}
    cmd = hwnas_cmd() + ["profile", "--space", "tiny", "--backend", "tvm", "--device",
                         f"rpc:127.0.0.1:{tport}/hostcpu", "--db", str(db), "--quick", "--json"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    summaries = [json.loads(out)["summary"] for out, _ in outs]
    assert sum(s["measured"] for s in summaries) == len(TINY)  # each block measured by exactly one process
    with Store(db) as st:
        df = st.dataframe()
    assert sorted(df.block_key) == sorted(b.key for b in TINY) and (df.status == "ok").all()


def test_dead_server_still_listed_times_out_instead_of_hanging(farm, tmp_path, cache_dir, monkeypatch):
    tport, servers = farm
    for p in servers:  # kill every server: the tracker keeps listing them for a while
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    monkeypatch.setenv("HWNAS_RPC_TIMEOUT_S", "5")
    t0 = time.time()
    r = profile(TINY[:1], "tvm", tmp_path / "dead.db", device=f"rpc:127.0.0.1:{tport}/hostcpu",
                protocol=TimingProtocol.quick(), cache_dir=cache_dir)
    assert time.time() - t0 < 120
    assert len(r.failed) == 1 and r.failed[0].stage == "load"
    assert "tracker" in r.failed[0].error or "answered" in r.failed[0].error


def test_executorch_is_refused_on_rpc_devices(tmp_path):
    from profiler.backends import BackendUnavailable

    with pytest.raises(BackendUnavailable, match="only the tvm backend"):
        profile(TINY[:1], "executorch", tmp_path / "x.db", device="rpc:127.0.0.1:9190/android")
