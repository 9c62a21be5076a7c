"""The result of each stage of `hwnas run`, as a typed record, and its ``<stage>.json`` form.

Each record's ``to_json()`` is exactly the object the run folder holds (keys, their order and their
meaning: ``hwnas.report`` and ``summary.json`` read those files), and ``from_json`` reads one back
where a resumed run needs an earlier stage's result. Sequences are tuples in a record and lists in
its JSON; latencies are in ms, accuracies in [0, 1].

Nested results that another package defines and serialises (the profiler's environment, the
predictor's evaluations, the network model choice, the search's epoch log, the exporter's files)
are kept as the JSON objects those packages write.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import numpy as np

from profiler.errors import HwnasError

__all__ = ["StageFileError", "ProfileStage", "CalibrationNetwork", "CalibrateStage", "PredictorStage", "SearchStage",
           "Round", "MeasureStage", "TrainStage", "ExportStage", "BaselineMember", "BaselineStage", "ReportStage",
           "STAGE_RECORDS", "StageRecord"]


class StageFileError(HwnasError, ValueError):
    """A stage's file does not hold that stage's result (another version of hwnas, or edited by hand)."""


def _plain(v: Any) -> Any:
    """A record's value as JSON data: records by their ``to_json``, tuples as lists."""
    if isinstance(v, _Record):
        return v.to_json()
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _frozen(v: Any) -> Any:
    """JSON lists as tuples, all the way down through lists (objects inside are kept as they are)."""
    return tuple(_frozen(x) for x in v) if isinstance(v, (list, tuple)) else v


