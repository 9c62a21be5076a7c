"""Child processes that end with their parent, however the parent ends.

When ``hwnas`` is killed with SIGKILL its children are not told: compile-pool workers wait on a
queue whose write end they hold themselves, TVM's tracker process keeps its server thread, and a
timing worker stuck in a hung block never reads its pipe again. They lived on under pid 1, about
400 MB each. `die_with_parent`, called first thing in such a child, has the kernel kill the child
when the parent dies.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCH_INTERVAL_S = 1.0  # how often the fallback watcher checks the parent (seconds)


def _set_pdeathsig(sig: int) -> bool:
    """Ask Linux to send `sig` to this process when its parent dies; False where that is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int, interval_s: float = WATCH_INTERVAL_S) -> None:
    """Exit this process once its parent is no longer `parent_pid` (a daemon thread polls)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        os._exit(1)

    threading.Thread(target=watch, name="hwnas-parent-watch", daemon=True).start()


def die_with_parent(parent_pid: int) -> None:
    """Make this process end when its parent, `parent_pid` (``os.getpid()`` taken in the parent), ends.

    On Linux the kernel sends SIGKILL on the parent's death (``prctl(PR_SET_PDEATHSIG)``). Linux
    counts the *thread* that started the child as its parent: start such children from a thread
    that outlives them (the main thread does). Elsewhere a daemon thread polls the parent id every
    `WATCH_INTERVAL_S` seconds. A parent that died before this call ends this process at once
    (exit status 1).
    """
    if not _set_pdeathsig(signal.SIGKILL):
        _watch_parent(parent_pid)
    # the parent may have died between starting this process and the line above: nothing would
    # send the signal then; its children were handed to another process, so the id has changed
    if os.getppid() != parent_pid:
        os._exit(1)
