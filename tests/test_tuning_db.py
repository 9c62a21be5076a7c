"""One MetaSchedule tuning database per target, shared by blocks and whole networks.

Tuned with MetaSchedule's random cost model and a few trials (the xgboost one is the `tune` extra):
what is checked is which kernels get tuned, not how fast they become."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from profiler.backends import Artifact, get_backend
from profiler.blocks import ArchSpec, BlockSpec
from profiler.compile import compile_model

pytest.importorskip("tvm")

K3 = "expanded_conv-input:8x8x8-output:8x8x8-expand:3-kernel:3-stride:1-idskip:1"
K5 = "expanded_conv-input:8x8x8-output:8x8x8-expand:3-kernel:5-stride:1-idskip:1"


def test_the_database_folder_is_per_target_and_keeps_each_tasks_budget(tmp_path):
    from profiler.backends._tvm import TuningDatabase

    a = TuningDatabase(tmp_path, {"kind": "llvm", "mcpu": "x", "num-cores": 1})
    b = TuningDatabase(tmp_path, {"kind": "llvm", "mcpu": "x", "num-cores": 2})
    assert a.dir != b.dir  # candidates tuned for 1 thread are not 2 threads' records
    assert json.loads((a.dir / "target.json").read_text())["target"]["num-cores"] == 1
    with a.locked():
        a.add_budgets({"1": 4, "2": 4})
        a.add_budgets({"1": 2})
    assert a.budgets() == {"1": 6, "2": 4}
    assert b.budgets() == {}
    (a.dir / "budgets.json").write_text("not json")
    assert a.budgets() == {}  # a torn file means tuning again, not a crash


def test_where_the_database_lives_is_not_part_of_the_artifacts_cache_key():
    be = get_backend("tvm")
    base = {"tune_trials": 6, "tune_threads": 1}
    assert be.cache_id(K3, "{}", {**base, "tune_db": "/a"}) == be.cache_id(K3, "{}", {**base, "tune_db": "/b"})
    assert be.cache_id(K3, "{}", base) != be.cache_id(K3, "{}", {**base, "tune_trials": 12})


def _eager(model) -> np.ndarray:
    with torch.no_grad():
        return model.build().eval()(model.example_input()).numpy()


def _run(art: dict) -> np.ndarray:
    from profiler.backends._tvm import _TVMRunner

    r = _TVMRunner(Artifact.from_dict(art), "local")
    r.run()
    return r.outputs()[0]


def test_a_kernel_two_blocks_share_is_tuned_once_and_a_network_is_built_from_its_blocks_records(tmp_path):
    """k3 and k5 share the expand and project kernels; the network of both adds no kernel of its own
    at this budget's share, so it tunes nothing. Each tuned artifact still computes its model."""
    from profiler.backends._tvm import host_cpu_target

    tgt = json.dumps(host_cpu_target(), sort_keys=True)
    cache = tmp_path / "cache"
    opts = {"tune_trials": 6, "tune_threads": 1, "tune_db": str(tmp_path / "ms"), "tune_cost_model": "random"}
    a = compile_model("tvm", K3, tgt, opts, str(cache))
    b = compile_model("tvm", K5, tgt, opts, str(cache))
    assert a["extra"]["tasks"] == b["extra"]["tasks"] == 3
    assert a["extra"]["tasks_tuned_now"] == 3
    assert b["extra"]["tasks_tuned_now"] == 1  # only its 5x5 depthwise kernel is new
    assert a["extra"]["database"] == b["extra"]["database"]
    net = ArchSpec((BlockSpec.from_key(K3), BlockSpec.from_key(K5)), 8, 8, name="two")
    n = compile_model("tvm", net.to_json(), tgt, opts, str(cache))
    assert n["extra"]["tasks_tuned_now"] == 0 and n["extra"]["tasks_untuned"] == []
    budgets = json.loads((tmp_path / "ms" / a["extra"]["database"] / "budgets.json").read_text())
    assert sorted(budgets.values()) == [2, 2, 2, 2]  # 6 trials over 3 kernels, each kernel once
    for art, model in ((a, BlockSpec.from_key(K3)), (b, BlockSpec.from_key(K5)), (n, net)):
        np.testing.assert_allclose(_run(art), _eager(model), rtol=1e-3, atol=1e-4)
    # what `hwnas run --tune-trials` exports: the network built from the same database, nothing tuned again
    from search.export import export_network

    got = export_network(net, None, tmp_path / "export", ["tvm"], {"tvm": opts})
    assert "error" not in got["tvm"], got
    assert json.loads((tmp_path / "ms" / a["extra"]["database"] / "budgets.json").read_text()) == budgets


def test_a_run_refuses_tuning_where_there_is_nothing_to_tune_with_one_line():
    from hwnas.pipeline import RunConfig, RunError

    with pytest.raises(RunError, match="--tune-trials tunes TVM's kernels on this host"):
        RunConfig(out="x", backend="executorch", tune_trials=8, target_speedup=1.5).check()
    with pytest.raises(RunError, match="--tune-trials -1: give 0"):
        RunConfig(out="x", backend="tvm", tune_trials=-1, target_speedup=1.5).check()
    RunConfig(out="x", backend="tvm", tune_trials=8, target_speedup=1.5).check()


def test_verify_refuses_a_negative_budget_before_compiling(tmp_path, capsys):
    from hwnas.cli import main

    arch = ArchSpec((BlockSpec.from_key(K3),), 8, 8, name="one", meta={"predicted_ms": 1.0})
    (tmp_path / "a.json").write_text(arch.to_json())
    assert main(["verify", "--arch", str(tmp_path / "a.json"), "--backend", "tvm", "--tune-trials", "-2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tune-trials -2" in err[0]


def test_tuning_survives_a_log_handler_without_a_name_on_metaschedules_logger(tmp_path):
    """MetaSchedule's logger set-up fails ('NoneType' object has no attribute 'format') when its logger
    carries a handler without a name, as one the suite's earlier tests left did (make test, 2026-12-08);
    `_tune` sets such handlers aside while it tunes and puts them back."""
    import logging

    from tvm.s_tir.meta_schedule.logging import get_loggers_from_work_dir

    from profiler.backends._tvm import _unnamed_log_handlers_set_aside

    log, h = logging.getLogger("tvm.s_tir.meta_schedule"), logging.NullHandler()
    log.addHandler(h)
    try:
        with pytest.raises(AttributeError):
            get_loggers_from_work_dir(str(tmp_path / "a"), ["t"])  # TVM's own behaviour, which the guard exists for
        with _unnamed_log_handlers_set_aside():
            get_loggers_from_work_dir(str(tmp_path / "b"), ["t"])
        assert h in log.handlers
    finally:
        log.removeHandler(h)
