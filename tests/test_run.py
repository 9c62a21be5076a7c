"""`hwnas run` (the pipeline) and `hwnas report`: options, resumption, the report in a real browser."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hwnas.cli import main
from hwnas.pipeline import STAGES, RunConfig, RunError, load_config, run
from profiler.spaces import SpaceError, load_space


def test_uniform_choices_pick_the_same_op_in_every_layer():
    space = load_space("tiny-mnist")
    ch = space.uniform_choices("k5e6")
    arch = space.arch(ch)
    mb = [b for i, b in enumerate(arch.blocks) if i in space.searchable]
    assert {(b.kernel, b.mid_c // b.in_c) for b in mb} == {(5, 6)}
    with pytest.raises(SpaceError, match="kKeE"):
        space.uniform_choices("5x6")
    with pytest.raises(SpaceError, match="no kernel 9 expand 6"):
        space.uniform_choices("k9e6")


def test_config_file_is_read_safely_and_checked(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("target-ms: 2.5\nbackend: tvm\n")
    assert load_config(p) == {"target_ms": 2.5, "backend": "tvm"}
    p.write_text("target_ms: 2\nepochz: 3\n")
    with pytest.raises(RunError, match="unknown option.*epochz"):
        load_config(p)
    p.write_text("!!python/object/apply:os.system ['true']\n")
    with pytest.raises(RunError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(RunError, match="needs --target-ms"):
        RunConfig(out=str(tmp_path / "r"), loss="mul").check()
    with pytest.raises(RunError, match="backend"):
        RunConfig(out=str(tmp_path / "r"), backend="onnx", target_ms=1).check()


@pytest.mark.parametrize("argv, message", [
    (["run", "--out", "{tmp}/r", "--target-ms", "-1"], "give a positive latency"),
    (["run", "--target-ms", "2"], "name the run folder"),
    (["run", "--out", "{tmp}/r", "--target-ms", "2", "--baseline", "k3"], "kKeE"),
    (["run", "--out", "{tmp}/r", "--target-ms", "2", "--device", "phone"], "unknown device"),
    (["run", "--config", "{tmp}/missing.yaml"], "no such config file"),
    (["run", "--out", "{tmp}/r", "--target-ms", "2", "--target-speedup", "1.2"], "not both"),
    (["run", "--out", "{tmp}/r", "--target-speedup", "0"], "give a positive factor"),
    (["run", "--out", "{tmp}/r", "--loss", "abs"], "needs --target-ms (ms) or --target-speedup"),
    (["report", "{tmp}"], "not a run folder"),
    (["run", "--out", "{tmp}/r", "--target-ms", "inf"], "give a finite number"),
    (["run", "--out", "{tmp}/r", "--target-ms", "nan"], "give a positive latency"),
    (["run", "--out", "{tmp}/r", "--target-ms", "2", "--space", "nosuch"], "unknown search space"),
    (["run", "--out", "{tmp}/r", "--target-ms", "2", "--data", "nosuch"], "neither a named data set"),
    (["run", "--out", "{tmp}/r", "--target-ms", "2", "--baseline", "k9e9"], "no kernel 9 expand 9"),
    (["run", "--out", "{tmp}/r", "--config", "{tmp}/typed.yaml"], "search_epochs is 'many'; give a whole number"),
    (["run", "--out", "{tmp}/r", "--target-ms", "2", "--processes", "0"], "--processes must be at least 1"),
    (["run", "--out", "{tmp}/r", "--target-ms", "2", "--weight-paths", "all"], "--weight-paths all: use one of"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "typed.yaml").write_text("target_ms: 2\nsearch_epochs: many\n")
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # refused before anything was created
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def _cfg(tmp_path: Path, **kw) -> RunConfig:
    # the torch backend keeps compile time out of the test; the stages are the same for every backend
    base = dict(out=str(tmp_path / "run"), db=str(tmp_path / "m.db"), backend="torch", space="tiny-mnist",
                data="digits", quick=True, calibrate=3, search_epochs=2, warmup_epochs=1, train_epochs=1,
                batch_size=32, limit=400, baseline=["k3e3"], loss="add", train_threads=1)
    base.update(kw)
    return RunConfig(**base)


@pytest.mark.slow
def test_run_resumes_by_stage_and_writes_a_report(tmp_path):
    cfg = _cfg(tmp_path, loss="abs", target_speedup=1.1)
    run(cfg, until="predictor")
    state = json.loads((Path(cfg.out) / "stages.json").read_text())
    assert list(state) == ["profile", "calibrate", "predictor"]
    assert (Path(cfg.out) / "latency-predictor.json").exists()

    # other result-changing options on the same folder: refused, nothing touched
    with pytest.raises(RunError, match="other options.*seed"):
        run(_cfg(tmp_path, seed=1))

    s = run(cfg)  # resumes: the first three stages are kept as they were
    state2 = json.loads((Path(cfg.out) / "stages.json").read_text())
    assert list(state2) == list(STAGES)
    for k in ("profile", "calibrate", "predictor"):
        assert state2[k] == state[k]
    assert s["measured_ms"] > 0 and s["predicted_ms"] > 0
    assert s["prediction_error"] == pytest.approx((s["predicted_ms"] - s["measured_ms"]) / s["measured_ms"])
    assert 0 <= s["accuracy"] <= 1
    assert set(s["stage_seconds"]) == set(STAGES)
    assert [b["op"] for b in s["baseline"]] == ["k3e3"]
    # the supernet's own quality, and each network's inherited accuracy beside its from-scratch one
    sn = s["supernet"]
    assert sn["weights"] == "shared" and 0 < sn["train_acc_after_warmup"] <= 1
    assert set(sn["inherited"]) == {"found", "k3e3"}
    assert sn["inherited"]["k3e3"]["scratch_acc"] == s["baseline"][0]["test_acc"]
    assert all(0 <= v["inherited_acc"] <= 1 for v in sn["inherited"].values())
    assert s["comparison"]["seed_spread"] is not None and len(s["baseline"][0]["test_acc_seeds"]) == 2
    run_dir = Path(cfg.out)
    search = json.loads((run_dir / "search.json").read_text())
    # the target is relative to the uniform network's predicted latency on this machine
    assert s["target_ms"] == pytest.approx(search["uniform_predicted_ms"]["k3e3"] / 1.1)
    assert search["target_ms"] == s["target_ms"] and s["meets_target"] == (s["measured_ms"] <= s["target_ms"])
    for png in ("block_latency_heatmap", "predictor_blocks", "networks_pred_vs_measured", "search_curves",
                "search_probabilities", "found_arch", "accuracy_vs_latency"):
        assert (run_dir / "plots" / f"{png}.png").stat().st_size > 1000, png
    html = (run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 7  # self-contained
    assert f"{s['measured_ms']:.4g} ms" in html

    # the measurements are in the store: a second run folder measures no block again
    cfg2 = _cfg(tmp_path, out=str(tmp_path / "run2"))
    run(cfg2, until="profile")
    prof = json.loads((Path(cfg2.out) / "profile.json").read_text())
    assert prof["measured_now"] == 0 and prof["reused"] == prof["blocks"]

    # `hwnas report` rebuilds it; its summary is the run's
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").exists()
    assert json.loads((run_dir / "summary.json").read_text())["measured_ms"] == s["measured_ms"]

    _screenshot(run_dir / "report.html", tmp_path / "report.png")


def _screenshot(html: Path, png: Path) -> None:
    """Open the report in headless Chromium and check the page is drawn (not blank)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip("chromium is not installed (scripts/setup.sh installs Debian's chromium as root)")
    cmd = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1100,2400",
           f"--screenshot={png}", html.resolve().as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    from PIL import Image

    im = Image.open(png).convert("L")
    assert im.size == (1100, 2400)
    # a rendered page has text and plots: many distinct grey levels, not a blank or error page
    hist = im.histogram()
    assert sum(1 for h in hist if h > 50) > 20
    assert hist[255] < 0.97 * im.size[0] * im.size[1]


