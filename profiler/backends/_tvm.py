"""TVM: Relax from torch.export, built for the host CPU (llvm), CUDA, or a cross target (aarch64)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from profiler.backends.base import Artifact, Backend, BackendUnavailable, CompileError, Model, Runner
from profiler.cpu_features import CpuFlags, kernel_cpu_flags, llvm_features_lacking

#: cross targets a user can name with --cross; LLVM target dicts (TVM 0.27 refuses option strings)
CROSS_TARGETS = {
    "aarch64-android": {"kind": "llvm", "mtriple": "aarch64-linux-android", "mattr": ["+neon"]},
    "aarch64-linux": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]},
}
#: a phone's GPU through OpenCL (Adreno, Mali): kernels in OpenCL C, the host side for aarch64 Android
PHONE_GPU_TARGET = {"kind": "opencl", "host": CROSS_TARGETS["aarch64-android"]}


class TVMBackend(Backend):
    name = "tvm"
    suffix = ".so"

    def target_for(self, device: str, cross: str | None = None) -> str:
        import tvm

        if cross and cross != "host":
            if cross not in CROSS_TARGETS:
                raise BackendUnavailable(f"tvm: unknown cross target {cross!r}; known: {', '.join(CROSS_TARGETS)}")
            return json.dumps(CROSS_TARGETS[cross], sort_keys=True)
        if device == "local:cuda":
            if not tvm.cuda(0).exist:
                raise BackendUnavailable("tvm: no CUDA device is visible to TVM on this machine")
            cfg = json.loads(str(tvm.target.Target.from_device(tvm.cuda(0))))
            cfg["host"] = host_cpu_target()  # the library's CPU side runs on this host: its features too
            return json.dumps(cfg, sort_keys=True)
        return json.dumps(host_cpu_target(), sort_keys=True)

    def cache_id(self, key: str, target: str, options: dict[str, Any]) -> str:
        # where the tuning database lives is not what the artifact is: the cache moves with its folder
        return super().cache_id(key, target, {k: v for k, v in options.items() if k != "tune_db"})

    def versions(self) -> dict[str, str]:
        from importlib.metadata import version

        return {"apache-tvm": version("apache-tvm"), "torch": version("torch")}

    def compile(self, model: Model, target: str, out: Path, options: dict[str, Any]) -> dict[str, Any]:
        import torch
        import tvm
        from tvm import relax
        from tvm.relax.frontend.torch import from_exported_program

        tgt_dict = json.loads(target)
        tgt = tvm.target.Target(tgt_dict)
        try:
            module, x = model.build(), model.example_input()
            with torch.no_grad():
                ep = torch.export.export(module, (x,))
            mod = from_exported_program(ep, unwrap_unit_return_tuple=True)
            trials = int(options.get("tune_trials") or 0)
            tuning: dict[str, Any] = {}
            if trials > 0:
                mod, tuning = _tune(mod, tgt, trials, options.get("tune_threads"),
                                    options.get("tune_cost_model", "xgb"), database=options.get("tune_db"),
                                    network=hasattr(model, "blocks"))
            elif tgt.kind.name in ("cuda", "opencl", "vulkan", "metal", "rocm"):
                mod = _gpu_default_schedule(mod, tgt)
            ex = tvm.compile(mod, tgt)
        except Exception as e:  # TVM raises TVMError/RuntimeError/... from deep inside; keep the reason
            raise CompileError(f"tvm build failed: {type(e).__name__}: {_first_line(e)}") from e
        fcompile = _fcompile_for(tgt_dict)
        extra: dict[str, Any] = {"tune_trials": trials, "tune_threads": options.get("tune_threads"), **tuning}
        if trials > 0 and fcompile is None and tgt.kind.name == "llvm":
            # a tuned schedule is MetaSchedule's choice among thousands: check it computes the block
            # before its time is stored (untuned code is TVM's default lowering, checked by the tests)
            with torch.no_grad():
                expected = module(x).numpy()
            extra["eager_max_rel_err"] = check_against_eager(_run_here(ex, x.numpy()), expected,
                                                             f"MetaSchedule's schedule ({trials} trials)")
        try:
            if fcompile is None:
                ex.export_library(str(out))
            else:
                ex.export_library(str(out), fcompile=fcompile)
        except Exception as e:
            raise CompileError(f"tvm export_library failed: {type(e).__name__}: {_first_line(e)}") from e
        return extra

    def load(self, artifact: Artifact, device: str, threads: int) -> Runner:
        return _TVMRunner(artifact, device)

    def check_options(self, options: dict[str, Any]) -> None:
        import importlib.util

        if int(options.get("tune_trials") or 0) > 0 and importlib.util.find_spec("xgboost") is None:
            raise BackendUnavailable("--tune-trials needs MetaSchedule's cost model (xgboost): "
                                     "pip install 'hwnas[tune]' (about 700 MB), or profile untuned with "
                                     "--tune-trials 0")


def host_cpu_target(cpu: CpuFlags | None = None) -> dict[str, Any]:
    """The LLVM target for code that runs on this host's CPU, limited to the features it offers.

    LLVM names the CPU after its silicon (``znver4``), whose features a VM may mask (no AVX-512):
    every instruction-set feature the name implies but the kernel's flags lack is switched off in
    ``mattr`` (``-avx512f`` also drops the AVX-512 extensions built on it). The target, removals
    included, is the compile-cache key and the stored row's configuration, so code built on one
    machine is never reused on a machine that lacks its instructions. `cpu` defaults to this
    host's ``/proc/cpuinfo``; where the kernel reports no flags the CPU name is used unchecked,
    and the target says so in its keys.
    """
    import tvm
    from tvm.target import codegen

    cfg = json.loads(str(tvm.target.Target.from_device(tvm.cpu())))
    cpu = cpu if cpu is not None else kernel_cpu_flags()
    if cpu is None:
        cfg["keys"] = ["cpu", "features-unchecked"]
        return cfg
    implied = codegen.llvm_get_cpu_features(tvm.target.Target(cfg))
    lacking = llvm_features_lacking(implied, cpu)
    if lacking:
        cfg["mattr"] = [f"-{f}" for f in lacking]
        left = llvm_features_lacking(codegen.llvm_get_cpu_features(tvm.target.Target(cfg)), cpu)
        if left:  # LLVM kept something on (a dependency the table does not know): refuse to guess
            raise BackendUnavailable(f"tvm: cannot build for this CPU: LLVM's {cfg.get('mcpu')!r} keeps "
                                     f"{', '.join(left)} on, which {cpu.source} does not list")
    # str(Target) is its JSON config in TVM 0.27 (defaults filled in): the same text on every call
    return json.loads(str(tvm.target.Target(cfg)))


def _gpu_default_schedule(mod, tgt):
    """GPU kernels need thread bindings: DLight's default rules give every kernel one."""
    from tvm import relax
    from tvm.s_tir import dlight as dl

    with tgt:
        mod = relax.transform.LegalizeOps()(mod)
        return dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                       dl.gpu.GeneralReduction(), dl.gpu.Fallback())(mod)


