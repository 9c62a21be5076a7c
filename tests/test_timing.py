"""The timer interface's records: requests and replies survive the trip through the worker's pipe."""

from profiler.backends import Artifact
from profiler.measurement import TimingProtocol
from profiler.timing import MeasureRequest, Timer, TimingReply
from profiler._worker import TimingWorker


def test_request_and_reply_round_trip_as_plain_dicts():
    art = Artifact("torch", "cpu", "k", "/x.pt", 0.5, (1, 3, 8, 8), {"kind": "block"})
    req = MeasureRequest(art, "local", TimingProtocol.quick(), per_op=True)
    msg = req.to_msg()
    assert msg["op"] == "measure" and isinstance(msg["artifact"], dict)
    assert MeasureRequest.from_msg(msg) == req
    rep = TimingReply([1.0, 1.1], 3, {"loadavg": [0.1]}, {"noise": {"dropped": 2}}, ["unconverged"], None, 0.2)
    assert TimingReply.from_dict(rep.to_dict()) == rep


def test_the_worker_and_the_phone_are_timers():
    from profiler.adb.device import AdbDevice

    assert issubclass(TimingWorker, Timer) and issubclass(AdbDevice, Timer)


def test_the_timing_worker_starts_with_huge_pages_asked_of_malloc_and_the_parent_keeps_its_environment(monkeypatch):
    """The worker process (not the harness) starts with glibc's huge-page tunable, added to what the user set."""
    import os

    from profiler._worker import HUGE_PAGES_TUNABLE, TimingWorker, worker_environ

    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    with TimingWorker([0], 1) as w:
        env = w.call({"op": "env"}, 60)
    assert env["glibc_tunables"] == f"glibc.malloc.arena_max=2:{HUGE_PAGES_TUNABLE}"
    assert os.environ["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"  # the harness's own is unchanged
    with TimingWorker([0], 1, huge_pages=False) as w:
        assert w.call({"op": "env"}, 60)["glibc_tunables"] == "glibc.malloc.arena_max=2"
    assert worker_environ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) == {}  # the user's own choice stands
    assert worker_environ({}) == {"GLIBC_TUNABLES": HUGE_PAGES_TUNABLE}