@pytest.mark.slow
def test_cli_run_json(tmp_path, capsys):
    cfg = _cfg(tmp_path)
    (tmp_path / "run.yaml").write_text(
        "\n".join(f"{k}: {json.dumps(v)}" for k, v in cfg.to_dict().items() if v is not None))
    code = main(["run", "--config", str(tmp_path / "run.yaml"), "--until", "calibrate", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["stages"]) == {"profile", "calibrate"}
    saved = (Path(cfg.out) / "config.yaml").read_text()
    assert "target_ms: null" in saved and "backend: torch" in saved


def test_help_names_units():
    out = subprocess.run([sys.executable, "-m", "hwnas.cli", "run", "--help"], capture_output=True, text=True,
                         check=True).stdout
    out = " ".join(out.split())  # argparse wraps lines
    for text in ("(ms, whole network", "(count)", "[default: executorch]", "--config"):
        assert text in out


@pytest.mark.slow
def test_sigkill_in_the_search_resumes_from_its_checkpoint(tmp_path):
    import os
    import signal
    import time

    cfg = _cfg(tmp_path, search_epochs=4, calibrate=0, baseline=[])
    conf = tmp_path / "run.yaml"
    conf.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in cfg.to_dict().items() if v is not None))
    cmd = [sys.executable, "-m", "hwnas.cli", "run", "--config", str(conf), "--until", "search", "--json"]
    ckpt = Path(cfg.out) / "search" / "checkpoint.pt"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ckpt.exists(), "the search never wrote a checkpoint"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    state = json.loads((Path(cfg.out) / "stages.json").read_text())
    assert "search" not in state and "predictor" in state  # killed inside the search stage

    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    state2 = json.loads((Path(cfg.out) / "stages.json").read_text())
    assert state2["profile"] == state["profile"] and state2["predictor"] == state["predictor"]
    log = json.loads((Path(cfg.out) / "search" / "log.json").read_text())
    assert [r["epoch"] for r in log] == [0, 1, 2, 3]  # every epoch once
    assert json.loads((Path(cfg.out) / "search.json").read_text())["resumed_from_epoch"] >= 1  # not restarted
    assert (Path(cfg.out) / "search" / "arch.json").exists()


