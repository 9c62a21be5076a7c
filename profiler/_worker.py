"""The timing worker: a separate process pinned to chosen cores with a fixed thread count.

The harness (compiling, writing the store, drawing progress) runs in the parent; only loading
and timing happen here, so the harness's own work does not share the measured cores' caches and
time slices. Messages are plain dicts over a pipe; a crash or a hang of a block is seen by the
parent (EOF or timeout) and recorded as a failure, and the worker is started again.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import signal
import time
import traceback
from unittest import mock
from typing import Any, Iterator

from profiler.measurement import TimingProtocol
from profiler.timing import MeasureRequest, Peak, TimingReply, WorkerFailed

__all__ = ["TimingWorker", "WorkerFailed", "serve", "redirect_output", "crash_reason"]

# Do not import torch, TVM or ExecuTorch at module level: the worker sets the thread counts
# in its environment first, and the runtimes read them when they are imported.


def _configure(cores: list[int], threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TVM_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ["TVM_BIND_THREADS"] = "0"  # the process mask pins TVM's pool; its own binding fights it
    os.sched_setaffinity(0, cores)


def redirect_output(log_path: str | None) -> None:
    """Send this process's stdout/stderr (C++ runtimes print there too) to a log file, so they do
    not tear the harness's progress bars; failures still carry their reason to the parent."""
    if not log_path:
        return
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def serve(conn, cores: list[int], threads: int, log_path: str | None = None, parent_pid: int | None = None) -> None:
    """Entry point of the worker process; it ends with `parent_pid` (the harness) if given."""
    if parent_pid is not None:
        from profiler._proc import die_with_parent

        die_with_parent(parent_pid)  # a worker stuck in a hung block would outlive a killed harness
    redirect_output(log_path)
    _configure(cores, threads)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if msg is None:
            return
        try:
            if msg["op"] == "measure":
                res = _measure(msg, cores, threads)
            elif msg["op"] == "peak":
                res = _peak(threads)
            elif msg["op"] == "outputs":
                res = _outputs(msg, threads)
            elif msg["op"] == "env":
                from profiler.devices import memory_backing

                res = memory_backing()
            else:
                raise ValueError(f"unknown op {msg['op']!r}")
            conn.send({"ok": True, **res})
        except KeyboardInterrupt:
            return
        except BaseException as e:  # report every failure to the parent; it records the reason
            stage = getattr(e, "stage", "run")
            conn.send({"ok": False, "stage": stage, "error": _reason(e),
                       "trace": traceback.format_exc(limit=6)[-2000:]})


class _StageError(RuntimeError):
    def __init__(self, stage: str, cause: BaseException):
        super().__init__(_reason(cause))
        self.stage = stage


def _reason(e: BaseException) -> str:
    if isinstance(e, _StageError):
        return str(e)
    text = str(e).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {line}"[:500]


def _load(msg: dict[str, Any], threads: int):
    from profiler.backends import Artifact, get_backend

    art = Artifact.from_dict(msg["artifact"])
    try:
        return get_backend(art.backend).load(art, msg["device"], threads)
    except Exception as e:
        raise _StageError("load", e) from e


_RECENT = 10  # samples looked back on when deciding that most are preempted
HINT_TRUST = 1.5  # a stored quiet reference time is believed while this worker's calibration is within this factor
_KERNEL = None  # the reference kernel, calibrated once per worker process (see profiler.interference)


_STREAM = None  # the memory reference: a read of twice the last-level cache, made once per worker
STREAM_FALLBACK_BYTES = 64 << 20  # where /sys does not give the last-level cache's size


def _memory_reference(cores: list[int]):
    """The worker's `StreamRead` (2x the last-level cache of its first core; its ``best`` is the fastest
    read it has seen); recorded beside each block, not yet used to drop samples (see profiler.interference)."""
    global _STREAM
    if _STREAM is None:
        from profiler.interference import StreamRead, last_level_cache

        llc = last_level_cache(cores[0]) if cores else None
        _STREAM = StreamRead(2 * llc["bytes"] if llc else STREAM_FALLBACK_BYTES)
        _STREAM.best_ms(5)
    return _STREAM


def _reference_kernel():
    global _KERNEL
    if _KERNEL is None:
        from profiler.interference import ReferenceKernel

        k = ReferenceKernel()
        k.calibrate()
        _KERNEL = k
    return _KERNEL


