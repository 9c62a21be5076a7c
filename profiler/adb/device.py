"""An Android phone as a place to time compiled blocks: the harness's device side over ADB.

What happens on the phone, all under one base folder (default ``/data/local/tmp/hwnas``, the one
place a non-root shell may write and execute):

- ``scripts-<hash>/``: ``device_scripts/*.sh``, pushed once per version of the scripts;
- ``runners/<sha256>/executor_runner``: the user's runner binary, pushed once per content (a second
  run, or another block, reuses it: "cached on the device by hash");
- ``work-<random>/``: this run's artifacts; each is removed after it is timed, the folder at the end.

Each block is timed by ``bench.sh``: a probe invocation gives the time of one execution, from which
the number of executions per invocation (``inner``) is chosen so that one sample lasts at least the
protocol's ``min_sample_ms``; then warm-up invocations and ``min_runs`` timed invocations pinned to
the big cores. The runner's own clock is used (ExecuTorch's ``executor_runner`` logs
``Model executed successfully N time(s) in T ms.``), so process start-up and program loading are
not in the numbers.

Faults: a lost connection is retried with exponential back-off (reconnecting, and pushing again
what a rebooted phone may have lost) for up to ``reconnect_s`` seconds; after that ``DeviceGone``
ends the run. A runner that crashes, hangs or prints garbage is a failure with its output
(``WorkerFailed``, which the harness stores as a failed row), never a number.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from profiler.devices import DeviceError
from profiler.timing import MeasureRequest, Peak, TimingReply, WorkerFailed

from .parsers import BenchOutputError, BenchResult, ParseError, PhoneInfo, parse_bench, parse_info
from .transport import AdbCommandError, AdbConnectionError, AdbError, AdbTimeout, open_transport

log = logging.getLogger(__name__)

# The scripts ship inside the package (profiler/device_scripts, in a source tree a symlink to the
# top-level device_scripts/ folder, so a wheel, an editable install and a checkout on PYTHONPATH all
# find the same files). The package is installed as plain files, so this is a real path that
# `push` can open.
SCRIPTS_DIR = resources.files("profiler") / "device_scripts"
SCRIPTS = ("info.sh", "bench.sh", "prepare.sh")
DEFAULT_BASE = "/data/local/tmp/hwnas"

__all__ = ["AdbOptions", "AdbDevice", "DeviceGone", "RunnerError", "device_id_of", "read_info", "SCRIPTS_DIR"]


class DeviceGone(DeviceError):
    """The phone stayed unreachable past the reconnect budget: the run ends (stored rows are kept)."""


class RunnerError(DeviceError):
    """The runner option is unusable (missing, not a file, not executable)."""


@dataclass(frozen=True)
class AdbOptions:
    """How to reach and use a phone (all durations in seconds, temperatures in degrees C)."""

    runner: str | None = None  # path of the user's executor_runner (ExecuTorch), built for the phone
    tvm_rpc: str | None = None  # path of TVM's tvm_rpc (apps/cpp_rpc), built for the phone (tvm backend)
    tracker: str | None = None  # HOST:PORT of a TVM RPC tracker the phone can reach (default: one on loopback)
    remote_base: str = DEFAULT_BASE
    key_path: str | None = None  # the host's ADB key (default: ~/.config/hwnas/adbkey)
    adb_path: str | None = None  # the adb binary, for USB devices an adb server holds
    mask: str = "auto"  # CPU mask (hex) for taskset; auto: the big cores
    max_temp_c: int = 45  # bench.sh waits while the hottest zone is above this ...
    cool_wait_s: int = 120  # ... for at most this long, then the block fails as "hot"
    warmup: int = 2  # warm-up invocations before the timed ones (each runs `inner` executions)
    reconnect_s: float = 60.0  # total back-off budget when the connection is lost
    connect_timeout_s: float = 10.0
    prepare: bool = True  # fixed-performance mode / performance governor while timing, undone after


def device_id_of(info: PhoneInfo | None, serial: str) -> str:
    """A stable name of the phone: manufacturer, model, SoC and serial number."""
    p = info.props if info else {}
    name = " ".join(x for x in (p.get("manufacturer"), p.get("model")) if x) or "android"
    soc = p.get("soc") or "unknown-soc"
    return f"android/{name}/{soc}/{p.get('serialno') or serial}"


def _sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _scripts_hash() -> str:
    h = hashlib.sha256()
    for name in SCRIPTS:
        h.update(name.encode() + b"\0" + (SCRIPTS_DIR / name).read_bytes())
    return h.hexdigest()[:12]


class AdbDevice:
    """One phone for one profiling run: a `profiler.timing.Timer`. Use as a context manager."""

    def __init__(self, serial: str, options: AdbOptions | None = None,
                 on_message: Callable[[str], None] | None = None,
                 transport_factory: Callable[[], Any] | None = None):
        self.serial = serial  # the part after "adb:" (a USB serial or HOST:PORT)
        self.opts = options or AdbOptions()
        self._say = on_message or (lambda text: log.warning("%s", text))
        self._factory = transport_factory or (lambda: open_transport(
            serial, key_path=self.opts.key_path, adb_path=self.opts.adb_path, timeout_s=self.opts.connect_timeout_s))
        self._t = None
        base = self.opts.remote_base.rstrip("/") or "/"
        self.base = base
        self.scripts = f"{base}/scripts-{_scripts_hash()}"
        self.work = f"{base}/work-{secrets.token_hex(6)}"
        self.runner_remote: str | None = None
        if self.opts.runner:
            r = Path(self.opts.runner)
            if not r.is_file():
                raise RunnerError(f"--runner {r}: no such file; build ExecuTorch's executor_runner for the "
                                  f"phone with the Android NDK (see docs/phones.md) and pass its path")
            self.runner_remote = self._cached_path(r, "executor_runner")
        self.info: PhoneInfo | None = None  # read by open()
        self.prepared: dict[str, Any] | None = None
        self.reconnects = 0
        self._reached = False  # connected once: only then is a failure a lost connection worth waiting for

    # ---- connection and set-up ----------------------------------------------------------------
    def _connect(self) -> None:
        self._t = self._factory()

    def _drop(self) -> None:
        if self._t is not None:
            try:
                self._t.close()
            except Exception:  # a broken connection may fail to close; nothing else to release
                pass
        self._t = None

    def _retry(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run `fn` (which uses self._t); on a lost connection reconnect with back-off and run it again.

        The first connection is not retried: its transport already waits (bounded) for a phone that is
        listed but not ready, and one that cannot be reached at all is refused at once.
        """
        delay, spent = 0.5, 0.0
        while True:
            try:
                if self._t is None:
                    self._connect()
                    self._reached = True
                    self._setup()
                return fn()
            except AdbConnectionError as e:
                self._drop()
                if not self._reached:  # never connected: a wrong serial or address, nothing to resume
                    raise DeviceGone(f"adb:{self.serial}: cannot connect ({e})") from None
                if spent >= self.opts.reconnect_s:
                    raise DeviceGone(
                        f"adb:{self.serial} stayed unreachable for {spent:.0f} s during {what} ({e}); the "
                        f"measurements taken so far are stored: reconnect the phone and run the same "
                        f"command again to resume") from None
                self._say(f"adb:{self.serial}: connection lost during {what}; reconnecting in {delay:.1f} s")
                time.sleep(delay)
                spent += delay
                delay = min(delay * 2, 8.0)
                self.reconnects += 1

    def _exists(self, path: str, flag: str = "-f") -> bool:
        code, _ = self._t.shell(["test", flag, path], timeout_s=30)
        return code == 0

    def _setup(self) -> None:
        """Make sure the scripts, the runner and the work folder are on the phone (idempotent)."""
        t = self._t
        t.check(["mkdir", "-p", self.scripts, self.work], timeout_s=30)
        for name in SCRIPTS:
            remote = f"{self.scripts}/{name}"
            if not self._exists(remote):
                t.push(SCRIPTS_DIR / name, remote, timeout_s=60)
        if self.runner_remote:
            self._push_cached_now(self.opts.runner, self.runner_remote)

    def _push_cached_now(self, local: str, remote: str) -> None:
        if self._exists(remote, "-x"):
            return
        t = self._t
        folder = remote.rsplit("/", 1)[0]
        t.check(["mkdir", "-p", folder], timeout_s=30)
        tmp = f"{folder}/.partial-{secrets.token_hex(4)}"
        t.push(local, tmp, timeout_s=300)
        # pushed under a temporary name and renamed: a cut transfer never leaves a file that looks cached
        t.check(["chmod", "755", tmp], timeout_s=30)
        t.check(["mv", "-f", tmp, remote], timeout_s=30)

    def _cached_path(self, local: str | os.PathLike, name: str) -> str:
        return f"{self.base}/runners/{_sha256(local)[:16]}/{name}"

    def push_cached(self, local: str, name: str) -> str:
        """Push an executable once per content: ``<base>/runners/<sha256[:16]>/<name>``; return its path."""
        if not Path(local).is_file():
            raise RunnerError(f"{local}: no such file")
        remote = self._cached_path(local, name)
        self._retry(f"pushing {name}", lambda: self._push_cached_now(local, remote))
        return remote

    def open(self) -> "AdbDevice":
        """Connect, push what is missing, read the device, put it in a steady state.

        Raises DeviceGone (unreachable), DeviceError (the device refused a command).
        """
        try:
            self.info = self._retry("set-up", lambda: parse_info(
                self._t.check(["sh", f"{self.scripts}/info.sh"], timeout_s=60)))
            if self.opts.prepare:
                from .parsers import parse_prepare

                self.prepared = self._retry("prepare", lambda: parse_prepare(self._t.check(
                    ["sh", f"{self.scripts}/prepare.sh", "apply", f"{self.work}/prepare.state"], timeout_s=60)))
        except (AdbCommandError, ParseError) as e:
            raise DeviceError(f"adb:{self.serial}: {e}") from None
        return self

    def close(self) -> None:
        """Undo prepare.sh and remove this run's work folder; the cached scripts and runner stay."""
        if self._t is None:
            return
        try:
            if self.prepared is not None:
                self._t.shell(["sh", f"{self.scripts}/prepare.sh", "undo", f"{self.work}/prepare.state"], timeout_s=60)
            self._t.shell(["rm", "-rf", self.work], timeout_s=30)
        except AdbError as e:
            self._say(f"adb:{self.serial}: clean-up incomplete ({e}); remove {self.work} by hand")
        finally:
            self._drop()

    def __enter__(self) -> "AdbDevice":
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- timing ---------------------------------------------------------------------------------
    def _bench(self, artifact: str, warmup: int, runs: int, inner: int, timeout_s: float) -> tuple[str, BenchResult]:
        argv = ["env", "HWNAS_STYLE=executor_runner", f"HWNAS_INNER={inner}",
                "sh", f"{self.scripts}/bench.sh", self.runner_remote, artifact, str(warmup), str(runs),
                self.opts.mask, str(self.opts.max_temp_c), str(self.opts.cool_wait_s)]
        code, out = self._t.shell(argv, timeout_s=timeout_s)
        try:
            return out, parse_bench(out)
        except BenchOutputError:
            raise
        except ParseError as e:  # bench.sh itself failed (exit 2/3: usage, clock) or its record is broken
            raise BenchOutputError(f"{e} (bench.sh exit {code})", "garbage", out) from None

    def peak(self, timeout_s: float) -> Peak:
        """Not measured on a phone (the runner times .pte files only)."""
        raise WorkerFailed("run", "peak GFLOP/s is not measured on an adb device")

    def measure(self, request: MeasureRequest, timeout_s: float) -> TimingReply:
        """Time one artifact with the runner through bench.sh; raise WorkerFailed with the reason."""
        from profiler.stats import median_rel_error

        if not self.runner_remote:
            raise WorkerFailed("run", "no runner: pass --runner PATH (ExecuTorch's executor_runner built for the phone)")
        art = request.artifact
        p = request.protocol
        remote = f"{self.work}/{art.key[:40].replace('/', '_')}-{secrets.token_hex(3)}{Path(art.path).suffix}"
        t0 = time.perf_counter()
        deadline = t0 + timeout_s

        def left() -> float:
            return max(5.0, deadline - time.perf_counter())

        def measure() -> dict[str, Any]:
            self._t.push(art.path, remote, timeout_s=left())
            try:
                # probe: one invocation of one execution gives the time per execution
                _, probe = self._bench(remote, 0, 1, 1, left())
                per_exec = max(probe.samples_ms[0], 1e-3)
                inner = max(1, min(100000, math.ceil(p.min_sample_ms / per_exec)))
                out, b = self._bench(remote, self.opts.warmup, p.min_runs, inner, left())
                per_op = self._per_op(art, remote, p.per_op_runs, left()) if request.per_op else None
                return {"bench": b, "inner": inner, "per_op": per_op}
            finally:
                try:
                    self._t.shell(["rm", "-f", remote], timeout_s=30)
                except AdbError:
                    pass  # the work folder is removed at the end anyway

        try:
            r = self._retry(f"timing {art.key}", measure)
        except BenchOutputError as e:
            stage = "hot" if e.reason == "hot" else "run"
            raise WorkerFailed(stage, f"{e} [{e.reason}]; output: {e.output.strip()[-400:]!r}") from None
        except AdbTimeout as e:
            # a hung runner, or a phone that vanished without closing the connection (Wi-Fi): only
            # the first is the block's fault; the second ends in DeviceGone here
            self._drop()
            self._retry("a check that the phone still answers", lambda: self._t.shell(["true"], timeout_s=15))
            raise WorkerFailed("timeout", str(e)) from None
        except AdbCommandError as e:
            raise WorkerFailed("run", str(e)) from None
        b = r["bench"]
        samples = b.samples_ms
        flags = []
        if p.flag_unconverged and len(samples) >= 3 and median_rel_error(samples) > p.target_rel_err:
            flags.append("unconverged")
        if b.time_source != "runner":
            flags.append("wall_clock")
        if b.waited_s:
            flags.append(f"cooled_{b.waited_s}s")
        if b.mask_source in ("unpinned", "none"):
            flags.append("unpinned")

        def env(when: str) -> dict[str, Any]:
            freq = getattr(b, f"freq_{when}_khz")
            temp = getattr(b, f"temp_{when}_c")
            return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "freq_mhz": {str(c): k / 1000 for c, k in freq.items()},
                    "temp_c": {"hottest": temp} if temp is not None else {}}

        before = env("before")
        before.update({"mask": b.mask, "mask_source": b.mask_source, "waited_s": b.waited_s,
                       "time_source": b.time_source, "inner": r["inner"],
                       "phone": self.summary(), "prepared": self.prepared})
        return TimingReply(samples_ms=samples, inner_runs=r["inner"], env_before=before, env_after=env("after"),
                           flags=flags, per_op=r["per_op"], wall_s=time.perf_counter() - t0)

    def _per_op(self, art, remote: str, runs: int, timeout_s: float) -> list[dict[str, Any]] | None:
        """ETDump of `runs` executions (a runner built with the devtools), analysed by the Inspector."""
        etrecord = art.extra.get("etrecord")
        if not etrecord:
            return None
        from executorch.devtools import Inspector

        from profiler.backends.etdump import summarise_ops

        dump = f"{remote}.etdp"
        argv = [self.runner_remote, "--model_path", remote, "--num_executions", str(max(1, runs)),
                "--etdump_path", dump]
        code, out = self._t.shell(argv, timeout_s=timeout_s)
        if code != 0:
            raise BenchOutputError(f"per-op run exited {code} (is the runner built with "
                                   f"EXECUTORCH_BUILD_DEVTOOLS=ON and ETDump?)", f"exit={code}", out)
        with tempfile.TemporaryDirectory() as d:
            local = Path(d) / "run.etdp"
            self._t.pull(dump, local, timeout_s=timeout_s)
            self._t.shell(["rm", "-f", dump], timeout_s=30)
            df = Inspector(etdump_path=str(local), etrecord=etrecord).to_dataframe()
        return summarise_ops(df)

    # ---- description ------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """The phone in one small dict (stored with every row)."""
        info = self.info
        p = info.props if info else {}
        cpus = info.cpus if info else ()
        return {"model": p.get("model"), "manufacturer": p.get("manufacturer"), "soc": p.get("soc"),
                "abi": p.get("abi"), "android": p.get("android_release"), "sdk": p.get("sdk"),
                "serial": p.get("serialno") or self.serial, "cores": len(cpus),
                "big_cores": list(info.big_cores) if info else None, "gpu": p.get("gpu"),
                "governors": sorted({c.governor for c in cpus if c.governor}),
                "battery_pct": info.battery.level_pct if info else None,
                "max_temp_c": info.max_temp_c if info else None}


def read_info(serial: str, options: AdbOptions | None = None) -> PhoneInfo:
    """`info.sh` of one phone (push the scripts if needed), without preparing it for timing."""
    opts = options or AdbOptions()
    dev = AdbDevice(serial, dataclasses.replace(opts, prepare=False, runner=None))
    try:
        dev.open()
        return dev.info
    finally:
        try:
            dev.close()
        except AdbError:
            pass

