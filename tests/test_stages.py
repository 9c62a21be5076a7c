"""hwnas.stages: each stage's record reads back what it writes, and refuses another shape."""

import json
from pathlib import Path

import pytest

from hwnas.rundir import STAGES, Run
from hwnas.stages import (STAGE_RECORDS, BaselineMember, BaselineStage, CalibrateStage, CalibrationNetwork,
                          MeasureStage, Round, StageFileError, TrainStage)


def _round(index: int, **kw) -> Round:
    base = dict(round=index, arch=f"run/search/arch{index}.json", key=f"net{index}", choices=(0, 2), blocks=("a", "b"),
                predicted_ms=1.2, measured_ms=1.0, p10_ms=0.9, p90_ms=1.1, n=20, flags=(), error=0.2,
                within_10pct=False, calibrated_range_ms=(0.8, 1.6), in_calibrated_range=True, meets_target=None)
    return Round(**{**base, **kw})


def test_every_stage_has_a_record():
    assert set(STAGE_RECORDS) == set(STAGES)


def test_measure_json_is_the_last_round_with_every_round():
    r1 = _round(1, first_measured_ms=1.05, retimed=True)
    r2 = _round(2, error=0.01, within_10pct=True, network_model={"model": "overhead"}, same_network_as_round1=False,
                in_sample=False)
    m = MeasureStage(rounds=(r1, r2), target_ms=1.3)
    js = m.to_json()
    # the keys the dict-built stage wrote, in its order: the final round's, then rounds and target_ms
    assert list(js) == ["round", "arch", "key", "choices", "blocks", "predicted_ms", "measured_ms", "p10_ms", "p90_ms",
                        "n", "flags", "error", "within_10pct", "calibrated_range_ms", "in_calibrated_range",
                        "meets_target", "network_model", "same_network_as_round1", "in_sample", "rounds", "target_ms"]
    assert list(js["rounds"][0])[-2:] == ["first_measured_ms", "retimed"] and "network_model" not in js["rounds"][0]
    assert js["calibrated_range_ms"] == [0.8, 1.6] and js["choices"] == [0, 2]
    back = MeasureStage.from_json(json.loads(json.dumps(js)))
    assert back == m and back.final.round == 2 and back.final.choices == (0, 2)
    one = MeasureStage(rounds=(_round(1, within_10pct=True),), target_ms=None)
    assert "retimed" not in one.to_json() and MeasureStage.from_json(one.to_json()) == one


def test_nested_records_read_back_as_records():
    cal = CalibrateStage(networks=(CalibrationNetwork(choices=(1, 0), key="k", blocks=("x",), measured_ms=0.5),),
                         failed={"k2": "exit=1"}, unclean={"k3": ["interfered"]})
    assert CalibrateStage.from_json(json.loads(json.dumps(cal.to_json()))) == cal
    member = BaselineMember(op="k3e3", key="u", blocks=("x",), test_acc=0.9, test_acc_seeds=(0.89, 0.91),
                            predicted_ms=1.0, in_calibrated_range=None, measured_ms=None, error="no row stored")
    base = BaselineStage(members=(member,), inherited={"k3e3": {"inherited_acc": 0.5, "scratch_acc": 0.9}})
    assert BaselineStage.from_json(json.loads(json.dumps(base.to_json()))) == base


def test_train_of_seeds_keeps_the_first_seeds_run_and_the_mean():
    runs = [{"arch": "n", "data": "digits", "epochs": 1, "test_acc": 0.5, "test_images": 10, "log": [{"epoch": 0}],
             "weights": "w0.pt"},
            {"arch": "n", "data": "digits", "epochs": 1, "test_acc": 0.7, "test_images": 10, "log": [{"epoch": 0}],
             "weights": "w1.pt"}]
    t = TrainStage.of_seeds(runs, [0, 1])
    assert t.test_acc == pytest.approx(0.6) and t.weights == "w0.pt" and t.test_acc_seeds == (0.5, 0.7)
    assert list(t.to_json()) == list(runs[0]) + ["test_acc_seeds", "seeds"]


@pytest.mark.parametrize("bad, message", [
    ({"networks": [], "failed": {}}, "missing unclean"),
    ({"networks": [], "failed": {}, "unclean": {}, "extra": 1}, "unknown extra"),
    (["not", "an", "object"], "expected a JSON object"),
])
def test_another_shape_is_refused_in_one_line(bad, message):
    with pytest.raises(StageFileError, match=message):
        CalibrateStage.from_json(bad, "run/calibrate.json")


def test_run_record_reads_the_stage_file(tmp_path):
    r = Run(tmp_path)
    assert r.record("calibrate") is None
    cal = CalibrateStage(networks=(), failed={}, unclean={})
    r.finish("calibrate", cal, 1.0)
    assert r.record("calibrate") == cal and r.result("calibrate") == {"networks": [], "failed": {}, "unclean": {}}
    (tmp_path / "measure.json").write_text(json.dumps({"rounds": []}))
    with pytest.raises(StageFileError, match="measure.json"):
        r.record("measure")


def test_a_run_folder_written_by_the_dict_pipeline_reads_back_byte_for_byte(tmp_path):
    """tests/data/run: every stage file of a `hwnas run` (torch backend, closed loop in two rounds)
    from before the records; a resumed run reads them, and writing them again changes no byte."""
    from hwnas.rundir import write_json

    data = Path(__file__).parent / "data" / "run"
    for stage, cls in STAGE_RECORDS.items():
        text = (data / f"{stage}.json").read_text()
        record = cls.from_json(json.loads(text), stage)
        write_json(tmp_path / f"{stage}.json", record.to_json())
        assert (tmp_path / f"{stage}.json").read_text() == text, stage
    measure = MeasureStage.from_json(json.loads((data / "measure.json").read_text()))
    assert [r.round for r in measure.rounds] == [1, 2] and measure.rounds[0].retimed
