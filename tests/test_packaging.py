"""A built wheel is a working install: the CLI runs from it and it carries the device scripts.

The wheel is built from a copy of the project's sources (a stale ``build/`` folder in the checkout
could otherwise supply files the configuration forgot), installed with ``pip install --target``
into a temporary folder, and used from a working directory outside the checkout, so the checkout
cannot be what gets imported (checked through ``profiler.__file__``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what a wheel build reads: the build configuration, the readme (the long description), the four
# packages and the device scripts (profiler/device_scripts is a symlink to the last)
SOURCES = ("pyproject.toml", "README.md", "hwnas", "profiler", "predictor", "search", "device_scripts")

# run inside the installed copy: where the packages came from and where the scripts are
_PROBE = """
import json, hwnas, profiler
from profiler.adb.device import SCRIPTS, SCRIPTS_DIR
print(json.dumps({"hwnas": hwnas.__file__, "profiler": profiler.__file__,
                  "scripts": {n: str(SCRIPTS_DIR / n) for n in SCRIPTS}}))
"""


def _pip(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert p.returncode == 0, f"pip {args[0]} failed:\n{p.stdout}\n{p.stderr}"
    return p


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, str]:
    """(the --target folder holding the installed wheel, the wheel build's output)."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    src.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, symlinks=True, ignore=skip)
        else:
            shutil.copy2(p, src / name)
    out = tmp / "dist"
    # no isolation: build with the venv's setuptools, offline
    build = _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(src), cwd=tmp)
    wheels = list(out.glob("hwnas-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {out}, found {wheels}"
    site = tmp / "site"
    _pip("install", "--no-deps", "--no-compile", "--target", str(site), str(wheels[0]), cwd=tmp)
    return site, build.stdout + build.stderr


def _run(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    # only the installed copy on the path: no PYTHONPATH pointing at a checkout
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_wheel_build_prints_no_warnings(installed):
    _, output = installed
    # setuptools' warnings are Python warning classes (BuildBackendWarning, SetuptoolsDeprecationWarning)
    assert "Warning" not in output, f"the wheel build warned:\n{output}"


@pytest.mark.slow
def test_installed_wheel_runs_and_ships_the_device_scripts(installed, tmp_path):
    site, _ = installed
    p = _run(site, tmp_path, sys.executable, "-c", _PROBE)
    assert p.returncode == 0, p.stderr
    where = json.loads(p.stdout)
    for pkg in ("hwnas", "profiler"):
        assert Path(where[pkg]).resolve().is_relative_to(site.resolve()), f"{pkg} imported from {where[pkg]}"
    assert set(where["scripts"]) == {"info.sh", "bench.sh", "prepare.sh"}
    for name, path in where["scripts"].items():
        path = Path(path)
        assert path.resolve().is_relative_to(site.resolve()), path
        assert path.is_file() and not path.is_symlink(), f"{path}: not a regular file"
        assert path.read_text() == (ROOT / "device_scripts" / name).read_text(), f"{name} differs from device_scripts/"

    # the console script the wheel declares, and the same command through the module
    for cmd in ([str(site / "bin" / "hwnas"), "spaces", "--json"],
                [sys.executable, "-m", "hwnas.cli", "spaces", "--json"]):
        p = _run(site, tmp_path, *cmd)
        assert p.returncode == 0, f"{cmd}: {p.stderr}"
        names = {s["name"] for s in json.loads(p.stdout)}
        # the spaces come from the package data (profiler/spaces/*.yaml) of the installed copy
        assert names == {f.stem for f in (ROOT / "profiler" / "spaces").glob("*.yaml")}, names


def test_the_package_scripts_are_the_top_level_folder():
    # one copy in git: the package's folder is a link to the one users read and edit
    link = ROOT / "profiler" / "device_scripts"
    assert link.is_symlink() and link.resolve() == (ROOT / "device_scripts").resolve()
