"""Talking to an Android device over ADB: run argv lists, push and pull files, clean up.

Two transports with one interface (``shell`` / ``push`` / ``pull`` / ``workdir`` / ``close``):

- ``AdbShellTransport``: adb-shell speaks the ADB protocol itself, over TCP (``HOST:PORT``, wireless
  debugging or ``adb tcpip``) or USB (a serial). No adb server needed.
- ``AdbServerTransport``: the ``adb`` binary on PATH. Used when an adb server already holds the USB
  device (the usual state on a developer's laptop), where adb-shell cannot claim the interface.

Why a sentinel: the legacy ``shell:`` service (all that old phones and adb-shell offer) returns
output only, never an exit status. Each command is therefore followed by
``printf '\\n<marker>:%d\\n' "$?"`` with a random marker, and the status is read back from the end.
Output is stdout and stderr merged (``2>&1``), the same on both transports and on every Android
version; stdin is ``/dev/null`` so that no command can hang waiting for input.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

from profiler.errors import HwnasError

from . import keys as _keys

log = logging.getLogger(__name__)

DEFAULT_REMOTE_BASE = "/data/local/tmp"  # the one folder a non-root shell user may write and exec in


class AdbError(HwnasError):
    """Base of every ADB failure raised by this package."""


class AdbTimeout(AdbError):
    """A command or transfer did not finish within its time limit (the device-side process is ended)."""


class AdbConnectionError(AdbError):
    """The device cannot be reached, is offline, or did not authorise this host's key."""


class AdbCommandError(AdbError):
    """The device answered, but the command or transfer failed (message includes its output)."""


def quote_argv(argv: Sequence[str]) -> str:
    """Quote every argument for the device's sh (mksh/toybox and POSIX sh agree on single quotes).

    Raises ValueError on an empty argv or an argument with a NUL byte (no shell can pass it).
    """
    if not argv:
        raise ValueError("empty argv")
    for a in argv:
        if "\0" in str(a):
            raise ValueError(f"argument with a NUL byte cannot reach a shell: {a!r}")
    return " ".join(shlex.quote(str(a)) for a in argv)


def _wrap(argv: Sequence[str], marker: str) -> str:
    return f"{quote_argv(argv)} </dev/null 2>&1; printf '\\n%s:%d\\n' {marker} \"$?\""


def _split_status(raw: bytes, marker: str, command: str) -> tuple[int, str]:
    text = raw.decode("utf-8", errors="replace")
    # \r?\n: adbd before Android 7 ran even non-interactive commands on a pty, which turns \n into \r\n
    m = re.search(r"\r?\n" + re.escape(marker) + r":(\d+)\r?\n?\Z", text)
    if m is None:
        raise AdbCommandError(
            f"no exit status came back for `{command}` (the shell ended early, e.g. `exit` or a killed "
            f"shell); output was: {text[-500:]!r}"
        )
    return int(m.group(1)), text[: m.start()]


class _Transport:
    """What both transports share: argv quoting, the exit-status sentinel, the work folder."""

    serial: str

    def _shell_raw(self, command: str, timeout_s: float, what: str) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def push(self, local: str | os.PathLike, remote: str, timeout_s: float = 120.0) -> None:  # pragma: no cover
        raise NotImplementedError

    def pull(self, remote: str, local: str | os.PathLike, timeout_s: float = 120.0) -> None:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:
        """Release the connection (idempotent)."""

    def shell(self, argv: Sequence[str], timeout_s: float = 60.0) -> tuple[int, str]:
        """Run ``argv`` on the device; return (exit code, stdout+stderr text).

        Every element is quoted, so ``;``, ``$()``, quotes and spaces arrive as data, never as shell
        syntax. Raises AdbTimeout after ``timeout_s`` seconds, AdbConnectionError if the device is
        gone, AdbCommandError if no exit status came back.
        """
        marker = f"hwnas-rc-{secrets.token_hex(8)}"
        raw = self._shell_raw(_wrap(argv, marker), timeout_s, f"`{quote_argv(argv)}`")
        return _split_status(raw, marker, quote_argv(argv))

    def check(self, argv: Sequence[str], timeout_s: float = 60.0) -> str:
        """``shell`` that raises AdbCommandError (with the output) on a non-zero exit code."""
        code, out = self.shell(argv, timeout_s)
        if code != 0:
            raise AdbCommandError(f"`{quote_argv(argv)}` exited with {code} on {self.serial}: {out.strip()[-500:]}")
        return out

    @contextlib.contextmanager
    def workdir(self, base: str = DEFAULT_REMOTE_BASE, prefix: str = "hwnas-") -> Iterator["RemoteWorkDir"]:
        """A fresh folder ``<base>/<prefix><random>`` on the device, removed (with all pushed files) on exit.

        Raises AdbCommandError if the folder cannot be created (e.g. ``base`` not writable).
        """
        path = f"{base.rstrip('/')}/{prefix}{secrets.token_hex(6)}"
        self.check(["mkdir", "-p", path], timeout_s=30)
        wd = RemoteWorkDir(self, path)
        try:
            yield wd
        finally:
            wd.remove()


