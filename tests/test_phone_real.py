"""Opt-in tests on a real phone: `pytest -m device` with

    HWNAS_TEST_PHONE=adb:SERIAL              # or adb:HOST:PORT
    HWNAS_TEST_RUNNER=/path/to/executor_runner   # built for the phone (docs/phones.md)
    HWNAS_TEST_TVM_RPC=/path/to/tvm_rpc          # optional: also time TVM

Each test skips with the reason when its variable is unset; nothing here runs in CI."""

import os

import pytest

from profiler import Store, TimingProtocol, load_space, profile
from profiler.adb.device import AdbOptions, read_info

pytestmark = pytest.mark.device
PHONE = os.environ.get("HWNAS_TEST_PHONE", "")
RUNNER = os.environ.get("HWNAS_TEST_RUNNER", "")
TVM_RPC = os.environ.get("HWNAS_TEST_TVM_RPC", "")
needs_phone = pytest.mark.skipif(not PHONE.startswith("adb:"), reason="set HWNAS_TEST_PHONE=adb:SERIAL")


@needs_phone
def test_real_phone_describes_itself():
    info = read_info(PHONE[len("adb:"):])
    assert info.props.get("model") and info.cpus and info.big_cores


@needs_phone
@pytest.mark.skipif(not RUNNER, reason="set HWNAS_TEST_RUNNER to an executor_runner built for the phone")
def test_real_phone_times_blocks_with_executorch(tmp_path):
    blocks = load_space("tiny").blocks()[:3]
    r = profile(blocks, "executorch", tmp_path / "phone.db", device=PHONE, protocol=TimingProtocol.quick(),
                adb=AdbOptions(runner=RUNNER))
    assert len(r.measured) == 3, [m.error for m in r.failed]
    with Store(tmp_path / "phone.db") as st:
        assert (st.dataframe().median_ms > 0).all()


@needs_phone
@pytest.mark.skipif(not TVM_RPC, reason="set HWNAS_TEST_TVM_RPC to a tvm_rpc built for the phone")
def test_real_phone_times_blocks_with_tvm(tmp_path):
    blocks = load_space("tiny").blocks()[:2]
    r = profile(blocks, "tvm", tmp_path / "phone.db", device=PHONE, protocol=TimingProtocol.quick(),
                adb=AdbOptions(tvm_rpc=TVM_RPC))
    assert len(r.measured) == 2, [m.error for m in r.failed]
