"""What crosses between the harness and whatever times a block: the request, the reply, the failure,
and the `Timer` interface that the local timing worker and an adb phone both implement.

A timer is handed one compiled artifact at a time (`MeasureRequest`) and answers with the raw samples
and what it saw of the device (`TimingReply`), or raises `WorkerFailed` naming the stage that failed;
the harness turns either into a stored row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from profiler.backends.base import Artifact
from profiler.errors import HwnasError
from profiler.measurement import TimingProtocol

__all__ = ["MeasureRequest", "TimingReply", "Peak", "Timer", "WorkerFailed"]


class WorkerFailed(HwnasError, RuntimeError):
    """A block could not be timed; `stage` says where ("load", "run", "timeout", "crash", "hot", ...)
    and `error` why, in one line. The harness stores it as a failed row."""

    def __init__(self, stage: str, error: str):
        super().__init__(error)
        self.stage = stage
        self.error = error


@dataclass(frozen=True)
class MeasureRequest:
    """Time `artifact` on `device` (a spec string) under `protocol`; `per_op` asks for per-operator times.

    `reference_quiet_ms`: the fastest run of the interference reference kernel seen on these cores in
    earlier runs (see `profiler.interference`), or None; it keeps a worker that starts while the
    machine is busy from taking a slowed reference for a quiet one.
    """

    artifact: Artifact
    device: str
    protocol: TimingProtocol
    per_op: bool = False
    reference_quiet_ms: float | None = None

    def to_msg(self) -> dict[str, Any]:
        """The plain dict that travels over the worker's pipe (and that `from_msg` reads back)."""
        return {"op": "measure", "artifact": self.artifact.to_dict(), "device": self.device,
                "protocol": self.protocol.to_dict(), "per_op": self.per_op,
                "reference_quiet_ms": self.reference_quiet_ms}

    @classmethod
    def from_msg(cls, msg: dict[str, Any]) -> "MeasureRequest":
        return cls(Artifact.from_dict(msg["artifact"]), msg["device"], TimingProtocol(**msg["protocol"]),
                   bool(msg.get("per_op")), msg.get("reference_quiet_ms"))


@dataclass(frozen=True)
class TimingReply:
    """The raw result of timing one artifact.

    samples_ms: the kept samples, each the mean milliseconds of one call over `inner_runs` calls.
    env_before / env_after: what the timer read of the device before and after timing (frequencies,
        temperatures, load; `env_after["noise"]` holds the interference record where one was kept).
    flags: what the timer itself noticed ("unconverged", "interference", "nonfinite_output", ...).
    per_op: per-operator timings where asked for and available.
    wall_s: load + warm-up + timing, seconds.
    """

    samples_ms: list[float]
    inner_runs: int
    env_before: dict[str, Any] = field(default_factory=dict)
    env_after: dict[str, Any] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    per_op: list[dict[str, Any]] | None = None
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TimingReply":
        return cls(samples_ms=list(d["samples_ms"]), inner_runs=int(d["inner_runs"]),
                   env_before=dict(d.get("env_before") or {}), env_after=dict(d.get("env_after") or {}),
                   flags=list(d.get("flags") or []), per_op=d.get("per_op"), wall_s=float(d.get("wall_s") or 0.0))


@dataclass(frozen=True)
class Peak:
    """Peak fp32 throughput of the timing cores, and how it was measured."""

    gflops: float
    method: str


@runtime_checkable
class Timer(Protocol):
    """Something that times compiled artifacts: the pinned local worker (`TimingWorker`), a phone
    (`profiler.adb.device.AdbDevice`)."""

    def measure(self, request: MeasureRequest, timeout_s: float) -> TimingReply:
        """Time one artifact; raise `WorkerFailed` (never return made-up numbers) when it cannot."""
        ...

    def peak(self, timeout_s: float) -> Peak:
        """Peak GFLOP/s of the cores that time; raise `WorkerFailed` where it cannot be measured."""
        ...
