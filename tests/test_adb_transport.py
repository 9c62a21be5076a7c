"""ADB transports against the loopback device (tests/adb_double.py), with adb-shell and with the
real `adb` client. The double is itself checked against Debian's adb 1.0.41 here."""

import os
import random
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from adb_double import AdbDouble
from profiler.adb import keys
from profiler.adb.parsers import parse_bench, parse_info
from profiler.adb.transport import (
    AdbCommandError,
    AdbConnectionError,
    AdbServerTransport,
    AdbShellTransport,
    AdbTimeout,
    open_transport,
    quote_argv,
)

ADB = shutil.which("adb")
needs_adb = pytest.mark.skipif(ADB is None, reason="Debian's adb client is not installed (apt-get install adb)")
SCRIPTS = Path(__file__).resolve().parents[1] / "device_scripts"
NASTY = "a b 'c' \"d\" ; touch PWNED; $(touch PWNED2) `touch PWNED3` \\ * \n end"


@pytest.fixture
def config_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "config"


@pytest.fixture
def device(tmp_path):
    root = tmp_path / "phone"
    root.mkdir()
    with AdbDouble(root, accept_new_keys=True) as d:
        yield d


@pytest.fixture(scope="module")
def adb_env(tmp_path_factory):
    """An adb server of our own: isolated HOME and vendor keys, a random port; killed at the end."""
    if ADB is None:
        pytest.skip("Debian's adb client is not installed (apt-get install adb)")
    home = tmp_path_factory.mktemp("adb-home")
    (home / "vendor-keys").mkdir()
    env = dict(os.environ, HOME=str(home), ADB_VENDOR_KEYS=str(home / "vendor-keys"),
               ANDROID_ADB_SERVER_PORT=str(random.randint(20000, 40000)))
    subprocess.run([ADB, "start-server"], env=env, capture_output=True, timeout=30, check=True)
    yield env
    subprocess.run([ADB, "kill-server"], env=env, capture_output=True, timeout=30)


@pytest.fixture(params=["adb-shell", "adb-binary"])
def transport(request, device, config_home):
    if request.param == "adb-shell":
        t = AdbShellTransport.tcp("127.0.0.1", device.port)
    else:
        env = request.getfixturevalue("adb_env")
        t = AdbServerTransport(device.serial, env=env)
        t.connect(timeout_s=15)
    yield t
    t.close()
    if request.param == "adb-binary":
        subprocess.run([ADB, "disconnect", device.serial], env=t.env, capture_output=True, timeout=15)


def test_key_is_created_private_in_config_folder(config_home):
    path = keys.ensure_key()
    assert path == config_home / "hwnas" / "adbkey"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Path(f"{path}.pub").read_text().strip()
    before = path.read_bytes()
    assert keys.ensure_key() == path and path.read_bytes() == before  # reused, not regenerated
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


def test_quote_argv_rejects_what_no_shell_can_carry():
    with pytest.raises(ValueError):
        quote_argv([])
    with pytest.raises(ValueError):
        quote_argv(["a\0b"])


def test_argument_reaches_the_device_as_one_word_and_is_not_executed(transport, device):
    code, out = transport.shell(["printf", "[%s]\\n", NASTY, "second"])
    assert code == 0
    assert out == f"[{NASTY}]\n[second]\n"
    assert not any(Path(device.root, n).exists() for n in ("PWNED", "PWNED2", "PWNED3"))


def test_exit_status_and_stderr(transport):
    assert transport.shell(["sh", "-c", "echo out; echo err >&2; exit 3"]) == (3, "out\nerr\n")
    assert transport.shell(["printf", "no newline"]) == (0, "no newline")
    with pytest.raises(AdbCommandError, match="exited with 1"):
        transport.check(["false"])


def test_push_run_pull_and_cleanup(transport, device, tmp_path):
    runner = tmp_path / "runner.sh"
    runner.write_text("#!/bin/sh\necho \"ran with $1\" > \"$(dirname \"$0\")/result.txt\"\n")
    runner.chmod(0o755)
    blob = tmp_path / "model.bin"
    blob.write_bytes(os.urandom(300_000))  # several sync DATA chunks and ADB packets
    with transport.workdir(base=device.root) as wd:
        remote_runner = wd.push(runner)
        remote_blob = wd.push(blob, "block.pte")
        assert transport.shell([remote_runner, "x y"]) == (0, "")
        transport.pull(f"{wd.path}/result.txt", tmp_path / "result.txt")
        transport.pull(remote_blob, tmp_path / "back.bin")
        assert (tmp_path / "result.txt").read_text() == "ran with x y\n"
        assert (tmp_path / "back.bin").read_bytes() == blob.read_bytes()
        assert wd.pushed == [remote_runner, remote_blob]
        workdir = Path(wd.path)
        assert workdir.is_dir()
    assert not workdir.exists()
    assert os.listdir(device.root) == []


