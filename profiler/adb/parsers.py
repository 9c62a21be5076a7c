"""Pure functions from the device scripts' output (``device_scripts/*.sh``) to typed records.

Each script prints one record between BEGIN/END marker lines; anything outside the markers (a
shell's motd, adb's warnings) is ignored, anything inside that does not fit raises ``ParseError``.
Units are in the key names: ``_khz``, ``_c`` (degrees Celsius), ``_ms``, ``_ns``, ``_pct``.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from profiler.errors import HwnasError

__all__ = ["ParseError", "BenchOutputError", "BenchResult", "PhoneInfo", "CpuInfo", "ThermalZone", "BatteryInfo",
           "parse_info", "parse_bench", "parse_prepare", "temp_to_c"]


class ParseError(HwnasError, ValueError):
    """The text is not the expected script output (truncated, wrong script, garbage)."""


class BenchOutputError(ParseError):
    """A benchmark produced no usable timings: record it as a failure, never as a number.

    ``reason``: ``exit=N`` (runner exit code), ``bad-time`` / ``no-time`` (unusable runner time),
    ``hot`` (device stayed above the temperature bound), ``garbage`` (unparseable record).
    ``output``: the runner's or script's own output, for the failure record.
    """

    def __init__(self, message: str, reason: str, output: str):
        super().__init__(message)
        self.reason, self.output = reason, output


def _block(text: str, name: str) -> tuple[str, list[str]]:
    """Lines between ``HWNAS-<name>-BEGIN ...`` and ``HWNAS-<name>-END...``; returns (begin line, body)."""
    # adbd before Android 7 ran commands on a pty: \r\n line ends
    lines = text.replace("\r\n", "\n").split("\n")
    begin = f"HWNAS-{name}-BEGIN"
    end = f"HWNAS-{name}-END"
    starts = [i for i, ln in enumerate(lines) if ln.startswith(begin)]
    if not starts:
        raise ParseError(f"no {begin} line: not the output of the {name.lower()} script ({text[:200]!r})")
    s = starts[-1]
    for j in range(s + 1, len(lines)):
        if lines[j].startswith(end):
            return lines[s], lines[s + 1 : j] + [lines[j]]
    raise ParseError(f"{begin} without {end}: the script was cut short ({text[-200:]!r})")


def _kv(line: str) -> tuple[str, str]:
    key, sep, value = line.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z0-9_.]+", key):
        raise ParseError(f"not a key=value line: {line!r}")
    return key, value


def _int(value: str, what: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ParseError(f"{what}: {value!r} is not an integer") from None


def temp_to_c(raw: int) -> float:
    """A thermal zone's raw ``temp``: millidegrees C on nearly every kernel, whole degrees on a few."""
    return raw / 1000.0 if abs(raw) >= 1000 else float(raw)


def _plausible(temp_c: float) -> bool:
    # sensors that are off report -273 C or 0x7fff...; the same bound as bench.sh uses
    return -40.0 < temp_c < 150.0


@dataclass(frozen=True)
class CpuInfo:
    """One core as ``info.sh`` reads it from sysfs; None where the kernel does not say."""

    index: int
    online: bool
    max_khz: int | None  # cpuinfo_max_freq: the hardware's top frequency
    min_khz: int | None
    cur_khz: int | None
    scaling_max_khz: int | None  # the governor's current cap (thermal or user)
    governor: str | None


@dataclass(frozen=True)
class ThermalZone:
    zone: int  # N of /sys/class/thermal/thermal_zoneN
    type: str | None  # the kernel's name of the sensor
    temp_c: float | None  # None where the sensor answered with an error


@dataclass(frozen=True)
class BatteryInfo:
    level_pct: int | None
    status: str | None  # Charging, Discharging, Full, ...
    temp_c: float | None


