"""The found network as a standalone module, and its compiled artifacts (ExecuTorch .pte, TVM .so).

`load_network` rebuilds ``arch.json`` + ``weights.pt`` as a plain ``nn.Sequential`` (no supernet
code needed). `export_network` compiles that module, trained weights included, with the profiler's
backends, for the local target; the latency is the same as the profiler's build of the same
ArchSpec (same graph, other weight values).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

import torch

from profiler.blocks import ArchSpec

__all__ = ["load_network", "export_network", "read_arch"]

SUFFIX = {"executorch": ".pte", "tvm": ".so"}


def read_arch(path: str | Path) -> ArchSpec:
    """An ArchSpec from a JSON file (``FileNotFoundError`` / `BlockKeyError` on a bad file)."""
    return ArchSpec.from_json(Path(path).read_text())


def load_network(arch: ArchSpec | str | Path, weights: str | Path | None = None) -> torch.nn.Module:
    """The network of ``arch`` (an ArchSpec or an arch.json path) as an ``nn.Sequential`` in eval mode,
    with ``weights`` (a state_dict file written by the search or by `train_arch`) loaded."""
    if not isinstance(arch, ArchSpec):
        arch = read_arch(arch)
    net = arch.build()
    if weights is not None:
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return net.eval()


class _Trained:
    """What a backend compiles (the `profiler.backends.base.Model` protocol), with trained weights."""

    def __init__(self, arch: ArchSpec, net: torch.nn.Module):
        self.arch, self.net, self.key = arch, net, arch.key

    def build(self) -> torch.nn.Module:
        return self.net

    def example_input(self, seed: int = 0) -> torch.Tensor:
        return self.arch.example_input(seed)


def export_network(arch: ArchSpec, weights: str | Path | None, out: str | Path,
                   backends: Sequence[str] = ("executorch", "tvm"),
                   options: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Compile the network for the local target with each backend into ``out/model.<suffix>``.

    ``options``: compile options per backend (TVM: ``tune_trials``, ``tune_threads`` and ``tune_db``
    build it from the tuning database its blocks were tuned into).

    Returns per backend ``{"path": ..., "seconds": ...}`` or ``{"error": "one line"}``: a backend
    that cannot compile this network is reported, not raised (the search result stays usable).
    """
    import time

    from profiler.backends import get_backend

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    net = load_network(arch, weights)
    results: dict[str, dict[str, Any]] = {}
    for name in backends:
        t0 = time.perf_counter()
        try:
            be = get_backend(name)
            target = be.target_for("local")
            dest = out / f"model{SUFFIX.get(name, be.suffix)}"
            tmp = dest.with_name(f".{dest.name}.tmp{dest.suffix}")
            be.compile(_Trained(arch, net), target, tmp, dict((options or {}).get(name, {})))
            shutil.move(str(tmp), dest)
            results[name] = {"path": str(dest), "target": target, "seconds": round(time.perf_counter() - t0, 2)}
        except Exception as e:  # compilers raise many types; report the reason, keep the other backend
            results[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    return results