class RemoteWorkDir:
    """A device folder owned by one ``workdir()`` block; ``push`` puts files into it."""

    def __init__(self, transport: _Transport, path: str):
        self.transport, self.path = transport, path
        self.pushed: list[str] = []

    def push(self, local: str | os.PathLike, name: str | None = None, timeout_s: float = 120.0) -> str:
        """Push ``local`` as ``<path>/<name>`` (default: its file name); return the remote path."""
        name = name or Path(local).name
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"not a plain file name: {name!r}")
        remote = f"{self.path}/{name}"
        self.transport.push(local, remote, timeout_s=timeout_s)
        self.pushed.append(remote)
        return remote

    def remove(self) -> None:
        # only ever our own random folder: never an empty or a caller-supplied path
        try:
            self.transport.shell(["rm", "-rf", self.path], timeout_s=30)
        except AdbError as e:
            log.warning("could not remove %s on %s: %s", self.path, self.transport.serial, e)


# --------------------------------------------------------------------------- adb-shell ---


def _adb_shell_errors():
    from adb_shell import exceptions as ex

    timeouts = (ex.AdbTimeoutError, ex.TcpTimeoutException)
    failures = (ex.AdbCommandFailureException, ex.PushFailedError, ex.DevicePathInvalidError)
    return ex, timeouts, failures


def _tcp_transport(host: str, port: int):
    """adb-shell's TCP transport, except that a connection the device closed is an error at once.

    adb-shell reads a closed socket as "no data yet" and keeps polling until the command's timeout:
    a phone that drops off Wi-Fi, or an adbd that restarts, would hold a run for minutes and then
    look like a slow block. Here it raises ConnectionResetError, which the transport reports as a
    lost device (``AdbConnectionError``) and the profiler answers by reconnecting.
    """
    from adb_shell.transport.tcp_transport import TcpTransport

    class _Tcp(TcpTransport):
        def bulk_read(self, numbytes, transport_timeout_s):
            data = super().bulk_read(numbytes, transport_timeout_s)
            if not data and numbytes:
                raise ConnectionResetError(f"{host}:{port} closed the connection")
            return data

    return _Tcp(host, port)


