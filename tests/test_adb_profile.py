"""`hwnas profile --device adb:...` end to end through the loopback ADB device (tests/adb_double.py):
ExecuTorch artifacts pushed and timed by bench.sh with an executor_runner double (tests/fake_phone.py);
the runner cached on the device by hash, hostile folder names, a hot phone, a runner that crashes or
prints garbage, a disconnect mid-run (reconnected, resumed, nothing lost or doubled) and a phone that
stays gone."""

import json
import subprocess
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from adb_double import AdbDouble
from conftest import hwnas_cmd
from fake_phone import RunnerService, make_bin, make_sysroot, phone_env, set_temp
from profiler import Store, TimingProtocol, load_space, profile
from profiler.adb.device import AdbOptions, DeviceGone
from profiler.adb.transport import AdbServerTransport
from profiler.devices import DeviceError

TINY = load_space("tiny").blocks()
QUICK = TimingProtocol.quick()
NASTY = "ph one 'q' \"d\" ; touch PWNED; $(touch PWNED2) `touch PWNED3`"


@pytest.fixture(scope="module")
def service():
    s = RunnerService()
    yield s
    s.close()


@pytest.fixture
def phone(tmp_path, monkeypatch, service):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    sysroot = make_sysroot(tmp_path / "sysroot")
    bindir = make_bin(tmp_path / "bin", tmp_path)
    root = tmp_path / NASTY  # the phone's storage: every remote path carries shell metacharacters
    root.mkdir()
    runner = service.write_client(tmp_path / "executor_runner")
    with AdbDouble(root, env=phone_env(sysroot, bindir)) as dev:
        yield SimpleNamespace(dev=dev, root=root, sysroot=sysroot, runner=runner, logs=tmp_path,
                              spec=f"adb:{dev.serial}", opts=AdbOptions(runner=str(runner), remote_base=str(root / "hwnas"),
                                                                         reconnect_s=10, cool_wait_s=2))


def _pwned(phone) -> list[Path]:
    return [p for p in phone.logs.rglob("PWNED*")]


def test_profile_on_phone_stores_rows_with_device_facts(phone, tmp_path, cache_dir, service):
    db = tmp_path / "p.db"
    blocks = TINY[:3]
    r = profile(blocks, "executorch", db, device=phone.spec, protocol=QUICK, cache_dir=cache_dir, adb=phone.opts)
    assert (len(r.measured), len(r.failed)) == (3, 0), [m.error for m in r.failed]
    assert r.config.device_id == "android/Acme Fake Phone 8/SM8150/FAKE0001"
    assert r.config.target == "xnnpack-android-arm64-v8a" and r.config.cores == "mask:auto"
    with Store(db) as st:
        df = st.dataframe()
    row = df.iloc[0]
    assert row.status == "ok" and len(row.samples_ms) == QUICK.min_runs and row.inner_runs >= 1
    assert all(s > 0 for s in row.samples_ms)
    assert row.env_before["mask"] == "0xf0" and row.env_before["time_source"] == "runner"
    assert row.env_before["phone"]["model"] == "Fake Phone 8" and row.env_before["phone"]["big_cores"] == [4, 5, 6, 7]
    assert row.env_before["temp_c"] == {"hottest": 38.0}
    # the runner was called the way ExecuTorch's executor_runner is called
    assert any(c[:1] == ["--model_path"] and c[2] == "--num_executions" for c in service.calls)
    assert set((phone.logs / "taskset.log").read_text().split()) == {"f0"}
    # fixed-performance mode was asked for while timing, and turned off after
    assert "set-fixed-performance-mode-enabled true" in (phone.logs / "cmd.log").read_text()
    assert "set-fixed-performance-mode-enabled false" in (phone.logs / "cmd.log").read_text()
    # the work folder is gone, the runner stays cached by its hash, nothing ran from a file name
    left = sorted(p.name for p in (phone.root / "hwnas").iterdir())
    assert not [n for n in left if n.startswith("work-")] and "runners" in left
    assert not _pwned(phone)