#: MetaSchedule's builder function, registered in each build worker by `_builder_worker_init`
_MS_BUILD = "hwnas.meta_schedule.build"


def _ms_build(mod, target, _params):
    """MetaSchedule's default build without its import of every tensor intrinsic of every target.

    The stock builder imports ``tvm.s_tir.tensor_intrin`` (CUDA's MMA and ldmatrix intrinsics, parsed
    from TVMScript) inside the first build of each worker: 50-80 s on a 2-vCPU VM, longer than the
    builder's 30 s timeout, so workers were killed and restarted mid-import, and a 64-candidate batch
    took many minutes. A CPU target without tensorized schedules (no VNNI/AMX rules here) needs none."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def _builder_worker_init() -> None:
    import tvm

    tvm.register_global_func(_MS_BUILD, _ms_build, override=True)


def _import_tensor_intrinsics() -> None:
    """Import ``tvm.s_tir.tensor_intrin`` (MetaSchedule's tuning context does, once per process) in
    seconds instead of most of a minute.

    Its modules define hundreds of TVMScript functions, and TVMScript's ``prim_func`` decorator calls
    `inspect.stack()`, which looks up every frame's module and source; on the 2-vCPU VM that was 85 %
    of a 47 s import. For that import only, `inspect.stack` is replaced by a walk of the frames that
    fills the same fields (the source line from `linecache`), then restored."""
    import inspect
    import linecache
    import sys

    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return

    def stack(context: int = 1) -> list:
        frames, f = [], sys._getframe(1)
        while f is not None:
            name, line = f.f_code.co_filename, f.f_lineno
            text = linecache.getline(name, line) if context > 0 else ""
            frames.append(inspect.FrameInfo(f, name, line, f.f_code.co_name, [text] if text else None,
                                            0 if text else None))
            f = f.f_back
        return frames

    original, inspect.stack = inspect.stack, stack
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401
    finally:
        inspect.stack = original


#: trials a task of a whole network gets when no block of it tuned that task (a fusion across a block
#: boundary that only the network has): the share of a three-task block (expand, depthwise, project)
NETWORK_TASK_SHARE = 3


class TuningDatabase:
    """One MetaSchedule tuning database per target (features and core count included), shared by every
    block and network compiled for it: `hwnas profile --tune-trials N` tunes each kernel (task) once,
    and a whole network measured later is built from the records its blocks left.

    A folder ``<root>/<sha of the target and TVM's version>/`` holds MetaSchedule's own JSON database (workloads and
    tuning records), ``target.json`` and ``budgets.json``: the trials each task has been given, by the
    task's structural hash, so a task tuned with a smaller budget than asked is tuned further (warm
    started from its records) and one tuned with enough is not tuned again. Tuning holds a file lock
    on the folder: two processes sharing a cache never tune into the same files at once."""

    def __init__(self, root: str | Path, target_cfg: dict[str, Any]):
        from importlib.metadata import version

        # a record is a schedule trace of this TVM's TIR: another TVM version starts its own database
        text = json.dumps({"target": target_cfg, "apache-tvm": version("apache-tvm")}, sort_keys=True)
        self.dir = Path(root) / hashlib.sha256(text.encode()).hexdigest()[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "target.json").write_text(text + "\n")
        self._budgets_path = self.dir / "budgets.json"

    @contextlib.contextmanager
    def locked(self):
        import fcntl

        with open(self.dir / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield self
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def budgets(self) -> dict[str, int]:
        try:
            data = json.loads(self._budgets_path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def add_budgets(self, spent: dict[str, int]) -> None:
        b = self.budgets()
        for k, v in spent.items():
            b[k] = b.get(k, 0) + int(v)
        tmp = self._budgets_path.with_name(f"budgets.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(b, indent=1, sort_keys=True))
        os.replace(tmp, self._budgets_path)


@contextlib.contextmanager
def _unnamed_log_handlers_set_aside():
    """MetaSchedule's logger set-up (``create_loggers``, once per tuning) lists the handlers of its
    ``tvm.s_tir.meta_schedule`` logger by name and fails on one without a name (``None.format``), such
    as a handler another library or a test harness attached earlier in the process: those are set
    aside while tuning and put back after."""
    import logging

    log = logging.getLogger("tvm.s_tir.meta_schedule")
    unnamed = [h for h in log.handlers if h.get_name() is None]
    for h in unnamed:
        log.removeHandler(h)
    try:
        yield
    finally:
        for h in unnamed:
            log.addHandler(h)


def _structural_hash(mod) -> int:
    """The structural hash MetaSchedule's database tells workloads apart by (TVM 0.27: tvm_ffi's)."""
    import tvm

    fn = getattr(tvm.ir, "structural_hash", None)
    if fn is None:
        from tvm_ffi import structural_hash as fn
    return int(fn(mod))


def _tune(mod, tgt, trials: int, threads: int | None = None, cost_model: str = "xgb",
          database: str | Path | None = None, network: bool = False) -> tuple[Any, dict[str, Any]]:
    """MetaSchedule tuning of one block (or network) with a trial budget; returns the module with the
    tuned schedules applied, and what the tuning did (tasks, tuned now, taken from the database).

    ``trials`` is a block's total, shared evenly by its tasks (one per fused kernel, 2-4 per MBConv
    block) and measured in batches of up to 64, so the evolutionary search runs once per batch rather
    than once per handful of candidates. A whole network (``network``) gives each of its tasks the
    share of a three-task block (`NETWORK_TASK_SHARE`): most of them its blocks tuned already.
    Candidates are built for, and timed with, ``threads`` threads: the count the harness times the
    block with (default: this process's cores). With ``database`` (a folder), the records go to the
    `TuningDatabase` of this target there, and a task that already holds its budget is not tuned
    again; without, to a temporary folder. The passes around the tuning are those of TVM's
    ``static_shape_tuning`` pipeline; the builder is `_ms_build`'s. ``cost_model`` "random" (no
    xgboost) is for tests only."""
    from tvm import relax
    from tvm.relax import transform
    from tvm.s_tir import meta_schedule as ms

    import tvm

    _import_tensor_intrinsics()
    cfg = json.loads(str(tgt))
    cfg["num-cores"] = int(threads or len(os.sched_getaffinity(0)))  # MetaSchedule parallelises for these
    tgt = tvm.target.Target(cfg)
    # the runner's workers (started by tune_tasks, this process's children) time with as many threads
    os.environ["TVM_NUM_THREADS"] = str(cfg["num-cores"])
    with contextlib.ExitStack() as stack:
        stack.enter_context(_unnamed_log_handlers_set_aside())
        shared = None
        if database is None:
            work_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="hwnas-ms-"))
        else:
            shared = stack.enter_context(TuningDatabase(database, cfg).locked())
            work_dir = str(shared.dir)
        stack.enter_context(tgt)
        mod = tvm.transform.Sequential([transform.DecomposeOpsForInference(), transform.CanonicalizeBindings(),
                                        relax.get_pipeline("zero")])(mod)
        extracted = list(ms.relax_integration.extract_tasks(mod, tgt))
        per_task = max(1, trials // (NETWORK_TASK_SHARE if network else max(1, len(extracted))))
        keys = [str(_structural_hash(t.dispatched[0])) for t in extracted]
        have = shared.budgets() if shared else {}
        todo: dict[int, list[int]] = {}  # trials still owed -> the tasks that are owed them
        for i, k in enumerate(keys):
            if have.get(k, 0) < per_task:
                todo.setdefault(per_task - have.get(k, 0), []).append(i)
        builder = ms.builder.LocalBuilder(f_build=_MS_BUILD, initializer=_builder_worker_init)
        for owed, idx in sorted(todo.items()):
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                [extracted[i] for i in idx], work_dir)
            ms.tune.tune_tasks(tasks=contexts, task_weights=weights, work_dir=work_dir,
                               max_trials_global=owed * len(idx), max_trials_per_task=owed,
                               num_trials_per_iter=min(64, owed), builder=builder, cost_model=cost_model)
            if shared:
                shared.add_budgets({keys[i]: owed for i in idx})
        db = ms.database.JSONDatabase(work_dir=work_dir)
        untuned = [t.task_name for t in extracted
                   if not (db.has_workload(t.dispatched[0]) and db.get_top_k(db.commit_workload(t.dispatched[0]), 1))]
        if extracted and len(untuned) == len(extracted):
            # MetaSchedule falls back to default schedules silently; a 'tuned' row must be tuned
            raise CompileError(f"MetaSchedule found no valid schedule in {trials} trials (every candidate "
                               "failed to build or run); raise --tune-trials or profile untuned")
        info = {"tasks": len(extracted), "tasks_tuned_now": sum(len(v) for v in todo.values()),
                "trials_per_task": per_task, "tasks_untuned": untuned,
                "database": shared.dir.name if shared else None}
        return transform.MetaScheduleApplyDatabase(work_dir)(mod), info


#: largest difference from eager PyTorch, relative to the output's largest magnitude, that a
#: compiled block may show: float32 kernels that sum in another order differ by about 1e-6
EAGER_REL_TOL = 1e-3


def check_against_eager(got, expected, what: str) -> float:
    """The largest difference of `got` from eager PyTorch's `expected`, relative to the output's
    largest magnitude; raises `CompileError` naming `what` when it exceeds `EAGER_REL_TOL`."""
    import numpy as np

    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    if got.shape != expected.shape:
        raise CompileError(f"{what} gives an output of shape {got.shape}, eager PyTorch {expected.shape}")
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-6)
    err = float(np.abs(got - expected).max(initial=0.0)) / scale if np.all(np.isfinite(got)) else float("inf")
    if not err <= EAGER_REL_TOL:
        raise CompileError(f"{what} computes a different block: output differs from eager PyTorch by "
                           f"{err:.2e} of its largest value (limit {EAGER_REL_TOL:g}); not timed. Profile "
                           "untuned (--tune-trials 0) or report it to TVM")
    return err


def _run_here(ex, x):
    """Run a relax executable built for this host's CPU once on `x` (numpy); its first output."""
    import tvm
    from tvm import relax

    dev = tvm.cpu(0)
    out = relax.VirtualMachine(ex, dev)["main"](tvm.runtime.tensor(x, dev))
    return out.numpy() if hasattr(out, "numpy") else out[0].numpy()


