"""Backends: ExecuTorch (XNNPACK), TVM (Relax) and eager PyTorch."""

from __future__ import annotations

from profiler.backends.base import Artifact, Backend, BackendUnavailable, CompileError, Runner

__all__ = ["get_backend", "BACKENDS", "Artifact", "Backend", "BackendUnavailable", "CompileError", "Runner"]

BACKENDS = ("executorch", "tvm", "torch")


def get_backend(name: str) -> Backend:
    """The backend called `name`; raises `ValueError` naming the known ones."""
    if name == "executorch":
        from profiler.backends._executorch import ExecuTorchBackend

        return ExecuTorchBackend()
    if name == "tvm":
        from profiler.backends._tvm import TVMBackend

        return TVMBackend()
    if name == "torch":
        from profiler.backends._torch import TorchBackend

        return TorchBackend()
    raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
