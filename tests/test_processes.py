"""No child process outlives a killed hwnas: compile workers, the timing worker, TVM's tracker.

Each test SIGKILLs a parent (nothing in it can clean up) and then polls, with a bound, until every
child it had is gone. Children are found through /proc (their parent pid), so a pid reused by an
unrelated process is told apart by its start time. Whatever is left when a test fails is killed by
pid at the end of the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import ROOT, hwnas_cmd

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")

GONE_WITHIN_S = 10.0  # a killed parent's children must be gone this soon (they are killed at once)


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time in clock ticks) of `pid`, or None if it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rpartition(")")[2].split()  # after "pid (comm)": comm may hold spaces
    return fields[0], int(fields[1]), int(fields[19])


def _descendants(pid: int) -> dict[int, int]:
    """{pid: start time} of every living process below `pid`."""
    kids: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[0] != "Z":
                kids.setdefault(st[1], []).append((int(entry), st[2]))
    found, todo = {}, [pid]
    while todo:
        for child, start in kids.get(todo.pop(), []):
            found[child] = start
            todo.append(child)
    return found


def _alive(procs: dict[int, int]) -> dict[int, int]:
    """The ones of `procs` ({pid: start time}) still running (a zombie has ended)."""
    out = {}
    for pid, start in procs.items():
        st = _stat(pid)
        if st is not None and st[2] == start and st[0] != "Z":
            out[pid] = start
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _loaded(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _poll(cond, timeout_s: float, interval_s: float = 0.1):
    end = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value or time.monotonic() > end:
            return value
        time.sleep(interval_s)


def _kill_and_check(parent: subprocess.Popen, children: dict[int, int]) -> None:
    """SIGKILL `parent` alone, then assert that all of `children` end within GONE_WITHIN_S."""
    try:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(30)
        _poll(lambda: not _alive(children), GONE_WITHIN_S)
        left = _alive(children)
        assert not left, f"still running {GONE_WITHIN_S:.0f} s after their parent was killed: " + "; ".join(
            f"{pid} {_cmdline(pid)[:100]}" for pid in left)
    finally:
        for pid in _alive(children):  # leave nothing behind, even when the test failed
            os.kill(pid, signal.SIGKILL)


def _python(script: str, tmp_path: Path) -> subprocess.Popen:
    """Run `script` in a fresh interpreter; it prints one line of pids when it is ready."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)


@pytest.mark.slow
def test_sigkill_of_profile_while_compiling_leaves_no_compile_workers(tmp_path):
    cache = tmp_path / "cache"  # empty: every block really compiles
    env = {**os.environ, "HWNAS_CACHE_DIR": str(cache)}
    cmd = hwnas_cmd() + ["profile", "--space", "tiny-mnist", "--backend", "executorch", "--jobs", "2",
                         "--db", str(tmp_path / "k.db"), "--quick"]
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    children: dict[int, int] = {}
    try:
        def compiling() -> bool:
            # both pool workers inside a compile: they have loaded torch (which only compiling does)
            children.update(_descendants(p.pid))
            workers = [c for c in _alive(children) if "multiprocessing.spawn" in _cmdline(c)]
            return len(workers) == 2 and all(_loaded(c, "libtorch_cpu") for c in workers)

        assert _poll(compiling, 120), f"no two compile workers within 120 s (exit code {p.poll()})"
        assert p.poll() is None, "the run ended before it could be killed"
        _kill_and_check(p, children)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for pid in _alive(children):
            os.kill(pid, signal.SIGKILL)


def test_timing_worker_stuck_in_a_block_dies_with_its_harness(tmp_path):
    # a stopped worker reads nothing, as one hung in a block: only a signal from the kernel ends it
    p = _python("""
        import os, time
        from profiler._worker import TimingWorker, WorkerFailed
        w = TimingWorker([min(os.sched_getaffinity(0))], 1)
        try:
            w.call({"op": "ping"}, 60)  # an unknown op: answered with an error once the worker serves
        except WorkerFailed:
            pass
        print(w._proc.pid, flush=True)
        time.sleep(600)
    """, tmp_path)
    children: dict[int, int] = {}
    try:
        worker = int(p.stdout.readline())
        children = {pid: start for pid, start in _descendants(p.pid).items() if pid == worker}
        assert children, "the timing worker is not a child of the harness"
        os.kill(worker, signal.SIGSTOP)
        _kill_and_check(p, children)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_die_with_parent_ends_a_child_at_once_when_its_parent_is_already_gone():
    # the parent died before the child asked: nothing would signal it later, so it ends now
    p = subprocess.run([sys.executable, "-c", "from profiler._proc import die_with_parent; die_with_parent(1); "
                        "print('still running')"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "still running" not in p.stdout


def test_fallback_watcher_ends_the_child_where_prctl_is_missing(tmp_path):
    # the polling watcher (systems without PR_SET_PDEATHSIG) in a child stopped in nothing but sleep
    p = _python("""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c",
                                  "import os, time; from profiler._proc import _watch_parent; "
                                  "_watch_parent(os.getppid(), 0.05); print('watching', flush=True); time.sleep(600)"],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "watching"
        print(child.pid, flush=True)
        time.sleep(600)
    """, tmp_path)
    try:
        child = int(p.stdout.readline())
        children = {pid: start for pid, start in _descendants(p.pid).items() if pid == child}
        assert children
        _kill_and_check(p, children)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.slow
def test_tvm_tracker_process_dies_with_hwnas(tmp_path):
    p = _python("""
        import time
        from profiler.adb.tvm_rpc import _start_tracker
        t = _start_tracker()
        print(t.proc._proc.pid, flush=True)
        time.sleep(600)
    """, tmp_path)
    try:
        tracker = int(p.stdout.readline())
        children = {pid: start for pid, start in _descendants(p.pid).items() if pid == tracker}
        assert children, "the tracker is not a child of this process"
        _kill_and_check(p, children)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
