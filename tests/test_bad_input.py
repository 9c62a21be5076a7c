"""Hostile input to the `hwnas` commands: one line on stderr, exit code 2, nothing created or damaged."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hwnas.cli import main
from profiler.spaces import load_space
from profiler.store import Store

DATA = Path(__file__).parent / "data"
LUT = DATA / "lut_proxyless_tiny.yaml"


@pytest.fixture(scope="module")
def predictor_file(tmp_path_factory) -> Path:
    """A real saved predictor: a linear regression fitted to the shipped LUT (fast; predicts any block)."""
    p = tmp_path_factory.mktemp("pred") / "p.json"
    assert main(["fit", "--lut", str(LUT), "--model", "linear", "--out", str(p)]) == 0
    return p


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _refused(capsys, root: Path, argv: list[str], message: str, before: set[str] | None = None) -> str:
    """Run argv; assert exit 2, one stderr line containing message, and no new file under root."""
    before = _tree(root) if before is None else before
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.splitlines()) == 1, err  # no blank line either (a progress bar stopping leaves one)
    assert message in err, err
    assert _tree(root) == before  # nothing created
    return err


# ---- 1. --out that cannot be written --------------------------------------------------------------

def _out_argv(cmd: str, out: str, tmp: Path, predictor: Path) -> list[str]:
    if cmd == "fit":
        return ["fit", "--lut", str(LUT), "--model", "lut", "--out", out]
    if cmd == "export-lut":
        return ["export-lut", "--predictor", str(predictor), "--space", "tiny-mnist", "--out", out]
    db = tmp / "m.db"
    if not db.exists():
        Store(db).close()
    return ["table", "--db", str(db), "--out", out]


@pytest.mark.parametrize("cmd", ["fit", "export-lut", "table"])
@pytest.mark.parametrize("where, message", [
    ("folder", "is a folder; name a file in it"),
    ("under-a-file", "is a file, not a folder"),
])
def test_out_that_cannot_be_written_is_refused(tmp_path, capsys, predictor_file, cmd, where, message):
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("keep me")
    out = {"folder": tmp_path / "folder", "under-a-file": tmp_path / "afile" / "x.csv"}[where]
    argv = _out_argv(cmd, str(out), tmp_path, predictor_file)
    _refused(capsys, tmp_path, argv, message)
    assert (tmp_path / "afile").read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only folders")
@pytest.mark.parametrize("cmd", ["fit", "export-lut", "table"])
def test_out_in_a_read_only_folder_is_refused(tmp_path, capsys, predictor_file, cmd):
    ro = tmp_path / "ro"
    ro.mkdir()
    argv = _out_argv(cmd, str(ro / "x.csv"), tmp_path, predictor_file)
    ro.chmod(0o555)
    try:
        _refused(capsys, tmp_path, argv, "permission denied")
    finally:
        ro.chmod(0o755)


# ---- 2. a predictor file with a bad overhead ------------------------------------------------------

@pytest.mark.parametrize("overhead", ["lots", float("nan"), float("inf"), True, [1]])
def test_predictor_with_a_bad_overhead_is_refused(tmp_path, capsys, predictor_file, overhead):
    d = json.loads(predictor_file.read_text())
    d["overhead_ms"] = overhead
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(d))  # json writes NaN and Infinity as Python's json reads them
    key = load_space("tiny-mnist").blocks()[0].key
    _refused(capsys, tmp_path, ["predict", "--predictor", str(bad), "--block", key],
             "overhead_ms must be a finite number")


# ---- 3. numbers that make no sense -----------------------------------------------------------------

@pytest.fixture(scope="module")
def arch_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("arch") / "arch.json"
    p.write_text(load_space("tiny-mnist").arch([0] * 7).to_json())
    return p


SEARCH = ["search", "--space", "tiny-mnist", "--data", "digits", "--predictor", "{pred}", "--out", "{tmp}/s"]
TRAIN = ["train", "--arch", "{arch}", "--data", "digits", "--out", "{tmp}/t"]


@pytest.mark.parametrize("argv, message", [
    (TRAIN + ["--epochs", "0"], "--epochs 0: give a count of at least 1"),
    (TRAIN + ["--batch-size", "0"], "--batch-size 0: give a count of at least 1"),
    (TRAIN + ["--lr", "nan"], "--lr nan: give a positive, finite learning rate"),
    (TRAIN + ["--lr", "-0.1"], "--lr -0.1: give a positive"),
    (TRAIN + ["--threads", "0"], "--threads 0"),
    (TRAIN + ["--limit", "0"], "--limit 0"),
    (["verify", "--arch", "{arch}", "--backend", "torch", "--predictor", "{pred}", "--db", "{tmp}/v.db",
      "--threads", "0"], "--threads 0: give a count of at least 1"),
    (SEARCH + ["--target-ms", "nan"], "--target-ms nan: give a positive, finite latency in ms"),
    (SEARCH + ["--target-ms", "inf"], "--target-ms inf"),
    (SEARCH + ["--target-ms", "nan", "--loss", "mul"], "--target-ms nan"),
    (SEARCH + ["--target-ms", "-2", "--loss", "ratio"], "--target-ms -2.0"),
    (SEARCH + ["--epochs", "0"], "--epochs 0"),
    (SEARCH + ["--batch-size", "0"], "--batch-size 0"),
    (SEARCH + ["--lr", "inf"], "--lr inf"),
    (SEARCH + ["--arch-lr", "nan"], "--arch-lr nan"),
    (SEARCH + ["--lambda", "nan"], "--lambda nan: give a finite number, 0 or more"),
    (SEARCH + ["--lat-temperature", "inf"], "--lat-temperature inf"),
])
def test_senseless_numbers_are_refused_before_any_work(tmp_path, capsys, predictor_file, arch_file, argv, message):
    argv = [a.format(tmp=tmp_path, pred=predictor_file, arch=arch_file) for a in argv]
    _refused(capsys, tmp_path, argv, message)


# ---- 4. an image folder with a file that is not an image ------------------------------------------

def _image_folder(root: Path, bad: str) -> Path:
    from PIL import Image

    rng = __import__("numpy").random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype="uint8")).save(root / c / f"{i}.png")
    (root / "dog" / bad).write_bytes(b"this is not a PNG at all")
    return root


@pytest.mark.parametrize("cmd", ["train", "search"])
def test_undecodable_image_is_refused_by_name(tmp_path, capsys, predictor_file, arch_file, cmd):
    imgs = _image_folder(tmp_path / "imgs", "broken.png")
    argv = SEARCH if cmd == "search" else TRAIN
    argv = [a.format(tmp=tmp_path, pred=predictor_file, arch=arch_file) for a in argv]
    argv[argv.index("digits")] = str(imgs)
    _refused(capsys, tmp_path, argv + ["--epochs", "1"], "broken.png: not an image Pillow can read")


def test_truncated_image_is_named_when_read(tmp_path):
    from search.data import load_data
    from search.latency import SearchError

    imgs = _image_folder(tmp_path / "imgs", "x.png")
    (imgs / "dog" / "x.png").unlink()
    png = (imgs / "dog" / "0.png").read_bytes()
    (imgs / "dog" / "0.png").write_bytes(png[:len(png) // 2])  # the header reads, the pixels do not
    d = load_data(str(imgs), 12, 3, seed=0, augment="none")
    with pytest.raises(SearchError, match="0.png: Pillow cannot decode this image"):
        for part in (d.train, d.valid, d.test):
            for i in range(len(part)):
                part[i]


# ---- 5, 8. hwnas profile: a device or backend that cannot work, --jobs 0 --------------------------

PROFILE = ["profile", "--space", "tiny-mnist", "--backend", "torch", "--db", "{tmp}/new.db"]


@pytest.mark.parametrize("argv, message", [
    (PROFILE + ["--device", "gpu9"], "unknown device 'gpu9'"),
    (PROFILE + ["--device", "rpc:127.0.0.1:9190/phone"], "only the tvm backend runs through a TVM RPC tracker"),
    (PROFILE + ["--device", "adb:NOSUCH"], "a phone runs the executorch"),
    (PROFILE + ["--jobs", "0"], "--jobs 0: give a count of at least 1"),
    (PROFILE + ["--jobs", "-2"], "--jobs -2"),
    (PROFILE + ["--tune-trials", "-1"], "--tune-trials -1"),
])
def test_profile_refuses_before_creating_the_store(tmp_path, capsys, argv, message):
    _refused(capsys, tmp_path, [a.format(tmp=tmp_path) for a in argv], message)


def test_profile_without_cuda_creates_no_store(tmp_path, capsys):
    from profiler.devices import cuda_info

    if cuda_info() is not None:
        pytest.skip("this machine has a CUDA GPU")
    _refused(capsys, tmp_path, [a.format(tmp=tmp_path) for a in PROFILE + ["--device", "local:cuda"]],
             "no CUDA GPU is visible")


def test_profile_keeps_refusing_a_foreign_store_first(tmp_path, capsys):
    (tmp_path / "new.db").write_text("not a database")
    _refused(capsys, tmp_path, [a.format(tmp=tmp_path) for a in PROFILE + ["--device", "local:cuda"]], "new.db")
    assert (tmp_path / "new.db").read_text() == "not a database"


# ---- 6. a phone the adb server does not list --------------------------------------------------------

def test_first_connection_is_not_retried():
    from profiler.adb.device import AdbDevice, AdbOptions, DeviceGone
    from profiler.adb.transport import AdbConnectionError

    calls = []

    def factory():
        calls.append(1)
        raise AdbConnectionError("the adb server lists no device NOSUCH")

    dev = AdbDevice("NOSUCH", AdbOptions(reconnect_s=60.0), transport_factory=factory)
    with pytest.raises(DeviceGone, match="adb:NOSUCH: cannot connect .*lists no device NOSUCH") as e:
        dev.open()
    assert calls == [1]  # no back-off: the reconnect budget is for phones lost mid-run
    assert "stored" not in str(e.value)


@pytest.fixture
def own_adb_server(tmp_path_factory, monkeypatch):
    """An adb server of this test's own (random port, isolated HOME); killed at the end."""
    import random
    import shutil
    import subprocess

    adb = shutil.which("adb")
    if adb is None:
        pytest.skip("Debian's adb client is not installed (apt-get install adb)")
    home = tmp_path_factory.mktemp("adb-home")
    (home / "vendor-keys").mkdir()
    for k, v in {"HOME": str(home), "ADB_VENDOR_KEYS": str(home / "vendor-keys"),
                 "XDG_CONFIG_HOME": str(home / "config"),
                 "ANDROID_ADB_SERVER_PORT": str(random.randint(20000, 40000))}.items():
        monkeypatch.setenv(k, v)
    subprocess.run([adb, "start-server"], capture_output=True, timeout=30, check=True)
    yield
    subprocess.run([adb, "kill-server"], capture_output=True, timeout=30)


def test_device_info_refuses_a_serial_adb_does_not_list(tmp_path, capsys, own_adb_server):
    _refused(capsys, tmp_path, ["device-info", "adb:NOSUCH"], "lists no device NOSUCH (`adb devices` lists none)")


# ---- 7. hwnas evaluate --plot names the file it wrote ----------------------------------------------

def test_evaluate_plot_prints_the_path_written(tmp_path, capsys, predictor_file):
    argv = ["evaluate", "--lut", str(LUT), "--predictor", str(predictor_file), "--plot", str(tmp_path / "X")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert (tmp_path / "X.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "X").exists()
    assert f"plot: {tmp_path / 'X.png'}" in err.splitlines()


@pytest.mark.parametrize("plot, message", [
    ("X.v2", "matplotlib writes no .v2 images"),
    ("afile/X.png", "is a file, not a folder"),
])
def test_evaluate_refuses_a_plot_it_cannot_write(tmp_path, capsys, predictor_file, plot, message):
    (tmp_path / "afile").write_text("keep me")
    argv = ["evaluate", "--lut", str(LUT), "--predictor", str(predictor_file), "--plot", str(tmp_path / plot)]
    _refused(capsys, tmp_path, argv, message)
