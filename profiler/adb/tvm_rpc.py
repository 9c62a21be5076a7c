"""TVM on a phone over ADB: TVM's RPC server started on the phone, registered with a tracker on the host.

``hwnas profile --backend tvm --device adb:SERIAL --tvm-rpc ./tvm_rpc`` does what a TVM user does by
hand for a phone on a USB cable:

1. a tracker on the host's loopback (or the one ``--tracker HOST:PORT`` names);
2. with an adb server: ``adb reverse tcp:T tcp:T`` so that the phone's 127.0.0.1:T is the host's
   tracker, and ``adb forward tcp:S tcp:S`` so that the host reaches the phone's server at
   127.0.0.1:S (the server reports that address with ``--custom-addr``);
3. the user's ``tvm_rpc`` binary (TVM's ``apps/cpp_rpc``, built with the NDK) pushed once, cached by
   its SHA-256 like the ExecuTorch runner, and started in its own session:
   ``tvm_rpc server --tracker=127.0.0.1:T --key=KEY --port=S --port-end=S+10 --custom-addr=... --work-dir=...``;
4. the blocks, cross-compiled for aarch64 Android, are timed through a session the tracker hands
   out (the same path as ``--device rpc:``), and the server is stopped at the end.

Without an adb server (adb-shell over TCP) there is no ``reverse``/``forward``: the phone must reach
the tracker over the network (``--tracker`` with an address the phone can reach), and the host the
phone's address; a device on the host's own loopback (an emulator's forwarded port) needs neither.
Users of TVM's Android RPC app skip all this: start the app against a tracker and profile
``--device rpc:TRACKER_HOST:PORT/KEY``.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import time
from typing import Any

from profiler._proc import die_with_parent
from profiler.devices import DeviceError

from .transport import AdbError, AdbServerTransport

__all__ = ["PhoneRpcServer"]

_START = ('log=$1; shift; if command -v setsid >/dev/null 2>&1; then setsid "$@" >"$log" 2>&1 </dev/null & '
          'else nohup "$@" >"$log" 2>&1 </dev/null & fi; echo "pid=$!"')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def _start_tracker():
    """A TVM RPC tracker on loopback, in a child process that ends with this one.

    TVM runs the tracker in a ``tvm.exec.popen_worker`` child whose server thread keeps it alive
    after its parent is killed (about 490 MB under pid 1), so the child is told to die with us.
    """
    from tvm.rpc.tracker import Tracker

    tracker = Tracker(host="127.0.0.1", port=_free_port(), port_end=65000, silent=True)
    try:
        tracker.proc.send(die_with_parent, [os.getpid()])
        tracker.proc.recv()
    except BaseException:
        tracker.terminate()
        raise
    return tracker


class PhoneRpcServer:
    """Context manager: a tracker (host) and TVM's RPC server (phone); `.device` is the rpc: spec to time through."""

    def __init__(self, phone, tvm_rpc: str, tracker: str | None = None, wait_s: float = 60.0,
                 server_port: int | None = None):
        self.phone = phone  # an open profiler.adb.device.AdbDevice
        self.binary = tvm_rpc
        self.tracker_arg = tracker
        self.wait_s = wait_s
        self.server_port = server_port or _free_port()
        self.key = f"hwnas-{secrets.token_hex(4)}"
        self._tracker = None
        self._pid: str | None = None
        self._undo: list[list[str]] = []
        self.device = ""

    def __enter__(self) -> "PhoneRpcServer":
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _start(self) -> None:
        t = self.phone._t
        server_transport = isinstance(t, AdbServerTransport)
        if self.tracker_arg:
            host, _, port = self.tracker_arg.rpartition(":")
            if not host or not port.isdigit():
                raise DeviceError(f"--tracker {self.tracker_arg!r}: expected HOST:PORT")
            t_host, t_port = host, int(port)
            phone_tracker = f"{t_host}:{t_port}"
        else:
            self._tracker = _start_tracker()
            t_host, t_port = "127.0.0.1", self._tracker.port
            phone_tracker = f"127.0.0.1:{t_port}"
        adb_host = self.phone.serial.rsplit(":", 1)[0] if ":" in self.phone.serial else ""
        if server_transport:
            # USB (or adb connect) through the adb server: tunnel both directions over adb
            if not self.tracker_arg:
                self._adb(["reverse", f"tcp:{t_port}", f"tcp:{t_port}"], ["reverse", "--remove", f"tcp:{t_port}"])
            self._adb(["forward", f"tcp:{self.server_port}", f"tcp:{self.server_port}"],
                      ["forward", "--remove", f"tcp:{self.server_port}"])
            custom = "127.0.0.1"
        elif adb_host and _loopback(adb_host):
            custom = "127.0.0.1"  # the device shares the host's loopback (an emulator, the test double)
        elif self.tracker_arg:
            custom = adb_host  # the phone on the network: the host reaches it at the address adb uses
        else:
            raise DeviceError(
                f"adb:{self.phone.serial}: a phone on the network cannot reach a tracker on this host's loopback; "
                f"run a tracker the phone can reach (python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190) "
                f"and pass --tracker THIS_HOST_IP:9190, or connect the phone by USB")
        remote = self.phone.push_cached(self.binary, "tvm_rpc")
        log = f"{self.phone.work}/tvm_rpc.log"
        argv = ["sh", "-c", _START, "sh", log, remote, "server", "--host=0.0.0.0", f"--port={self.server_port}",
                f"--port-end={self.server_port + 10}", f"--tracker={phone_tracker}", f"--key={self.key}",
                f"--custom-addr={custom}", f"--work-dir={self.phone.work}"]
        out = self.phone._retry("starting tvm_rpc", lambda: self.phone._t.check(argv, timeout_s=30))
        self._pid = out.strip().rpartition("pid=")[2].strip() or None
        self.device = f"rpc:{t_host}:{t_port}/{self.key}"
        self._wait_registered(t_host, t_port, log)

    def _adb(self, args: list[str], undo: list[str]) -> None:
        t = self.phone._t
        t._run(args, 30, f"adb {' '.join(args)}")
        self._undo.append(undo)

    def _wait_registered(self, host: str, port: int, log: str) -> None:
        from tvm import rpc

        end = time.monotonic() + self.wait_s
        while time.monotonic() < end:
            try:
                summary = rpc.connect_tracker(host, port).summary()
                if any(s.get("key", "").endswith(self.key) for s in summary.get("server_info", [])):
                    return
            except Exception:  # the tracker may still be starting
                pass
            time.sleep(0.5)
        try:
            _, text = self.phone._t.shell(["cat", log], timeout_s=15)
        except AdbError:
            text = "(log unreadable)"
        raise DeviceError(f"adb:{self.phone.serial}: tvm_rpc did not register with the tracker {host}:{port} "
                          f"within {self.wait_s:.0f} s; its output: {text.strip()[-400:]!r}")

    @staticmethod
    def _stop(t, pid: str, grace_s: float = 5.0) -> None:
        """SIGTERM, wait until the process is gone, SIGKILL after `grace_s`: no server outlives the run."""
        t.shell(["kill", pid], timeout_s=15)
        end = time.monotonic() + grace_s
        while time.monotonic() < end:
            code, _ = t.shell(["kill", "-0", pid], timeout_s=15)
            if code != 0:
                return
            time.sleep(0.2)
        t.shell(["kill", "-9", pid], timeout_s=15)

    def close(self) -> None:
        t = self.phone._t
        if self._pid and t is not None:
            try:
                self._stop(t, self._pid)
            except AdbError:
                pass
        for args in self._undo:
            try:
                t._run(args, 30, f"adb {' '.join(args)}")
            except (AdbError, AttributeError):
                pass
        self._undo.clear()
        if self._tracker is not None:
            self._tracker.terminate()
            self._tracker = None