def _fcompile_for(tgt: dict[str, Any]):
    """A cross compiler for aarch64 libraries: the NDK's clang where the user has one, else Debian's gcc."""
    # a GPU target (opencl, vulkan) carries the CPU side of the library in its "host"
    triple = tgt.get("mtriple", "") or (tgt.get("host") or {}).get("mtriple", "")
    if not triple.startswith("aarch64"):
        return None
    from tvm.support import cc

    ndk_cc = os.environ.get("TVM_NDK_CC")
    if not ndk_cc and os.environ.get("ANDROID_NDK_HOME"):
        cand = sorted(Path(os.environ["ANDROID_NDK_HOME"]).glob(
            "toolchains/llvm/prebuilt/*/bin/aarch64-linux-android*-clang++"))
        ndk_cc = str(cand[-1]) if cand else None
    if triple.endswith("android"):
        if ndk_cc:
            return cc.cross_compiler(ndk_cc, options=["-shared", "-fPIC", "-static-libstdc++"])
    gcc = shutil.which("aarch64-linux-gnu-gcc")
    if gcc is None:
        raise CompileError("no aarch64 cross compiler: set TVM_NDK_CC or ANDROID_NDK_HOME (Android NDK), or "
                           "install Debian's gcc-aarch64-linux-gnu")
    return cc.cross_compiler(gcc)