class AdbShellTransport(_Transport):
    """ADB through adb-shell (no adb server): ``tcp(host, port)`` or ``usb(serial)``.

    After a timeout the connection is closed (adbd then kills the command) and reopened on the next call.
    """

    def __init__(self, device, serial: str, key_path: str | os.PathLike | None = None,
                 connect_timeout_s: float = 10.0, auth_timeout_s: float = 30.0):
        self._device = device
        self.serial = serial
        self._key_path = key_path
        self._connect_timeout_s = connect_timeout_s
        self._auth_timeout_s = auth_timeout_s
        self._connected = False

    @classmethod
    def tcp(cls, host: str, port: int = 5555, **kw) -> "AdbShellTransport":
        """A device reachable at ``host:port`` (Wi-Fi debugging, ``adb tcpip``, an emulator)."""
        from adb_shell.adb_device import AdbDevice

        t = cls(AdbDevice(_tcp_transport(host, int(port))), f"{host}:{port}", **kw)
        t.connect()
        return t

    @classmethod
    def usb(cls, serial: str | None = None, **kw) -> "AdbShellTransport":
        """A USB device by serial. Raises AdbConnectionError if it cannot be opened (see ``open_transport``)."""
        from adb_shell.adb_device import AdbDeviceUsb

        try:
            dev = AdbDeviceUsb(serial=serial)
        except Exception as e:  # libusb missing, no device, permission: all mean "USB path unusable"
            raise AdbConnectionError(f"cannot open USB device {serial or '(any)'}: {type(e).__name__}: {e}") from e
        t = cls(dev, serial or "usb", **kw)
        t.connect()
        return t

    def connect(self) -> None:
        """Open the connection and authenticate with this host's key (created on first use).

        Raises AdbConnectionError: nothing listening, key not accepted within ``auth_timeout_s``.
        """
        ex, timeouts, _ = _adb_shell_errors()
        signer = _keys.load_signer(self._key_path)
        key_hint = _keys.ensure_key(self._key_path)
        try:
            self._device.connect(
                rsa_keys=[signer],
                transport_timeout_s=self._connect_timeout_s,
                auth_timeout_s=self._auth_timeout_s,
                read_timeout_s=self._connect_timeout_s,
            )
        except (ex.DeviceAuthError, ex.InvalidResponseError, *timeouts) as e:
            self._device.close()
            raise AdbConnectionError(
                f"{self.serial} did not accept this host's key ({key_hint}.pub) within {self._auth_timeout_s:g} s: "
                f"unlock the phone, tap 'Allow USB debugging', and retry ({type(e).__name__})"
            ) from e
        except OSError as e:
            self._device.close()
            raise AdbConnectionError(
                f"cannot reach {self.serial}: {e.strerror or e}; check the address, that the phone is on the "
                f"same network, and that wireless debugging (or `adb tcpip 5555`) is on"
            ) from e
        except Exception as e:  # a usb1 error or anything else adb-shell lets through
            self._device.close()
            raise AdbConnectionError(f"cannot connect to {self.serial}: {type(e).__name__}: {e}") from e
        self._connected = True

    def _ensure(self) -> None:
        if not self._connected:
            self.connect()

    def _drop(self) -> None:
        # closing the connection makes adbd hang up every service on it, including a stuck command
        self._connected = False
        try:
            self._device.close()
        except Exception:  # closing a broken socket may itself fail; nothing more to release
            pass

    def _call(self, what: str, limit_s: float, fn, *args, **kw):
        ex, timeouts, failures = _adb_shell_errors()
        self._ensure()
        try:
            return fn(*args, **kw)
        except timeouts as e:
            self._drop()
            raise AdbTimeout(
                f"{what} did not finish within {limit_s:g} s on {self.serial}; "
                f"raise timeout_s if it is slow, or check that it does not wait for input"
            ) from e
        except failures as e:
            detail = e.args[0] if e.args else e
            if isinstance(detail, (bytes, bytearray)):  # adb-shell passes the device's FAIL text as bytes
                detail = bytes(detail).decode("utf-8", "replace")
            raise AdbCommandError(f"{what} failed on {self.serial}: {detail}") from e
        except (OSError, ex.AdbConnectionError, ex.InvalidResponseError, ex.InvalidChecksumError,
                ex.InvalidCommandError) as e:
            self._drop()
            raise AdbConnectionError(
                f"lost {self.serial} during {what}: {type(e).__name__}: {e}; check the cable or network and retry"
            ) from e

    def _shell_raw(self, command: str, timeout_s: float, what: str) -> bytes:
        return self._call(
            what, timeout_s, self._device.shell, command,
            transport_timeout_s=timeout_s, read_timeout_s=timeout_s, timeout_s=timeout_s, decode=False,
        )

    def push(self, local: str | os.PathLike, remote: str, timeout_s: float = 120.0) -> None:
        """Copy a local file to ``remote`` keeping its permission bits (so runners stay executable).

        Raises FileNotFoundError for a missing local file, AdbCommandError if the device refuses,
        AdbTimeout, AdbConnectionError.
        """
        st = os.stat(local)
        if not stat.S_ISREG(st.st_mode):
            raise AdbCommandError(f"push: {local} is not a regular file")
        self._call(
            f"push {local} -> {remote}", timeout_s, self._device.push, os.fspath(local), remote,
            st_mode=stat.S_IFREG | stat.S_IMODE(st.st_mode), transport_timeout_s=timeout_s, read_timeout_s=timeout_s,
        )

    def pull(self, remote: str, local: str | os.PathLike, timeout_s: float = 120.0) -> None:
        """Copy ``remote`` to ``local``; on failure no partial local file is left.

        Raises AdbCommandError if the remote file does not exist or cannot be read.
        """
        local = Path(local)
        fd, tmp = tempfile.mkstemp(dir=local.parent, prefix=f".{local.name}.")
        os.close(fd)
        try:
            mode, _size, _mtime = self._call(f"stat {remote}", timeout_s, self._device.stat, remote,
                                             transport_timeout_s=timeout_s, read_timeout_s=timeout_s)
            if mode == 0 or not stat.S_ISREG(mode):
                raise AdbCommandError(f"pull: {remote} does not exist or is not a file on {self.serial}")
            self._call(f"pull {remote}", timeout_s, self._device.pull, remote, tmp,
                       transport_timeout_s=timeout_s, read_timeout_s=timeout_s)
            os.replace(tmp, local)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def close(self) -> None:
        self._drop()

    def __enter__(self) -> "AdbShellTransport":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------- adb binary ---

