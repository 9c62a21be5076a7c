"""Train one network with several seeds at once: one process per seed, each with its share of the cores.

Small networks do not use two cores well from one process: on the 2-vCPU EPYC VM, one epoch of the
tiny-mnist k3e6 network on 5,000 Fashion-MNIST images took 22.6 s with 2 threads and 33.2 s with 1;
two 1-thread trainings side by side took 35.4 s for both, against 45 s one after the other. So a run
that trains every network with two seeds trains them side by side (`plan`), and a single training
keeps every core.

Each worker is a fresh interpreter (``spawn``: torch's thread pools do not survive ``fork``) that
reads the data itself and calls `search.train.train_arch`; progress comes back over a queue, and the
parent draws one job's bar at a time (the others run in step with it). A worker that raises hands back
its one-line error; one that dies (killed, out of memory) is named with its exit code. Results come
back in job order.
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from search.latency import SearchError

__all__ = ["TrainJob", "plan", "train_in_processes"]


@dataclass(frozen=True)
class TrainJob:
    """One from-scratch training: `search.train.train_arch`'s arguments but the network and threads."""

    out: str
    seed: int
    data: str
    epochs: int
    batch_size: int
    limit: int | None
    lr: float = 0.05
    weight_decay: float = 4e-5
    augment: str = "auto"


def plan(jobs: int, cores: int) -> tuple[int, int]:
    """(processes, threads per process) for ``jobs`` trainings on ``cores`` cores: as many side by
    side as there are jobs and cores, the cores shared out evenly; (1, cores) for a single job."""
    if jobs < 1 or cores < 1:
        raise ValueError(f"need at least one job and one core (got {jobs}, {cores})")
    procs = min(jobs, cores)
    return procs, max(1, cores // procs)


class _QueueProgress:
    """`search.train.SearchProgress` of a worker: every call goes to the parent as (job, name, args)."""

    def __init__(self, q, job: int):
        self.q, self.job = q, job

    def epoch_start(self, epoch: int, epochs: int, steps: int, phase: str) -> None:
        self.q.put((self.job, "epoch_start", (epoch, epochs, steps, phase)))

    def step(self) -> None:
        self.q.put((self.job, "step", ()))

    def epoch_end(self, row: dict[str, Any]) -> None:
        self.q.put((self.job, "epoch_end", (row,)))

    def message(self, text: str) -> None:
        self.q.put((self.job, "message", (text,)))


def _worker(q, index: int, arch_json: str, job: TrainJob, threads: int) -> None:
    from profiler.blocks import ArchSpec
    from search.train import train_arch

    try:
        r = train_arch(ArchSpec.from_json(arch_json), job.data, job.out, epochs=job.epochs,
                       batch_size=job.batch_size, lr=job.lr, weight_decay=job.weight_decay, seed=job.seed,
                       limit=job.limit, augment=job.augment, threads=threads, progress=_QueueProgress(q, index))
    except ValueError as e:  # SearchError and the data loader's one-line errors
        q.put((index, "error", (str(e),)))
    except BaseException as e:  # anything else: its last frames, for the parent's message
        q.put((index, "error", (f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}",)))
    else:
        q.put((index, "done", (r,)))


def train_in_processes(arch, jobs: Sequence[TrainJob], processes: int, threads: int, progress=None,
                       on_done: Callable[[int, dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Train ``arch`` once per job, ``processes`` at a time with ``threads`` torch threads each.

    ``on_done(i, result)`` is called as each job finishes (the caller saves it: a kill loses only the
    trainings still running). Returns `train_arch`'s results in job order.

    Raises:
        SearchError: a job's own error (one line), or a worker that died, with its seed and exit code.
    """
    from search.train import SearchProgress

    progress = progress or SearchProgress()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    arch_json = arch.to_json()
    results: dict[int, dict[str, Any]] = {}
    running: dict[int, Any] = {}
    pending = list(range(len(jobs)))
    shown: list[int] = []  # the job whose bar is drawn: the first started while no bar was drawn
    if len(jobs) > 1:
        progress.message(f"training seeds {', '.join(str(j.seed) for j in jobs)} side by side: "
                         f"{processes} processes of {threads} thread{'s' if threads > 1 else ''}")
    try:
        while pending or running:
            while pending and len(running) < processes:
                i = pending.pop(0)
                p = ctx.Process(target=_worker, args=(q, i, arch_json, jobs[i], threads), daemon=True)
                p.start()
                running[i] = p
                if not shown:
                    shown.append(i)
            try:
                i, what, args = q.get(timeout=1.0)
            except queue_mod.Empty:
                for i, p in list(running.items()):
                    if not p.is_alive() and i not in results:
                        _drain_then_check(q, i, p, jobs, results, running, progress, shown, on_done)
                continue
            _handle(i, what, args, jobs, results, running, progress, shown, on_done)
    finally:
        for p in running.values():
            p.kill()
            p.join()
    return [results[i] for i in range(len(jobs))]


def _handle(i, what, args, jobs, results, running, progress, shown, on_done) -> None:
    """One message of job ``i``; only the shown job's bar is drawn."""
    if what == "done":
        results[i] = args[0]
        running.pop(i).join()
        if shown == [i]:
            shown.clear()
        if on_done is not None:
            on_done(i, args[0])
    elif what == "error":
        raise SearchError(f"training seed {jobs[i].seed} into {Path(jobs[i].out)} failed: {args[0]}")
    elif what == "message" or shown == [i]:
        getattr(progress, what)(*args)


def _drain_then_check(q, i, p, jobs, results, running, progress, shown, on_done) -> None:
    """A worker that is gone: take what it left in the queue; if it sent no result, it died."""
    while True:
        try:
            j, what, args = q.get(timeout=0.5)
        except queue_mod.Empty:
            break
        _handle(j, what, args, jobs, results, running, progress, shown, on_done)
        if j == i and what == "done":
            return
    if i not in results:
        code = p.exitcode
        running.pop(i, None)
        why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        raise SearchError(f"training seed {jobs[i].seed} into {Path(jobs[i].out)}: the worker died ({why}); "
                          "re-run to resume (finished seeds are kept)")