@contextlib.contextmanager
def _priority_raised(enabled: bool) -> Iterator[str]:
    """Run the enclosed timing under SCHED_FIFO (lowest real-time priority, 1) on every thread of this
    process, where the OS allows it (root or CAP_SYS_NICE); yields the policy used ("fifo" or "normal").

    A CPU-bound neighbour on the timing core then waits for the timing to finish instead of taking turns
    with it (like `chrt -f 1`); the kernel's real-time throttling (by default 5 % of each second for
    others) still keeps the core from locking up, and the waiting check sees those pauses. The harness,
    off this core, kills a worker that hangs.
    """
    if not enabled or not hasattr(os, "SCHED_FIFO"):
        yield "normal"
        return
    before: dict[int, tuple[int, Any]] = {}
    policy = "fifo"
    try:
        for tid in (int(t) for t in os.listdir("/proc/self/task")):  # the runtime's pool threads too
            try:
                before[tid] = (os.sched_getscheduler(tid), os.sched_getparam(tid))
                os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(1))
            except ProcessLookupError:
                continue  # a thread that ended meanwhile
    except (PermissionError, OSError):
        policy = "normal"  # not allowed here: timing goes on at normal priority (the row says which)
    try:
        if policy == "normal":
            _restore(before)
            before = {}
        yield policy
    finally:
        _restore(before)


def _restore(before: dict[int, tuple[int, Any]]) -> None:
    for tid, (pol, param) in before.items():
        try:
            os.sched_setscheduler(tid, pol, param)
        except OSError:
            pass  # the thread ended


def _measure(msg: dict[str, Any], cores: list[int], threads: int) -> dict[str, Any]:
    import numpy as np

    from profiler.devices import env_snapshot, memory_backing
    from profiler.interference import CpuWait, NoiseRecord, chunk_size

    p = TimingProtocol(**msg["protocol"])
    t_start = time.perf_counter()
    remote = msg["device"].startswith("rpc:")
    # the reference kernel and the waiting check watch this host's cores: meaningless for a remote device
    guarded = p.detect_interference and not remote
    kernel = _reference_kernel() if guarded else None  # calibrated before anything of the block is loaded
    stream = _memory_reference(cores) if guarded else None
    hint = msg.get("reference_quiet_ms")
    if kernel is not None and hint and kernel.quiet_ms < HINT_TRUST * hint:
        # a faster run seen earlier on these cores: this worker was calibrated while they were busy. A far
        # faster one means the machine changed (another host, another clock): the calibration stands then
        kernel.observe(hint)
    runner = _load(msg, threads)
    if remote:
        # TVM RPC gives no access to the device's /sys: record when, and say that nothing else is known
        def env_snapshot(_cores):  # noqa: F811
            return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "remote": "no readings over TVM RPC"}
    env_before = env_snapshot(cores)
    if not remote:
        env_before["memory"] = memory_backing()
        env_before["worker_pid"] = os.getpid()

    # the memory reference before warm-up (its read evicts the caches, which warm-up refills)
    mem_before = stream.best_ms(2) if stream is not None else None
    # warm-up: caches, lazy allocations, the runtime's first-call paths; never timed
    n, t_warm0, last = 0, time.perf_counter(), []
    while n < p.warmup_runs or (time.perf_counter() - t_warm0) * 1e3 < p.warmup_ms:
        t0 = time.perf_counter_ns()
        runner.run()
        last.append((time.perf_counter_ns() - t0) / 1e6)
        n += 1
    flags = []
    if not all(np.all(np.isfinite(o)) for o in runner.outputs()):
        flags.append("nonfinite_output")
    per_call_ms = float(np.median(last[-5:]))
    number = max(1, math.ceil(p.min_sample_ms / max(per_call_ms, 1e-4)))
    sample = runner.timer(number)

    samples: list[float] = []  # kept
    dropped: list[float] = []
    record = wait = ref = None
    if kernel is not None:
        wait = CpuWait()  # after warm-up: the runtime's thread pool exists now
        record = NoiseRecord(kernel.quiet_ms, wait.source, chunk_size(per_call_ms * number, p.chunk_ms), [number])
        ref = kernel.run_ms()
        kernel.observe(ref)
        record.reference_ms.append(ref)
    with _priority_raised(guarded and p.raise_priority) as policy:
        if record is not None:
            record.policy = policy
        converged = _sample_until_done(p, sample, samples, dropped, record, kernel, wait, ref, runner, per_call_ms,
                                       number)
    if record is not None:
        number = record.inner_runs[-1]  # samples may have been shortened beside a neighbour
    mem_after = stream.best_ms(2) if stream is not None else None
    env_after = env_snapshot(cores)
    if record is not None:
        record.reference_quiet_ms = kernel.quiet_ms  # the lowest seen by now
        env_after["noise"] = record.to_dict()
        env_after["noise"]["memory_reference"] = {
            "bytes": stream.nbytes, "before_ms": round(mem_before, 4), "after_ms": round(mem_after, 4),
            "worker_best_ms": round(stream.best, 4)}
        if len(samples) < p.min_runs:
            # too few clean samples within the budget: the core was slowed or shared nearly all the time
            flags.append("interference")
        if len(samples) < 3:
            samples = samples + dropped  # nothing clean to speak of: keep what was measured, flagged
    if not converged and p.flag_unconverged:
        flags.append("unconverged")
    per_op = runner.per_op(p.per_op_runs) if msg.get("per_op") else None
    return {"samples_ms": samples, "inner_runs": number, "env_before": env_before, "env_after": env_after,
            "flags": flags, "per_op": per_op, "wall_s": time.perf_counter() - t_start}


