"""Device spec strings and what the host can tell about itself.

Spec strings: ``local`` (host CPU), ``local:cuda`` (host GPU), ``adb:SERIAL`` or ``adb:HOST:PORT``
(Android phone), ``rpc:HOST:PORT/KEY`` (a device behind a TVM RPC tracker).
"""

from __future__ import annotations

import glob
import os
import platform
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from profiler.errors import HwnasError

__all__ = ["DeviceSpec", "DeviceError", "TooManyThreads", "parse_device", "local_info", "env_snapshot", "parse_cores",
           "default_cores", "format_cores", "check_threads", "cores_busy_share"]


class DeviceError(HwnasError, ValueError):
    """A device spec is malformed, or the device is not usable."""


class TooManyThreads(DeviceError):
    """More runtime threads were asked for than there are cores to run them on."""


@dataclass(frozen=True)
class DeviceSpec:
    kind: str  # local | cuda | adb | rpc
    spec: str  # the string the user gave, normalised
    serial: str = ""
    host: str = ""
    port: int = 0
    key: str = ""

    @property
    def address(self) -> str:
        """An adb device as adb names it: the USB serial, or HOST:PORT."""
        return self.serial or f"{self.host}:{self.port}"


_HOSTPORT = re.compile(r"^(?P<host>[A-Za-z0-9.\-]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")


def parse_device(s: str) -> DeviceSpec:
    """Parse a device spec; raises `DeviceError` with the accepted forms."""
    forms = "local, local:cuda, adb:SERIAL, adb:HOST:PORT, rpc:HOST:PORT/KEY"
    s = (s or "").strip()
    if s == "local":
        return DeviceSpec("local", "local")
    if s in ("local:cuda", "cuda"):
        return DeviceSpec("cuda", "local:cuda")
    if s.startswith("adb:"):
        rest = s[4:]
        m = _HOSTPORT.match(rest)
        if m:
            return DeviceSpec("adb", s, host=m["host"], port=_port(m["port"], s))
        if re.fullmatch(r"[A-Za-z0-9._\-]+", rest):
            return DeviceSpec("adb", s, serial=rest)
        raise DeviceError(f"bad adb device {s!r}: expected adb:SERIAL or adb:HOST:PORT")
    if s.startswith("rpc:"):
        addr, slash, key = s[4:].partition("/")
        m = _HOSTPORT.match(addr)
        if not m or not slash or not re.fullmatch(r"[A-Za-z0-9._\-]+", key):
            raise DeviceError(f"bad rpc device {s!r}: expected rpc:HOST:PORT/KEY (a TVM RPC tracker and a device key)")
        return DeviceSpec("rpc", s, host=m["host"], port=_port(m["port"], s), key=key)
    raise DeviceError(f"unknown device {s!r}; use one of: {forms}")


def _port(p: str, s: str) -> int:
    port = int(p)
    if not 0 < port < 65536:
        raise DeviceError(f"bad port in {s!r}: {port} is not in 1..65535")
    return port


# ---- cores --------------------------------------------------------------------------------

def parse_cores(s: str) -> list[int]:
    """'0-3,6' -> [0, 1, 2, 3, 6]; each core must exist on this host."""
    cores: set[int] = set()
    try:
        for part in s.split(","):
            a, dash, b = part.strip().partition("-")
            lo, hi = int(a), int(b) if dash else int(a)
            if hi < lo:
                raise ValueError
            cores.update(range(lo, hi + 1))
    except ValueError:
        raise DeviceError(f"bad core list {s!r}: expected e.g. 1 or 0-3 or 0,2") from None
    avail = os.sched_getaffinity(0)
    missing = cores - avail
    if missing:
        raise DeviceError(f"cores {format_cores(sorted(missing))} are not available here "
                          f"(this process may use {format_cores(sorted(avail))})")
    return sorted(cores)


def format_cores(cores: list[int]) -> str:
    out, i = [], 0
    while i < len(cores):
        j = i
        while j + 1 < len(cores) and cores[j + 1] == cores[j] + 1:
            j += 1
        out.append(str(cores[i]) if i == j else f"{cores[i]}-{cores[j]}")
        i = j + 1
    return ",".join(out)


def check_threads(threads: int, cores: str | None = None) -> None:
    """Refuse a thread count above the cores this process may use (or above the `cores` list given).

    More threads than cores times the scheduler taking turns, not the block: the numbers would be
    stored as a measurement many times too slow.

    Raises:
        TooManyThreads: naming the count that fits.
    """
    avail = sorted(os.sched_getaffinity(0))
    if threads > len(avail):
        raise TooManyThreads(f"--threads {threads} is more than the {len(avail)} core(s) this process may use "
                             f"({format_cores(avail)}); use --threads {len(avail)} or fewer")
    if cores:
        chosen = parse_cores(cores)
        if threads > len(chosen):
            raise TooManyThreads(f"--threads {threads} is more than the {len(chosen)} core(s) of --cores {cores}; "
                                 f"use --threads {len(chosen)} or fewer, or name more cores")