@dataclass(frozen=True)
class PhoneInfo:
    """One ``info.sh`` record: what the phone is and the state it is in.

    ``props``: model, manufacturer, device, soc, soc_manufacturer, abi, android_release, sdk,
    build_fingerprint, kernel, serialno, gpu, gpu_opencl, gpu_vulkan (absent when unknown).
    ``big_cores`` / ``big_core_mask``: the cores at >= 80 % of the top max frequency, as bench.sh
    chooses them (mask in hex; empty / None without cpufreq).
    """

    props: dict[str, str]
    cpus: tuple[CpuInfo, ...]  # by index
    thermal: tuple[ThermalZone, ...]  # by zone number
    max_temp_c: float | None  # the hottest plausible zone; None without sensors
    battery: BatteryInfo
    big_cores: tuple[int, ...]
    big_core_mask: str | None

    def to_json(self) -> dict[str, Any]:
        """As plain JSON data: the record's fields as keys, cores and zones as lists of objects."""
        return {"props": dict(self.props), "cpus": [asdict(c) for c in self.cpus],
                "thermal": [asdict(z) for z in self.thermal], "max_temp_c": self.max_temp_c,
                "battery": asdict(self.battery), "big_cores": list(self.big_cores),
                "big_core_mask": self.big_core_mask}


def parse_info(text: str) -> PhoneInfo:
    """``info.sh`` output -> `PhoneInfo`. Raises ParseError."""
    _, body = _block(text, "INFO")
    props: dict[str, str] = {}
    cpus: dict[int, dict[str, Any]] = {}
    zones: dict[int, dict[str, Any]] = {}
    battery: dict[str, Any] = {"level_pct": None, "status": None, "temp_c": None}
    cpu_count = None
    for line in body[:-1]:
        if not line.strip():
            continue
        key, value = _kv(line)
        if m := re.fullmatch(r"cpu(\d+)\.(online|max_khz|min_khz|cur_khz|scaling_max_khz|governor)", key):
            c = cpus.setdefault(int(m[1]), {"index": int(m[1]), "online": True, "max_khz": None, "min_khz": None,
                                           "cur_khz": None, "scaling_max_khz": None, "governor": None})
            field = m[2]
            if field == "governor":
                c[field] = value.strip()
            elif field == "online":
                c[field] = _int(value, key) == 1
            else:
                c[field] = _int(value, key)
        elif m := re.fullmatch(r"thermal(\d+)\.(type|temp)", key):
            z = zones.setdefault(int(m[1]), {"zone": int(m[1]), "type": None, "temp_c": None})
            if m[2] == "type":
                z["type"] = value.strip()
            else:
                try:
                    z["temp_c"] = temp_to_c(int(value.strip()))
                except ValueError:
                    z["temp_c"] = None  # a sensor that answers with an error string is unknown, not fatal
        elif key == "battery.level":
            battery["level_pct"] = _int(value, key)
        elif key == "battery.status":
            battery["status"] = value.strip()
        elif key == "battery.temp_decic":
            battery["temp_c"] = _int(value, key) / 10.0  # healthd reports tenths of a degree
        elif key == "cpu_count":
            cpu_count = _int(value, key)
        elif "." not in key:
            props[key] = value.strip()
        else:
            raise ParseError(f"unknown key in info output: {key!r}")
    if cpu_count is not None and cpu_count != len(cpus):
        raise ParseError(f"cpu_count={cpu_count} but {len(cpus)} cores listed: output is incomplete")
    cpu_list = tuple(CpuInfo(**cpus[i]) for i in sorted(cpus))
    thermal = tuple(ThermalZone(**zones[i]) for i in sorted(zones))
    temps = [z.temp_c for z in thermal if z.temp_c is not None and _plausible(z.temp_c)]
    maxes = [c.max_khz for c in cpu_list if c.max_khz and c.online]
    if maxes:
        top = max(maxes)
        big = tuple(c.index for c in cpu_list if c.online and c.max_khz and c.max_khz * 5 >= top * 4)
        mask = hex(sum(1 << i for i in big))
    else:
        big, mask = (), None
    return PhoneInfo(props=props, cpus=cpu_list, thermal=thermal, max_temp_c=max(temps) if temps else None,
                     battery=BatteryInfo(**battery), big_cores=big, big_core_mask=mask)


