#!/usr/bin/env bash
# One-time set-up on a fresh machine: system packages (where we may install them) and the venv.
# Idempotent: a second run only checks. Called by `make demo` and `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

# System packages: Debian's adb client (checks the ADB test double against a real peer), dash
# and mksh (device scripts run under a strict POSIX sh and under Android's shell), the aarch64 cross compiler and C library (TVM links libraries for phones).
# Headless Chromium (+ a font) renders the run report in a test, as a user's browser would.
# Fashion-MNIST's IDX files (/usr/share/datasets/fashion-mnist) are the data set of `--data fashion-mnist`.
want="adb dash mksh gcc-aarch64-linux-gnu libc6-dev-arm64-cross chromium fonts-dejavu-core dataset-fashion-mnist"
missing=""
for pkg in $want; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing system packages:$missing"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "setup: optional system packages missing:$missing (install them with apt-get as root; tests that need them skip)"
  fi
fi

stamp=.venv/.hwnas-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  echo "setup: installing Python packages into .venv (first time: about 3 minutes)"
  # (sed drops this machine's notes about absent local index folders; pipefail keeps pip's status)
  quiet() { "$@" 2>&1 | sed '/is ignored: it is neither a file nor a directory/d'; }
  quiet .venv/bin/pip install -q --upgrade pip
  # torch first, pinned: an unpinned resolve would pull a multi-GB CUDA build
  quiet .venv/bin/pip install -q "torch==2.13.0"
  # (setuptools warns, in the build of an editable install, that folders named like the packages may take
  # precedence: they are the packages; nothing for a user to act on)
  PYTHONWARNINGS=ignore quiet .venv/bin/pip install -q -e ".[test]"
  touch "$stamp"
fi
