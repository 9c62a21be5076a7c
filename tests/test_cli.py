"""The `hwnas` command in-process: JSON output, exports, and one clear line for bad input."""

import json

import pandas as pd
import pytest

from hwnas.cli import main

BLOCK = "expanded_conv-input:8x8x16-output:8x8x16-expand:3-kernel:3-stride:1-idskip:1"


def test_devices_json(capsys):
    # --no-phones: `adb devices` would start (and leave running) an adb server; phones are listed in
    # tests/test_adb_profile.py through a server of the test's own
    assert main(["devices", "--json", "--no-phones"]) == 0
    devs = json.loads(capsys.readouterr().out)
    assert devs[0]["device"] == "local" and devs[0]["cores"] >= 1 and devs[0]["cpu_model"]


def test_spaces_json(capsys):
    assert main(["spaces", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["proxyless-mobile"]["distinct_blocks"] == 70 and rows["proxyless-mobile"]["searchable"] == 21


def test_profile_json_then_table_exports(tmp_path, capsys, cache_dir):
    db = str(tmp_path / "c.db")
    assert main(["profile", "--block", BLOCK, "--block", "Logits-input:4x4x64-output:10", "--backend", "torch",
                 "--db", db, "--quick", "--cache-dir", str(cache_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["measured"] == 2 and len(out["rows"]) == 2
    assert all(r["status"] == "ok" and r["median_ms"] > 0 for r in out["rows"])
    for ext in ("parquet", "csv"):
        path = tmp_path / f"t.{ext}"
        assert main(["table", "--db", db, "--out", str(path), "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["rows"] == 2 and summary["groups"][0]["ok"] == 2
        df = pd.read_parquet(path) if ext == "parquet" else pd.read_csv(path)
        assert sorted(df.block_key) == sorted([BLOCK, "Logits-input:4x4x64-output:10"])
        assert json.loads(df.samples_ms.iloc[0])  # raw samples survive the export


@pytest.mark.parametrize("argv, words", [
    (["profile", "--space", "no-such-space", "--backend", "torch"], "unknown search space 'no-such-space'"),
    (["profile", "--block", "Dense-input:1x1x1-output:3", "--backend", "torch"], "unknown block kind"),
    (["profile", "--block", BLOCK, "--backend", "torch", "--device", "phone"], "unknown device 'phone'"),
    (["profile", "--block", BLOCK, "--backend", "torch", "--device", "adb:"], "bad adb device"),
    (["profile", "--block", BLOCK, "--backend", "torch", "--cores", "77"], "not available"),
    (["profile", "--block", BLOCK, "--backend", "executorch", "--device", "local:cuda"], "CUDA"),
    (["table", "--db", "/nonexistent/x.db"], "no such store"),
])
def test_bad_input_gives_one_line(argv, words, capsys, tmp_path):
    if argv[0] == "profile":
        argv = argv + ["--db", str(tmp_path / "x.db")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_unknown_backend_is_refused_by_argparse(capsys):
    with pytest.raises(SystemExit) as e:
        main(["profile", "--block", BLOCK, "--backend", "tflite"])
    assert e.value.code == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err


@pytest.mark.skipif(__import__("importlib").util.find_spec("xgboost") is not None,
                    reason="the tune extra is installed here")
def test_tuning_without_the_tune_extra_says_how_to_get_it(capsys, tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec  # the extra may be installed here: make xgboost absent for the check
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "xgboost" else find_spec(name, *a))
    argv = ["profile", "--block", BLOCK, "--backend", "tvm", "--tune-trials", "8", "--db", str(tmp_path / "x.db")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hwnas[tune]" in err[0]