class _Record:
    """``to_json`` / ``from_json`` for a frozen dataclass whose fields are the JSON object's keys, in order.

    Fields annotated as tuples are read back from lists as tuples; ``_OMIT_NONE`` names fields that
    are left out of the JSON while None (keys that only some results have).
    """

    _OMIT_NONE: ClassVar[tuple[str, ...]] = ()
    _NESTED: ClassVar[dict[str, type]] = {}  # field -> record type of its items (a tuple of records)

    def to_json(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None and f.name in self._OMIT_NONE:
                continue
            out[f.name] = _plain(v)
        return out

    @classmethod
    def _check_keys(cls, d: Any, where: str, extra: tuple[str, ...] = ()) -> None:
        if not isinstance(d, Mapping):
            raise StageFileError(f"{where}: expected a JSON object, got {type(d).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        required = {n for n in names if n not in cls._OMIT_NONE}
        missing = sorted(required - set(d))
        unknown = sorted(set(d) - set(names) - set(extra))
        if missing or unknown:
            what = "; ".join(x for x in (f"missing {', '.join(missing)}" if missing else "",
                                         f"unknown {', '.join(unknown)}" if unknown else "") if x)
            raise StageFileError(f"{where}: not a {cls.__name__} record ({what}); it was written by another version "
                                 f"of hwnas or edited: remove it to run that stage again")

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str = "stage result"):
        """The record of a JSON object written by ``to_json``. Raises `StageFileError` on other keys."""
        cls._check_keys(d, where)
        kw = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                kw[f.name] = None
                continue
            v = d[f.name]
            if f.name in cls._NESTED:
                v = tuple(cls._NESTED[f.name].from_json(x, where) for x in v)
            elif v is not None and str(f.type).startswith("tuple"):
                v = _frozen(v)
            kw[f.name] = v
        return cls(**kw)


@dataclass(frozen=True)
class ProfileStage(_Record):
    """Every block of the space timed on the device (the store keeps the rows; this is their tally)."""

    space: str
    blocks: int  # distinct blocks of the space
    measured_now: int  # timed in this run
    reused: int  # already in the store
    ok: int  # with a trusted or flagged ok row
    failed: dict[str, str]  # block key -> the reason its timing failed
    env: dict[str, Any]  # the machine (or "device") description, its snapshot, the timing config, peak GFLOP/s
    db: str  # the store's path
    retimed: int  # extra timings of blocks flagged as disturbed
    unclean: dict[str, list[str]]  # block key -> flags of a timing still disturbed after its re-timing


@dataclass(frozen=True)
class CalibrationNetwork(_Record):
    """A network of the space timed end to end, to fit the network model on."""

    choices: tuple[int, ...]  # candidate per searchable layer
    key: str  # the network's store key
    blocks: tuple[str, ...]  # its block keys
    measured_ms: float  # median


@dataclass(frozen=True)
class CalibrateStage(_Record):
    networks: tuple[CalibrationNetwork, ...]  # timed cleanly
    failed: dict[str, str]  # network key -> reason
    unclean: dict[str, list[str]]  # network key -> flags: timed under interference, left out

    _NESTED = {"networks": CalibrationNetwork}


@dataclass(frozen=True)
class PredictorStage(_Record):
    path: str  # the saved predictor (latency-predictor.json)
    model: str  # its description
    rows: int  # measured blocks it was fitted on
    overhead_ms: float  # per-network constant
    blocks_loo: dict[str, Any] | None  # leave-one-out on the blocks (predictor.evaluate), None with < 4 blocks
    networks: dict[str, Any]  # the network model chosen (predictor.network.NetworkFit.to_dict), {} without networks
    meta: dict[str, Any]  # the store query behind it (device, backend, threads, space, ...)

    @property
    def range_ms(self) -> tuple[float, float] | None:
        """The measured latencies the network model was fitted on; None without timed networks."""
        r = self.networks.get("range_ms")
        return (float(r[0]), float(r[1])) if r else None


@dataclass(frozen=True)
class SearchStage(_Record):
    arch: str  # path of the found network's arch.json
    choices: tuple[int, ...]
    blocks: tuple[str, ...]
    predicted_ms: float  # whole network, by the predictor
    block_sum_ms: float  # its blocks alone
    overhead_ms: float  # the predictor's per-network constant
    search_target_ms: float | None  # what the search aimed the block sum at (target - overhead)
    target_ms: float | None  # the whole network's target (--target-ms, or resolved from --target-speedup)
    target_speedup: float | None
    uniform_predicted_ms: dict[str, float]  # --baseline op -> its predicted latency
    log: tuple[dict[str, Any], ...]  # one object per epoch (search.train)
    resumed_from_epoch: int | None  # the checkpoint's epoch where the search resumed
    probabilities: tuple[tuple[float, ...], ...] | None  # per searchable layer, per candidate
    test_acc_supernet: float | None  # the found sub-network's accuracy inside the supernet
    train_acc_after_warmup: float | None
    weights: str  # shared | separate
    fastest_ms: float  # the space's fastest and slowest networks, predicted
    slowest_ms: float


@dataclass(frozen=True)
class Round(_Record):
    """One timing of a found network against its prediction (the closed loop has one or two)."""

    round: int  # 1: the search's network; 2: derived again with the refitted network model
    arch: str  # path of its arch file
    key: str
    choices: tuple[int, ...] | None
    blocks: tuple[str, ...]
    predicted_ms: float
    measured_ms: float  # median
    p10_ms: float
    p90_ms: float
    n: int  # timed samples
    flags: tuple[str, ...]  # the stored row's flags
    error: float  # (predicted - measured) / measured
    within_10pct: bool
    calibrated_range_ms: tuple[float, float] | None
    in_calibrated_range: bool | None
    meets_target: bool | None  # None without a target
    # round 1, re-timed after a miss:
    first_measured_ms: float | None = None
    retimed: bool | None = None
    # round 2:
    network_model: dict[str, Any] | None = None  # the refit (NetworkFit.to_dict)
    same_network_as_round1: bool | None = None
    in_sample: bool | None = None  # the refit saw this network: its error is in-sample

    _OMIT_NONE = ("first_measured_ms", "retimed", "network_model", "same_network_as_round1", "in_sample")


@dataclass(frozen=True)
class MeasureStage(_Record):
    """The found network timed; its JSON is the last round's fields with ``rounds`` and ``target_ms``."""

    rounds: tuple[Round, ...]
    target_ms: float | None

    @property
    def final(self) -> Round:
        return self.rounds[-1]

    def to_json(self) -> dict[str, Any]:
        return {**self.final.to_json(), "rounds": [r.to_json() for r in self.rounds], "target_ms": self.target_ms}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str = "stage result") -> "MeasureStage":
        if not isinstance(d, Mapping) or "rounds" not in d or "target_ms" not in d:
            raise StageFileError(f"{where}: not a MeasureStage record (missing rounds or target_ms); remove it to "
                                 f"run that stage again")
        rounds = tuple(Round.from_json(r, where) for r in d["rounds"])
        if not rounds:
            raise StageFileError(f"{where}: no rounds; remove it to run that stage again")
        top = {k: v for k, v in d.items() if k not in ("rounds", "target_ms")}
        Round._check_keys(top, where)
        return cls(rounds, d["target_ms"])


