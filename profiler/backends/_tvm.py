"""TVM: Relax from torch.export, built for the host CPU (llvm), CUDA, or a cross target (aarch64)."""

from __future__ import annotations

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
            if trials > 0:
                mod = _tune(mod, tgt, trials)
            elif tgt.kind.name in ("cuda", "opencl", "vulkan", "metal", "rocm"):
                mod = _gpu_default_schedule(mod, tgt)
            ex = tvm.compile(mod, tgt)
        except Exception as e:  # TVM raises TVMError/RuntimeError/... from deep inside; keep the reason
            raise CompileError(f"tvm build failed: {type(e).__name__}: {_first_line(e)}") from e
        fcompile = _fcompile_for(tgt_dict)
        try:
            if fcompile is None:
                ex.export_library(str(out))
            else:
                ex.export_library(str(out), fcompile=fcompile)
        except Exception as e:
            raise CompileError(f"tvm export_library failed: {type(e).__name__}: {_first_line(e)}") from e
        return {"tune_trials": int(options.get("tune_trials") or 0)}

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


def _tune(mod, tgt, trials: int):
    """MetaSchedule tuning with a trial budget (slow on a small CPU: give it a budget)."""
    from tvm import relax

    import tvm

    # MetaSchedule needs the core count in the target; tune for the cores the user gave the harness
    cfg = json.loads(str(tgt))
    cfg.setdefault("num-cores", len(os.sched_getaffinity(0)))
    tgt = tvm.target.Target(cfg)
    with tempfile.TemporaryDirectory(prefix="hwnas-ms-") as work_dir, tgt:
        pipeline = relax.get_pipeline("static_shape_tuning", target=tgt, work_dir=work_dir, total_trials=trials,
                                      max_trials_per_task=max(1, trials // 4))
        tuned = pipeline(mod)
        records = Path(work_dir) / "database_tuning_record.json"
        if not records.exists() or not records.read_text().strip():
            # MetaSchedule falls back to default schedules silently; a 'tuned' row must be tuned
            raise CompileError(f"MetaSchedule found no valid schedule in {trials} trials (every candidate "
                               "failed to build or run); raise --tune-trials or profile untuned")
        return tuned


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
