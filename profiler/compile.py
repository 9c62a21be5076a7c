"""The compile cache and parallel compilation.

An artifact is cached under a hash of (block key, backend, target, compiler versions, options),
so a second run compiles nothing. A cache entry counts only once its metadata file exists; the
metadata is written last and atomically, so a compile killed half-way is simply done again.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Iterable

from profiler.backends import Artifact, CompileError, get_backend

__all__ = ["default_cache_dir", "tuning_db_dir", "tuned_options", "compile_model", "compile_many", "cached_artifact"]


def default_cache_dir() -> Path:
    env = os.environ.get("HWNAS_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hwnas" / "artifacts"


def tuning_db_dir(cache: str | Path | None = None) -> Path:
    """Where TVM's MetaSchedule tuning databases live (one folder per target): beside the artifacts
    of the compile cache ``cache`` (default: `default_cache_dir`)."""
    return Path(cache or default_cache_dir()) / "metaschedule"


def tuned_options(trials: int, threads: int, cache: str | Path | None = None) -> dict[str, Any]:
    """TVM compile options for MetaSchedule with ``trials`` per block, candidates built and timed for
    ``threads`` (as the block will be), into the tuning database of the compile cache ``cache``: a kernel
    tuned for one block is not tuned again for the next, and a network is built from its blocks' records."""
    return {"tune_trials": int(trials), "tune_threads": int(threads), "tune_db": str(tuning_db_dir(cache))}


def log_path(cache: Path, role: str) -> str:
    """Where worker processes write what the runtimes print (C++ warnings, tracebacks)."""
    return str(Path(cache).parent / "logs" / f"{role}.log")


def _model_from_text(text: str):
    from profiler.blocks import ArchSpec, BlockSpec

    return ArchSpec.from_json(text) if text.lstrip().startswith("{") else BlockSpec.from_key(text)


def _paths(backend: str, key: str, target: str, options: dict[str, Any], cache: Path) -> tuple[Path, Path]:
    be = get_backend(backend)
    cid = be.cache_id(key, target, options)
    d = cache / backend
    return d / f"{cid}{be.suffix}", d / f"{cid}.meta.json"


def cached_artifact(backend: str, key: str, target: str, options: dict[str, Any], cache: Path) -> Artifact | None:
    out, meta = _paths(backend, key, target, options, cache)
    if meta.exists() and out.exists():
        try:
            return Artifact.from_dict(json.loads(meta.read_text()))
        except (ValueError, KeyError, TypeError):
            return None  # unreadable entry: compile again
    return None


def compile_model(backend: str, model_text: str, target: str, options: dict[str, Any], cache: str) -> dict[str, Any]:
    """Compile one block key (or ArchSpec JSON) into the cache; returns the artifact as a dict.

    Runs in a compile worker process; raises `CompileError` with the reason.
    """
    model = _model_from_text(model_text)
    key = model.key
    cache_path = Path(cache)
    hit = cached_artifact(backend, key, target, options, cache_path)
    if hit is not None:
        return hit.to_dict()
    out, meta = _paths(backend, key, target, options, cache_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    be = get_backend(backend)
    t0 = time.perf_counter()
    # build under a private name, then move: two processes compiling the same block (a device farm)
    # or a compile killed half-way never leave a torn artifact under the final name
    tmp_out = out.with_name(f"{out.stem}.{os.getpid()}.tmp{out.suffix}")
    extra = be.compile(model, target, tmp_out, options)
    os.replace(tmp_out, out)
    art = Artifact(backend, target, key, str(out), time.perf_counter() - t0,
                   tuple(model.example_input().shape), extra)
    tmp = meta.with_name(meta.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(art.to_dict()))
    os.replace(tmp, meta)
    return art.to_dict()


def _init_compile_worker(log_path: str | None, parent_pid: int) -> None:
    from profiler._proc import die_with_parent
    from profiler._worker import redirect_output

    die_with_parent(parent_pid)  # a killed harness must not leave ~400 MB compilers behind
    redirect_output(log_path)
    # compile workers are low priority: they never share a core with a running timing worker
    # (compilation and timing do not overlap), but keep the machine responsive
    try:
        os.nice(5)
    except OSError:
        pass


def compile_many(backend: str, models: Iterable[Any], target: str, options: dict[str, Any], cache: Path,
                 jobs: int, on_done: Callable[[Any, Artifact | None, str | None, bool], None]) -> None:
    """Compile `models` (BlockSpec / ArchSpec) with `jobs` processes; call
    `on_done(model, artifact, error, from_cache)` for each.

    Cache hits are answered without starting a process.
    """
    todo = []
    for m in models:
        hit = cached_artifact(backend, m.key, target, options, cache)
        if hit is not None:
            on_done(m, hit, None, True)
        else:
            todo.append(m)
    if not todo:
        return
    broken = _pool_run(backend, todo, target, options, cache, jobs, on_done)
    # a compiler that crashes (a segfault in a native pass) takes its pool down with it, and every
    # pending future with it: compile those again one per process, so only the culprit fails
    for m in broken:
        if _pool_run(backend, [m], target, options, cache, 1, on_done):
            on_done(m, None, "the compiler process crashed (see the compile log)", False)


def _pool_run(backend: str, models: list[Any], target: str, options: dict[str, Any], cache: Path, jobs: int,
              on_done: Callable[[Any, Artifact | None, str | None, bool], None]) -> list[Any]:
    """Compile `models` in a process pool; returns the ones whose pool broke under them."""
    import multiprocessing as mp
    from concurrent.futures.process import BrokenProcessPool

    broken = []
    text = {m: (m.to_json() if hasattr(m, "blocks") else m.key) for m in models}
    with ProcessPoolExecutor(max_workers=max(1, min(jobs, len(models))), mp_context=mp.get_context("spawn"),
                             initializer=_init_compile_worker,
                             initargs=(log_path(cache, "compile"), os.getpid())) as pool:
        futs = {pool.submit(compile_model, backend, text[m], target, options, str(cache)): m for m in models}
        try:
            for fut in as_completed(futs):
                m = futs[fut]
                try:
                    art = Artifact.from_dict(fut.result())
                except CompileError as e:
                    on_done(m, None, str(e), False)
                except BrokenProcessPool:
                    broken.append(m)
                except Exception as e:  # anything else the compiler raised: keep the reason
                    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
                    on_done(m, None, f"{type(e).__name__}: {msg}", False)
                else:
                    on_done(m, art, None, False)
        except BaseException:
            for f in futs:
                f.cancel()
            raise
    return broken
