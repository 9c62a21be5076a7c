"""profiler.backends.etdump: the Inspector's table as per-operator rows."""

import pandas as pd

from profiler.backends.etdump import summarise_ops


def test_operator_rows_keep_units_and_drop_bookkeeping_events():
    df = pd.DataFrame([
        {"event_name": "Method::execute", "event_block_name": "Execute", "delegate_backend_name": None,
         "p50 (ms)": 1.0, "avg (ms)": 1.0, "p10 (ms)": 1.0, "p90 (ms)": 1.0, "raw": [1.0, 1.0]},
        {"event_name": "native_call_add.out", "event_block_name": "Execute", "delegate_backend_name": None,
         "p50 (ms)": 0.25, "avg (ms)": 0.3, "p10 (ms)": 0.2, "p90 (ms)": "n/a", "raw": [0.2, 0.25, 0.45]},
        {"event_name": "", "event_block_name": "Execute", "delegate_backend_name": None,
         "p50 (ms)": 0.1, "avg (ms)": 0.1, "p10 (ms)": 0.1, "p90 (ms)": 0.1, "raw": [0.1]},
        {"event_name": "Fully Connected (NC, F32)", "event_block_name": "Execute",
         "delegate_backend_name": "XnnpackBackend", "p50 (ms)": 0.5, "avg (ms)": float("nan"), "p10 (ms)": 0.4,
         "p90 (ms)": 0.6, "raw": None},
    ])
    rows = summarise_ops(df)
    assert [r["event"] for r in rows] == ["native_call_add.out", "Fully Connected (NC, F32)"]
    assert rows[0] == {"event": "native_call_add.out", "block": "Execute", "delegate": "", "p50_ms": 0.25,
                       "avg_ms": 0.3, "p10_ms": 0.2, "p90_ms": None, "runs": 3}
    # pandas holds the missing delegate of an op outside any delegate as NaN: not a delegate called "nan"
    assert rows[1]["delegate"] == "XnnpackBackend" and rows[1]["runs"] == 0 and rows[1]["avg_ms"] is None
