"""ExecuTorch: torch.export -> XNNPACK delegate -> .pte, run in-process by the ExecuTorch runtime."""

from __future__ import annotations

import platform
import tempfile
from pathlib import Path
from typing import Any

from profiler.backends.base import Artifact, Backend, BackendUnavailable, CompileError, Model, Runner
from profiler.backends.etdump import summarise_ops


class ExecuTorchBackend(Backend):
    name = "executorch"
    suffix = ".pte"

    def target_for(self, device: str, cross: str | None = None) -> str:
        if device == "local:cuda":
            raise BackendUnavailable("executorch: the pip wheel has no CUDA backend; use --backend torch or tvm "
                                     "on local:cuda")
        if cross:
            return f"xnnpack-{cross}"
        return f"xnnpack-{platform.machine()}"

    def versions(self) -> dict[str, str]:
        from importlib.metadata import version

        return {"executorch": version("executorch"), "torch": version("torch")}

    def compile(self, model: Model, target: str, out: Path, options: dict[str, Any]) -> dict[str, Any]:
        import torch
        from executorch.exir import to_edge_transform_and_lower

        if target.startswith("vulkan"):  # a phone's GPU: the runner must be built with the Vulkan backend
            from executorch.backends.vulkan.partitioner.vulkan_partitioner import VulkanPartitioner as Partitioner
        else:
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner as Partitioner

        per_op = bool(options.get("per_op"))
        try:
            module, x = model.build(), model.example_input()
            with torch.no_grad():
                ep = torch.export.export(module, (x,))
            edge = to_edge_transform_and_lower(ep, partitioner=[Partitioner()], generate_etrecord=per_op)
            prog = edge.to_executorch()
        except Exception as e:  # the exporter and lowering raise many types; keep the reason
            raise CompileError(f"executorch export failed: {type(e).__name__}: {_first_line(e)}") from e
        out.write_bytes(prog.buffer)
        extra: dict[str, Any] = {}
        if per_op:
            etrecord = out.with_suffix(".etrecord")
            prog.get_etrecord().save(str(etrecord))
            extra["etrecord"] = str(etrecord)
        return extra

    def load(self, artifact: Artifact, device: str, threads: int) -> Runner:
        if artifact.target.startswith("vulkan"):
            raise BackendUnavailable("executorch: the pip wheel's runtime has no Vulkan backend; a Vulkan .pte "
                                     "runs on a phone through an executor_runner built with it")
        return _ETRunner(artifact, threads)


def runtime():
    """ExecuTorch's runtime bindings, without its compiler stack.

    `executorch.extension.pybindings.portable_lib` imports ``executorch.exir`` (for a warning class)
    and with it torch.export, dynamo and the passes: 4.7 s of a fresh timing process's start on this
    2-vCPU VM, against 1.7 s for torch and the C extension ``_C`` that it re-exports unchanged. Every
    block is timed in several fresh processes, so that start is paid many times per profile. Falls
    back to `portable_lib` where a release lays the extension out differently.
    """
    import torch  # noqa: F401  (the extension resolves libtorch's symbols: torch first)

    try:
        from executorch.extension.pybindings import _C as lib
    except ImportError:
        from executorch.extension.pybindings import portable_lib as lib
    return lib


class _ETRunner(Runner):
    def __init__(self, artifact: Artifact, threads: int):
        import torch

        lib = runtime()
        lib._unsafe_reset_threadpool(threads)
        self._pl = lib
        self.artifact = artifact
        self._buf = Path(artifact.path).read_bytes()
        self._x = torch.randn(*artifact.input_shape, generator=torch.Generator().manual_seed(0))
        self._method = lib._load_program_from_buffer(self._buf).load_method("forward")
        # inputs are bound once: the clock then covers execution only
        self._method.set_inputs([self._x])

    def run(self) -> None:
        self._method.execute()  # synchronous on the CPU

    def outputs(self) -> list[Any]:
        return [o.numpy() for o in self._method.get_outputs()]

    def per_op(self, runs: int) -> list[dict[str, Any]] | None:
        etrecord = self.artifact.extra.get("etrecord")
        if not etrecord:
            return None
        from executorch.devtools import Inspector

        prog = self._pl._load_program_from_buffer(self._buf, enable_etdump=True)
        method = prog.load_method("forward")
        method.set_inputs([self._x])
        for _ in range(runs):
            method.execute()
        with tempfile.TemporaryDirectory() as d:
            etdump = str(Path(d) / "run.etdp")
            prog.write_etdump_result_to_file(etdump, str(Path(d) / "debug.bin"))
            df = Inspector(etdump_path=etdump, etrecord=etrecord).to_dataframe()
        return summarise_ops(df)


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:300] if s else ""
