"""The measurement record and the timing protocol."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Measurement", "TimingProtocol", "Config"]


@dataclass(frozen=True)
class TimingProtocol:
    """How one block is timed (all durations in the unit their name gives).

    Warm up (never time a first call), batch calls so a sample lasts at least `min_sample_ms`,
    then take samples until the median is stable: its relative standard error is below
    `target_rel_err` and the medians of the first and second half agree within `drift_bound`
    (after at least `min_runs`); or until `max_runs` / `max_seconds` is reached, which is flagged.
    """

    warmup_runs: int = 10
    warmup_ms: float = 200.0
    min_runs: int = 25
    max_runs: int = 300
    max_seconds: float = 6.0
    target_rel_err: float = 0.005
    drift_bound: float = 0.02  # ... and the medians of the first and second half of the samples agree this well
    min_sample_ms: float = 2.0
    per_op_runs: int = 20
    freq_drop_share: float = 0.10  # flag when a pinned core's frequency fell by more than this share
    temp_rise_c: float = 5.0  # flag when the hottest zone rose by more than this
    timeout_s: float = 300.0  # a block that takes longer than this to load and time is a failure

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def quick(cls) -> "TimingProtocol":
        """For tests and smoke runs: fewer samples, looser bound."""
        return cls(warmup_runs=3, warmup_ms=5.0, min_runs=5, max_runs=20, max_seconds=1.0,
                   target_rel_err=0.05, drift_bound=0.2, min_sample_ms=0.2, per_op_runs=3)


@dataclass(frozen=True)
class Config:
    """What makes two measurements of the same block comparable; one row per (block, config)."""

    device: str  # the spec string the user gave (local, adb:SERIAL, ...)
    device_id: str  # which physical device (host name and CPU model, phone serial and model)
    backend: str
    target: str
    threads: int
    cores: str  # core mask, e.g. "1" or "4-7"


@dataclass
class Measurement:
    """One block (or network) on one device with one backend under one protocol."""

    block_key: str
    config: Config
    status: str  # "ok" | "failed"
    kind: str = "block"  # "block" | "network"
    stage: str | None = None  # where a failure happened: "compile" | "load" | "run" | "timeout" | "crash"
    error: str | None = None
    samples_ms: list[float] = field(default_factory=list)
    inner_runs: int = 0  # calls averaged into each sample
    stats: dict[str, float] = field(default_factory=dict)  # SampleStats fields (ms unless named)
    flops: int = 0
    compile_s: float | None = None
    wall_s: float | None = None  # load + warm-up + timing, seconds
    flags: list[str] = field(default_factory=list)
    env_before: dict[str, Any] = field(default_factory=dict)
    env_after: dict[str, Any] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    per_op: list[dict[str, Any]] | None = None
    created_at: str = ""

    @property
    def median_ms(self) -> float | None:
        return self.stats.get("median_ms")