@dataclass(frozen=True)
class BenchResult:
    """One ``bench.sh`` record: the runs of one artifact on the phone, and the phone's state around them."""

    samples_ms: list[float]  # one per timed run, in run order: the runner's own time per execution, else wall
    inner: int  # executions per runner invocation
    style: str  # how the runner reports its time (plain, executor_runner)
    time_source: str  # "runner" (its own clock) or "wall" (around the invocation: includes process start-up)
    wall_ms: list[float]  # wall clock around each invocation
    runner: str | None
    artifact: str | None
    warmup: int  # untimed invocations before the runs
    runs: int
    mask: str | None  # taskset core mask (hex) the runs were pinned to
    mask_source: str | None  # how the mask was chosen (big cores, given, unpinned, none)
    max_temp_c: float | None  # the bound the script waited under
    waited_s: int  # seconds spent cooling down before the runs
    temp_before_c: float | None  # None without sensors
    temp_after_c: float | None
    freq_before_khz: dict[int, int]  # pinned cores' frequency before the runs: {cpu index: kHz}
    freq_after_khz: dict[int, int]
    freq_dropped: bool  # a pinned core ended slower than it began


def parse_bench(text: str) -> BenchResult:
    """``bench.sh`` output -> `BenchResult`.

    Per run the runner's own time is used when present (``hwnas_time_ms``, or ``executor_runner``'s
    log line divided by its ``inner`` executions; ``time_source='runner'``), else the wall-clock
    around the invocation (``'wall'``, includes process start-up).

    Raises BenchOutputError for a failed run, an unusable time, a hot device or a short record
    (with the output, to be stored as the failure); ParseError when the text is not bench output.
    """
    try:
        _, body = _block(text, "BENCH")
    except ParseError as e:
        raise BenchOutputError(str(e), "garbage", text) from None
    endline = body[-1]
    status = endline.partition("status=")[2].strip()
    head: dict[str, str] = {}
    runs: list[tuple[int, float, float | None]] = []
    freq = {"before": {}, "after": {}}
    out_lines: list[str] = []
    fail = hot = None
    for line in body[:-1]:
        if not line.strip():
            continue
        word = line.split(" ", 1)[0]
        if word == "run":
            parts = line.split()
            if len(parts) not in (4, 5):
                raise BenchOutputError(f"malformed run line {line!r}", "garbage", text)
            try:
                idx = int(parts[1])
                wall = (int(parts[3]) - int(parts[2])) / 1e6 if parts[2] != "-" else math.nan
                own = float(parts[4]) if len(parts) == 5 else None
            except ValueError:
                raise BenchOutputError(f"malformed run line {line!r}", "bad-time", text) from None
            if own is not None and not (math.isfinite(own) and own > 0):
                raise BenchOutputError(f"run {idx}: runner time {parts[4]!r} is not a positive number",
                                       "bad-time", text)
            if own is None and not (wall > 0):
                raise BenchOutputError(f"run {idx}: no usable time (wall clock {wall} ms)", "bad-time", text)
            runs.append((idx, wall, own))
        elif word == "fail":
            fail = line.split()[1:]
        elif word == "out":
            out_lines.append(line.split(" ", 2)[2] if line.count(" ") >= 2 else "")
        elif word == "hot":
            hot = line.split()[1:]
        elif word in ("freq_before", "freq_after"):
            parts = line.split()
            if len(parts) != 3 or not re.fullmatch(r"cpu\d+", parts[1]):
                raise ParseError(f"malformed frequency line {line!r}")
            freq[word[5:]][int(parts[1][3:])] = _int(parts[2], line)
        else:
            key, value = _kv(line)
            head[key] = value.strip()
    if hot is not None or status == "hot":
        t, bound, waited = (hot + ["?", "?", "?"])[:3]
        raise BenchOutputError(f"device stayed at {t} C, above the {bound} C bound, for {waited} s", "hot", text)
    if fail is not None or status == "fail":
        which, reason = (fail + ["?", "?"])[:2] if fail else ("?", "fail")
        output = "\n".join(out_lines)
        raise BenchOutputError(f"run {which} failed ({reason}); runner output: {output[-500:]!r}", reason, output)
    if status != "ok":
        raise BenchOutputError(f"unknown bench status {status!r}", "garbage", text)
    expected = _int(head.get("runs", ""), "runs")
    if [r[0] for r in runs] != list(range(1, expected + 1)):
        raise BenchOutputError(f"expected runs 1..{expected}, got {[r[0] for r in runs]}", "garbage", text)

    def opt_float(key: str) -> float | None:
        v = head.get(key, "")
        return float(v) if v else None

    own_all = all(r[2] is not None for r in runs)
    inner = _int(head.get("inner", "1"), "inner")
    if inner < 1:
        raise BenchOutputError(f"inner={inner}: not a count of executions", "garbage", text)
    before, after = freq["before"], freq["after"]
    return BenchResult(
        # the runner's own time covers `inner` executions in one process; the wall clock covers one
        # invocation with process start-up (only meaningful with inner=1)
        samples_ms=[r[2] / inner if own_all else r[1] for r in runs],
        inner=inner,
        style=head.get("style", "plain"),
        time_source="runner" if own_all and runs else "wall",
        wall_ms=[r[1] for r in runs],
        runner=head.get("runner"),
        artifact=head.get("artifact"),
        warmup=_int(head.get("warmup", ""), "warmup"),
        runs=expected,
        mask=head.get("mask") or None,
        mask_source=head.get("mask_source"),
        max_temp_c=opt_float("max_temp_c"),
        waited_s=_int(head.get("waited_s", "0"), "waited_s"),
        temp_before_c=opt_float("temp_before_c"),
        temp_after_c=opt_float("temp_after_c"),
        freq_before_khz=before,
        freq_after_khz=after,
        freq_dropped=any(after.get(c, f) < f for c, f in before.items()),
    )


