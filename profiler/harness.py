"""The profiling harness: blocks -> compile (parallel, cached) -> time (pinned worker) -> store.

Every measurement is written to the store as soon as it is taken; blocks already stored under
the same configuration are skipped, so a run that was stopped (Ctrl-C, SIGKILL, a crash) resumes
where it stopped when started again. Compilation and timing never overlap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager, Iterator, Sequence

from profiler.backends import Artifact, BackendUnavailable, get_backend
from profiler.blocks import ArchSpec, BlockSpec, flops
from profiler.compile import compile_many, default_cache_dir, log_path, tuned_options
from profiler.devices import (DeviceError, DeviceSpec, check_threads, cores_busy_share, cpu_model, default_cores,
                              format_cores, local_id, parse_cores, parse_device)
from profiler.interference import QuietTimes
from profiler.measurement import Config, Measurement, TimingProtocol, tuning_of
from profiler.stats import summarize
from profiler.store import DISTRUST_FLAGS, Store, is_trusted, owner_id
from profiler.timing import MeasureRequest, Timer, WorkerFailed
from profiler._worker import TimingWorker

if TYPE_CHECKING:
    from profiler.adb.device import AdbOptions

__all__ = ["profile", "profile_with", "ProfileOptions", "ProfileResult", "Progress", "Session"]


class Progress:
    """Callbacks of a profiling run (the CLI draws bars with them); all optional."""

    def phase(self, name: str, total: int) -> None: ...

    def advance(self, name: str, label: str) -> None: ...

    def message(self, text: str) -> None: ...


@dataclass
class ProfileResult:
    config: Config
    total: int  # blocks asked for
    skipped: int  # already stored (trusted, or flagged with retime_flagged=0), or taken by another process
    measured: list[Measurement] = field(default_factory=list)  # this run's final row per block, status ok
    failed: list[Measurement] = field(default_factory=list)
    compiled: int = 0  # artifacts built in this run (not from the cache)
    peak_gflops: float | None = None
    wall_s: float = 0.0
    retimed: int = 0  # extra timings of flagged blocks in this run
    process_passes: int = 1  # worker processes each block was timed in (see ProfileOptions.processes)
    # block key -> flags, for the blocks asked for whose stored row is still distrusted (see DISTRUST_FLAGS):
    # they could not be timed cleanly; readers that fit or search leave them out
    unclean: dict[str, list[str]] = field(default_factory=dict)

    def unclean_line(self) -> str | None:
        """One line naming the blocks that could not be timed cleanly, or None."""
        if not self.unclean:
            return None
        items = [f"{k} ({','.join(f for f in fl if f in DISTRUST_FLAGS)})" for k, fl in self.unclean.items()]
        more = f" and {len(items) - 3} more" if len(items) > 3 else ""
        return (f"{len(items)} block(s) could not be timed cleanly: {'; '.join(items[:3])}{more}. They stay flagged "
                f"and fits leave them out; run the same command on a quieter machine to time them again")


@contextlib.contextmanager
def _harness_off(worker_cores: list[int]):
    """Keep this (parent) process off the timing worker's cores while it times, where others exist."""
    before = os.sched_getaffinity(0)
    others = before - set(worker_cores)
    if others:
        os.sched_setaffinity(0, others)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _flops(model: Any) -> int:
    if isinstance(model, ArchSpec):
        return sum(flops(b) for b in model.blocks)
    return flops(model)