def test_runner_is_pushed_once_and_rerun_measures_nothing(phone, tmp_path, cache_dir):
    db = tmp_path / "p.db"
    profile(TINY[:1], "executorch", db, device=phone.spec, protocol=QUICK, cache_dir=cache_dir, adb=phone.opts)
    cached = list((phone.root / "hwnas" / "runners").rglob("executor_runner"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    r = profile(TINY[:2], "executorch", db, device=phone.spec, protocol=QUICK, cache_dir=cache_dir, adb=phone.opts)
    assert (r.skipped, len(r.measured)) == (1, 1)
    assert cached[0].stat().st_mtime_ns == stamp  # not pushed again


def test_crashing_and_garbage_runners_are_failures_with_output(phone, tmp_path, cache_dir):
    for body, reason in [("echo 'Segmentation fault'; exit 139", "exit=139"),
                         ("echo 'I executorch] Model executed successfully 1 time(s) in abc ms.'", "bad-time"),
                         ("echo hello", "no-time")]:
        bad = tmp_path / f"runner-{reason}"
        bad.write_text(f"#!/bin/sh\n{body}\n")
        bad.chmod(0o755)
        db = tmp_path / f"{reason}.db"
        opts = replace(phone.opts, runner=str(bad))
        r = profile(TINY[:1], "executorch", db, device=phone.spec, protocol=QUICK, cache_dir=cache_dir, adb=opts)
        assert (len(r.measured), len(r.failed)) == (0, 1)
        with Store(db) as st:
            row = st.dataframe().iloc[0]
        assert row.status == "failed" and reason in row.error and row.samples_ms is None or len(row.samples_ms) == 0
        if reason == "exit=139":
            assert "Segmentation fault" in row.error


def test_hot_phone_waits_then_fails_the_block_as_hot(phone, tmp_path, cache_dir):
    set_temp(phone.sysroot, 71000)
    r = profile(TINY[:1], "executorch", tmp_path / "h.db", device=phone.spec, protocol=QUICK, cache_dir=cache_dir,
                adb=phone.opts)
    assert len(r.failed) == 1 and r.failed[0].stage == "hot" and "71 C" in r.failed[0].error


def test_disconnect_mid_run_reconnects_and_loses_nothing(phone, tmp_path, cache_dir):
    db = tmp_path / "d.db"
    blocks = TINY[:4]
    # set-up takes about a dozen shell commands; each block about four: drop in the second block
    phone.dev.disconnect_after(shells=17, down_s=1.5)
    r = profile(blocks, "executorch", db, device=phone.spec, protocol=QUICK, cache_dir=cache_dir, adb=phone.opts)
    assert phone.dev.drops == 1
    assert (len(r.measured), len(r.failed)) == (4, 0), [m.error for m in r.failed]
    with Store(db) as st:
        df = st.dataframe()
    assert sorted(df.block_key) == sorted(b.key for b in blocks) and (df.status == "ok").all()


def test_phone_that_stays_gone_ends_the_run_and_keeps_what_was_measured(phone, tmp_path, cache_dir):
    db = tmp_path / "g.db"
    blocks = TINY[:4]
    phone.dev.disconnect_after(shells=17, down_s=float("inf"))
    opts = replace(phone.opts, reconnect_s=2)
    with pytest.raises(DeviceGone, match="stayed unreachable"):
        profile(blocks, "executorch", db, device=phone.spec, protocol=QUICK, cache_dir=cache_dir, adb=opts)
    with Store(db) as st:
        df = st.dataframe()
    assert 1 <= len(df) < 4 and (df.status == "ok").all()  # stored before the drop, none invented after


def test_bad_options_are_refused_before_anything_runs(phone, tmp_path, cache_dir):
    with pytest.raises(DeviceError, match="--runner"):
        profile(TINY[:1], "executorch", tmp_path / "x.db", device=phone.spec, adb=AdbOptions())
    with pytest.raises(DeviceError, match="no such file"):
        profile(TINY[:1], "executorch", tmp_path / "x.db", device=phone.spec,
                adb=AdbOptions(runner=str(tmp_path / "missing")))
    from profiler.backends import BackendUnavailable

    with pytest.raises(BackendUnavailable, match="not torch"):
        profile(TINY[:1], "torch", tmp_path / "x.db", device=phone.spec, adb=phone.opts)


@pytest.mark.slow
def test_cli_profile_and_device_info_on_the_phone(phone, tmp_path, cache_dir):
    env = {**phone_env(phone.sysroot, phone.logs / "bin"), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    p = subprocess.run([*hwnas_cmd(), "device-info", phone.spec, "--remote-dir", str(phone.root / "hwnas"), "--json"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["props"]["model"] == "Fake Phone 8" and info["big_core_mask"] == "0xf0"
    db = tmp_path / "cli.db"
    p = subprocess.run([*hwnas_cmd(), "profile", "--space", "tiny", "--backend", "executorch", "--device", phone.spec,
                        "--runner", str(phone.runner), "--remote-dir", str(phone.root / "hwnas"), "--quick",
                        "--db", str(db), "--limit", "2", "--json"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    with Store(db) as st:
        assert len(st.dataframe()) == 2
    assert not _pwned(phone)


@pytest.mark.slow
def test_devices_lists_a_phone_the_adb_server_holds(phone, tmp_path):
    """Debian's adb client and server as the real peer: `adb connect` to the loopback phone, then
    `hwnas devices` finds it through `adb devices -l` and describes it through the server."""
    import os
    import random
    import shutil

    adb = shutil.which("adb")
    if adb is None:
        pytest.skip("Debian's adb client is not installed (apt-get install adb)")
    home = tmp_path / "adb-home"
    (home / "vendor-keys").mkdir(parents=True)
    env = {**phone_env(phone.sysroot, phone.logs / "bin"), "HOME": str(home), "ADB_VENDOR_KEYS": str(home / "vendor-keys"),
           "ANDROID_ADB_SERVER_PORT": str(random.randint(20000, 40000)), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    try:
        subprocess.run([adb, "start-server"], env=env, capture_output=True, timeout=30, check=True)
        # `adb connect`, then wait until the key is accepted (adb prints "failed to authenticate" meanwhile)
        AdbServerTransport(phone.dev.serial, env=env).connect(timeout_s=20)
        p = subprocess.run([*hwnas_cmd(), "devices", "--json", "--remote-dir", str(phone.root / "hwnas")],
                           capture_output=True, text=True, env=env, timeout=120)
        assert p.returncode == 0, p.stderr
        rows = {d["device"]: d for d in json.loads(p.stdout)}
        ph = rows[f"adb:{phone.dev.serial}"]
        assert ph["state"] == "device" and ph["model"] == "Acme Fake Phone 8" and ph["soc"] == "SM8150"
        assert ph["clusters_mhz"] == {"1786": 4, "2419": 3, "2842": 1} and ph["big_core_mask"] == "0xf0"
        assert ph["battery_pct"] == 64 and ph["max_temp_c"] == 38.0 and "local" in rows
    finally:
        subprocess.run([adb, "kill-server"], env=env, capture_output=True, timeout=30)


def test_per_op_pulls_the_etdump_and_reads_it_with_the_inspector(phone, tmp_path, cache_dir):
    r = profile(TINY[:1], "executorch", tmp_path / "o.db", device=phone.spec, protocol=QUICK, cache_dir=cache_dir,
                adb=phone.opts, per_op=True)
    assert len(r.measured) == 1, [m.error for m in r.failed]
    ops = r.measured[0].per_op
    assert ops and any(o["delegate"] == "XnnpackBackend" for o in ops) and all(o["p50_ms"] >= 0 for o in ops)


@pytest.mark.slow
def test_tvm_on_the_phone_through_tvm_rpc_started_over_adb(phone, tmp_path, cache_dir):
    """tvm_rpc pushed (cached by hash), started in its own session over adb, registered with a tracker
    the profiler starts on loopback; blocks timed through a session; the server stopped at the end."""
    from fake_phone import make_tvm_rpc

    opts = replace(phone.opts, tvm_rpc=str(make_tvm_rpc(tmp_path / "tvm_rpc")))
    db = tmp_path / "tvm.db"
    # the loopback "phone" is this host: build for it (a real arm64 phone gets --cross aarch64-android)
    r = profile(TINY[:2], "tvm", db, device=phone.spec, protocol=QUICK, cache_dir=cache_dir, adb=opts, cross="host")
    assert (len(r.measured), len(r.failed)) == (2, 0), [m.error for m in r.failed]
    assert r.config.device == phone.spec and r.config.device_id.startswith("android/Acme Fake Phone 8/")
    with Store(db) as st:
        df = st.dataframe()
    assert (df.median_ms > 0).all() and (df.cores == "remote").all()
    assert list((phone.root / "hwnas" / "runners").rglob("tvm_rpc"))
    left = subprocess.run(["pgrep", "-f", "tvm.exec.rpc_server.*hwnas-"], capture_output=True, text=True)
    assert left.stdout.strip() == "", "tvm_rpc was left running on the phone"
    assert not _pwned(phone)


def test_tvm_on_a_phone_needs_the_rpc_binary(phone, tmp_path):
    with pytest.raises(DeviceError, match="--tvm-rpc"):
        profile(TINY[:1], "tvm", tmp_path / "x.db", device=phone.spec, adb=phone.opts)


def test_gpu_is_refused_on_a_phone_without_drivers_and_recorded_where_present(phone, tmp_path, cache_dir):
    from fake_phone import make_tvm_rpc

    with pytest.raises(DeviceError, match="Vulkan on the phone and none was found"):
        profile(TINY[:1], "executorch", tmp_path / "g.db", device=phone.spec, adb=phone.opts, gpu=True)
    tvm_opts = replace(phone.opts, tvm_rpc=str(make_tvm_rpc(tmp_path / "tvm_rpc")))
    with pytest.raises(DeviceError, match="OpenCL on the phone and none was found"):
        profile(TINY[:1], "tvm", tmp_path / "g.db", device=phone.spec, adb=tvm_opts, gpu=True)
    with pytest.raises(DeviceError, match="local:cuda"):
        profile(TINY[:1], "tvm", tmp_path / "g.db", device="local", gpu=True)
    # a phone with a Vulkan driver: the block is lowered to ExecuTorch's Vulkan backend and the row says
    # so; this runner (like one built without -DEXECUTORCH_BUILD_VULKAN=ON) cannot load it: a failure
    # with the runner's own words, not a number
    drv = phone.sysroot / "vendor/lib64/hw/vulkan.adreno.so"
    drv.parent.mkdir(parents=True)
    drv.write_bytes(b"\x7fELF")
    r = profile(TINY[:1], "executorch", tmp_path / "v.db", device=phone.spec, protocol=QUICK, cache_dir=cache_dir,
                adb=phone.opts, gpu=True)
    assert r.config.target == "vulkan-android-arm64-v8a"
    assert len(r.failed) == 1 and "Loading of program failed" in r.failed[0].error


def test_run_on_a_phone_names_what_it_needs_before_anything_runs(tmp_path):
    from hwnas.pipeline import RunConfig, RunError

    with pytest.raises(RunError, match="--runner PATH must name ExecuTorch's executor_runner"):
        RunConfig(out=str(tmp_path), device="adb:ABC123", target_ms=1).check()
    with pytest.raises(RunError, match="--tvm-rpc PATH"):
        RunConfig(out=str(tmp_path), device="adb:ABC123", backend="tvm", target_ms=1,
                  tvm_rpc=str(tmp_path / "missing")).check()
    runner = tmp_path / "executor_runner"
    runner.write_text("#!/bin/sh\n")
    RunConfig(out=str(tmp_path), device="adb:ABC123", target_ms=1, runner=str(runner)).check()
