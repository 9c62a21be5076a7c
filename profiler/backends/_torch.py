"""Eager PyTorch: the baseline a user compares the compiled backends against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from profiler.backends.base import Artifact, Backend, BackendUnavailable, Model, Runner


class TorchBackend(Backend):
    name = "torch"
    suffix = ".json"

    def target_for(self, device: str, cross: str | None = None) -> str:
        if cross:
            raise BackendUnavailable("torch: eager PyTorch runs on the host only; use executorch or tvm for "
                                     f"{cross}")
        return "eager-cuda" if device == "local:cuda" else "eager-cpu"

    def versions(self) -> dict[str, str]:
        from importlib.metadata import version

        return {"torch": version("torch")}

    def compile(self, model: Model, target: str, out: Path, options: dict[str, Any]) -> dict[str, Any]:
        # Nothing to compile: the worker rebuilds the module from its key (same seed, same weights).
        kind = "arch" if hasattr(model, "blocks") else "block"
        text = model.to_json() if kind == "arch" else model.key
        out.write_text(text)
        return {"kind": kind}

    def load(self, artifact: Artifact, device: str, threads: int) -> Runner:
        return _TorchRunner(artifact, device, threads)


class _TorchRunner(Runner):
    def __init__(self, artifact: Artifact, device: str, threads: int):
        import torch

        from profiler.blocks import ArchSpec, BlockSpec

        text = Path(artifact.path).read_text()
        model = ArchSpec.from_json(text) if artifact.extra.get("kind") == "arch" else BlockSpec.from_key(text)
        self.cuda = device == "local:cuda"
        if self.cuda and not torch.cuda.is_available():
            raise BackendUnavailable("local:cuda: torch sees no CUDA device")
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        dev = torch.device("cuda" if self.cuda else "cpu")
        self._m = model.build().to(dev)
        self._x = model.example_input().to(dev)
        self._torch = torch
        self._out = None

    def run(self) -> None:
        with self._torch.inference_mode():
            self._out = self._m(self._x)
        if self.cuda:
            # GPU work is asynchronous: wait for it before anyone reads a clock
            self._torch.cuda.synchronize()

    def outputs(self) -> list[Any]:
        return [self._out.detach().cpu().numpy()]