def _versions(backend: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("hwnas", "torch", "executorch" if backend == "executorch" else "apache-tvm" if backend == "tvm" else ""):
        if pkg:
            try:
                out[pkg] = version(pkg)
            except PackageNotFoundError:
                out[pkg] = "not installed"
    return out


@contextlib.contextmanager
def _opened(store: Store | str | Path):
    """The store as given, or opened from its path (and closed after)."""
    if isinstance(store, Store):
        yield store
        return
    with Store(store) as st:
        yield st


@contextlib.contextmanager
def _timing_worker(core_list: list[int], threads: int, cache: Path) -> Iterator[Timer]:
    with _harness_off(core_list), TimingWorker(core_list, threads, log_path(cache, "timing")) as worker:
        yield worker


def _flags(env_before: dict, env_after: dict, protocol: TimingProtocol) -> list[str]:
    """What the readings before and after timing say: a core's clock fell, the device warmed up.

    (Interference is the timer's own finding: see `profiler.interference`. The 1-minute load average
    once flagged "busy" here; it counts this run's own compile jobs and misses a neighbour sharing the
    timing core when the load is low, so it is recorded in the row but no longer flags it.)
    """
    flags = []
    fb, fa = env_before.get("freq_mhz", {}), env_after.get("freq_mhz", {})
    if any(c in fa and fa[c] < fb[c] * (1 - protocol.freq_drop_share) for c in fb):
        flags.append("freq_drop")
    tb, ta = env_before.get("temp_c", {}), env_after.get("temp_c", {})
    if tb and ta and max(ta.values()) - max(tb.values()) > protocol.temp_rise_c:
        flags.append("temp_rise")
    return flags


@dataclass(frozen=True)
class ProfileOptions:
    """Everything a profiling run is asked for, besides the models and the store (see `profile`)."""

    backend: str
    device: str = "local"
    threads: int = 1
    cores: str | None = None
    protocol: TimingProtocol = field(default_factory=TimingProtocol)
    jobs: int | None = None
    cache_dir: str | Path | None = None
    per_op: bool = False
    tune_trials: int = 0
    retry_failed: bool = False
    remeasure: bool = False  # time every model again even where a trusted row is stored; the new row replaces it
    cross: str | None = None
    gpu: bool = False
    adb: "AdbOptions | None" = None
    retime_flagged: int = 2  # blocks whose row is flagged (DISTRUST_FLAGS) are timed up to this many more times
    retime_wait_s: float = 10.0  # before each re-time, wait up to this long for the timing cores to be quiet
    #: fresh timing processes each block is timed in (count); the row keeps the process with the lowest
    #: median and records every process's median (env_after.processes). Why: a block's time shifts as a
    #: whole from one process to the next (where its buffers land in the caches), by up to 20 % on a
    #: 2-vCPU VM with a CV of 2-4 % inside each process; the slow placements are the outliers, so the
    #: lowest of two is what a second run finds again (see benchmarks/profile_agreement.py). Not three:
    #: replaying recorded process medians promised 97 % of blocks within 5 % across profiles with three
    #: (benchmarks/process_count.py), but a real pair of three-process profiles gave 92.9 %, the
    #: first of them slowed as a whole by the host (2026-12-03, profile_agreement-20261203-0719.json)
    processes: int = 2
    #: and where those processes' medians still differ by more than ``process_agree`` (share of the
    #: lower), up to this many more processes, one at a time, for those blocks only: a block that drew
    #: a slow placement twice is the one a second run disagrees with (ExecuTorch, 2026-11-29: 5 of 70
    #: blocks 5-20 % apart between two quiet runs, all of them with their minimum moved, not their noise)
    extra_processes: int = 2
    process_agree: float = 0.03

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()


@dataclass(frozen=True)
class Session:
    """What one kind of device gives a run: the configuration its rows are stored under, and the timer
    (a context manager, entered only once compilation is over)."""

    config: Config
    timer: ContextManager[Timer]
    worker_device: str  # the device string the timer loads artifacts for
    remote: bool  # the timer's cores are not this host's (no peak, no host description in rows)
    per_op: bool = False
    tune_trials: int = 0
    local_cores: tuple[int, ...] = ()  # this host's cores that time (waited on to be quiet); () if remote


def profile(models: Sequence[BlockSpec | ArchSpec], backend: str, store: Store | str | Path,
            device: str = "local", threads: int = 1, cores: str | None = None,
            protocol: TimingProtocol | None = None, jobs: int | None = None, cache_dir: str | Path | None = None,
            per_op: bool = False, tune_trials: int = 0, retry_failed: bool = False, cross: str | None = None,
            progress: Progress | None = None, adb: "AdbOptions | None" = None, gpu: bool = False,
            retime_flagged: int = 2, retime_wait_s: float = 10.0, remeasure: bool = False,
            processes: int = 2, extra_processes: int = 2, process_agree: float = 0.03) -> ProfileResult:
    """Profile `models` with `backend` on `device` and write every result to `store`.

    Args:
        models: blocks (or whole networks) to measure; duplicates are measured once.
        backend: "executorch", "tvm" or "torch".
        store: a `Store` or a path to the SQLite file.
        device: "local", "local:cuda", "adb:SERIAL" / "adb:HOST:PORT" (an Android phone; executorch with
            `adb.runner`), or "rpc:HOST:PORT/KEY" (a device behind a TVM RPC tracker; tvm only).
        threads: threads of the runtime during timing.
        cores: core list for the timing worker, e.g. "1" or "0-3"; default: the fastest `threads` cores.
        protocol: the timing protocol (`TimingProtocol()` by default).
        jobs: parallel compile processes (default: all cores; compilation never overlaps timing).
        per_op: also record per-operator timings where the backend gives them (ExecuTorch ETDump).
        tune_trials: MetaSchedule trials per block for TVM (0: untuned default schedules).
        retry_failed: measure again the blocks whose stored row is a failure.
        cross: build for another kind of device than the host ("aarch64-android", "aarch64-linux");
            only with a remote device.
        gpu: time on the device's GPU: a phone's through OpenCL (tvm) or Vulkan (executorch, a runner
            built with the Vulkan backend); refused where the device has none. The host's GPU is local:cuda.
        adb: how to reach and use an adb device (`profiler.adb.device.AdbOptions`: runner, folders, core
            mask, temperature bound, reconnect budget).
        retime_flagged: a block whose row is flagged busy, interference or unconverged (stored by an
            earlier run, or just taken) is timed up to this many more times in this run; what stays
            flagged is listed in `ProfileResult.unclean`. 0: flagged stored rows are skipped like others.
        retime_wait_s: before each re-time, wait up to this long for the timing cores to be quiet (seconds).
        remeasure: time every model again, even where a trusted row is stored; the new row replaces it
            (a network whose measurement disagrees with its prediction is timed a second time).
        processes: on this host, each model is timed in this many fresh timing processes and the row
            keeps the fastest (`ProfileOptions.processes`, `keep_better`); 1: one process.
        extra_processes, process_agree: with 2 or more processes, a model whose processes' medians
            are not within ``process_agree`` (share) of the lowest in two of them is timed in up to
            ``extra_processes`` more, one at a time (`ProfileOptions.extra_processes`).

    Raises:
        DeviceError, BackendUnavailable, ValueError: bad device, backend or options (nothing stored);
            TooManyThreads (a DeviceError): more threads than the cores this process may use.
        DeviceGone: an adb device stayed unreachable mid-run (what was measured is stored).
    """
    options = ProfileOptions(backend=backend, device=device, threads=threads, cores=cores,
                             protocol=protocol or TimingProtocol(), jobs=jobs, cache_dir=cache_dir, per_op=per_op,
                             tune_trials=tune_trials, retry_failed=retry_failed, cross=cross, gpu=gpu, adb=adb,
                             retime_flagged=retime_flagged, retime_wait_s=retime_wait_s, remeasure=remeasure,
                             processes=processes, extra_processes=extra_processes, process_agree=process_agree)
    return profile_with(models, store, options, progress)


def profile_with(models: Sequence[BlockSpec | ArchSpec], store: Store | str | Path, options: ProfileOptions,
                 progress: Progress | None = None) -> ProfileResult:
    """`profile` with its options in one `ProfileOptions`; same behaviour, same errors."""
    t_run = time.perf_counter()
    progress = progress or Progress()
    o = options
    dev = parse_device(o.device)
    if o.threads < 1:
        raise ValueError("threads must be at least 1")
    if o.retime_flagged < 0:
        raise ValueError("retime_flagged is a count of extra attempts: 0 or more")
    if o.jobs is not None and o.jobs < 1:
        raise ValueError("jobs is a count of compile processes: at least 1 (None: all cores)")
    if o.cross and dev.kind in ("local", "cuda"):
        raise DeviceError(f"--cross {o.cross} builds for another device; name it with --device rpc:HOST:PORT/KEY")
    be = get_backend(o.backend)
    if o.gpu and dev.kind in ("local", "cuda"):
        raise DeviceError("--gpu is for phones (OpenCL or Vulkan); the host's GPU is --device local:cuda")
    if o.gpu and be.name != "tvm" and dev.kind == "rpc":
        raise BackendUnavailable(f"{dev.spec}: the GPU behind a TVM RPC tracker is timed with --backend tvm")
    if o.tune_trials and be.name != "tvm":
        raise BackendUnavailable(f"--tune-trials tunes TVM's kernels (MetaSchedule); {be.name} has no tuning "
                                 "step: leave it out")
    if o.tune_trials and dev.kind in ("rpc", "adb"):
        raise BackendUnavailable(f"{dev.spec}: MetaSchedule tunes on this host's CPU and times its candidates "
                                 "here; profile a remote device or a phone with --tune-trials 0")
    if dev.kind == "adb":
        session = _adb_session(dev, be, o, progress)
    else:
        session = _host_session(dev, be, o)
    with session as s, _opened(store) as st:
        return _run(models, o, s, st, progress, t_run)


@contextlib.contextmanager
def _host_session(dev: DeviceSpec, be, o: ProfileOptions) -> Iterator[Session]:
    """This host's CPU (local), its CUDA GPU (local:cuda), or a device behind a TVM RPC tracker (rpc):
    timed by the pinned local worker (which, for rpc, only holds the RPC session)."""
    if dev.kind in ("local", "cuda"):
        check_threads(o.threads, o.cores)
    core_list = parse_cores(o.cores) if o.cores else default_cores(o.threads)
    if dev.kind == "rpc" and be.name != "tvm":
        raise BackendUnavailable(f"{dev.spec}: only the tvm backend runs through a TVM RPC tracker")
    target = be.target_for(dev.spec, o.cross)
    if o.gpu:  # rpc + tvm: the phone's GPU through OpenCL
        from profiler.backends._tvm import PHONE_GPU_TARGET

        target = json.dumps(PHONE_GPU_TARGET, sort_keys=True)
    if dev.kind == "rpc":
        device_id = f"rpc:{dev.key}@{dev.host}:{dev.port}"
    elif dev.kind == "cuda":
        from profiler.devices import cuda_info

        info = cuda_info()
        if info is None:
            raise BackendUnavailable("local:cuda: no CUDA GPU is visible to torch on this machine")
        device_id = info["id"]
    else:
        device_id = local_id()
    be.check_options({"tune_trials": o.tune_trials, "per_op": o.per_op})
    # a remote device's cores are the server's business; the local worker only holds the session
    remote = dev.kind == "rpc"
    config = Config(dev.spec, device_id, be.name, target, o.threads, "remote" if remote else format_cores(core_list),
                    tuning_of(o.tune_trials))
    yield Session(config, _timing_worker(core_list, o.threads, o.cache_path), dev.spec, remote, o.per_op,
                  o.tune_trials, () if remote else tuple(core_list))


def _phone_gpu(info, api: str, spec: str) -> None:
    """Refuse --gpu on a phone whose vendor ships no `api` (opencl, vulkan) driver."""
    if not info.props.get(f"gpu_{api}"):  # info: profiler.adb.parsers.PhoneInfo
        where = {"opencl": "libOpenCL.so in /vendor/lib64, /system/vendor/lib64 or /system/lib64",
                 "vulkan": "ro.hardware.vulkan or /vendor/lib64/hw/vulkan.*.so"}[api]
        raise DeviceError(f"{spec}: --gpu needs {api.capitalize() if api == 'vulkan' else 'OpenCL'} on the phone and "
                          f"none was found ({where}); profile its CPU without --gpu")


def _adb_session(dev: DeviceSpec, be, o: ProfileOptions, progress: Progress) -> ContextManager[Session]:
    """An Android phone: ExecuTorch through the user's executor_runner, or TVM through tvm_rpc."""
    from profiler.adb.device import AdbOptions

    opts = o.adb or AdbOptions()
    if be.name == "tvm":
        return _adb_tvm_session(dev, be, o, opts, progress)
    if be.name != "executorch":
        raise BackendUnavailable(f"{dev.spec}: a phone runs the executorch (with --runner) or tvm (with "
                                 f"--tvm-rpc) backend, not {be.name}")
    return _adb_executorch_session(dev, be, o, opts, progress)


@contextlib.contextmanager
def _adb_executorch_session(dev: DeviceSpec, be, o: ProfileOptions, opts, progress: Progress) -> Iterator[Session]:
    """ExecuTorch artifacts timed on the phone by the user's executor_runner through bench.sh."""
    from profiler.adb.device import AdbDevice, device_id_of

    if not opts.runner:
        raise DeviceError(f"{dev.spec}: pass --runner PATH, ExecuTorch's executor_runner built for the phone "
                          f"with the Android NDK (docs/phones.md says how)")
    if o.threads != 1:
        raise ValueError("on a phone the runner's thread count is set when it is built; use --threads 1")
    phone = AdbDevice(dev.address, opts, on_message=progress.message)
    with phone:
        abi = phone.info.props.get("abi") or "unknown-abi"
        target = be.target_for(dev.spec, o.cross or f"android-{abi}")
        if o.gpu:
            _phone_gpu(phone.info, "vulkan", dev.spec)
            target = "vulkan" + target[len("xnnpack"):]
        be.check_options({"tune_trials": 0, "per_op": o.per_op})
        config = Config(dev.spec, device_id_of(phone.info, phone.serial), be.name, target, o.threads,
                        f"mask:{opts.mask}")
        yield Session(config, contextlib.nullcontext(phone), dev.spec, True, o.per_op, 0)


@contextlib.contextmanager
def _adb_tvm_session(dev: DeviceSpec, be, o: ProfileOptions, opts, progress: Progress) -> Iterator[Session]:
    """TVM on a phone: cross-compiled libraries timed through TVM's RPC server started on it over adb."""
    from profiler.adb.device import AdbDevice, device_id_of
    from profiler.adb.tvm_rpc import PhoneRpcServer

    if not opts.tvm_rpc:
        raise DeviceError(f"{dev.spec}: pass --tvm-rpc PATH (TVM's tvm_rpc built for the phone with the NDK), or "
                          f"run TVM's Android RPC app against a tracker and use --device rpc:HOST:PORT/KEY "
                          f"(docs/phones.md)")
    phone = AdbDevice(dev.address, dataclasses.replace(opts, runner=None), on_message=progress.message)
    with phone:
        abi = phone.info.props.get("abi") or ""
        cross = o.cross
        if cross is None:
            if not abi.startswith("arm64"):
                raise DeviceError(f"{dev.spec}: ABI {abi or 'unknown'}; TVM builds for arm64-v8a phones here "
                                  f"(--cross host for a device of this host's kind)")
            cross = "aarch64-android"
        target = be.target_for(dev.spec, cross)
        if o.gpu:
            from profiler.backends._tvm import PHONE_GPU_TARGET

            _phone_gpu(phone.info, "opencl", dev.spec)
            target = json.dumps(PHONE_GPU_TARGET, sort_keys=True)
        config = Config(dev.spec, device_id_of(phone.info, phone.serial), be.name, target, o.threads, "remote")
        core_list = default_cores(1)  # the local worker only holds the RPC session
        with PhoneRpcServer(phone, opts.tvm_rpc, tracker=opts.tracker) as server:
            progress.message(f"tvm_rpc on {dev.spec} registered as {server.device}")
            yield Session(config, _timing_worker(core_list, o.threads, o.cache_path), server.device, True, False, 0)


def _run(models: Sequence[BlockSpec | ArchSpec], o: ProfileOptions, session: Session, st: Store,
         progress: Progress, t_run: float) -> ProfileResult:
    config, protocol = session.config, o.protocol
    uniq = list(dict.fromkeys(models))
    stored = {r.block_key: r for r in st.latest(config, keys=[m.key for m in uniq]).itertuples()}

    def wanted(model) -> bool:
        r = stored.get(model.key)
        if r is None or o.remeasure:
            return True
        if r.status == "failed":
            return o.retry_failed
        return o.retime_flagged > 0 and not is_trusted(r.status, r.flags)

    todo = [m for m in uniq if wanted(m)]
    res = ProfileResult(config, len(uniq), len(uniq) - len(todo))
    versions = _versions(config.backend)
    compile_options: dict[str, Any] = {}
    if session.per_op:
        compile_options["per_op"] = True
    if session.tune_trials:
        compile_options.update(tuned_options(session.tune_trials, config.threads, o.cache_path))
    cache = o.cache_path
    res.peak_gflops = st.peak(config.device_id, config.threads, config.cores)
    owner = owner_id()
    host = {"cpu_model": cpu_model(), "machine": platform.machine(), "os": f"{platform.system()} {platform.release()}"}
    final: dict[str, Measurement] = {}  # block key -> this run's last result

    def record(m: Measurement, replace: bool = False) -> None:
        if st.put(m, replace=o.remeasure or replace):  # not written: a failure does not replace a flagged measurement
            final[m.block_key] = m

    def failure(model, stage: str, error: str, compile_s: float | None = None) -> Measurement:
        return Measurement(model.key, config, "failed", kind="network" if isinstance(model, ArchSpec) else "block",
                           stage=stage, error=error, flops=_flops(model), compile_s=compile_s,
                           protocol=protocol.to_dict(), versions=versions)

    def finish() -> ProfileResult:
        res.measured = [m for m in final.values() if m.status == "ok"]
        res.failed = [m for m in final.values() if m.status == "failed"]
        for model in uniq:  # what is left distrusted: measured now, or stored and not timed again
            m, r = final.get(model.key), stored.get(model.key)
            status, flags = (m.status, m.flags) if m is not None else (r.status, r.flags) if r is not None else ("", [])
            if status == "ok" and not is_trusted(status, flags):
                res.unclean[model.key] = list(flags)
        res.wall_s = time.perf_counter() - t_run
        return res

    if not todo:
        return finish()

    # 1. compile everything that is missing (parallel), before any timing starts
    artifacts: dict[Any, Artifact] = {}
    progress.phase("compile", len(todo))

    def on_compiled(model, art: Artifact | None, err: str | None, cached: bool) -> None:
        res.compiled += not cached
        if art is None:
            record(failure(model, "compile", err or "unknown compile error"))
        else:
            artifacts[model] = art
        progress.advance("compile", model.key)

    # a tuning compile builds its candidates on every core and times them: two side by side would
    # time each other's candidates, so tuning compiles one block at a time
    jobs = 1 if session.tune_trials else o.jobs or len(os.sched_getaffinity(0))
    compile_many(config.backend, todo, config.target, compile_options, cache, jobs, on_compiled)

    # 2. time each artifact with the session's timer; store each row as soon as it is taken
    def measure(timer: Timer, model, art: Artifact, retime: bool, prior: Measurement | None = None) -> bool:
        """Time one block and store the row; False when another process holds or has stored it.

        `retime`: a flagged row may be replaced (the block is being timed again because of it). Not for a
        row that another process sharing the store wrote during this run: that one is its to re-time.
        `prior`: this run's row of the block from another timing process (or an earlier attempt); the
        row stored is the better of the two (`keep_better`), with every process's median recorded.
        """
        if not st.claim(config, model.key, owner, protocol.timeout_s + 60, o.retry_failed, retime_flagged=retime,
                        retime=o.remeasure or prior is not None):
            return False
        request = MeasureRequest(art, session.worker_device, protocol, session.per_op,
                                 quiet.get(quiet_key) if quiet else None)
        try:
            r = timer.measure(request, protocol.timeout_s)
        except WorkerFailed as e:
            if prior is not None and prior.status == "ok":  # another process timed it: keep that, say what this one did
                record(keep_better(prior, None, f"{e.stage}: {e.error}"), replace=True)
            else:
                record(failure(model, e.stage, e.error, art.compile_s))
        else:
            if quiet:
                quiet.offer(quiet_key, (r.env_after.get("noise") or {}).get("reference_quiet_ms"))
            m = Measurement(
                model.key, config, "ok", kind="network" if isinstance(model, ArchSpec) else "block",
                samples_ms=r.samples_ms, inner_runs=r.inner_runs, stats=summarize(r.samples_ms).__dict__.copy(),
                flops=_flops(model), compile_s=art.compile_s, wall_s=r.wall_s,
                flags=r.flags + _flags(r.env_before, r.env_after, protocol),
                env_before={**r.env_before, **({} if session.remote else host), "cores": config.cores,
                            "threads": config.threads},
                env_after=r.env_after, protocol=protocol.to_dict(), versions=versions, per_op=r.per_op)
            if prior is not None and prior.status == "ok":
                record(keep_better(prior, m), replace=True)
            else:
                record(m)
        finally:
            st.release(config, model.key, owner)
        return True

    def distrusted() -> list:
        return [mo for mo in todo if mo.key in final and final[mo.key].status == "ok"
                and not is_trusted("ok", final[mo.key].flags)]

    # the reference kernel's quiet time on these cores, kept beside the compile cache (see profiler.interference)
    quiet = QuietTimes(cache / "reference-quiet.json") if session.local_cores and protocol.detect_interference else None
    quiet_key = QuietTimes.key(config.device_id, config.cores)
    progress.phase("measure", len(artifacts))
    with session.timer as timer, _saved(quiet):
        if res.peak_gflops is None and not session.remote:
            try:
                pk = timer.peak(protocol.timeout_s)
                st.put_peak(config.device_id, config.threads, config.cores, pk.gflops, pk.method)
                res.peak_gflops = pk.gflops
            except WorkerFailed as e:
                progress.message(f"peak GFLOP/s not measured: {e.error}")
        for model in todo:
            art = artifacts.get(model)
            if art is not None and not measure(timer, model, art, retime=model.key in stored):
                res.skipped += 1  # measured, or being measured, by another process sharing this store
            progress.advance("measure", model.key)
        # 2b. each block again in a fresh timing process (see ProfileOptions.processes)
        restart = getattr(timer, "restart", None)
        for p in range(2, max(o.processes, 1) + 1):
            again = [mo for mo in todo if mo.key in final and final[mo.key].status == "ok" and mo in artifacts]
            if not again or restart is None:
                break
            restart()
            res.process_passes = p
            progress.phase(f"process {p}", len(again))
            for model in again:
                measure(timer, model, artifacts[model], retime=True, prior=final[model.key])
                progress.advance(f"process {p}", model.key)
        # 2c. blocks whose processes disagree: more processes, one at a time, until two agree
        for extra in range(1, (o.extra_processes if o.processes >= 2 else 0) + 1):
            again = [mo for mo in todo if mo.key in final and final[mo.key].status == "ok" and mo in artifacts
                     and processes_disagree(final[mo.key], o.process_agree)]
            if not again or restart is None:
                break
            restart()
            p = o.processes + extra
            res.process_passes = max(res.process_passes, p)
            progress.phase(f"process {p}", len(again))
            for model in again:
                measure(timer, model, artifacts[model], retime=True, prior=final[model.key])
                progress.advance(f"process {p}", model.key)
        # 3. blocks whose numbers were taken under interference (or did not settle): again, a bounded
        # number of times, each after waiting briefly for the timing cores to quieten
        for attempt in range(1, o.retime_flagged + 1):
            again = distrusted()
            if not again:
                break
            if session.local_cores:
                share = _wait_quiet(session.local_cores, o.retime_wait_s)
                if share is not None and share > _QUIET_SHARE:
                    progress.message(f"the timing cores are still {100 * share:.0f}% busy with other work after "
                                     f"{o.retime_wait_s:.0f} s; timing {len(again)} flagged block(s) again anyway")
            progress.phase(f"retime {attempt}", len(again))
            for model in again:
                res.retimed += measure(timer, model, artifacts[model], retime=True, prior=final.get(model.key))
                progress.advance(f"retime {attempt}", model.key)
    return finish()


def processes_disagree(m: Measurement, agree: float) -> bool:
    """True when no two of the processes ``m`` was timed in agree with its kept (lowest) median
    within ``agree`` (share): the lowest may be a lucky draw or the others unlucky ones, and another
    process tells which. A row timed in one process, or with a failed process, is not judged."""
    meds = (m.env_after.get("processes") or {}).get("median_ms") or []
    if len(meds) < 2 or any(v is None for v in meds):
        return False
    lo = min(meds)
    return sum(1 for v in meds if v <= lo * (1 + agree)) < 2


def keep_better(prior: Measurement, new: Measurement | None, error: str | None = None) -> Measurement:
    """Of two timings of one block (in different processes, or a re-time), the one to store: a trusted
    row before a distrusted one, then the lower median (contention and bad cache placement only add
    time). Its ``env_after["processes"]`` lists every timing's median (ms; None for a failed one, with
    its reason under ``errors``) and which was kept."""
    hist = dict(prior.env_after.get("processes") or {"median_ms": [prior.median_ms], "kept": 0,
                                                      "pid": [prior.env_before.get("worker_pid")]})
    meds, pids = list(hist["median_ms"]), list(hist.get("pid", []))
    errors = list(hist.get("errors", []))
    if new is None:
        meds.append(None)
        pids.append(None)
        errors.append(error or "failed")
        kept, index = prior, hist["kept"]
    else:
        meds.append(new.median_ms)
        pids.append(new.env_before.get("worker_pid"))
        rank = lambda m: (not is_trusted(m.status, m.flags), m.median_ms)  # noqa: E731
        kept, index = (new, len(meds) - 1) if rank(new) < rank(prior) else (prior, hist["kept"])
    info = {"median_ms": meds, "kept": index, "pid": pids}
    if errors:
        info["errors"] = errors
    return dataclasses.replace(kept, env_after={**kept.env_after, "processes": info})


@contextlib.contextmanager
def _saved(quiet: QuietTimes | None):
    try:
        yield
    finally:
        if quiet is not None:
            try:
                quiet.save()
            except OSError:
                pass  # a read-only cache folder: the hint is only an optimisation


#: the timing cores count as quiet when other work keeps them busy less than this share of the time
_QUIET_SHARE = 0.10


def _wait_quiet(cores: Sequence[int], max_wait_s: float) -> float | None:
    """Wait up to `max_wait_s` for `cores` to be quiet (this process is off them); the last busy share seen."""
    deadline = time.monotonic() + max_wait_s
    share = None
    while True:
        share = cores_busy_share(list(cores), window_s=0.5)
        if share is None or share <= _QUIET_SHARE or time.monotonic() >= deadline:
            return share
