"""Catching interference while a block is timed, so that noisy samples are dropped, not averaged in.

Another process on the timing worker's cores (a neighbour, another tenant of the host) only ever adds
time to a sample. Two cheap checks run in the worker while it times:

- **waiting for a CPU**, around every sample: the kernel's per-thread ``run_delay``
  (``/proc/self/task/*/schedstat``, ns spent runnable but not running) of the worker's threads; a
  sample during which they waited longer than `max_wait_share` of its duration was preempted by
  someone else. Where schedstat is missing, the process's involuntary context switches
  (``getrusage``) stand in. When most samples are preempted (a neighbour taking turns on the core in
  slices shorter than a sample), the worker batches fewer calls per sample so that samples fit
  between its turns.
- **a reference kernel**: a fixed, small compute loop (numpy, about 0.1 ms, single-threaded, in L1, laid out alike
  in every process)
  timed between chunks. Its quiet time is calibrated when the worker starts (the minimum of many
  runs: contention only adds time, so the minimum is the quiet value), and lowered by any faster run
  seen since, on these cores, in this run or an earlier one (`QuietTimes`). A reference slower than
  `slow_factor` times its quiet time means the core was slowed (time stolen by the hypervisor, a busy
  SMT sibling, a lower clock) and the chunks of samples on either side of it are dropped.

Dropped samples are taken again, within the block's time budget: on a rented VM the core is slowed
(by about 1.4x, measured with this kernel on a 2-vCPU EPYC VM: 88 % of one minute) in phases of a tenth
of a second to several seconds by other tenants of the host, which the guest cannot see in its own
load, so a block waits for a clean phase rather than giving up after a share of drops. With the check
on, the timing runs at real-time priority where the OS allows it, so that a neighbour process on the
timing core waits for it instead of taking turns. The record of what was dropped and the reference's
times goes into the row (``env_after["noise"]``).

Limits: a slowdown that lasts from before the worker starts to after it ends makes the calibration
slow too (the reference then sees nothing; the waiting check still does on shared cores); contention
for memory bandwidth by a neighbour on another core barely moves an L1-sized reference. For that, the
worker reads a buffer of twice the last-level cache (`StreamRead`) before each block's warm-up and
after its samples and records both reads (``env_after["noise"]["memory_reference"]``); nothing is
dropped on it yet, since a memory neighbour moved blocks both ways (benchmarks/memory_neighbour.py).
"""

from __future__ import annotations

import glob
import json
import math
import os
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

__all__ = ["ReferenceKernel", "QuietTimes", "kernel_id", "CpuWait", "waited_too_long", "slow_reference",
           "NoiseRecord", "chunk_size", "sample_guarded", "last_level_cache", "StreamRead"]


def kernel_id() -> str:
    """Names the reference kernel and what its speed depends on besides the core (stored quiet times are
    kept per kernel id)."""
    import numpy as np

    return f"mul-add-f32-3x2048-staggered-x96/numpy-{np.__version__}"


