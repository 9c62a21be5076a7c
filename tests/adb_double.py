"""A loopback ADB device for tests: the device side of the ADB protocol over TCP on 127.0.0.1.

It speaks the real wire protocol (24-byte little-endian headers, CNXN / AUTH / OPEN / OKAY / WRTE /
CLSE), so the same double is checked against adb-shell's ``AdbDeviceTcp`` and against Debian's real
``adb`` client (``adb connect 127.0.0.1:PORT``). It serves:

- ``shell:CMD``: runs ``/bin/sh -c CMD`` in ``root`` (stdout and stderr merged, no exit status:
  the legacy shell service of a real phone behaves the same way);
- ``sync:``: STAT, LIST, SEND (push), RECV (pull), QUIT; paths must lie inside ``root``, anything
  else answers FAIL like a phone's permission error.

AUTH follows adbd: a 20-byte TOKEN, a SIGNATURE checked against the known public keys (Android's
binary RSA public-key format), a new TOKEN after a bad signature, and RSAPUBLICKEY accepted only if
``accept_new_keys`` is set (a phone whose owner never taps "Allow" simply never answers).

Test double only: nothing in ``profiler/`` imports it.
"""

from __future__ import annotations

import base64
import os
import queue
import secrets
import signal
import socket
import struct
import subprocess
import threading
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

_HEADER = struct.Struct("<6I")
A_VERSION = 0x01000001  # the version that lets both sides skip the data checksum
A_VERSION_MIN = 0x01000000
MAX_DATA = 256 * 1024
AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3
SYNC_CHUNK = 64 * 1024  # a sync DATA record holds at most 64 KiB (file_sync_service.h)


def _wire(cmd: bytes) -> int:
    return struct.unpack("<I", cmd)[0]


CNXN, AUTH, OPEN, OKAY, WRTE, CLSE = (_wire(c) for c in (b"CNXN", b"AUTH", b"OPEN", b"OKAY", b"WRTE", b"CLSE"))


def decode_android_pubkey(text: bytes | str) -> rsa.RSAPublicKey:
    """Android's ``adbkey.pub`` (base64 of a packed RSAPublicKey struct, then `` user@host``) -> key.

    Raises ValueError on anything that is not a 2048-bit key in that format.
    """
    if isinstance(text, str):
        text = text.encode()
    blob = base64.b64decode(text.strip(b"\0").split()[0])
    # struct RSAPublicKey { u32 len_words; u32 n0inv; u8 n[256] (LE); u8 rr[256] (LE); u32 e; }
    words, _n0inv, n_le, _rr, e = struct.unpack("<II256s256sI", blob)
    if words != 64:
        raise ValueError(f"unsupported key: {words} words")
    return rsa.RSAPublicNumbers(e, int.from_bytes(n_le, "little")).public_key()