def test_pull_of_missing_file_fails_cleanly(transport, device, tmp_path):
    with pytest.raises(AdbCommandError):
        transport.pull(f"{device.root}/does-not-exist", tmp_path / "out.bin")
    assert list(tmp_path.glob("*out.bin*")) == []


def test_command_over_its_time_limit_raises_timeout(transport, device):
    t0 = time.monotonic()
    with pytest.raises(AdbTimeout, match="within 1 s"):
        transport.shell(["sh", "-c", "touch started; sleep 20; touch finished"], timeout_s=1)
    assert time.monotonic() - t0 < 8
    assert transport.shell(["echo", "still usable"]) == (0, "still usable\n")
    # the stuck command was ended on the device side (adbd does this when its stream goes away)
    deadline = time.monotonic() + 5
    while any(p.poll() is None for p in device.processes):
        assert time.monotonic() < deadline, "the timed-out command is still running on the device"
        time.sleep(0.1)
    assert Path(device.root, "started").exists() and not Path(device.root, "finished").exists()


def test_device_scripts_through_the_transport(transport, device):
    with transport.workdir(base=device.root) as wd:
        info = wd.push(SCRIPTS / "info.sh")
        bench = wd.push(SCRIPTS / "bench.sh")
        code, out = transport.shell(["sh", info])
        assert code == 0 and parse_info(out).cpus
        code, out = transport.shell(["sh", bench, "/bin/true", "x.pte", "1", "3", "0x1", "99", "0"])
        assert code == 0 and len(parse_bench(out).samples_ms) == 3


def test_known_key_passes_signature_check(tmp_path, config_home):
    pub = keys.public_key_text()
    with AdbDouble(tmp_path, accept_new_keys=False, known_keys=(pub,)) as d:
        with AdbShellTransport.tcp("127.0.0.1", d.port) as t:
            assert t.shell(["true"]) == (0, "")
        assert d.offered_keys == []  # the signature sufficed; no public key was sent


def test_unknown_key_is_offered_and_accepted(device, config_home):
    with AdbShellTransport.tcp("127.0.0.1", device.port) as t:
        assert t.shell(["echo", "ok"]) == (0, "ok\n")
    assert device.offered_keys == [keys.public_key_text().strip().encode()]


def test_unknown_key_never_accepted_raises_connection_error(tmp_path, config_home):
    with AdbDouble(tmp_path, accept_new_keys=False) as d:
        t0 = time.monotonic()
        with pytest.raises(AdbConnectionError, match="Allow USB debugging"):
            AdbShellTransport.tcp("127.0.0.1", d.port, auth_timeout_s=1)
        assert time.monotonic() - t0 < 8


def test_nothing_listening_raises_connection_error(config_home):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(AdbConnectionError, match="cannot reach"):
        open_transport(f"127.0.0.1:{port}", timeout_s=2)


def test_open_transport_tcp_uses_adb_shell(device, config_home):
    t = open_transport(device.serial)
    try:
        assert isinstance(t, AdbShellTransport) and t.shell(["true"])[0] == 0
    finally:
        t.close()


@needs_adb
def test_double_speaks_to_the_real_adb_client(adb_env, device, tmp_path):
    """Debian's adb: connect (AUTH via RSAPUBLICKEY), devices -l, shell, push and pull."""
    def adb(*args):
        return subprocess.run([ADB, *args], env=adb_env, capture_output=True, text=True, timeout=30)

    out = adb("connect", device.serial).stdout
    assert "connected to" in out or "failed to authenticate" in out  # the latter: key offered, then accepted
    try:
        deadline = time.monotonic() + 15
        while adb("-s", device.serial, "get-state").stdout.strip() != "device":
            assert time.monotonic() < deadline, adb("devices", "-l").stdout
            time.sleep(0.2)
        assert "model:AdbDouble" in adb("devices", "-l").stdout
        assert adb("-s", device.serial, "shell", "echo hi").stdout == "hi\n"
        src = tmp_path / "src.bin"
        src.write_bytes(os.urandom(200_000))
        remote = f"{device.root}/sub/src.bin"
        assert adb("-s", device.serial, "push", str(src), remote).returncode == 0
        assert Path(remote).read_bytes() == src.read_bytes()
        assert adb("-s", device.serial, "pull", remote, str(tmp_path / "back.bin")).returncode == 0
        assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
        # the server's own key (now known to the double) passes the signature check next time
        server_pub = (Path(adb_env["HOME"]) / ".android" / "adbkey.pub").read_text()
        with AdbDouble(tmp_path, accept_new_keys=False, known_keys=(server_pub,)) as strict:
            assert "connected to" in adb("connect", strict.serial).stdout
            assert adb("-s", strict.serial, "shell", "echo signed").stdout == "signed\n"
            assert strict.offered_keys == []
            adb("disconnect", strict.serial)
    finally:
        adb("disconnect", device.serial)