class QuietTimes:
    """The fastest reference-kernel run seen per (device, cores, kernel), in a small JSON file beside the
    compile cache: a property of the host, shared by every store profiled on it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            data = json.loads(self.path.read_text())
            self._d = {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and v > 0}
        except (OSError, ValueError, AttributeError):
            self._d = {}  # missing or unreadable: start afresh (it is only a hint)

    @staticmethod
    def key(device_id: str, cores: str) -> str:
        return f"{device_id}|{cores}|{kernel_id()}"

    def get(self, key: str) -> float | None:
        return self._d.get(key)

    def offer(self, key: str, quiet_ms: float | None) -> None:
        if quiet_ms and quiet_ms > 0 and quiet_ms < self._d.get(key, math.inf):
            self._d[key] = float(quiet_ms)

    def save(self) -> None:
        """Write atomically (a concurrent run's write may win; both hold real runs of the kernel)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(self._d, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


PAGE_BYTES = 4096
STAGGER_BYTES = 1024  # between the arrays' offsets within a page: loads never alias the store (4K aliasing)


def _laid_out(size: int, count: int) -> list:
    """`count` float32 arrays of `size` in one buffer that starts on a page, each starting `STAGGER_BYTES`
    further into its page than the one before: the same layout, relative to the L1 cache's sets, in every
    process.

    Where the allocator happened to place three separately allocated arrays decided how fast the kernel
    ran (2-vCPU EPYC VM): 0.1046 to 0.1180 ms for four placements in one process, and in worker-like
    processes (torch and ExecuTorch imported first) that reached quiet speed, quiet times within 18 %
    of each other (within 2 % with this layout). The quiet time is shared between workers (`QuietTimes`),
    so a worker laid out worse than the one that set it saw every reference run as slowed and dropped
    nearly every sample.
    """
    import numpy as np

    step = size * 4 + STAGGER_BYTES
    buf = np.empty((count * step + 2 * PAGE_BYTES) // 4, dtype=np.float32)
    base = (-buf.ctypes.data % PAGE_BYTES) // 4
    return [buf[base + i * step // 4: base + i * step // 4 + size] for i in range(count)]


class ReferenceKernel:
    """A fixed compute loop on three small float32 arrays (8 KiB each, together within L1, laid out
    alike in every process): ``repeat`` multiply-adds.

    Its work never changes, so its time changes only with the core's state: what else runs on the
    core or its SMT sibling, the clock, time stolen by a hypervisor.
    """

    def __init__(self, repeat: int = 96, size: int = 2048):
        import numpy as np

        self._np = np
        rng = np.random.default_rng(0)
        self._a, self._b, self._c = _laid_out(size, 3)
        self._a[:] = rng.random(size, dtype=np.float32)
        self._b[:] = rng.random(size, dtype=np.float32)
        self.repeat = repeat
        self.quiet_ms = math.inf

    def run_ms(self) -> float:
        """One run of the loop, milliseconds.

        Two untimed passes first bring the arrays back into L1: the block timed in between evicts
        them, and refetching them would make the reference look slow when the core is not.
        """
        np, a, b, c = self._np, self._a, self._b, self._c
        for _ in range(2):
            np.multiply(a, b, out=c)
            np.add(c, a, out=c)
        t0 = time.perf_counter_ns()
        for _ in range(self.repeat):
            np.multiply(a, b, out=c)
            np.add(c, a, out=c)
        return (time.perf_counter_ns() - t0) / 1e6

    def calibrate(self, runs: int = 300, warmup: int = 30) -> float:
        """The quiet time (ms): the minimum of `runs` runs after `warmup` untimed ones."""
        for _ in range(warmup):
            self.run_ms()
        self.quiet_ms = min(self.run_ms() for _ in range(runs))
        return self.quiet_ms

    def observe(self, ms: float) -> None:
        """A run faster than the calibration lowers the quiet time (min-based: nothing makes it faster)."""
        self.quiet_ms = min(self.quiet_ms, ms)


def _size_bytes(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * mult


def last_level_cache(cpu: int) -> dict[str, int] | None:
    """The highest-level data or unified cache of ``cpu`` from /sys: {"level", "bytes"}; None if unknown."""
    best = None
    for d in glob.glob(f"/sys/devices/system/cpu/cpu{cpu}/cache/index*"):
        try:
            kind = Path(d, "type").read_text().strip()
            level = int(Path(d, "level").read_text())
            size = _size_bytes(Path(d, "size").read_text())
        except (OSError, ValueError):
            continue
        if kind in ("Data", "Unified") and (best is None or level > best["level"]):
            best = {"level": level, "bytes": size}
    return best


class StreamRead:
    """One read of a float32 buffer of ``nbytes`` (numpy sum: bandwidth-bound beyond the caches).

    Sized at twice the last-level cache it is the memory reference: an L1-sized kernel does not feel
    a neighbour on another core that competes for the shared cache and memory bandwidth, and the
    blocks that disagree between profiles are the large-activation ones (benchmarks/memory_neighbour.py:
    a 64 MiB read ran 1.08-1.40x slow in every phase of such a neighbour, the L1 kernel 1.00x).
    """

    def __init__(self, nbytes: int):
        import numpy as np

        self.a = np.ones(max(nbytes // 4, 1024), dtype=np.float32)
        self.nbytes = self.a.nbytes
        self.best = math.inf  # the fastest read its owner has seen (ms; min-based, as the quiet times)

    def run_ms(self) -> float:
        t0 = time.perf_counter_ns()
        self.a.sum()
        return (time.perf_counter_ns() - t0) / 1e6

    def best_ms(self, runs: int = 3) -> float:
        """The fastest of ``runs`` reads (ms): one read can be preempted; contention only adds time.
        Lowers `best` when faster."""
        ms = min(self.run_ms() for _ in range(runs))
        self.best = min(self.best, ms)
        return ms


class CpuWait:
    """Nanoseconds the threads of this process have spent waiting for a CPU while runnable.

    Reads ``run_delay`` from ``/proc/self/task/<tid>/schedstat`` of the threads that existed when it was
    made (the runtime's thread pool is up by then: make it after warm-up). Where schedstat is not
    available, counts involuntary context switches instead (`source` says which); both only grow.
    """

    def __init__(self):
        self._paths = sorted(glob.glob("/proc/self/task/*/schedstat"))
        self.source = "schedstat" if self._paths and self._read_schedstat() is not None else "nivcsw"

    def _read_schedstat(self) -> int | None:
        total = 0
        for p in self._paths:
            try:
                with open(p, "rb") as f:
                    total += int(f.read().split()[1])
            except (OSError, ValueError, IndexError):
                continue  # a pool thread that ended: its waiting no longer matters
        return total

    def now(self) -> int:
        """A monotonic count: ns waited (schedstat), or involuntary switches x 1 ms (a switch is a wait)."""
        if self.source == "schedstat":
            return self._read_schedstat() or 0
        return resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw * 1_000_000


def waited_too_long(waited_ns: int, sample_wall_ms: float, max_wait_share: float) -> bool:
    """A sample during which the worker's threads waited for a CPU longer than `max_wait_share` of its
    wall time (ms) holds someone else's time: drop it."""
    return waited_ns / 1e6 > max_wait_share * sample_wall_ms


def slow_reference(ref_before_ms: float, ref_after_ms: float, quiet_ms: float, slow_factor: float) -> bool:
    """Either reference beside a chunk ran slower than `slow_factor` x its quiet time: the core was slowed
    while the chunk was taken, so its samples are dropped."""
    return max(ref_before_ms, ref_after_ms) > slow_factor * quiet_ms


def chunk_size(sample_ms: float, chunk_ms: float) -> int:
    """Samples per chunk so that a chunk lasts about `chunk_ms` (at least one sample)."""
    return max(1, math.ceil(chunk_ms / max(sample_ms, 1e-6)))


@dataclass
class NoiseRecord:
    """What the detector saw while one block was timed (stored in ``env_after["noise"]``)."""

    reference_quiet_ms: float
    wait_source: str  # "schedstat" | "nivcsw"
    chunk_samples: int  # samples per chunk between two reference runs (the last value used)
    inner_runs: list[int] = field(default_factory=list)  # calls per sample: the first, then each reduction
    taken: int = 0  # samples taken, kept or not
    dropped_waited: int = 0  # samples dropped because the worker waited for a CPU during them
    dropped_slow_reference: int = 0  # samples dropped because a reference beside them was slow
    reference_ms: list[float] = field(default_factory=list)  # every reference run, in order
    policy: str = "normal"  # scheduling policy while timing: "fifo" (raised above neighbours) or "normal"

    @property
    def dropped(self) -> int:
        return self.dropped_waited + self.dropped_slow_reference

    def to_dict(self, keep_references: int = 400) -> dict[str, Any]:
        """A plain dict for the row; the reference runs are summarised (count, min, p50, p90, ms) and listed
        up to `keep_references` of them (the first ones; a block that waits for a clean phase takes thousands)."""
        d = asdict(self)
        d["dropped"] = self.dropped
        d["reference_ms"] = [round(x, 5) for x in self.reference_ms[:keep_references]]
        d["reference_quiet_ms"] = round(self.reference_quiet_ms, 5)
        if self.reference_ms:
            r = sorted(self.reference_ms)
            d["reference_summary"] = {"n": len(r), "min_ms": round(r[0], 5), "p50_ms": round(r[len(r) // 2], 5),
                                      "p90_ms": round(r[int(0.9 * (len(r) - 1))], 5)}
        return d


def sample_guarded(sample: Callable[[], float], kernel: ReferenceKernel, wait: CpuWait, record: NoiseRecord,
                   slow_factor: float, max_wait_share: float,
                   ref_before_ms: float) -> tuple[list[float], list[float], float, int]:
    """Take one chunk of `record.chunk_samples` samples, then run the reference kernel.

    A sample during which the worker waited for a CPU is dropped on its own; all the chunk's samples
    are dropped when a reference beside it was slow. Returns (kept samples, dropped samples, the
    closing reference's ms, how many were dropped for waiting); the closing reference opens the next
    chunk. `record` counts everything.
    """
    ok: list[float] = []
    lost: list[float] = []
    waited_drops = 0
    w = wait.now()
    for _ in range(record.chunk_samples):
        t0 = time.perf_counter_ns()
        x = sample()
        wall_ms = (time.perf_counter_ns() - t0) / 1e6
        w1 = wait.now()
        if waited_too_long(w1 - w, wall_ms, max_wait_share):
            lost.append(x)
            waited_drops += 1
        else:
            ok.append(x)
        w = w1
    ref = kernel.run_ms()
    record.reference_ms.append(ref)
    kernel.observe(ref)
    record.taken += len(ok) + len(lost)
    record.dropped_waited += waited_drops
    if ok and slow_reference(ref_before_ms, ref, kernel.quiet_ms, slow_factor):
        record.dropped_slow_reference += len(ok)
        lost, ok = lost + ok, []
    return ok, lost, ref, waited_drops
