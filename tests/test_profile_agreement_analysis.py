"""benchmarks/profile_agreement.py: does the memory reference see what makes two profiles disagree?"""

from __future__ import annotations

from benchmarks.profile_agreement import memory_reference


def test_memory_reads_are_compared_slower_run_over_faster_run_for_blocks_off_and_the_rest():
    per = {
        "quiet-1": {"a": {"median_ms": 1.0, "memory_ref_ms": 10.0}, "b": {"median_ms": 2.0, "memory_ref_ms": 10.0},
                    "c": {"median_ms": 1.0, "memory_ref_ms": 10.0}, "d": {"median_ms": 1.0}},
        # a: 10 % slower here, its read 20 % slower; b: 10 % faster here, quiet-1's read 25 % slower; c agrees
        "quiet-2": {"a": {"median_ms": 1.1, "memory_ref_ms": 12.0}, "b": {"median_ms": 1.8, "memory_ref_ms": 8.0},
                    "c": {"median_ms": 1.01, "memory_ref_ms": 10.0}, "d": {"median_ms": 1.5, "memory_ref_ms": 9.0}},
    }
    got = memory_reference(per, ["quiet-1", "quiet-2"])
    assert got["quiet-1"] == {"median_ms": 10.0, "blocks": 3}
    q2 = got["quiet-2"]
    assert q2["off_by_5pct"] == 2  # d has no quiet-1 read: not judged
    assert q2["off_mem_ratio_slower_over_faster"] == 1.25  # the median of 1.2 and 1.25 (upper of two)
    assert q2["agreeing_mem_ratio_slower_over_faster"] == 1.0
    assert memory_reference({"quiet-1": {"a": {"median_ms": 1.0}}}, ["quiet-1"]) == {}