@pytest.mark.slow
def test_a_missed_prediction_is_retimed_refitted_and_reported_in_two_rounds(tmp_path):
    """The closed loop: a model that predicts the found network 3x too slow (made so here by
    scaling the saved model) is caught, the network re-timed, the model refitted with it."""
    cfg = _cfg(tmp_path, loss="abs", target_speedup=1.1, calibrate=4)
    run(cfg, until="search")
    out = Path(cfg.out)
    pred_file, search_file = out / "latency-predictor.json", out / "search.json"
    p = json.loads(pred_file.read_text())
    p["network_scale"] = 3 * p.get("network_scale", 1.0)
    p["overhead_ms"] = 3 * p["overhead_ms"]
    pred_file.write_text(json.dumps(p))
    s = json.loads(search_file.read_text())
    s["predicted_ms"] *= 3
    search_file.write_text(json.dumps(s))

    summ = run(cfg)
    m = json.loads((out / "measure.json").read_text())
    r1, r2 = m["rounds"]
    assert r1["retimed"] and r1["error"] > 0.3 and r1["first_measured_ms"] > 0
    assert abs(r2["error"]) < abs(r1["error"]) / 2  # the refit, on real timings, mended the model
    assert (out / "latency-predictor-round1.json").exists()
    refit = json.loads(pred_file.read_text())
    assert refit["meta"]["overhead_from_networks"] == 5  # 4 calibration networks + round 1's
    assert [r["round"] for r in summ["rounds"]] == [1, 2]
    assert summ["measured_ms"] == r2["measured_ms"] and summ["blocks"] == r2["blocks"]
    assert "Closed loop" in (out / "report.html").read_text()
