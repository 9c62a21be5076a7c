"""device_scripts/*.sh against a fake /sys tree, under dash (a strict POSIX sh) and under mksh
(Android's /system/bin/sh) where installed."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fake_phone import MAX_KHZ, make_bin, make_sysroot
from profiler.adb.parsers import BenchOutputError, parse_bench, parse_info, parse_prepare

SCRIPTS = Path(__file__).resolve().parents[1] / "device_scripts"


@pytest.fixture(params=["dash", "mksh"], autouse=True)
def shell(request, monkeypatch):
    path = shutil.which(request.param)
    if path is None:
        pytest.skip(f"{request.param} is not installed (apt-get install {request.param})")
    monkeypatch.setitem(globals(), "SH", path)
    return path


SH = None  # set per test by the `shell` fixture

@pytest.fixture
def sysroot(tmp_path):
    # a battery zone in whole degrees and a switched-off sensor (-273 C) beside the CPU zone
    return make_sysroot(tmp_path / "sysroot",
                        zones=[("cpu-0-0-usr", "38000"), ("battery", "30"), ("pmic", "-273000")])


@pytest.fixture
def fakebin(tmp_path):
    """getprop and cmd as a phone has them, on PATH before the host's tools."""
    return make_bin(tmp_path / "bin", tmp_path)


def run(script: str, *args: str, sysroot=None, fakebin=None, env=None, timeout=30):
    e = dict(os.environ)
    if sysroot is not None:
        e["HWNAS_SYSROOT"] = str(sysroot)
    if fakebin is not None:
        e["PATH"] = f"{fakebin}:{e['PATH']}"
    e.update(env or {})
    return subprocess.run([SH, str(SCRIPTS / script), *args], capture_output=True, text=True, env=e,
                          timeout=timeout)


def test_info_reads_fake_device(sysroot, fakebin):
    p = run("info.sh", sysroot=sysroot, fakebin=fakebin)
    assert p.returncode == 0, p.stderr
    info = parse_info(p.stdout)
    assert info.props["model"] == "Fake Phone 8" and info.props["soc"] == "SM8150"
    assert [c.max_khz for c in info.cpus] == MAX_KHZ
    assert info.big_core_mask == "0xf0"
    assert info.max_temp_c == 38.0 and info.battery.level_pct == 64


def test_info_tolerates_an_empty_tree(tmp_path):
    p = run("info.sh", sysroot=tmp_path / "nothing")
    assert p.returncode == 0, p.stderr
    info = parse_info(p.stdout)
    assert info.cpus == () and info.thermal == () and info.battery.level_pct is None


def test_bench_pins_big_cores_and_times_each_run(sysroot, fakebin, tmp_path):
    log = tmp_path / "calls"
    runner = tmp_path / "runner"
    runner.write_text(f"#!/bin/sh\necho \"$1\" >> {log}\n")
    runner.chmod(0o755)
    p = run("bench.sh", str(runner), "my model.pte", "2", "4", "auto", "45", "0", sysroot=sysroot, fakebin=fakebin)
    assert p.returncode == 0, p.stdout + p.stderr
    b = parse_bench(p.stdout)
    assert b.mask == "0xf0" and b.mask_source == "max_freq"
    assert len(b.samples_ms) == 4 and b.time_source == "wall"
    assert log.read_text().splitlines() == ["my model.pte"] * 6  # 2 warm-up + 4 timed, one argument
    assert (tmp_path / "taskset.log").read_text().splitlines() == ["f0"] * 6
    assert b.temp_before_c == 38 and b.freq_before_khz[7] == 1420800 and not b.freq_dropped


def test_bench_uses_runner_time_when_printed(sysroot, tmp_path):
    runner = tmp_path / "runner"
    runner.write_text("#!/bin/sh\necho loading\necho hwnas_time_ms=2.5\n")
    runner.chmod(0o755)
    p = run("bench.sh", str(runner), "a.pte", "0", "3", "0x1", "45", "0", sysroot=sysroot)
    b = parse_bench(p.stdout)
    assert b.samples_ms == [2.5, 2.5, 2.5] and b.time_source == "runner" and b.mask == "0x1"


@pytest.mark.parametrize("body,reason", [
    ("echo hwnas_time_ms=12,5ms", "bad-time"),
    ("echo segfault >&2; exit 139", "exit=139"),
])
def test_bench_bad_runner_is_a_recorded_failure(sysroot, tmp_path, body, reason):
    runner = tmp_path / "runner"
    runner.write_text(f"#!/bin/sh\n{body}\n")
    runner.chmod(0o755)
    p = run("bench.sh", str(runner), "a.pte", "0", "3", "0x1", "45", "0", sysroot=sysroot)
    assert p.returncode == 4
    with pytest.raises(BenchOutputError) as e:
        parse_bench(p.stdout)
    assert e.value.reason == reason


def test_bench_runner_mode_requires_runner_time(sysroot):
    p = run("bench.sh", "/bin/true", "a.pte", "0", "2", "0x1", "45", "0", sysroot=sysroot,
            env={"HWNAS_TIME": "runner"})
    with pytest.raises(BenchOutputError) as e:
        parse_bench(p.stdout)
    assert e.value.reason == "no-time"


def test_bench_refuses_while_hot(sysroot):
    (sysroot / "sys/class/thermal/thermal_zone0/temp").write_text("71000\n")
    p = run("bench.sh", "/bin/true", "a.pte", "1", "2", "auto", "45", "1", sysroot=sysroot)
    assert p.returncode == 5 and "let the phone cool" in p.stderr
    with pytest.raises(BenchOutputError) as e:
        parse_bench(p.stdout)
    assert e.value.reason == "hot" and "71 C" in str(e.value)


def test_bench_rejects_bad_arguments(sysroot):
    assert run("bench.sh", "/bin/true", "a", "x", sysroot=sysroot).returncode == 2
    assert run("bench.sh", "/bin/true", "a", "1", "1", "0xZZ", sysroot=sysroot).returncode == 2
    assert run("bench.sh", sysroot=sysroot).returncode == 2


def test_prepare_apply_then_undo_restores_governors(sysroot, fakebin, tmp_path):
    state = tmp_path / "prep.state"
    gov3 = sysroot / "sys/devices/system/cpu/cpu3/cpufreq/scaling_governor"
    gov3.chmod(0o444)  # like an unrooted phone: this core cannot be changed
    p = run("prepare.sh", "apply", str(state), sysroot=sysroot, fakebin=fakebin)
    assert p.returncode == 0, p.stderr
    a = parse_prepare(p.stdout)
    assert a["fixed_performance"] == "on"
    assert (sysroot / "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip() == "performance"
    assert a["governors"][0] == {"governor": "performance", "status": "changed", "previous": "schedutil"}
    if os.geteuid() != 0:  # root may write a 0444 file anyway
        assert a["governors"][3]["status"] == "kept"
    # a second apply would record `performance` as the state to restore: refused
    assert run("prepare.sh", "apply", str(state), sysroot=sysroot, fakebin=fakebin).returncode == 2
    u = parse_prepare(run("prepare.sh", "undo", str(state), sysroot=sysroot, fakebin=fakebin).stdout)
    assert u["fixed_performance"] == "off" and u["governors"][0]["status"] == "restored"
    assert (sysroot / "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip() == "schedutil"
    assert not state.exists()
    assert (tmp_path / "cmd.log").read_text().splitlines() == [
        "power set-fixed-performance-mode-enabled true", "power set-fixed-performance-mode-enabled false"]
    assert parse_prepare(run("prepare.sh", "undo", str(state), sysroot=sysroot).stdout)["state_missing"]
