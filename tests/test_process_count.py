"""benchmarks/process_count.py replays the harness's choice of timing processes on recorded medians."""

from __future__ import annotations

import json
import random

from benchmarks.process_count import kept, main, pools, replay


def _agreement_file(path, backend, blocks):
    """A profile_agreement result with `blocks` {key: [process medians of quiet-1], ...}; quiet-2 repeats
    them, a busy run and a flagged row must stay out of the pool."""
    per = {run: {k: {"median_ms": min(v), "process_medians_ms": v, "trusted": True} for k, v in blocks.items()}
           for run in ("quiet-1", "quiet-2")}
    per["busy"] = {k: {"median_ms": 99.0, "process_medians_ms": [99.0, 99.0], "trusted": True} for k in blocks}
    per["quiet-2"]["flagged"] = {"median_ms": 50.0, "process_medians_ms": [50.0, 60.0], "trusted": False}
    path.write_text(json.dumps({"backend": backend, "space": "s", "date": "d", "machine": {}, "per_block": per}))
    return path


def test_the_rule_keeps_the_lowest_and_adds_processes_only_where_the_lowest_two_disagree():
    seq = iter([1.0, 1.2, 1.1, 1.01])
    assert kept(lambda: next(seq), 2, 2, 0.03) == (1.0, 4)  # 1.0/1.2 and 1.0/1.1 disagree; 1.01 agrees
    seq = iter([1.0, 1.02, 5.0])
    assert kept(lambda: next(seq), 2, 2, 0.03) == (1.0, 2)  # agreed at once: no third
    seq = iter([1.3, 1.0])
    assert kept(lambda: next(seq), 1, 2, 0.03) == (1.3, 1)  # one process asked for: nothing to compare


def test_more_processes_outvote_a_slow_placement_but_not_a_rare_fast_one():
    # one placement in four is 15 % slower: one process per profile agrees 62.5 % of the time, four
    # nearly always (the lowest of four is the common placement)
    pool = {f"b{i}": [1.0, 1.0, 1.0, 1.15] for i in range(20)}
    one = replay(pool, 1, 0, 0.03, 200, random.Random(0))
    four = replay(pool, 4, 0, 0.03, 200, random.Random(0))
    assert one["agree_within_5pct"] < 0.7 < 0.9 < four["agree_within_5pct"]
    assert one["processes_per_block"] == 1 and four["processes_per_block"] == 4
    # the other way round (one placement in four 10 % faster), the lowest of four finds the fast one in
    # 68 % of profiles: two profiles agree less often than with one process (57 % against 62.5 %)
    rare = {f"b{i}": [1.0, 1.1, 1.1, 1.1] for i in range(20)}
    assert replay(rare, 4, 0, 0.03, 400, random.Random(0))["agree_within_5pct"] < \
        replay(rare, 1, 0, 0.03, 400, random.Random(0))["agree_within_5pct"]
    steady = replay({"b": [1.0, 1.01, 1.02]}, 1, 0, 0.03, 50, random.Random(0))
    assert steady["agree_within_5pct"] == 1.0


def test_pools_keep_quiet_trusted_first_processes_per_backend(tmp_path):
    a = _agreement_file(tmp_path / "a.json", "executorch", {"x": [1.0, 1.2, 0.5, 0.5]})
    b = _agreement_file(tmp_path / "b.json", "tvm", {"x": [2.0, 2.1]})
    pool, sources = pools([a, b], first=2)
    assert pool == {"executorch": {"s/x": [1.0, 1.2, 1.0, 1.2]}, "tvm": {"s/x": [2.0, 2.1, 2.0, 2.1]}}
    assert [s["runs"] for s in sources] == [["quiet-1", "quiet-2"], ["quiet-1", "quiet-2"]]


def test_main_writes_a_result_per_backend_and_refuses_missing_files(tmp_path, capsys):
    a = _agreement_file(tmp_path / "a.json", "executorch", {"x": [1.0, 1.1], "y": [2.0, 2.0]})
    out = tmp_path / "r.json"
    assert main([str(a), "--trials", "20", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert {r["backend"] for r in res["rules"]} == {"executorch"} and len(res["rules"]) == 7
    assert main([str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.json" in err[0]