def _sample_until_done(p: TimingProtocol, sample, samples: list[float], dropped: list[float], record, kernel, wait,
                       ref: float | None, runner, per_call_ms: float, number: int) -> bool:
    """Take samples (guarded in chunks when `record` is given) into `samples` (kept) and `dropped` until the
    stopping rule holds (True) or a budget is spent (False).

    Dropped samples do not end timing early: the interference seen on these VMs (another tenant on the
    host core's SMT sibling) comes and goes in phases of a fraction of a second to seconds, so waiting
    within `max_seconds` for a clean phase gets a clean number where giving up after a share of drops
    left nearly every block flagged. `max_dropped` still bounds the work spent on one block.
    """
    from profiler.interference import chunk_size, sample_guarded
    from profiler.stats import median_rel_error

    t_timed = time.perf_counter()
    recent: list[bool] = []  # per sample of the last few chunks: dropped for waiting?
    while True:
        if record is not None:
            kept, lost, ref, waited = sample_guarded(sample, kernel, wait, record, p.reference_slow_factor,
                                                     p.max_wait_share, ref)
            samples.extend(kept)
            dropped.extend(lost)
            recent = (recent + [True] * waited + [False] * (record.chunk_samples - waited))[-_RECENT:]
            if number > 1 and len(recent) >= _RECENT and sum(recent) > _RECENT // 2:
                # most samples were preempted: a neighbour takes turns on the core in slices shorter than
                # a sample. Shorter samples (fewer calls each; each still a mean per call) fit between turns
                number = max(1, number // 2)
                sample = runner.timer(number)
                record.inner_runs.append(number)
                record.chunk_samples = chunk_size(per_call_ms * number, p.chunk_ms)
                recent = []
        else:
            samples.append(sample())
        if len(samples) >= p.min_runs and median_rel_error(samples) <= p.target_rel_err \
                and _stable(samples, p.drift_bound):
            return True
        if len(samples) >= p.max_runs or time.perf_counter() - t_timed > p.max_seconds:
            return False
        if record is not None and record.dropped > p.max_dropped:
            return False  # contention all along: the row is flagged; do not spend more on it


def _stable(samples: list[float], bound: float) -> bool:
    """The medians of the first and second half agree within `bound` (relative): no slow phase
    (a neighbour's burst, a frequency step) sits in one half only."""
    import numpy as np

    h = len(samples) // 2
    a, b = float(np.median(samples[:h])), float(np.median(samples[h:]))
    return abs(a - b) <= bound * max(min(a, b), 1e-12)


def _outputs(msg: dict[str, Any], threads: int) -> dict[str, Any]:
    runner = _load(msg, threads)
    runner.run()
    return {"outputs": [o.tolist() for o in runner.outputs()]}


def _peak(threads: int) -> dict[str, Any]:
    """Peak fp32 GFLOP/s of the pinned cores: the best of several large matrix products (torch/oneDNN)."""
    import torch

    torch.set_num_threads(threads)
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = math.inf
    for _ in range(15):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return {"gflops": 2 * n**3 / best / 1e9, "method": f"torch.matmul fp32 {n}x{n}, best of 15"}


#: glibc's tunable that backs malloc's large (mmap) allocations with transparent huge pages (madvise)
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def worker_environ(env: dict[str, str] | os._Environ) -> dict[str, str]:
    """The variables the timing worker starts with beyond ``env``: glibc's malloc asked to back its large
    allocations with transparent huge pages (`HUGE_PAGES_TUNABLE`, added to any GLIBC_TUNABLES given).

    Why: a block's activations and weights (MBs) sit on 4 KiB pages placed anew by each process, and
    where they fall in the caches moves a large block's time by up to 40 % from one worker process to
    the next on a 2-vCPU VM (the same block, six fresh processes: 0.44-0.62 ms); on 2 MiB pages the
    spread was 11 %. Where the kernel's THP mode is ``never`` or glibc predates 2.35 it changes nothing.
    """
    have = env.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in have:
        return {}  # the user chose
    return {"GLIBC_TUNABLES": f"{have}:{HUGE_PAGES_TUNABLE}" if have else HUGE_PAGES_TUNABLE}


def crash_reason(exitcode: int | None, msg: dict[str, Any]) -> str:
    """Why the worker died, from its exit code and the request it was serving, in one line."""
    if exitcode == -signal.SIGILL:
        target = (msg.get("artifact") or {}).get("target", "?")
        return ("the timing worker died of an illegal instruction (SIGILL): the compiled code uses instructions "
                f"this CPU lacks; target {target}")
    how = f"killed by signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
    return f"the timing worker died ({how})"


class TimingWorker:
    """Parent-side handle of the worker process: a `profiler.timing.Timer`.

    `call` is the raw request/reply over the pipe (plain dicts); `measure` and `peak` are the typed
    timer interface the harness uses.
    """

    def __init__(self, cores: list[int], threads: int, log_path: str | None = None, huge_pages: bool = True):
        self.cores, self.threads, self.log_path, self.huge_pages = cores, threads, log_path, huge_pages
        self._ctx = mp.get_context("spawn")
        self._proc = None
        self._conn = None

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        # daemon=True ends it when the harness exits normally; parent_pid covers a killed harness
        self._proc = self._ctx.Process(target=serve, args=(child, self.cores, self.threads, self.log_path, os.getpid()),
                                       daemon=True, name="hwnas-timing")
        # a spawned process takes the environment as it is now; patch.dict puts it back after
        with mock.patch.dict(os.environ, worker_environ(os.environ) if self.huge_pages else {}):
            self._proc.start()
        child.close()
        self._conn = parent

    def call(self, msg: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send one request; raise `WorkerFailed` on a reported error, a crash or a timeout."""
        if self._proc is None or not self._proc.is_alive():
            self._start()
        self._conn.send(msg)
        if not self._conn.poll(timeout_s):
            self._kill()
            raise WorkerFailed("timeout", f"no result within {timeout_s:.0f} s; the worker was killed")
        try:
            res = self._conn.recv()
        except (EOFError, ConnectionResetError):
            self._proc.join(5)
            code = self._proc.exitcode
            self._kill()
            where = f"; its output is in {self.log_path}" if self.log_path else ""
            raise WorkerFailed("crash", crash_reason(code, msg) + where) from None
        if not res.get("ok"):
            raise WorkerFailed(res.get("stage", "run"), res.get("error", "unknown error"))
        return res

    def measure(self, request: MeasureRequest, timeout_s: float) -> TimingReply:
        """Time one artifact in the worker; raise `WorkerFailed` on an error, a crash or a timeout."""
        return TimingReply.from_dict(self.call(request.to_msg(), timeout_s))

    def peak(self, timeout_s: float) -> Peak:
        """Peak fp32 GFLOP/s of the worker's cores (a large matrix product)."""
        r = self.call({"op": "peak"}, timeout_s)
        return Peak(float(r["gflops"]), str(r["method"]))

    def restart(self) -> None:
        """End the worker process; the next request starts a fresh one (new address space, new placement)."""
        self.close()

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(5)
        self._proc = self._conn = None

    def close(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            try:
                self._conn.send(None)
                self._proc.join(10)
            except (BrokenPipeError, OSError):
                pass
        self._kill()

    def __enter__(self) -> "TimingWorker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
