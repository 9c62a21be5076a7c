"""The run folder of `hwnas run`: its stages, its file names, and the one object that reads and writes it.

Both the pipeline (which runs stages) and the report (which reads their results) go through here,
so a file of the folder has one writer:

    config.yaml               the run's options (written when the run opens)
    stages.json               status and wall time of each finished stage
    <stage>.json              each stage's result (written when the stage finishes; hwnas.stages)
    latency-predictor.json    the fitted latency model (predictor stage)
    search/arch.json          the found network (written by the search itself)
    report.html, plots/*.png  the report (report stage)
    summary.json              the run's headline numbers (written once, after the last stage)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.stages import STAGE_RECORDS, StageRecord

__all__ = ["STAGES", "Run", "CONFIG_FILE", "PREDICTOR_FILE", "SUMMARY_FILE", "REPORT_FILE", "ARCH_FILE",
           "write_json", "read_json"]

#: the found network is timed (and the loop closed) before it is trained: latency does not depend on
#: the weights, and a second round may choose another network to train
STAGES = ("profile", "calibrate", "predictor", "search", "measure", "train", "export", "baseline", "report")

CONFIG_FILE = "config.yaml"
STATE_FILE = "stages.json"
PREDICTOR_FILE = "latency-predictor.json"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"
ARCH_FILE = "search/arch.json"


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (a kill leaves the old file or the new one, never half of one)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_jsonable))
    os.replace(tmp, path)


def _jsonable(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON: {type(o).__name__}")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


class Run:
    """One run folder: its options, its stages' results and wall times.

    ``options`` is the run's option dict as saved in ``config.yaml`` (see `hwnas.pipeline.RunConfig`);
    ``resumable`` names the options that may change when a run is resumed without changing its results.
    """

    def __init__(self, folder: str | Path):
        self.dir = Path(folder)
        self.state_path = self.dir / STATE_FILE

    # -- options -----------------------------------------------------------------------------------
    def open(self, options: dict[str, Any], resumable: tuple[str, ...] = ()) -> None:
        """Create the folder and save ``options``; raise `ValueError` naming the differences when
        the folder holds a run with other result-changing options."""
        import yaml

        self.dir.mkdir(parents=True, exist_ok=True)
        saved = self.dir / CONFIG_FILE
        if saved.exists():
            old = yaml.safe_load(saved.read_text()) or {}
            diff = sorted(k for k in options if k not in resumable and k in old and old[k] != options[k])
            if diff:
                shown = ", ".join(f"{k} {old[k]!r} -> {options[k]!r}" for k in diff)
                raise ValueError(f"{self.dir} holds a run with other options ({shown}); choose another --out, "
                                 f"or repeat it with --config {saved}")
        tmp = saved.with_name(f".{CONFIG_FILE}.tmp")
        tmp.write_text("# the options of this run; repeat it with: hwnas run --config " + str(saved) + "\n"
                       + yaml.safe_dump(options, sort_keys=False))
        os.replace(tmp, saved)

    def options(self) -> dict[str, Any]:
        """The saved options ({} before the run was opened)."""
        import yaml

        p = self.dir / CONFIG_FILE
        return (yaml.safe_load(p.read_text()) or {}) if p.exists() else {}

    def is_run(self) -> bool:
        return (self.dir / CONFIG_FILE).exists()

    # -- stage state -------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return read_json(self.state_path) if self.state_path.exists() else {}

    def done(self, stage: str) -> bool:
        return self.state().get(stage, {}).get("status") == "done" and (self.dir / f"{stage}.json").exists()

    def result(self, stage: str) -> dict[str, Any] | None:
        """A finished stage's result as its JSON object, or None where the stage has not finished."""
        p = self.dir / f"{stage}.json"
        return read_json(p) if p.exists() else None

    def record(self, stage: str) -> StageRecord | None:
        """A finished stage's result as its typed record (`hwnas.stages.STAGE_RECORDS`), or None where
        the stage has not finished. Raises `hwnas.stages.StageFileError` where the file holds another shape."""
        d = self.result(stage)
        return None if d is None else STAGE_RECORDS[stage].from_json(d, str(self.dir / f"{stage}.json"))

    def finish(self, stage: str, result: StageRecord, seconds: float) -> None:
        """Save a stage's record (``to_json``) and mark the stage done with its wall time (s)."""
        write_json(self.dir / f"{stage}.json", result.to_json())
        st = self.state()
        st[stage] = {"status": "done", "seconds": round(seconds, 2),
                     "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_json(self.state_path, st)

    # -- files -------------------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        """A file of the folder by its name above (``PREDICTOR_FILE``, ``ARCH_FILE``, ...)."""
        return self.dir / name

    def write_summary(self, summary: dict[str, Any]) -> Path:
        p = self.dir / SUMMARY_FILE
        write_json(p, summary)
        return p
