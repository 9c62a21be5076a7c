"""The backend interface: compile a block (or a whole network) for a target, and load the
artifact on a device as a `Runner` that the timing worker can call.

Compile, transport and timing are separate roles: a backend only compiles and loads; the
worker (`profiler._worker`) owns the measurement protocol; the harness owns the store.
"""

from __future__ import annotations

import abc
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from profiler.errors import HwnasError

__all__ = ["Backend", "Runner", "Artifact", "CompileError", "BackendUnavailable", "Model"]


class CompileError(HwnasError, RuntimeError):
    """A backend could not compile a block; the message says why."""


class BackendUnavailable(HwnasError, RuntimeError):
    """The backend or the target it was asked for cannot run on this machine."""


class Model(Protocol):
    """What a backend compiles: a `BlockSpec` or an `ArchSpec`."""

    key: str

    def build(self) -> Any: ...

    def example_input(self, seed: int = 0) -> Any: ...


@dataclass(frozen=True)
class Artifact:
    """A compiled block in the compile cache. Plain data: it crosses process boundaries."""

    backend: str
    target: str
    key: str
    path: str  # the artifact file ("" where the backend rebuilds the module, as eager torch does)
    compile_s: float
    input_shape: tuple[int, ...]
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Artifact":
        d = dict(d)
        d["input_shape"] = tuple(d["input_shape"])
        return cls(**d)


class Runner(abc.ABC):
    """A loaded artifact on a device, with its input bound."""

    @abc.abstractmethod
    def run(self) -> None:
        """One inference; returns only when the device has finished (synchronised)."""

    @abc.abstractmethod
    def outputs(self) -> list[Any]:
        """Outputs of the last run as numpy arrays."""

    def timer(self, number: int) -> Callable[[], float]:
        """A callable that runs `number` inferences and returns the mean milliseconds per call.

        The default times `run()` with a monotonic clock; backends with a native timer
        (TVM's time_evaluator) override it.
        """
        import time

        run = self.run

        def sample() -> float:
            t0 = time.perf_counter_ns()
            for _ in range(number):
                run()
            return (time.perf_counter_ns() - t0) / 1e6 / number

        return sample

    def per_op(self, runs: int) -> list[dict[str, Any]] | None:
        """Per-operator timings (ms) over `runs` inferences, where the backend can give them."""
        return None


class Backend(abc.ABC):
    name: str = ""
    #: file suffix of the artifact in the compile cache
    suffix: str = ""

    @abc.abstractmethod
    def target_for(self, device: str, cross: str | None = None) -> str:
        """The canonical target string for a device spec (recorded in every row)."""

    @abc.abstractmethod
    def versions(self) -> dict[str, str]:
        """Versions that change what the compiler produces (part of the cache key)."""

    @abc.abstractmethod
    def compile(self, model: Model, target: str, out: Path, options: dict[str, Any]) -> dict[str, Any]:
        """Compile `model` for `target`, writing the artifact to `out`. Returns extra metadata.

        Raises `CompileError` with the reason when the block cannot be compiled.
        """

    @abc.abstractmethod
    def load(self, artifact: Artifact, device: str, threads: int) -> Runner:
        """Load `artifact` in this (worker) process for `device`, with an example input bound."""

    def check_options(self, options: dict[str, Any]) -> None:
        """Raise `BackendUnavailable` (before anything runs) when an option cannot work here."""

    def cache_id(self, key: str, target: str, options: dict[str, Any]) -> str:
        blob = json.dumps([1, self.name, key, target, self.versions(), sorted(options.items())], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]
