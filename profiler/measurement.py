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
    # interference (profiler.interference): samples are taken in chunks of about `chunk_ms`, each between
    # two runs of a reference kernel; a chunk is dropped (and taken again) when a reference beside it is
    # slower than `reference_slow_factor` x its quiet time, and a sample when the worker waited for a CPU longer than
    # `max_wait_share` of the sample. Dropped samples are taken again within `max_seconds` (contention on
    # a VM comes and goes in phases), at most `max_dropped` per block; a block left with fewer than
    # `min_runs` clean samples is flagged "interference" (its kept samples are stored; the next profile
    # times it again). With the check on, the timing runs at real-time priority where the OS allows it
    # (`raise_priority`), so that a neighbour on the timing core waits rather than takes turns.
    detect_interference: bool = True
    flag_unconverged: bool = True  # flag a block that hit the caps before the stopping rule was met
    chunk_ms: float = 2.0
    reference_slow_factor: float = 1.12
    max_wait_share: float = 0.01
    max_dropped: int = 3000
    raise_priority: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def quick(cls) -> "TimingProtocol":
        """For tests and smoke runs: fewer samples, a looser bound, and no verdict on noise.

        Its rows are never flagged interference or unconverged (no interference check, no flag at the
        caps), so a smoke run goes end to end on a busy machine and the same command finds it stored.
        Its numbers show that things run; profile with the default protocol for numbers to fit.
        """
        return cls(warmup_runs=3, warmup_ms=5.0, min_runs=5, max_runs=20, max_seconds=1.0,
                   target_rel_err=0.05, drift_bound=0.2, min_sample_ms=0.2, per_op_runs=3,
                   detect_interference=False, flag_unconverged=False)


@dataclass(frozen=True)
class Config:
    """What makes two measurements of the same block comparable; one row per (block, config)."""

    device: str  # the spec string the user gave (local, adb:SERIAL, ...)
    device_id: str  # which physical device (host name and CPU model, phone serial and model)
    backend: str
    target: str
    threads: int
    cores: str  # core mask, e.g. "1" or "4-7"
    # how the code was tuned for the target: "" for the compiler's default schedules, or
    # "metaschedule-N" (TVM MetaSchedule, N trials per block); tuned and untuned rows of one block
    # are different measurements and sit side by side in the store
    tuning: str = ""


def tuning_of(tune_trials: int) -> str:
    """`Config.tuning` of a profile tuned with `tune_trials` MetaSchedule trials per block (0: untuned)."""
    return f"metaschedule-{int(tune_trials)}" if tune_trials and int(tune_trials) > 0 else ""


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