#: seconds to wait for the tracker to hand out a session; a dead server that the tracker still
#: lists makes a request hang, so every request has this bound
RPC_REQUEST_TIMEOUT_S = float(os.environ.get("HWNAS_RPC_TIMEOUT_S", "60"))


def request_session(host: str, port: int, key: str, timeout_s: float = RPC_REQUEST_TIMEOUT_S):
    """A TVM RPC session for a device of `key` from the tracker at host:port, within `timeout_s`."""
    import concurrent.futures as cf

    from tvm import rpc

    def ask():
        tracker = rpc.connect_tracker(host, port)
        return tracker.request(key, priority=1, session_timeout=0, max_retry=1)

    pool = cf.ThreadPoolExecutor(max_workers=1)
    fut = pool.submit(ask)
    try:
        return fut.result(timeout=timeout_s)
    except cf.TimeoutError:
        raise TimeoutError(f"no device of key {key!r} answered through the tracker at {host}:{port} within "
                           f"{timeout_s:.0f} s (servers the tracker lists may be dead; check "
                           f"`python -m tvm.exec.query_rpc_tracker --host {host} --port {port}`)") from None
    except Exception as e:
        raise ConnectionError(f"tracker {host}:{port}, key {key!r}: {_first_line(e)}") from None
    finally:
        pool.shutdown(wait=False)