@dataclass(frozen=True)
class TrainStage(_Record):
    """The found network trained from scratch, once per seed: the first seed's run (its weights are the
    ones exported) with ``test_acc`` the mean over the seeds."""

    arch: str  # the network's name
    data: str  # the data set's description
    epochs: int
    test_acc: float  # mean over seeds
    test_images: int
    log: tuple[dict[str, Any], ...]  # the first seed's epochs (search.train.train_arch)
    weights: str  # the first seed's weights.pt
    test_acc_seeds: tuple[float, ...]  # each seed's
    seeds: tuple[int, ...]

    @classmethod
    def of_seeds(cls, runs: list[Mapping[str, Any]], seeds: list[int]) -> "TrainStage":
        """From `search.train.train_arch`'s result of each seed, in seed order."""
        first = runs[0]
        accs = tuple(float(r["test_acc"]) for r in runs)
        return cls(arch=first["arch"], data=first["data"], epochs=first["epochs"], test_acc=float(np.mean(accs)),
                   test_images=first["test_images"], log=tuple(first["log"]), weights=first["weights"],
                   test_acc_seeds=accs, seeds=tuple(seeds))


@dataclass(frozen=True)
class ExportStage(_Record):
    exported: dict[str, dict[str, Any]]  # backend -> {path, target, seconds} (search.export.export_network)


@dataclass(frozen=True)
class BaselineMember(_Record):
    """One uniform network (the same op in every searchable layer), trained and timed."""

    op: str  # kKeE
    key: str
    blocks: tuple[str, ...]
    test_acc: float  # mean over seeds
    test_acc_seeds: tuple[float, ...]
    predicted_ms: float
    in_calibrated_range: bool | None
    measured_ms: float | None  # None where it could not be timed ...
    error: str | None  # ... and why


@dataclass(frozen=True)
class BaselineStage(_Record):
    members: tuple[BaselineMember, ...]
    inherited: dict[str, dict[str, float | None]]  # network -> inherited_acc (from the supernet), scratch_acc

    _NESTED = {"members": BaselineMember}


@dataclass(frozen=True)
class ReportStage(_Record):
    html: str  # report.html
    plots: str  # the plots' folder


#: any stage's record
StageRecord = (ProfileStage | CalibrateStage | PredictorStage | SearchStage | MeasureStage | TrainStage | ExportStage
               | BaselineStage | ReportStage)

#: stage name (hwnas.rundir.STAGES) -> its record type
STAGE_RECORDS: dict[str, type[StageRecord]] = {
    "profile": ProfileStage, "calibrate": CalibrateStage, "predictor": PredictorStage, "search": SearchStage,
    "measure": MeasureStage, "train": TrainStage, "export": ExportStage, "baseline": BaselineStage,
    "report": ReportStage,
}
