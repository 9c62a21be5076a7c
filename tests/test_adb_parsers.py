"""Parsers of the device scripts' output, on captured output (tests/data/adb/)."""

import json
from pathlib import Path

import pytest

from profiler.adb.parsers import BatteryInfo, BenchOutputError, ParseError, parse_bench, parse_info, parse_prepare

DATA = Path(__file__).parent / "data" / "adb"


def read(name: str) -> str:
    return (DATA / name).read_text()


def test_info_android_big_little():
    info = parse_info(read("android_info_8core.txt"))
    assert info.props["model"] == "Pixel 4" and info.props["abi"] == "arm64-v8a"
    assert [c.index for c in info.cpus] == list(range(8))
    assert info.cpus[7].max_khz == 2841600 and info.cpus[0].governor == "schedutil"
    # 2.42 GHz mid cores are >= 80% of the 2.84 GHz prime core; 1.79 GHz LITTLE cores are not
    assert info.big_cores == (4, 5, 6, 7) and info.big_core_mask == "0xf0"
    # -273 C (a sensor that is off) is ignored; `29` is a whole-degree zone
    assert info.max_temp_c == pytest.approx(39.8)
    assert info.thermal[4].temp_c == 29.0
    assert info.battery == BatteryInfo(level_pct=87, status="Charging", temp_c=29.0)


def test_info_as_json_keeps_the_record_keys():
    js = parse_info(read("android_info_8core.txt")).to_json()
    assert list(js) == ["props", "cpus", "thermal", "max_temp_c", "battery", "big_cores", "big_core_mask"]
    assert js["cpus"][7] == {"index": 7, "online": True, "max_khz": 2841600, "min_khz": 825600, "cur_khz": 2054400,
                             "scaling_max_khz": 2841600, "governor": "schedutil"}
    assert js["battery"] == {"level_pct": 87, "status": "Charging", "temp_c": 29.0}
    assert js["big_cores"] == [4, 5, 6, 7] and json.loads(json.dumps(js)) == js


def test_info_host_capture_has_no_cpufreq():
    info = parse_info(read("host_info_dash.txt"))
    assert len(info.cpus) >= 1 and info.big_core_mask is None
    assert info.cpus[0].max_khz is None and info.max_temp_c is None


def test_info_tolerates_crlf_and_noise_around_markers():
    text = "WARNING: linker: something\r\n" + read("android_info_8core.txt").replace("\n", "\r\n")
    assert parse_info(text).props["sdk"] == "33"


@pytest.mark.parametrize("text", ["", "garbage\n", "HWNAS-INFO-BEGIN v1\nmodel=x\n",
                                  "HWNAS-INFO-BEGIN v1\ncpu0.max_khz=fast\nHWNAS-INFO-END\n",
                                  "HWNAS-INFO-BEGIN v1\nno equals sign\nHWNAS-INFO-END\n",
                                  "HWNAS-INFO-BEGIN v1\ncpu0.online=1\ncpu_count=2\nHWNAS-INFO-END\n"])
def test_info_garbage_raises(text):
    with pytest.raises(ParseError):
        parse_info(text)


def test_bench_android_prefers_runner_time_and_flags_frequency_drop():
    b = parse_bench(read("android_bench_8core.txt"))
    assert b.samples_ms == [3.412, 3.398, 3.405, 3.421, 3.517] and b.time_source == "runner"
    assert b.wall_ms[0] == pytest.approx((1732441801141012345 - 1732441801123456789) / 1e6)
    assert b.mask == "0xf0" and b.runs == 5 and b.warmup == 3
    assert b.temp_before_c == 41 and b.temp_after_c == 43 and b.waited_s == 4
    assert b.freq_before_khz[6] == 2419200 and b.freq_after_khz[6] == 1996800
    assert b.freq_dropped is True


def test_bench_host_capture_uses_wall_clock():
    b = parse_bench(read("host_bench_true_dash.txt"))
    assert b.time_source == "wall" and len(b.samples_ms) == 5
    assert all(0 < s < 1000 for s in b.samples_ms)
    assert b.temp_before_c is None and b.freq_dropped is False


def test_bench_runner_garbage_is_a_failure_with_output():
    with pytest.raises(BenchOutputError) as e:
        parse_bench(read("host_bench_garbage_dash.txt"))
    assert e.value.reason == "bad-time" and "NaN-ish garbage" in e.value.output
    assert isinstance(e.value, ValueError)


def test_bench_runner_exit_code_is_a_failure_with_output():
    with pytest.raises(BenchOutputError) as e:
        parse_bench(read("host_bench_exit_dash.txt"))
    assert e.value.reason == "exit=7" and "cannot open" in e.value.output


def test_bench_hot_device():
    with pytest.raises(BenchOutputError, match="52 C, above the 45 C") as e:
        parse_bench(read("android_bench_hot.txt"))
    assert e.value.reason == "hot"


@pytest.mark.parametrize("mutate", [
    lambda t: t.replace("run 3 ", "run three "),                    # garbage index
    lambda t: t.replace(" 3.405\n", " nan\n"),                       # a NaN from the runner
    lambda t: t.replace(" 3.405\n", " -1\n"),                        # a negative time
    lambda t: "\n".join(ln for ln in t.splitlines() if not ln.startswith("run 5")),  # lost run
    lambda t: t.split("run 4")[0],                                   # cut short
    lambda t: t.replace("status=ok", "status=weird"),
])
def test_bench_corrupt_records_never_give_numbers(mutate):
    with pytest.raises(BenchOutputError):
        parse_bench(mutate(read("android_bench_8core.txt")))


def test_prepare_captures():
    a = parse_prepare(read("android_prepare_apply_unrooted.txt"))
    assert a["action"] == "apply" and a["fixed_performance"] == "on"
    assert a["governors"][7] == {"governor": "schedutil", "status": "kept", "previous": None}
    u = parse_prepare(read("android_prepare_undo.txt"))
    assert u["action"] == "undo" and u["fixed_performance"] == "off"
    h = parse_prepare(read("host_prepare_apply_dash.txt"))
    assert h["fixed_performance"] == "unavailable" and h["state_file"]
    with pytest.raises(ParseError):
        parse_prepare("HWNAS-PREPARE-BEGIN v1 apply\ngovernor.cpu0=x:exploded\nHWNAS-PREPARE-END\n")