class _Stream:
    """One open service on the device side: ids, flow control and the host's incoming bytes."""

    def __init__(self, conn: "_Connection", local_id: int, remote_id: int):
        self.conn, self.local_id, self.remote_id = conn, local_id, remote_id
        self.acked = threading.Event()
        self.incoming: queue.Queue[bytes | None] = queue.Queue()
        self.closed = threading.Event()
        self._buf = b""
        self.proc: subprocess.Popen | None = None

    def write(self, data: bytes) -> bool:
        """Send data in WRTE packets, one outstanding at a time (ADB flow control); False if closed."""
        for i in range(0, len(data), self.conn.max_data):
            if self.closed.is_set():
                return False
            self.acked.clear()
            self.conn.send(WRTE, self.local_id, self.remote_id, data[i : i + self.conn.max_data])
            while not self.acked.wait(0.1):
                if self.closed.is_set() or self.conn.dead.is_set():
                    return False
        return True

    def read_exact(self, n: int) -> bytes | None:
        while len(self._buf) < n:
            chunk = self.incoming.get()
            if chunk is None:
                return None
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def close_from_device(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            self.conn.send(CLSE, self.local_id, self.remote_id)
        self.conn.streams.pop(self.local_id, None)

    def close_from_host(self) -> None:
        """Host sent CLSE: answer it (adb-shell waits for it), stop the service."""
        if not self.closed.is_set():
            self.closed.set()
            self.conn.send(CLSE, self.local_id, self.remote_id)
        self.incoming.put(None)
        self.kill()
        self.conn.streams.pop(self.local_id, None)

    def kill(self) -> None:
        # adbd hangs up the shell's process group when the stream goes away; so does the double
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class _Connection:
    def __init__(self, device: "AdbDouble", sock: socket.socket):
        self.device, self.sock = device, sock
        self.send_lock = threading.Lock()
        self.streams: dict[int, _Stream] = {}
        self.next_id = 1
        self.max_data = 4096
        self.version = A_VERSION_MIN
        self.online = False
        self.token = b""
        self.dead = threading.Event()

    # --- packets --------------------------------------------------------------------------
    def send(self, cmd: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        header = _HEADER.pack(cmd, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF, cmd ^ 0xFFFFFFFF)
        try:
            with self.send_lock:
                self.sock.sendall(header + data)
        except OSError:
            self.dead.set()

    def _recv_exact(self, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    def serve(self) -> None:
        try:
            while True:
                head = self._recv_exact(_HEADER.size)
                if head is None:
                    break
                cmd, arg0, arg1, length, _check, magic = _HEADER.unpack(head)
                if magic != cmd ^ 0xFFFFFFFF:
                    break  # a real adbd drops a connection with a corrupt header
                data = self._recv_exact(length) if length else b""
                if data is None:
                    break
                self.handle(cmd, arg0, arg1, data)
        finally:
            self.dead.set()
            for s in list(self.streams.values()):
                s.closed.set()
                s.incoming.put(None)
                s.kill()
            try:
                self.sock.close()
            except OSError:
                pass

    def _banner(self) -> bytes:
        # no features: the host must use the legacy shell and sync protocols (what we serve)
        return b"device::ro.product.name=hwnas_double;ro.product.model=AdbDouble;ro.product.device=double;features=\0"

    def _connected(self) -> None:
        self.online = True
        self.send(CNXN, self.version, MAX_DATA, self._banner())

    def _new_token(self) -> None:
        self.token = secrets.token_bytes(20)
        self.send(AUTH, AUTH_TOKEN, 0, self.token)

    def handle(self, cmd: int, arg0: int, arg1: int, data: bytes) -> None:
        dev = self.device
        if cmd == CNXN:
            self.version = min(arg0, A_VERSION)
            self.max_data = min(arg1, MAX_DATA)
            dev.host_banners.append(data)
            if dev.auth:
                self._new_token()
            else:
                self._connected()
        elif cmd == AUTH and not self.online:
            if arg0 == AUTH_SIGNATURE:
                if dev.verify(self.token, data):
                    self._connected()
                else:
                    self._new_token()  # adbd asks again, the host tries its next key
            elif arg0 == AUTH_RSAPUBLICKEY:
                dev.offered_keys.append(data.rstrip(b"\0"))
                if dev.accept_new_keys:
                    dev.add_key(data)
                    self._connected()
                # else: the owner never taps "Allow"; the host waits and times out
        elif not self.online:
            return  # adbd ignores everything else before the connection is authorised
        elif cmd == OPEN:
            self._open(arg0, data.rstrip(b"\0").decode("utf-8", "replace"))
        elif cmd == OKAY:
            s = self.streams.get(arg1)
            if s is not None:
                s.acked.set()
        elif cmd == WRTE:
            s = self.streams.get(arg1)
            if s is not None:
                s.incoming.put(data)
                self.send(OKAY, s.local_id, s.remote_id)
        elif cmd == CLSE:
            s = self.streams.get(arg1)
            if s is not None:
                s.close_from_host()

    def _open(self, remote_id: int, service: str) -> None:
        local_id = self.next_id
        self.next_id += 1
        s = _Stream(self, local_id, remote_id)
        if service.startswith("shell:") and service != "shell:":
            target = self._shell
        elif service == "sync:":
            target = self._sync
        else:
            self.send(CLSE, 0, remote_id)  # unknown service: adbd refuses by closing at once
            return
        self.streams[local_id] = s
        self.device.services.append(service)
        self.send(OKAY, local_id, remote_id)
        threading.Thread(target=target, args=(s, service), daemon=True).start()

    # --- services --------------------------------------------------------------------------
    def _shell(self, s: _Stream, service: str) -> None:
        cmd = service[len("shell:") :]
        dev = self.device
        with dev.lock:
            dev.shells_started += 1
            drop = dev.drop_after_shells is not None and dev.shells_started > dev.drop_after_shells
            if drop:
                dev.drop_after_shells = None
        if drop:  # the cable is pulled as this command starts: every connection goes, and the port
            threading.Thread(target=dev.drop, args=(dev.down_s,), daemon=True).start()  # stays shut a while
            return
        s.proc = subprocess.Popen(
            ["/bin/sh", "-c", cmd],
            cwd=self.device.root,
            env=self.device.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group, so a closed stream kills the whole tree
        )
        self.device.processes.append(s.proc)
        fd = s.proc.stdout.fileno()
        try:
            while True:
                chunk = os.read(fd, self.max_data)
                if not chunk or not s.write(chunk):
                    break
        finally:
            s.kill()
            s.proc.wait()
            s.proc.stdout.close()
            s.close_from_device()

    def _inside(self, raw: bytes) -> Path | None:
        p = Path(os.path.realpath(raw.decode("utf-8", "replace")))
        root = Path(os.path.realpath(self.device.root))
        return p if p == root or root in p.parents else None

    def _sync(self, s: _Stream, _service: str) -> None:
        try:
            while True:
                head = s.read_exact(8)
                if head is None:
                    return
                ident, length = head[:4], struct.unpack("<I", head[4:])[0]
                if ident == b"QUIT":
                    return
                payload = s.read_exact(length)
                if payload is None:
                    return
                if ident == b"STAT":
                    s.write(b"STAT" + self._stat(payload))
                elif ident == b"LIST":
                    s.write(self._list(payload))
                elif ident == b"RECV":
                    s.write(self._recv(payload))
                elif ident == b"SEND":
                    if not self._send(s, payload):
                        return
                else:
                    s.write(_fail(f"unknown sync request {ident!r}"))
                    return
        finally:
            s.close_from_device()

    def _stat(self, raw: bytes) -> bytes:
        p = self._inside(raw)
        try:
            st = os.stat(p) if p is not None else None
        except OSError:
            st = None
        if st is None:
            return struct.pack("<3I", 0, 0, 0)  # legacy STAT: all zero means "does not exist"
        return struct.pack("<3I", st.st_mode & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF, int(st.st_mtime))

    def _list(self, raw: bytes) -> bytes:
        p = self._inside(raw)
        out = b""
        if p is not None and p.is_dir():
            for name in [".", ".."] + sorted(os.listdir(p)):
                st = os.lstat(p / name)
                enc = name.encode()
                out += b"DENT" + struct.pack("<4I", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime), len(enc)) + enc
        return out + b"DONE" + struct.pack("<4I", 0, 0, 0, 0)

    def _recv(self, raw: bytes) -> bytes:
        p = self._inside(raw)
        if p is None:
            return _fail(f"remote object '{raw.decode(errors='replace')}' permission denied")
        try:
            data = p.read_bytes()
        except OSError as e:
            return _fail(f"open failed: {e.strerror}")
        out = b"".join(
            b"DATA" + struct.pack("<I", len(data[i : i + SYNC_CHUNK])) + data[i : i + SYNC_CHUNK]
            for i in range(0, len(data), SYNC_CHUNK)
        )
        return out + b"DONE" + struct.pack("<I", 0)

    def _send(self, s: _Stream, spec: bytes) -> bool:
        path_b, _, mode_b = spec.rpartition(b",")
        try:
            mode = int(mode_b) & 0o777
        except ValueError:
            path_b, mode = spec, 0o644
        p = self._inside(path_b) if path_b else None
        chunks = []
        while True:  # the host streams DATA records then DONE(mtime); read them all before answering
            head = s.read_exact(8)
            if head is None:
                return False
            ident, n = head[:4], struct.unpack("<I", head[4:])[0]
            if ident == b"DONE":
                break
            if ident != b"DATA":
                s.write(_fail(f"unexpected {ident!r} during push"))
                return False
            body = s.read_exact(n)
            if body is None:
                return False
            chunks.append(body)
        if p is None:
            s.write(_fail(f"couldn't create file: Permission denied ({path_b.decode(errors='replace')})"))
            return True
        try:
            p.parent.mkdir(parents=True, exist_ok=True)  # adbd creates missing parent folders
            p.write_bytes(b"".join(chunks))
            os.chmod(p, mode or 0o644)
        except OSError as e:
            s.write(_fail(f"couldn't create file: {e.strerror}"))
            return True
        s.write(b"OKAY" + struct.pack("<I", 0))
        return True


def _fail(msg: str) -> bytes:
    enc = msg.encode()
    return b"FAIL" + struct.pack("<I", len(enc)) + enc


class AdbDouble:
    """A loopback ADB device on 127.0.0.1 at a random port. Use as a context manager.

    ``root`` is the folder that plays the phone's writable storage: shell commands run there and sync
    paths must lie inside it. ``known_keys`` are ``adbkey.pub`` contents that pass AUTH.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        auth: bool = True,
        known_keys: tuple[bytes | str, ...] = (),
        accept_new_keys: bool = True,
        env: dict[str, str] | None = None,
    ):
        """``env``: the environment of shell commands (a fake ``getprop`` on PATH, ``HWNAS_SYSROOT``)."""
        self.root = str(root)
        self.env = env
        self.lock = threading.Lock()
        self.shells_started = 0
        self.drop_after_shells: int | None = None  # fault injection: see `disconnect_after`
        self.down_s = 0.0
        self.drops = 0
        self.auth = auth
        self.accept_new_keys = accept_new_keys
        self.keys: list[rsa.RSAPublicKey] = []
        for k in known_keys:
            self.add_key(k)
        self.offered_keys: list[bytes] = []
        self.host_banners: list[bytes] = []
        self.services: list[str] = []
        self.processes: list[subprocess.Popen] = []  # every shell command started, for tests to inspect
        self._sock: socket.socket | None = None
        self._port = 0
        self._conns: list[_Connection] = []

    def add_key(self, pub: bytes | str) -> None:
        self.keys.append(decode_android_pubkey(pub))

    def verify(self, token: bytes, signature: bytes) -> bool:
        # the host signs the 20-byte token as if it were a SHA-1 digest (RSA PKCS#1 v1.5)
        for key in self.keys:
            try:
                key.verify(signature, token, padding.PKCS1v15(), utils.Prehashed(hashes.SHA1()))
                return True
            except (InvalidSignature, ValueError):
                continue
        return False

    @property
    def port(self) -> int:
        assert self._port, "start() first"
        return self._port

    @property
    def serial(self) -> str:
        return f"127.0.0.1:{self.port}"

    def disconnect_after(self, shells: int, down_s: float) -> None:
        """Fault: when the next shell command after `shells` more starts, drop every connection and
        refuse new ones for `down_s` seconds (a pulled cable, a phone that reboots); `inf`: for good."""
        with self.lock:
            self.drop_after_shells = self.shells_started + shells
            self.down_s = down_s

    def drop(self, down_s: float) -> None:
        """Close every connection and the listening socket; listen again on the same port after `down_s`."""
        port = self.port
        self.drops += 1
        self.stop()
        if down_s != float("inf"):
            threading.Timer(down_s, self.start, kwargs={"port": port}).start()

    def start(self, port: int = 0) -> "AdbDouble":
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self._port = self._sock.getsockname()[1]
        self._sock.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._sock.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self, sock)
            self._conns.append(conn)
            threading.Thread(target=conn.serve, daemon=True).start()

    def stop(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() thread
            except OSError:
                pass
            self._sock.close()
        for c in self._conns:
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> "AdbDouble":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


__all__ = ["AdbDouble", "decode_android_pubkey"]
