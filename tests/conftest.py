import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One compile cache for the whole test session (keeps the suite fast)."""
    d = tmp_path_factory.mktemp("artifact-cache")
    os.environ["HWNAS_CACHE_DIR"] = str(d)
    return d


def hwnas_cmd() -> list[str]:
    return [sys.executable, "-m", "hwnas"]