class _TVMRunner(Runner):
    def __init__(self, artifact: Artifact, device: str):
        import tvm
        from tvm import relax

        from profiler.devices import parse_device

        dev = parse_device(device)
        kind = json.loads(artifact.target).get("kind", "llvm")
        if dev.kind == "rpc":
            # the library runs on the device behind the tracker: upload it and load it there
            self._sess = request_session(dev.host, dev.port, dev.key)
            self._sess.upload(artifact.path)
            self._lib = self._sess.load_module(Path(artifact.path).name)
            self.dev = {"opencl": self._sess.cl, "vulkan": self._sess.vulkan, "cuda": self._sess.cuda}.get(
                kind, self._sess.cpu)(0)
        else:
            if json.loads(artifact.target).get("mtriple", "").startswith("aarch64") and \
                    os.uname().machine != "aarch64":
                raise BackendUnavailable("tvm: an aarch64 library cannot run on this host; time it on the device")
            self.dev = tvm.cuda(0) if dev.kind == "cuda" else tvm.cpu(0)
            if not self.dev.exist:
                raise BackendUnavailable(f"tvm: device {device} does not exist here")
            self._lib = tvm.runtime.load_module(artifact.path)
        self._vm = relax.VirtualMachine(self._lib, self.dev)
        import torch

        # the same example input as BlockSpec.example_input(seed=0) and the other backends
        x = torch.randn(*artifact.input_shape, generator=torch.Generator().manual_seed(0)).numpy()
        self._x = tvm.runtime.tensor(x, self.dev)
        self._vm.set_input("main", self._x)
        self._out = None

    def run(self) -> None:
        self._out = self._vm["main"](self._x)
        self.dev.sync()

    def outputs(self) -> list[Any]:
        out = self._out
        return [out.numpy()] if hasattr(out, "numpy") else [o.numpy() for o in out]

    def timer(self, number: int):
        # TVM's own timer: runs `number` calls back to back in C++ and synchronises the device
        fe = self._vm.time_evaluator("invoke_stateful", self.dev, number=number, repeat=1)

        def sample() -> float:
            return float(fe("main").results[0]) * 1e3

        return sample


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:300] if s else ""