def default_cores(threads: int) -> list[int]:
    """The fastest `threads` cores by max frequency, preferring the highest-numbered ones
    (core 0 takes most interrupts, and the harness itself runs wherever the scheduler likes)."""
    avail = sorted(os.sched_getaffinity(0))
    maxf = {c: _read_int(f"/sys/devices/system/cpu/cpu{c}/cpufreq/cpuinfo_max_freq") or 0 for c in avail}
    ranked = sorted(avail, key=lambda c: (maxf[c], c), reverse=True)
    return sorted(ranked[:max(1, min(threads, len(ranked)))])


# ---- reading the host ------------------------------------------------------------------------

def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _read_int(path: str) -> int | None:
    v = _read(path)
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def cpu_model() -> str:
    text = _read("/proc/cpuinfo") or ""
    for field in ("model name", "Hardware", "Processor", "cpu model"):
        m = re.search(rf"^{field}\s*:\s*(.+)$", text, re.M)
        if m:
            return m.group(1).strip()
    return platform.processor() or platform.machine()


def _cpuinfo_mhz() -> dict[int, float]:
    text = _read("/proc/cpuinfo") or ""
    out: dict[int, float] = {}
    cur = None
    for line in text.splitlines():
        if line.startswith("processor"):
            cur = int(line.split(":")[1])
        elif line.startswith("cpu MHz") and cur is not None:
            out[cur] = float(line.split(":")[1])
    return out


def core_freqs_mhz(cores: list[int] | None = None) -> dict[int, float]:
    """Current frequency per core in MHz (cpufreq where present, else /proc/cpuinfo)."""
    cores = cores if cores is not None else sorted(os.sched_getaffinity(0))
    out: dict[int, float] = {}
    fallback = None
    for c in cores:
        khz = _read_int(f"/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_cur_freq")
        if khz:
            out[c] = khz / 1000
        else:
            fallback = fallback if fallback is not None else _cpuinfo_mhz()
            if c in fallback:
                out[c] = fallback[c]
    return out


def governors(cores: list[int] | None = None) -> dict[int, str]:
    cores = cores if cores is not None else sorted(os.sched_getaffinity(0))
    out = {}
    for c in cores:
        g = _read(f"/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor")
        if g:
            out[c] = g
    return out


def temperatures_c() -> dict[str, float]:
    """Thermal zones in degrees Celsius, by zone type."""
    out = {}
    for z in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        t = _read_int(f"{z}/temp")
        if t is not None:
            name = _read(f"{z}/type") or Path(z).name
            out[f"{Path(z).name}:{name}"] = t / 1000 if abs(t) > 200 else float(t)
    return out


def _cpu_times(cores: list[int]) -> tuple[int, int]:
    """(busy, total) clock ticks of `cores` since boot, from /proc/stat (busy: all but idle and iowait)."""
    busy = total = 0
    text = _read("/proc/stat") or ""
    want = {f"cpu{c}" for c in cores}
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in want:
            ticks = [int(x) for x in parts[1:9]]
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]
    return busy, total


def cores_busy_share(cores: list[int], window_s: float = 0.5) -> float | None:
    """Share (0..1) of the time `cores` ran something during the next `window_s` seconds; None where
    /proc/stat does not say."""
    b0, t0 = _cpu_times(cores)
    time.sleep(window_s)
    b1, t1 = _cpu_times(cores)
    return (b1 - b0) / (t1 - t0) if t1 > t0 else None


def env_snapshot(cores: list[int]) -> dict[str, Any]:
    """What may move a measurement: frequencies, governors, temperatures, load; taken before and after."""
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "freq_mhz": {str(k): v for k, v in core_freqs_mhz(cores).items()},
        "governor": {str(k): v for k, v in governors(cores).items()},
        "temp_c": temperatures_c(),
        "loadavg": list(os.getloadavg()),
    }


def memory_backing() -> dict[str, Any]:
    """How this process's memory is backed: the kernel's transparent huge page mode and glibc's tunables."""
    mode = _read("/sys/kernel/mm/transparent_hugepage/enabled") or ""
    thp = mode[mode.index("[") + 1:mode.index("]")] if "[" in mode and "]" in mode else "unknown"
    return {"thp": thp, "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}


def local_id() -> str:
    """A stable name of this host's CPU device: the host name and CPU model."""
    return f"{socket.gethostname()}/{cpu_model()}"


def local_info() -> dict[str, Any]:
    avail = sorted(os.sched_getaffinity(0))
    maxf = {c: _read_int(f"/sys/devices/system/cpu/cpu{c}/cpufreq/cpuinfo_max_freq") for c in avail}
    return {
        "device": "local",
        "id": local_id(),
        "cpu_model": cpu_model(),
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "cores": len(avail),
        "core_ids": format_cores(avail),
        "max_freq_mhz": {str(c): (v / 1000 if v else None) for c, v in maxf.items()},
        "governor": {str(k): v for k, v in governors(avail).items()} or "not exposed (no cpufreq)",
        "freq_mhz": {str(k): v for k, v in core_freqs_mhz(avail).items()},
        "temp_c": temperatures_c() or "not exposed",
        "loadavg": list(os.getloadavg()),
    }


def cuda_info() -> dict[str, Any] | None:
    """The host's CUDA GPU as torch sees it, or None where there is none."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(0)
    return {"device": "local:cuda", "id": f"{socket.gethostname()}/{p.name}", "name": p.name,
            "memory_gib": round(p.total_memory / 2**30, 1), "count": torch.cuda.device_count(),
            "capability": f"{p.major}.{p.minor}"}