_GONE = ("not found", "offline", "no devices", "cannot connect", "unauthorized", "device still authorizing",
         "failed to connect", "connection refused", "closed")


class AdbServerTransport(_Transport):
    """ADB through the ``adb`` binary (and its server); every call is ``subprocess.run([argv list])``.

    ``env`` lets callers (tests) isolate the server: ``ANDROID_ADB_SERVER_PORT``, ``HOME``,
    ``ADB_VENDOR_KEYS``.
    """

    def __init__(self, serial: str, adb_path: str | None = None, env: dict[str, str] | None = None):
        self.serial = serial
        self.adb = adb_path or shutil.which("adb")
        if not self.adb:
            raise AdbConnectionError("no `adb` binary on PATH: install it (Debian: apt-get install adb; "
                                     "else Android SDK platform-tools) or connect over TCP")
        self.env = env

    def _run(self, args: Sequence[str], timeout_s: float, what: str, device: bool = True) -> subprocess.CompletedProcess:
        cmd = [self.adb, *(["-s", self.serial] if device else []), *args]
        try:
            # killing the adb client on timeout closes its stream, and adbd then kills the command
            p = subprocess.run(cmd, capture_output=True, timeout=timeout_s, env=self.env)
        except subprocess.TimeoutExpired as e:
            raise AdbTimeout(f"{what} did not finish within {timeout_s:g} s on {self.serial}; "
                             f"raise timeout_s if it is slow") from e
        except OSError as e:
            raise AdbConnectionError(f"cannot run {self.adb}: {e}") from e
        if p.returncode != 0:
            err = (p.stderr or p.stdout).decode("utf-8", "replace").strip()
            if any(s in err.lower() for s in _GONE):
                raise AdbConnectionError(f"{what}: {self.serial} is not available to adb ({err}); "
                                         f"check `adb devices`, the cable, and the phone's authorisation prompt")
            raise AdbCommandError(f"{what} failed on {self.serial}: {err}")
        return p

    def connect(self, timeout_s: float = 15.0) -> None:
        """For ``HOST:PORT`` serials run ``adb connect``; then wait (up to ``timeout_s``) for state ``device``.

        Raises AdbConnectionError (unreachable, offline, never authorised) or AdbTimeout.
        """
        deadline = time.monotonic() + timeout_s
        if ":" in self.serial:
            p = self._run(["connect", self.serial], timeout_s, f"adb connect {self.serial}", device=False)
            out = p.stdout.decode("utf-8", "replace").strip()
            # "failed to authenticate" is what adb prints while the phone shows its "Allow?" prompt
            if "connected to" not in out and "failed to authenticate" not in out:
                raise AdbConnectionError(f"adb connect {self.serial}: {out}; check the address and that "
                                         f"wireless debugging is on")
        else:  # a serial the server does not list will not appear by waiting: say so at once
            listed = self.listed(timeout_s)
            if self.serial not in listed:
                raise AdbConnectionError(f"the adb server lists no device {self.serial} (`adb devices` lists "
                                         f"{', '.join(sorted(listed)) or 'none'}); check the serial, the cable "
                                         f"and that USB debugging is on")
        state = ""
        while time.monotonic() < deadline:
            p = subprocess.run([self.adb, "-s", self.serial, "get-state"], capture_output=True, env=self.env,
                               timeout=max(1.0, deadline - time.monotonic()))
            state = (p.stdout.decode().strip() or p.stderr.decode().strip())
            if p.returncode == 0 and state == "device":
                return
            time.sleep(0.2)
        raise AdbConnectionError(f"{self.serial} is not ready after {timeout_s:g} s ({state}): unlock the phone "
                                 f"and tap 'Allow USB debugging'")

    def listed(self, timeout_s: float = 15.0) -> dict[str, str]:
        """The devices the adb server lists: serial -> state (device, offline, unauthorized, ...)."""
        p = self._run(["devices"], timeout_s, "adb devices", device=False)
        rows = (line.split() for line in p.stdout.decode("utf-8", "replace").splitlines()[1:])
        return {r[0]: r[1] for r in rows if len(r) >= 2}

    def _shell_raw(self, command: str, timeout_s: float, what: str) -> bytes:
        # one argument: the adb client sends it verbatim as `shell:<command>`
        return self._run(["shell", command], timeout_s, what).stdout

    def push(self, local: str | os.PathLike, remote: str, timeout_s: float = 120.0) -> None:
        """``adb push``; raises FileNotFoundError, AdbCommandError, AdbTimeout, AdbConnectionError."""
        if not os.path.isfile(local):
            raise FileNotFoundError(local)
        self._run(["push", os.fspath(local), remote], timeout_s, f"push {local} -> {remote}")

    def pull(self, remote: str, local: str | os.PathLike, timeout_s: float = 120.0) -> None:
        """``adb pull`` into a temp file, renamed on success; raises AdbCommandError on a missing file."""
        local = Path(local)
        fd, tmp = tempfile.mkstemp(dir=local.parent, prefix=f".{local.name}.")
        os.close(fd)
        try:
            self._run(["pull", remote, tmp], timeout_s, f"pull {remote}")
            os.replace(tmp, local)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def __enter__(self) -> "AdbServerTransport":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_transport(device: str, *, key_path: str | os.PathLike | None = None,
                   adb_path: str | None = None, timeout_s: float = 10.0) -> _Transport:
    """Open ``HOST:PORT`` over TCP with adb-shell, or a USB serial with adb-shell, else via ``adb``.

    ``device`` is the part after ``adb:`` in a device spec. Raises AdbConnectionError saying what to do.
    """
    if re.fullmatch(r"[^:\s]+:\d{1,5}", device):
        host, port = device.rsplit(":", 1)
        return AdbShellTransport.tcp(host, int(port), key_path=key_path, connect_timeout_s=timeout_s)
    try:
        return AdbShellTransport.usb(device, key_path=key_path, connect_timeout_s=timeout_s)
    except AdbConnectionError as e:
        if not (adb_path or shutil.which("adb")):
            raise AdbConnectionError(f"{e}; if an adb server holds the device, install `adb` "
                                     f"(used as a fallback) or run `adb kill-server`") from e
        # not a warning: without adb-shell's USB extra this is the normal path, and a refusal must stay one line
        log.info("USB %s is not usable by adb-shell (an adb server usually holds it: %s); "
                 "using the adb binary instead", device, e)
        t = AdbServerTransport(device, adb_path=adb_path)
        t.connect(timeout_s)
        return t
