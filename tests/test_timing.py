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
