"""`hwnas run`: from a device to a specialised, measured network, one resumable stage at a time.

Stages, in order (each writes its result into the run folder; a stage whose result is there is
skipped, so a killed run resumes at the stage it was in, and the profiler and the search resume
inside their stage too):

    profile    time every block of the space on the device (the store is shared across runs)
    calibrate  time a few random networks of the space end to end: the per-network overhead
               that the sum of isolated blocks misses
    predictor  fit the latency predictor to the blocks (+ the overhead); leave-one-out accuracy
    search     ProxylessNAS search with the predictor's latency table
    measure    time the found network on the device: predicted against measured; on a miss,
               re-time it, refit the network model and derive the network again (the closed loop)
    train      train the found network from scratch
    export     compile it (trained weights) with the backend
    baseline   train and time the uniform family of the space (every layer the same op)
    report     report.html + summary.json

Each stage's result is a typed record (`hwnas.stages`) saved as ``<stage>.json`` (`hwnas.rundir`).

The options of a run are saved in ``config.yaml``; a second call with other result-changing
options on the same folder is refused (one line), so a folder always holds one experiment.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hwnas.rundir import ARCH_FILE, PREDICTOR_FILE, STAGES, Run, read_json, write_json
from hwnas.stages import (BaselineMember, BaselineStage, CalibrateStage, CalibrationNetwork, ExportStage,
                          MeasureStage, PredictorStage, ProfileStage, ReportStage, Round, SearchStage, TrainStage)
from profiler.errors import HwnasError

__all__ = ["RunConfig", "RunError", "STAGES", "run", "load_config", "train_seeds", "timing_protocol", "measured_rows",
           "failed_rows", "load_run_predictor"]


class RunError(HwnasError, ValueError):
    """Bad options or a stage that cannot go on; printed as one line."""


@dataclass
class RunConfig:
    """Every option of `hwnas run`; units in the comments. Saved as the run's ``config.yaml``."""

    out: str
    device: str = "local"
    backend: str = "executorch"
    space: str = "tiny-mnist"
    data: str = "mnist5k"
    target_ms: float | None = None  # latency target of the search (ms, whole network)
    target_speedup: float | None = None  # or: the fastest --baseline network's predicted latency / this (x)
    db: str = "data/hwnas.db"  # the measurement store, shared by runs and devices
    threads: int = 1  # runtime threads while timing (count)
    quick: bool = False  # the looser timing protocol (smoke runs only)
    processes: int = 2  # fresh timing processes per block and network on this host; the fastest is kept (count)
    tune_trials: int = 0  # TVM: MetaSchedule trials per block for every block and network timed (count; 0: untuned)
    calibrate: int = 10  # networks spanning the space's latency range, timed end to end for the network model (count)
    predictor: str = "hybrid"  # hybrid | lut | regression (see `hwnas fit --model`)
    weights: str = "shared"  # supernet candidates: shared (superkernel + elastic expand) or separate (ProxylessNAS)
    # one: each weight step trains a sampled path; sandwich: also the largest and smallest;
    # distill: the sandwich, the sampled path and the smallest on the largest's predictions
    weight_paths: str = "one"
    skip_drop: float = 0.0  # weight steps: each skippable layer skipped with this probability, else p (0..1)
    # tail: a stage's k-th running layer on the k-th layer's weights (OFA's elastic depth; measured better:
    # skip penalty 0.25 / 0.63 points against 1.66, benchmarks/README.md); any: each layer on its own
    depth: str = "tail"
    search_epochs: int = 6  # epochs of the search, warm-up included
    warmup_epochs: int = 1  # weight-only epochs before architecture steps
    loss: str = "abs"  # abs: CE + weight * |LAT / T - 1| (TuNAS), the target steers a short search; see search.latency
    lam: float = 0.1  # additive loss weight (1/ms)
    beta: float = 0.6  # multiplicative loss exponent
    weight: float = 1.0  # hinge / abs loss weight (per unit of LAT / T - 1)
    lat_temperature: float = 0.25  # E[LAT] of the loss under softmax(alpha / t): near the argmax network's
    arch_lr: float = 0.05  # architecture learning rate (Adam); a few hundred steps must move the logits
    arch_every: int = 1  # weight steps per architecture step (ProxylessNAS: 5, over 100+ epochs)
    search_lr: float = 0.05  # initial weight learning rate of the supernet (SGD, cosine to 0)
    train_epochs: int = 4  # epochs to train each network from scratch (found and baseline)
    seeds: int = 2  # trainings of each network (seeds seed, seed+1, ...): their spread says what "as accurate" means
    batch_size: int = 64  # images per step
    baseline: list[str] = field(default_factory=lambda: ["k3e3", "k3e6", "k5e6"])  # uniform family
    limit: int | None = None  # use only this many images of the data set
    seed: int = 0
    train_threads: int = 0  # torch threads for search and training (0: all cores; seeds side by side)
    cache_dir: str | None = None  # compile cache (default ~/.cache/hwnas/artifacts)
    runner: str | None = None  # adb + executorch: executor_runner built for the phone (path)
    tvm_rpc: str | None = None  # adb + tvm: tvm_rpc built for the phone (path)
    remote_dir: str = "/data/local/tmp/hwnas"  # adb: hwnas's folder on the phone

    #: options that may change between a run and its resumption without changing its results
    RESUMABLE = ("out", "train_threads", "cache_dir", "remote_dir")

    def check(self) -> None:
        from profiler.devices import parse_device

        dev = parse_device(self.device)
        if self.backend not in ("executorch", "tvm", "torch"):
            raise RunError(f"unknown backend {self.backend!r}; use executorch, tvm or torch")
        if dev.kind == "adb":
            need = {"executorch": ("runner", "ExecuTorch's executor_runner"), "tvm": ("tvm_rpc", "TVM's tvm_rpc")}
            if self.backend not in need:
                raise RunError(f"{self.device}: a phone runs --backend executorch or tvm")
            name, what = need[self.backend]
            path = getattr(self, name)
            if not path or not Path(path).is_file():
                raise RunError(f"{self.device} with {self.backend}: --{name.replace('_', '-')} PATH must name {what} "
                               f"built for the phone with the Android NDK (docs/phones.md)"
                               + (f"; {path} is not a file" if path else ""))
        if self.tune_trials < 0:
            raise RunError(f"--tune-trials {self.tune_trials}: give 0 (untuned) or more trials per block")
        if self.tune_trials and (self.backend != "tvm" or dev.kind in ("adb", "rpc")):
            raise RunError(f"--tune-trials tunes TVM's kernels on this host (MetaSchedule); with --backend "
                           f"{self.backend} on {self.device} leave it out")
        if self.target_ms is not None and not self.target_ms > 0:
            raise RunError(f"--target-ms {self.target_ms:g}: give a positive latency in ms")
        if self.target_speedup is not None:
            if self.target_ms is not None:
                raise RunError("give --target-ms or --target-speedup, not both")
            if not self.target_speedup > 0:
                raise RunError(f"--target-speedup {self.target_speedup:g}: give a positive factor (1.2: 1.2x faster)")
            if not self.baseline:
                raise RunError("--target-speedup is relative to the fastest --baseline network; name a baseline")
        if (self.loss in ("mul", "ratio", "ceiling", "hinge", "abs") and self.target_ms is None
                and self.target_speedup is None):
            raise RunError(f"the {self.loss} latency loss needs --target-ms (ms) or --target-speedup (x); "
                           "or use --loss add")
        from search.supernet import WEIGHTS

        if self.weights not in WEIGHTS:
            raise RunError(f"--weights {self.weights}: use one of {', '.join(WEIGHTS)}")
        from search.supernet import DEPTHS, WEIGHT_PATHS

        if self.depth not in DEPTHS:
            raise RunError(f"--depth {self.depth}: use one of {', '.join(DEPTHS)}")

        if self.weight_paths not in WEIGHT_PATHS:
            raise RunError(f"--weight-paths {self.weight_paths}: use one of {', '.join(WEIGHT_PATHS)}")
        if not (math.isfinite(self.skip_drop) and 0 <= self.skip_drop < 1):
            raise RunError(f"--skip-drop {self.skip_drop:g}: give a share of weight steps from 0 to below 1")
        if not self.lat_temperature > 0:
            raise RunError("--lat-temperature must be positive")
        for name in ("threads", "search_epochs", "train_epochs", "batch_size", "arch_every", "seeds", "processes"):
            if getattr(self, name) < 1:
                raise RunError(f"--{name.replace('_', '-')} must be at least 1")
        if self.calibrate < 0 or self.warmup_epochs < 0 or self.warmup_epochs >= self.search_epochs:
            raise RunError("need --calibrate >= 0 and 0 <= --warmup-epochs < --search-epochs")
        for name in ("target_ms", "target_speedup", "lam", "beta", "weight", "lat_temperature", "arch_lr", "search_lr"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise RunError(f"--{name.replace('_', '-')} {v!r}: give a finite number")
        from profiler.spaces import SpaceError, load_space

        try:
            space = load_space(self.space)
            for b in self.baseline:
                space.uniform_choices(b)
        except SpaceError as e:
            raise RunError(str(e)) from None
        from search.data import NAMED

        if self.data not in NAMED and not Path(self.data).is_dir():
            raise RunError(f"--data {self.data}: neither a named data set ({', '.join(NAMED)}) nor a folder of "
                           "class folders of images")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_config(path: str | Path) -> dict[str, Any]:
    """Options from a YAML file (safe loader); unknown keys are refused with the known ones."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise RunError(f"{path}: no such config file")
    try:
        d = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise RunError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict):
        raise RunError(f"{path}: expected a mapping of option: value")
    d = {str(k).replace("-", "_"): v for k, v in d.items()}
    known = {f.name for f in fields(RunConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise RunError(f"{path}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return {k: _typed(k, v, str(path)) for k, v in d.items()}


def _typed(name: str, value: Any, where: str) -> Any:
    """A config file's value as the option's type (YAML reads ``5`` as int where a float is wanted);
    raise `RunError` naming the option where it is not of that type."""
    kind = {f.name: str(f.type) for f in fields(RunConfig)}[name]
    optional = "None" in kind
    if value is None:
        if optional:
            return None
        raise RunError(f"{where}: {name} needs a value")
    want = "list" if kind.startswith("list") else kind.split("|")[0].strip()
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "bool": isinstance(value, bool), "str": isinstance(value, str),
          "list": isinstance(value, (list, str))}[want]
    if not ok:
        shown = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "text",
                 "list": "a list or a comma-separated text"}[want]
        raise RunError(f"{where}: {name} is {value!r}; give {shown}")
    if want == "float":
        return float(value)
    if want == "list" and not isinstance(value, str):
        return [str(v) for v in value]
    return value


# ---- progress ------------------------------------------------------------------------------------

class Progress:
    """Callbacks of a run (the CLI draws them); all optional. Stage bars reuse the profiler's and
    the search's progress interfaces, which the CLI's object also implements."""

    def stage(self, name: str, index: int, total: int, skipped: bool) -> None: ...

    def stage_done(self, name: str, seconds: float, summary: str) -> None: ...

    # profiler.harness.Progress
    def phase(self, name: str, total: int) -> None: ...

    def advance(self, name: str, label: str) -> None: ...

    # search.train.SearchProgress
    def epoch_start(self, epoch: int, epochs: int, steps: int, phase: str) -> None: ...

    def step(self) -> None: ...

    def epoch_end(self, row: dict[str, Any]) -> None: ...

    def message(self, text: str) -> None: ...


# ---- helpers ---------------------------------------------------------------------------------------

def timing_protocol(cfg: RunConfig):
    """The timing protocol of a run: the default one, or the quick one with --quick."""
    from profiler.measurement import TimingProtocol

    return TimingProtocol.quick() if cfg.quick else TimingProtocol()


def _rows(cfg: RunConfig, keys: list[str], kind: str, status: str):
    from profiler.measurement import tuning_of
    from profiler.store import RowFilter, Store

    with Store(cfg.db) as st:
        # rows of the run's own tuning only (untuned: ""): rows that `hwnas profile --tune-trials` put in the
        # same store with another budget are other measurements
        return st.latest(RowFilter(device=cfg.device, backend=cfg.backend, threads=cfg.threads,
                                   tuning=tuning_of(cfg.tune_trials), kind=kind),
                         keys=keys, status=status, newest_per_key=True)


def measured_rows(cfg: RunConfig, keys: list[str], kind: str) -> dict[str, dict[str, Any]]:
    """Stored ok rows of this device/backend/threads for ``keys``: key -> {median_ms, ...}."""
    return {r.block_key: {"median_ms": float(r.median_ms), "p10_ms": float(r.p10_ms), "p90_ms": float(r.p90_ms),
                          "n": int(r.n or 0), "flags": r.flags if isinstance(r.flags, list) else []}
            for r in _rows(cfg, keys, kind, "ok").itertuples()}


def failed_rows(cfg: RunConfig, keys: list[str], kind: str) -> dict[str, str]:
    """Stored failed rows of this device/backend/threads for ``keys``: key -> the reason."""
    return {r.block_key: str(r.error or "") for r in _rows(cfg, keys, kind, "failed").itertuples()}


def _profile(cfg: RunConfig, models: list, progress: Progress, retime: bool = False):
    from profiler.harness import profile

    adb = None
    if cfg.device.startswith("adb:"):
        from profiler.adb.device import AdbOptions

        adb = AdbOptions(runner=cfg.runner, tvm_rpc=cfg.tvm_rpc, remote_base=cfg.remote_dir)
    return profile(models, cfg.backend, cfg.db, device=cfg.device, threads=cfg.threads, protocol=timing_protocol(cfg),
                   cache_dir=cfg.cache_dir, progress=progress, adb=adb, remeasure=retime, processes=cfg.processes,
                   tune_trials=cfg.tune_trials)


def _train_threads(cfg: RunConfig) -> int:
    return cfg.train_threads or len(os.sched_getaffinity(0))


# ---- stages ----------------------------------------------------------------------------------------
#
# Each stage is ``stage_x(run, cfg, progress) -> (record, one-line summary)``; the record (hwnas.stages)
# is saved as ``<stage>.json`` in the run folder by `run`, and later stages read it back with
# ``run.record(...)``.

def stage_profile(run: Run, cfg: RunConfig, progress: Progress) -> tuple[ProfileStage, str]:
    from profiler.devices import env_snapshot, local_info, parse_device
    from profiler.spaces import load_space

    space = load_space(cfg.space)
    blocks = space.blocks()
    res = _profile(cfg, blocks, progress)
    keys = [b.key for b in blocks]
    ok = measured_rows(cfg, keys, "block")
    failed = failed_rows(cfg, [k for k in keys if k not in ok], "block")
    dev = parse_device(cfg.device)
    env = local_info() if dev.kind == "local" else {"device": cfg.device}
    env["snapshot"] = env_snapshot([0]) if dev.kind == "local" else {}
    env["config"] = res.config.to_dict() if hasattr(res.config, "to_dict") else asdict(res.config)
    env["peak_gflops"] = res.peak_gflops
    import pandas as pd

    rows = [{"block_key": k, "status": "ok" if k in ok else "failed", **ok.get(k, {}), "error": failed.get(k, "")}
            for k in keys]
    pd.DataFrame(rows).drop(columns=["flags"], errors="ignore").to_csv(run.dir / "profile.csv", index=False)
    if not ok:
        raise RunError(f"no block of {cfg.space!r} could be measured on {cfg.device} with {cfg.backend}; "
                       f"first failure: {next(iter(failed.values()), 'unknown')}")
    out = ProfileStage(space=cfg.space, blocks=len(keys), measured_now=len(res.measured), reused=res.skipped,
                       ok=len(ok), failed=failed, env=env, db=cfg.db, retimed=res.retimed, unclean=res.unclean)
    line = f"{len(ok)}/{len(keys)} blocks measured ({len(res.measured)} now, {res.skipped} from the store)"
    if res.unclean:  # timed again and still disturbed: the predictor leaves them to its regression
        line += (f"; {len(res.unclean)} could not be timed cleanly ({', '.join(sorted({f for v in res.unclean.values() for f in v}))}) "
                 "and are not used as measured")
    return out, line


def _baseline_archs(cfg: RunConfig, space) -> dict[str, Any]:
    """The uniform family (--baseline): op -> ArchSpec."""
    return {op: space.arch(space.uniform_choices(op), f"{space.name}-uniform-{op}") for op in cfg.baseline}


def stage_calibrate(run: Run, cfg: RunConfig, progress: Progress) -> tuple[CalibrateStage, str]:
    from profiler.spaces import load_space

    space = load_space(cfg.space)
    block_ms = {k: v["median_ms"] for k, v in measured_rows(cfg, [b.key for b in space.blocks()], "block").items()}
    # spread over the space's latency range, so the network model is fitted where a search may land;
    # the uniform baselines are left out: they check the model on networks it was not fitted on
    exclude = [a.key for a in _baseline_archs(cfg, space).values()]
    archs = space.spanning_archs(block_ms, cfg.calibrate, seed=cfg.seed + 1, exclude=exclude)
    if archs:
        _profile(cfg, [a for _, a in archs], progress)
    from profiler.store import is_trusted

    got = measured_rows(cfg, [a.key for _, a in archs], "network")
    # a network timed under interference (and again, still disturbed) is no ground to fit a model on
    unclean = {a.key: got[a.key]["flags"] for _, a in archs if a.key in got and not is_trusted("ok", got[a.key]["flags"])}
    nets = [CalibrationNetwork(choices=tuple(c), key=a.key, blocks=tuple(a.keys), measured_ms=got[a.key]["median_ms"])
            for c, a in archs if a.key in got and a.key not in unclean]
    failed = failed_rows(cfg, [a.key for _, a in archs if a.key not in got], "network")
    span = (f" ({min(n.measured_ms for n in nets):.4g}-{max(n.measured_ms for n in nets):.4g} ms)"
            if nets else "")
    return (CalibrateStage(networks=tuple(nets), failed=failed, unclean=unclean),
            f"{len(nets)} networks spanning the space timed end to end{span}"
            + (f", {len(failed)} failed" if failed else "")
            + (f", {len(unclean)} left out: not timed cleanly" if unclean else ""))


def _block_entries(cfg: RunConfig):
    from predictor.io import store_entries
    from profiler.measurement import tuning_of
    from profiler.spaces import load_space

    entries, meta = store_entries(cfg.db, device=cfg.device, backend=cfg.backend, threads=cfg.threads,
                                  tuning=tuning_of(cfg.tune_trials))
    keys = {b.key for b in load_space(cfg.space).blocks()}
    return {k: v for k, v in entries.items() if k in keys}, meta


def _fit(cfg: RunConfig, entries, meta, networks: list[CalibrationNetwork]):
    """The block predictor and, with timed networks, the network model chosen on them."""
    from predictor import fit_predictor
    from predictor.network import choose_network_model
    from profiler.blocks import BlockSpec

    pred = fit_predictor(entries, model=cfg.predictor, seed=cfg.seed, meta=meta)
    if not networks:
        return pred, None
    nets = [[BlockSpec.from_key(k) for k in n.blocks] for n in networks]
    return choose_network_model(pred, nets, [n.measured_ms for n in networks])


def stage_predictor(run: Run, cfg: RunConfig, progress: Progress) -> tuple[PredictorStage, str]:
    from predictor import cross_validate, save_predictor
    from predictor.evaluate import plot
    from profiler.blocks import BlockSpec

    progress.message("fitting the latency predictor")
    entries, meta = _block_entries(cfg)
    meta = dict(meta, space=cfg.space)
    blocks = [BlockSpec.from_key(k) for k in entries]
    y = np.array([e.mean_ms for e in entries.values()])
    block_eval = None
    if len(blocks) >= 4:  # leave-one-out of the regression on the blocks: how well unmeasured blocks are guessed
        ev = cross_validate(blocks, y, folds="loo", seed=cfg.seed)
        plot(ev, run.dir / "plots" / "predictor_blocks.png",
             title=f"blocks, leave-one-out ({cfg.backend}, {cfg.device})")
        block_eval = ev.to_dict()
    pred, net_fit = _fit(cfg, entries, meta, list(run.record("calibrate").networks))
    path = save_predictor(pred, run.path(PREDICTOR_FILE))
    net_eval = net_fit.to_dict() if net_fit else {}
    out = PredictorStage(path=str(path), model=_describe(pred), rows=len(entries), overhead_ms=pred.overhead_ms,
                         blocks_loo=block_eval, networks=net_eval, meta=meta)
    s = f"{pred.describe()} on {len(entries)} blocks"
    if block_eval:
        s += f"; block LOO MAPE {100 * block_eval['mape']:.1f}% (FLOPs baseline {100 * block_eval['flops_baseline']['mape']:.1f}%)"
    if net_eval:
        per_block = f" {1000 * net_eval['block_ms']:+.2f} us/block" if net_eval.get("block_ms") else ""
        s += (f"; networks: {net_eval['model']} model (x{net_eval['scale']:.3f}{per_block} {net_eval['overhead_ms']:+.3f} ms)"
              + (f", LOO within 10%: {100 * net_eval['metrics_loo']['within_10pct']:.0f}%" if net_eval["metrics_loo"] else ""))
    return out, s


def _describe(pred) -> str:
    d = pred.describe()
    if pred.network_scale != 1.0:
        d += f"; in-network scale {pred.network_scale:.3f}"
    if pred.block_overhead_ms:
        d += f"; {1000 * pred.block_overhead_ms:+.2f} us per block in a network"
    return d


def load_run_predictor(run: Run):
    """The latency predictor a run's predictor stage saved (block model + network model)."""
    from predictor import load_predictor

    return load_predictor(run.path(PREDICTOR_FILE))


def stage_search(run: Run, cfg: RunConfig, progress: Progress) -> tuple[SearchStage, str]:
    from search.train import CHECKPOINT, SearchConfig, run_search

    pred = load_run_predictor(run)
    overhead = float(pred.overhead_ms)
    target_ms, uniform = resolve_target(cfg, pred)
    # the search's latency table sums blocks; the network's own overhead is a constant of every
    # network, so the search aims at the target minus that constant
    target = None if target_ms is None else target_ms - overhead
    if target is not None and target <= 0:
        raise RunError(f"--target-ms {target_ms:g} is below the per-network overhead alone "
                       f"({overhead:.3g} ms measured); raise it")
    out = run.path(ARCH_FILE).parent
    scfg = SearchConfig(space=cfg.space, data=cfg.data, out=str(out), epochs=cfg.search_epochs,
                        warmup_epochs=cfg.warmup_epochs, batch_size=cfg.batch_size, arch_lr=cfg.arch_lr,
                        arch_every=cfg.arch_every, lr=cfg.search_lr, weights=cfg.weights,
                        weight_paths=cfg.weight_paths, skip_drop=cfg.skip_drop, depth=cfg.depth,
                        loss=cfg.loss, lam=cfg.lam, beta=cfg.beta, weight=cfg.weight,
                        lat_temperature=cfg.lat_temperature, target_ms=target, seed=cfg.seed,
                        limit=cfg.limit, predictor=str(run.path(PREDICTOR_FILE)), threads=_train_threads(cfg))
    try:
        res = run_search(scfg, pred, resume=(out / CHECKPOINT).exists(), progress=progress)
    except ValueError as e:  # SearchError: one line
        raise RunError(str(e)) from None
    arch = res.arch  # the search wrote it (with the network prediction) to ARCH_FILE
    predicted = pred.predict_network_ms(arch)
    probs = arch.meta.get("probabilities")
    r = SearchStage(
        arch=str(run.path(ARCH_FILE)), choices=tuple(arch.meta["choices"]), blocks=tuple(arch.keys),
        predicted_ms=float(predicted), block_sum_ms=arch.meta["predicted_ms"], overhead_ms=overhead,
        search_target_ms=target, target_ms=target_ms, target_speedup=cfg.target_speedup,
        uniform_predicted_ms=uniform, log=tuple(res.log), resumed_from_epoch=res.resumed_from,
        probabilities=None if probs is None else tuple(tuple(p) for p in probs),
        test_acc_supernet=arch.meta.get("test_acc_supernet"),
        train_acc_after_warmup=arch.meta.get("train_acc_after_warmup"), weights=cfg.weights,
        fastest_ms=arch.meta["fastest_ms"] + overhead, slowest_ms=arch.meta["slowest_ms"] + overhead)
    how = "" if cfg.target_speedup is None else f": fastest uniform / {cfg.target_speedup:g}"
    tgt = "no target" if target_ms is None else f"target {target_ms:.4g} ms{how}"
    return r, f"found {arch.meta['choices']}: predicted {predicted:.4g} ms ({tgt})"


def resolve_target(cfg: RunConfig, pred) -> tuple[float | None, dict[str, float]]:
    """The network's latency target (ms): --target-ms, or the fastest --baseline network's predicted
    latency divided by --target-speedup; with the baseline's predicted latencies (ms)."""
    from profiler.spaces import load_space

    uniform = {op: float(pred.predict_network_ms(a)) for op, a in _baseline_archs(cfg, load_space(cfg.space)).items()}
    if cfg.target_speedup is None:
        return cfg.target_ms, uniform
    return min(uniform.values()) / cfg.target_speedup, uniform


def _arch(run: Run):
    """The found network: the last round's of the measure stage where it ran, else the search's."""
    from search.export import read_arch

    measured = run.record("measure")
    return read_arch(measured.final.arch) if measured else _arch_of_search(run)


def train_seeds(cfg: RunConfig, arch, out: Path, progress: Progress) -> TrainStage:
    """Train ``arch`` from scratch with each of the run's seeds: the first seed's result (its weights
    are the ones exported) with ``test_acc`` the mean over seeds and ``test_acc_seeds`` each one.

    With ``train_threads`` 0 (all cores) the seeds still to train run side by side, one process each
    with its share of the cores (`search.parallel`: faster on small networks); with a thread count
    given, one after the other with that many threads."""
    from search.parallel import TrainJob, plan, train_in_processes
    from search.train import train_arch

    seeds = [cfg.seed + k for k in range(cfg.seeds)]
    # each seed's result is kept in its own folder: a kill between seeds loses one training at most
    folders = [out if k == 0 else out / f"seed{s}" for k, s in enumerate(seeds)]
    runs: dict[int, dict[str, Any]] = {k: read_json(f / "result.json") for k, f in enumerate(folders)
                                       if (f / "result.json").exists()}
    todo = [k for k in range(len(seeds)) if k not in runs]
    jobs = [TrainJob(out=str(folders[k]), seed=seeds[k], data=cfg.data, epochs=cfg.train_epochs,
                     batch_size=cfg.batch_size, limit=cfg.limit) for k in todo]
    try:
        if len(jobs) > 1 and not cfg.train_threads:
            procs, threads = plan(len(jobs), _train_threads(cfg))

            def keep(i: int, r: dict[str, Any]) -> None:
                write_json(folders[todo[i]] / "result.json", r)

            for k, r in zip(todo, train_in_processes(arch, jobs, procs, threads, progress, on_done=keep)):
                runs[k] = r
        else:
            for k, j in zip(todo, jobs):
                r = train_arch(arch, j.data, j.out, epochs=j.epochs, batch_size=j.batch_size, seed=j.seed,
                               limit=j.limit, threads=_train_threads(cfg), progress=progress)
                write_json(folders[k] / "result.json", r)
                runs[k] = r
    except ValueError as e:
        raise RunError(str(e)) from None
    return TrainStage.of_seeds([runs[k] for k in range(len(seeds))], seeds)


def stage_train(run: Run, cfg: RunConfig, progress: Progress) -> tuple[TrainStage, str]:
    r = train_seeds(cfg, _arch(run), run.dir / "train", progress)
    each = "" if len(r.test_acc_seeds) == 1 else f" (seeds: {', '.join(f'{a:.4f}' for a in r.test_acc_seeds)})"
    return r, f"test accuracy {r.test_acc:.4f}{each} after {r.epochs} epochs"


def stage_export(run: Run, cfg: RunConfig, progress: Progress) -> tuple[ExportStage, str]:
    from search.export import export_network

    backends = [cfg.backend] if cfg.backend in ("executorch", "tvm") else []
    options = {}
    if cfg.tune_trials:  # the exported library is the tuned one that was timed, from the same database
        from profiler.compile import tuned_options

        options["tvm"] = tuned_options(cfg.tune_trials, cfg.threads, cfg.cache_dir)
    r = export_network(_arch(run), run.dir / "train" / "weights.pt", run.dir / "export", backends, options)
    bad = {b: v["error"] for b, v in r.items() if "error" in v}
    if bad:
        raise RunError(f"export with {', '.join(bad)} failed: {'; '.join(bad.values())}")
    paths = ", ".join(v["path"] for v in r.values()) or "nothing to export for the torch backend"
    return ExportStage(exported=r), paths


def _calibrated_range(run: Run) -> tuple[float, float] | None:
    """The measured latencies (ms) the network model was fitted on; None without timed networks."""
    pred = run.record("predictor")
    return pred.range_ms if pred else None


def _in_range(ms: float, rng: tuple[float, float] | None) -> bool | None:
    return None if rng is None else bool(rng[0] <= ms <= rng[1])


#: a found network whose measurement misses its prediction by more than this share is re-timed,
#: and if the miss stays, the network model is refitted with it and the network derived again
MISS = 0.10


def _time_network(cfg: RunConfig, arch, progress: Progress, retime: bool = False) -> dict[str, Any]:
    _profile(cfg, [arch], progress, retime=retime)
    got = measured_rows(cfg, [arch.key], "network")
    if arch.key not in got:
        why = failed_rows(cfg, [arch.key], "network").get(arch.key, "no row stored")
        raise RunError(f"the found network could not be measured on {cfg.device} with {cfg.backend}: {why}")
    return got[arch.key]


def _round(index: int, arch, arch_path: Path, predicted: float, m: dict[str, Any], rng,
           target: float | None) -> Round:
    err = (predicted - m["median_ms"]) / m["median_ms"]
    choices = arch.meta.get("choices")
    return Round(round=index, arch=str(arch_path), key=arch.key, choices=None if choices is None else tuple(choices),
                 blocks=tuple(arch.keys), predicted_ms=predicted, measured_ms=m["median_ms"], p10_ms=m["p10_ms"],
                 p90_ms=m["p90_ms"], n=m["n"], flags=tuple(m["flags"]), error=err, within_10pct=abs(err) <= MISS,
                 calibrated_range_ms=rng, in_calibrated_range=_in_range(predicted, rng),
                 meets_target=None if target is None else bool(m["median_ms"] <= target))


def stage_measure(run: Run, cfg: RunConfig, progress: Progress) -> tuple[MeasureStage, str]:
    """Time the found network; close the loop where its prediction misses by more than `MISS`.

    Round 1's error is the out-of-sample one: the network was not among those the model was fitted
    on. On a miss the network is timed again (a disturbed measurement is the cheapest explanation);
    if the miss stays, the network joins the calibration networks, the network model is refitted,
    and the network is derived again from the search's probabilities under the same target with the
    refitted latencies (round 2). Both rounds are kept.
    """
    search = run.record("search")
    arch = _arch_of_search(run)
    target = search.target_ms
    first = _round(1, arch, run.path(ARCH_FILE), search.predicted_ms, _time_network(cfg, arch, progress),
                   _calibrated_range(run), target)
    if not first.within_10pct:
        progress.message(f"measured {first.measured_ms:.4g} ms against {first.predicted_ms:.4g} ms predicted "
                         f"({100 * first.error:+.1f}%): timing it again")
        again = _round(1, arch, run.path(ARCH_FILE), search.predicted_ms,
                       _time_network(cfg, arch, progress, retime=True), _calibrated_range(run), target)
        first = dataclasses.replace(again, first_measured_ms=first.measured_ms, retimed=True)
    rounds = [first]
    if not first.within_10pct:
        rounds.append(_second_round(run, cfg, search, first, target, progress))
    final = rounds[-1]
    how = (f"measured {final.measured_ms:.4g} ms against {final.predicted_ms:.4g} ms predicted "
           f"({100 * final.error:+.1f}%)")
    if len(rounds) > 1:
        how = (f"round 1 missed ({100 * first.error:+.1f}%, re-timed); refitted on it, round 2 {how}")
    return MeasureStage(rounds=tuple(rounds), target_ms=target), how


def _arch_of_search(run: Run):
    from search.export import read_arch

    return read_arch(run.path(ARCH_FILE))


def _second_round(run: Run, cfg: RunConfig, search: SearchStage, first: Round, target: float | None,
                  progress: Progress) -> Round:
    """Refit the network model with round 1's network among the calibration networks, and let the
    search library derive the network again from the search's probabilities under ``target`` (ms)."""
    import shutil

    from predictor import save_predictor
    from profiler.spaces import load_space
    from search.derive import derive_network

    progress.message("the miss stayed: refitting the network model with the found network, deriving again")
    networks = list(run.record("calibrate").networks)
    networks.append(CalibrationNetwork(choices=first.choices, key=first.key, blocks=tuple(_arch_of_search(run).keys),
                                       measured_ms=first.measured_ms))  # round 1 of the closed loop
    entries, meta = _block_entries(cfg)
    pred, fit = _fit(cfg, entries, dict(meta, space=cfg.space), networks)
    first_pred = run.path(PREDICTOR_FILE)
    shutil.copyfile(first_pred, first_pred.with_name("latency-predictor-round1.json"))
    save_predictor(pred, first_pred)  # later stages (baselines) predict with the refitted model
    space = load_space(cfg.space)
    try:
        arch = derive_network(space, pred, search.probabilities, target, f"{space.name}-found-round2",
                              meta={"round": 2})
    except ValueError as e:  # SearchError: one line
        raise RunError(str(e)) from None
    path = run.path(ARCH_FILE).with_name("arch-round2.json")
    path.write_text(arch.to_json())
    rnd = _round(2, arch, path, arch.meta["predicted_network_ms"], _time_network(cfg, arch, progress),
                 tuple(fit.range_ms), target)
    # the refit saw this network when it is round 1's: its error is then in-sample
    return dataclasses.replace(rnd, network_model=fit.to_dict(), same_network_as_round1=arch.key == first.key,
                               in_sample=arch.key == first.key)


def stage_baseline(run: Run, cfg: RunConfig, progress: Progress) -> tuple[BaselineStage, str]:
    from profiler.spaces import load_space

    pred = load_run_predictor(run)
    rng = _calibrated_range(run)
    members = []
    part = run.dir / "baseline"
    part.mkdir(exist_ok=True)
    space = load_space(cfg.space)
    for op, arch in _baseline_archs(cfg, space).items():
        done = part / f"{op}.json"
        if done.exists():  # finished before a kill: keep it
            members.append(BaselineMember.from_json(read_json(done), str(done)))
            continue
        progress.message(f"baseline {op}: training, then timing")
        tr = train_seeds(cfg, arch, part / op, progress)
        _profile(cfg, [arch], progress)
        got = measured_rows(cfg, [arch.key], "network")
        predicted = float(pred.predict_network_ms(arch))
        m = BaselineMember(
            op=op, key=arch.key, blocks=tuple(arch.keys), test_acc=tr.test_acc, test_acc_seeds=tr.test_acc_seeds,
            predicted_ms=predicted, in_calibrated_range=_in_range(predicted, rng),
            measured_ms=got[arch.key]["median_ms"] if arch.key in got else None,
            error=None if arch.key in got else failed_rows(cfg, [arch.key], "network").get(arch.key, "not measured"))
        write_json(done, m.to_json())
        members.append(m)
    ok = [m for m in members if m.measured_ms is not None]
    inherited = _inherited(run, cfg, space, members)
    return (BaselineStage(members=tuple(members), inherited=inherited),
            ", ".join(f"{m.op} {m.measured_ms:.3g} ms acc {m.test_acc:.3f}" for m in ok))


def _inherited(run: Run, cfg: RunConfig, space, members: list[BaselineMember]) -> dict[str, dict[str, Any]]:
    """The accuracy the found network and each baseline inherit from the supernet (BN recalibrated),
    beside their accuracy trained from scratch: how well the supernet ranks networks."""
    from search.train import inherited_accuracy

    found, train = run.record("measure"), run.record("train")
    nets = {"found": list(found.final.choices) if found and found.final.choices is not None else None}
    nets |= {m.op: space.uniform_choices(m.op) for m in members}
    nets = {k: v for k, v in nets.items() if v is not None}
    accs = inherited_accuracy(run.path(ARCH_FILE).parent, list(nets.values()), threads=_train_threads(cfg))
    scratch = {"found": train.test_acc if train else None} | {m.op: m.test_acc for m in members}
    return {k: {"inherited_acc": a, "scratch_acc": scratch.get(k)} for k, a in zip(nets, accs)}


def stage_report(run: Run, cfg: RunConfig, progress: Progress) -> tuple[ReportStage, str]:
    from hwnas.report import write_report

    paths = write_report(run.dir)
    return ReportStage(html=str(paths["html"]), plots=str(paths["plots"])), str(paths["html"])


STAGE_FUNCS: dict[str, Callable[[Run, RunConfig, Progress], tuple[Any, str]]] = {
    "profile": stage_profile, "calibrate": stage_calibrate, "predictor": stage_predictor, "search": stage_search,
    "train": stage_train, "export": stage_export, "measure": stage_measure, "baseline": stage_baseline,
    "report": stage_report,
}


def run(cfg: RunConfig, progress: Progress | None = None, until: str | None = None) -> dict[str, Any]:
    """Run (or resume) every stage up to ``until`` (default: all); return the summary.

    Raises `RunError` (one line) for bad options, a folder holding another run, or a stage that
    cannot go on; options are checked before anything is created.
    """
    progress = progress or Progress()
    cfg.check()
    r = Run(cfg.out)
    try:
        r.open(cfg.to_dict(), RunConfig.RESUMABLE)
    except ValueError as e:
        raise RunError(str(e)) from None
    last = STAGES.index(until) if until else len(STAGES) - 1
    for i, name in enumerate(STAGES[: last + 1]):
        # the report is cheap and reflects everything: always written again
        skip = r.done(name) and name != "report"
        progress.stage(name, i, len(STAGES), skip)
        if skip:
            continue
        t0 = time.perf_counter()
        result, summary = STAGE_FUNCS[name](r, cfg, progress)
        seconds = time.perf_counter() - t0
        r.finish(name, result, seconds)
        progress.stage_done(name, seconds, summary)
    if last == len(STAGES) - 1:
        from hwnas.report import summary

        s = summary(r.dir)  # after the report stage, so that its own wall time is in
        r.write_summary(s)
        return s
    return {"stages": r.state()}