def parse_prepare(text: str) -> dict[str, Any]:
    """``prepare.sh apply|undo`` output -> dict.

    Keys: ``action`` ('apply' or 'undo'), ``fixed_performance`` ('on', 'off', 'unavailable',
    'failed' or None), ``governors`` ({cpu index: {'governor': str, 'status': 'changed' | 'kept' |
    'restored' | 'failed', 'previous': str | None}}), ``state_file`` (apply), ``state_missing`` (undo
    found nothing to restore). Raises ParseError.
    """
    begin, body = _block(text, "PREPARE")
    action = begin.split()[-1]
    if action not in ("apply", "undo"):
        raise ParseError(f"unknown prepare action in {begin!r}")
    result: dict[str, Any] = {"action": action, "fixed_performance": None, "governors": {},
                              "state_file": None, "state_missing": False}
    for line in body[:-1]:
        if not line.strip():
            continue
        key, value = _kv(line)
        if m := re.fullmatch(r"governor\.cpu(\d+)", key):
            parts = value.split(":")
            if len(parts) not in (2, 3) or parts[1] not in ("changed", "kept", "restored", "failed"):
                raise ParseError(f"malformed governor line {line!r}")
            result["governors"][int(m[1])] = {"governor": parts[0], "status": parts[1],
                                             "previous": parts[2] if len(parts) == 3 else None}
        elif key == "fixed_perf":
            if value not in ("on", "off", "unavailable", "failed"):
                raise ParseError(f"unknown fixed_perf value {value!r}")
            result["fixed_performance"] = value
        elif key == "state":
            if value == "missing":
                result["state_missing"] = True
            else:
                result["state_file"] = value
        else:
            raise ParseError(f"unknown key in prepare output: {key!r}")
    return result
