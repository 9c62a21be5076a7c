"""Benchmark of search quality (issue 12): are the networks the search finds better than the
obvious ones, on this CPU with ExecuTorch (XNNPACK), the `tiny-mnist` space (or `tiny-mnist-w`, whose
stages also choose a width: --space) and Fashion-MNIST?

    flock /tmp/hwnas-bench.lock .venv/bin/python benchmarks/search_quality.py [--fresh]
    .venv/bin/python benchmarks/search_quality.py --smoke      # a few minutes: checks the script only

Data: Fashion-MNIST, the first --limit training images (default 10,000; the pipeline splits them
into train and valid for the search, and trains every network from scratch on both), scored on the
official 10,000-image test set. Every network is trained with one recipe (the pipeline's train
stage: --train-epochs, batch 64, SGD + cosine, seeds 0 and 1) and timed with the harness on
ExecuTorch (XNNPACK, 1 thread, the default timing protocol), in one shared measurement store.

1. searches: the latency predictor of this host is fitted first (a probe run up to the predictor
   stage); the targets are a log ladder T = fastest x (fastest uniform / fastest)^s, s in --ladder
   (default 0.25, 0.5, 0.75: between the space's fastest network and its fastest uniform network,
   predicted ms); one `hwnas.pipeline.run` per target (shared-weight supernet, abs latency loss,
   2 seeds, no baseline: the family is trained once, below).
2. the uniform family: every kernel x expand of the space (the same op in every searchable layer)
   and k3e6 with its widths scaled (--widths, default x0.5 and x0.75).
3. random networks of the space: --random distinct networks, each layer's candidate drawn
   uniformly (seeded), none equal to a uniform one.
4. the supernet's quality: the accuracy that the uniform kernel x expand networks, the random ones
   and the found one inherit from the middle target's supernet (BN recalibrated), against their
   accuracy trained from scratch: Kendall tau; each search's train accuracy after its warm-up.
5. the seed-to-seed spread (largest gap between two seeds of any network, pooled standard deviation)
   against the spread of the uniform family's mean accuracies; the from-scratch ranking against
   itself (half of the seeds against the other half: Kendall tau), the reference point of 4.
6. per found network: `hwnas.report.compare` against the uniform family and against the random
   networks; on or above the baselines' Pareto front; measured at or below its target (+10 %);
   the issue's goal: at least 1.5x faster than the fastest uniform network as accurate within the
   seed spread, or more accurate (by more than the seed spread) than every baseline that is no
   slower (not counted when no baseline is as fast).
7. an accuracy / latency plot (PNG) and printed tables.

Work folder ``runs/bench-search-quality/`` (``-smoke`` for --smoke): the store, the compile cache,
the run folders and one JSON per trained and timed network, written as soon as it is done, so a
killed benchmark resumes where it was (a network recorded as failed is tried again); ``--fresh``
starts from nothing. Result: ``benchmarks/results/search_quality-<date>.json`` (+ ``.png``); a
smoke result goes to the work folder instead.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# run as a script, this file's folder comes first on sys.path and benchmarks/search.py shadows the
# `search` package; drop that entry and put the repository first
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.search_targets import (  # noqa: E402
    _Progress, _targets, _uniform_predictions, _width_space, log, machine)

SPACE, DATA = "tiny-mnist", "fashion-mnist"
#: every kernel x expand of the space: the uniform family (a network with the same op in every searchable layer)
UNIFORM_OPS = ("k3e3", "k3e6", "k5e3", "k5e6", "k7e3", "k7e6")
#: the issue's goal: the found network this many times faster than the fastest uniform network as accurate
GOAL_SPEEDUP = 1.5
#: a found network "meets" its target when measured at or below it, with this share of slack
TARGET_SLACK = 0.10


@dataclass(frozen=True)
class NetResult:
    """One trained and timed network. Accuracies are shares of the test set (0..1), latencies the
    harness's ExecuTorch medians (p10/p90 of the samples) in ms; a failed network keeps its reason
    in ``error`` and None where it has no number."""

    name: str  # k3e6, k3e6 x0.5, random-3, found 0.146 ms
    family: str  # uniform | width | random | found
    key: str  # the network's key in the measurement store
    choices: list[int] | None  # the space's choices (None: a width-scaled copy of a space without widths)
    test_acc: float | None = None  # mean over seeds
    test_acc_seeds: list[float] = field(default_factory=list)
    measured_ms: float | None = None
    p10_ms: float | None = None
    p90_ms: float | None = None
    predicted_ms: float | None = None  # the probe's predictor (networks of tiny-mnist only)
    train_seconds: float | None = None  # wall time of its trainings (all seeds)
    timing_call_seconds: float | None = None  # wall time of the harness call that timed it with its part's others
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.test_acc is not None and self.measured_ms is not None


# ---- bookkeeping -----------------------------------------------------------------------------

class _Wall:
    """Wall seconds per part, summed over the sessions of a resumed benchmark (``wall.json``)."""

    def __init__(self, root: Path):
        self.path = root / "wall.json"
        self.sec: dict[str, float] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def add(self, part: str, seconds: float) -> None:
        self.sec[part] = round(self.sec.get(part, 0.0) + seconds, 1)
        self.path.write_text(json.dumps(self.sec, indent=1))


def _slug(name: str) -> str:
    return name.replace(" ", "_").replace("/", "_")


def _write(path: Path, obj: Any) -> None:
    """Atomic JSON write: a kill leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _cfg(args, root: Path, name: str, target_ms: float | None, seeds: int = 2, search: bool = False):
    """The pipeline's options of every run (and the training recipe of every network). The runs
    (searches) train their found network with 2 seeds; ``seeds`` is for the networks trained here.
    ``search``: a target's run, with the search's own options (--skip-drop, --search-seed)."""
    from hwnas.pipeline import RunConfig

    extra = {"skip_drop": args.skip_drop, "seed": args.search_seed} if search else {"seed": args.seed}
    return RunConfig(out=str(root / name), device="local", backend="executorch", space=SPACE, data=DATA,
                     target_ms=target_ms, loss="abs" if target_ms else "add", weights="shared",
                     db=str(root / "store.db"), cache_dir=str(root / "cache"), quick=args.smoke,
                     calibrate=args.calibrate, search_epochs=args.search_epochs, warmup_epochs=args.warmup_epochs,
                     train_epochs=args.train_epochs, seeds=seeds, baseline=[], limit=args.limit, **extra)


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


# ---- 1. searches -----------------------------------------------------------------------------

def _found(cfg, target_ms: float) -> dict[str, Any]:
    """What a finished run folder says about its found network (measure: the last round's network,
    the one trained)."""
    from hwnas.rundir import Run

    r = Run(cfg.out)
    s, m, t = r.result("search"), r.result("measure"), r.result("train")
    return {"run": cfg.out, "target_ms": target_ms, "choices": m["choices"], "key": m["key"],
            "predicted_ms": m["predicted_ms"], "measured_ms": m["measured_ms"], "p10_ms": m["p10_ms"],
            "p90_ms": m["p90_ms"], "prediction_error": m["error"], "rounds": len(m.get("rounds") or [m]),
            "measured_over_target": m["measured_ms"] / target_ms,
            "at_or_below_target": bool(m["measured_ms"] <= target_ms),
            "within_10pct_or_below": bool(m["measured_ms"] <= (1 + TARGET_SLACK) * target_ms),
            "test_acc": t["test_acc"], "test_acc_seeds": t["test_acc_seeds"], "test_images": t.get("test_images"),
            "train_acc_after_warmup": s.get("train_acc_after_warmup"),
            "supernet_test_acc_of_found": s.get("test_acc_supernet"),
            "search_log": [{k: row.get(k) for k in ("epoch", "phase", "train_acc", "test_acc", "expected_ms",
                                                    "argmax_ms", "seconds")} for row in s["log"]],
            "stage_seconds": {k: v.get("seconds") for k, v in r.state().items()}, "error": None}


def _more_seeds(args, cfg, found: dict[str, Any]) -> dict[str, Any]:
    """With --seeds above 2, train the found network with the seeds its run did not (into the run's
    own train folder, one sub-folder per seed as the run's train stage keeps them; the run's records
    stay as the run wrote them), so it is compared with the same number of seeds as the baselines."""
    import dataclasses

    from hwnas.pipeline import _arch, train_seeds
    from hwnas.rundir import Run

    if len(found["test_acc_seeds"]) >= args.seeds:
        return found
    log(f"target {found['target_ms']:g} ms: training the found network with {args.seeds} seeds")
    tr = train_seeds(dataclasses.replace(cfg, seeds=args.seeds), _arch(Run(cfg.out)), Path(cfg.out) / "train",
                     _Progress(f"found {found['target_ms']:g} ms"))
    return dict(found, test_acc=tr.test_acc, test_acc_seeds=list(tr.test_acc_seeds))


def search_tag(args) -> str:
    """The suffix of the searches' run folders and of the result: which search this is, when not the
    default (the family and the random networks are shared by every search of a work folder)."""
    return ((f"-drop{args.skip_drop:g}" if args.skip_drop else "")
            + (f"-s{args.search_seed}" if args.search_seed != args.seed else ""))


def part_searches(args, root: Path, wall: _Wall) -> tuple[dict[str, Any], list[float], list[dict[str, Any]]]:
    from hwnas.pipeline import RunError, run

    t0 = time.perf_counter()
    probe = _cfg(args, root, "probe", None)
    run(probe, _Progress("probe"), until="predictor")  # without a predictor there is nothing to search with
    rng = _uniform_predictions(probe)
    targets = _targets(rng, args.ladder)
    log(f"predicted: fastest network of the space {rng['space_fastest_ms']:.4g} ms, fastest uniform "
        f"{min(rng['uniform_predicted_ms'].values()):.4g} ms; targets {targets} ms")
    wall.add("1_searches", time.perf_counter() - t0)
    runs = []
    for tgt in targets:
        t0 = time.perf_counter()
        cfg = _cfg(args, root, f"target-{tgt:g}ms{search_tag(args)}", tgt, search=True)
        try:
            run(cfg, _Progress(f"target {tgt:g} ms"))
            runs.append(_more_seeds(args, cfg, _found(cfg, tgt)))
        except (RunError, ValueError, RuntimeError, OSError) as e:  # recorded; the other targets go on
            log(f"target {tgt:g} ms: the run failed: {_error(e)}")
            runs.append({"run": cfg.out, "target_ms": tgt, "error": _error(e)})
        wall.add("1_searches", time.perf_counter() - t0)
    return rng, targets, runs


# ---- 2. and 3. networks trained and timed here ----------------------------------------------

def _record(root: Path, name: str) -> Path:
    return root / "nets" / f"{_slug(name)}.json"


def _load_record(path: Path) -> NetResult:
    known = {f.name for f in fields(NetResult)}
    return NetResult(**{k: v for k, v in json.loads(path.read_text()).items() if k in known})


def _train_net(args, root: Path, arch, name: str, family: str, choices: list[int] | None, pred) -> NetResult:
    """Train ``arch`` with the runs' recipe (every seed; each seed's result is kept, so a kill loses
    one training at most); the record is written to ``nets/<name>.json`` at once. A recorded
    training is reused (with fewer seeds than --seeds, the missing seeds are trained and its
    measurement is kept); a recorded failure is tried again."""
    from hwnas.pipeline import train_seeds

    done = _record(root, name)
    kept: dict[str, Any] = {}
    spent = 0.0  # training seconds of the seeds trained before
    if done.exists():
        old = _load_record(done)
        if old.test_acc is not None and len(old.test_acc_seeds) >= args.seeds:
            return old
        if old.test_acc is None:
            log(f"{name}: failed before ({old.error}); trying again")
        else:  # the seeds already trained are reused by train_seeds
            spent = old.train_seconds or 0.0
        if old.measured_ms is not None:  # the timing stands
            kept = {k: getattr(old, k) for k in ("measured_ms", "p10_ms", "p90_ms", "timing_call_seconds")}
    cfg = _cfg(args, root, "nets", None, args.seeds)
    base = dict(name=name, family=family, key=arch.key, choices=choices,
                predicted_ms=None if pred is None else float(pred.predict_network_ms(arch)))
    t0 = time.perf_counter()
    log(f"{name}: training {cfg.seeds} seeds x {cfg.train_epochs} epochs")
    try:
        tr = train_seeds(cfg, arch, root / "train" / _slug(name), _Progress(name))
        res = NetResult(**base, **kept, test_acc=tr.test_acc, test_acc_seeds=list(tr.test_acc_seeds),
                        train_seconds=round(spent + time.perf_counter() - t0, 1))
        log(f"{name}: test accuracy {res.test_acc:.4f} (seeds {res.test_acc_seeds})")
    except Exception as e:  # any failure of this network is its result, not the benchmark's end
        res = NetResult(**base, **kept, train_seconds=round(time.perf_counter() - t0, 1),
                        error=f"training: {_error(e)}")
        log(f"{name}: {res.error}")
    _write(done, asdict(res))
    return res


def _time_nets(args, root: Path, nets: list[tuple[Any, NetResult]], part: str) -> list[NetResult]:
    """Time the networks of a part that have no measurement yet, in one harness call (one timing
    worker, compiles in parallel; the store keeps what a killed call finished), and write each
    final record. A network that cannot be timed keeps the harness's reason."""
    from hwnas.pipeline import failed_rows, measured_rows, timing_protocol
    from profiler.harness import profile

    todo = [(a, n) for a, n in nets if n.measured_ms is None]
    if not todo:
        return [n for _, n in nets]
    cfg = _cfg(args, root, "nets", None)
    log(f"{part}: timing {len(todo)} networks on executorch")
    t0 = time.perf_counter()
    try:
        # as the pipeline times its networks; a failure stored by an earlier session is tried again
        profile([a for a, _ in todo], cfg.backend, cfg.db, device=cfg.device, threads=cfg.threads,
                protocol=timing_protocol(cfg), cache_dir=cfg.cache_dir, progress=_Progress(part), retry_failed=True,
                processes=cfg.processes)
        crash = None
    except Exception as e:
        crash = _error(e)
    keys = [a.key for a, _ in todo]
    got = measured_rows(cfg, keys, "network")
    why = failed_rows(cfg, [k for k in keys if k not in got], "network")
    sec = round(time.perf_counter() - t0, 1)
    timed = {}
    for a, n in todo:
        m = got.get(a.key)
        err = n.error if n.error and n.error.startswith("training") else None
        if m is None:
            err = (err + "; " if err else "") + f"timing: {why.get(a.key) or crash or 'no measurement stored'}"
        res = NetResult(**dict(asdict(n), measured_ms=m["median_ms"] if m else None, p10_ms=m["p10_ms"] if m else None,
                               p90_ms=m["p90_ms"] if m else None, timing_call_seconds=sec, error=err))
        _write(_record(root, n.name), asdict(res))
        log(f"{n.name}: " + (f"{res.measured_ms:.4g} ms" if m else res.error))
        timed[a.key] = res
    return [timed.get(a.key, n) for a, n in nets]


def part_family(args, root: Path, wall: _Wall, pred) -> list[NetResult]:
    from profiler.spaces import load_space

    space = load_space(SPACE)
    nets = []
    for op in UNIFORM_OPS:
        t0 = time.perf_counter()
        c = space.uniform_choices(op)
        a = space.arch(c, f"{SPACE}-uniform-{op}")
        nets.append((a, _train_net(args, root, a, op, "uniform", c, pred)))
        wall.add("2_uniform_family", time.perf_counter() - t0)
    for w in args.widths:
        t0 = time.perf_counter()
        if space.width_stages:  # the space's own stage widths: blocks profiled, predicted, inherited
            c = space.uniform_choices("k3e6", w)
            a = space.arch(c, f"{SPACE}-uniform-k3e6-w{w:g}")
            nets.append((a, _train_net(args, root, a, f"k3e6 x{w:g}", "width", c, pred)))
        else:  # a copy of the space with every width scaled (stem and first block too)
            ws = load_space(str(_width_space(root, w)))
            a = ws.arch(ws.uniform_choices("k3e6"), f"{SPACE}-uniform-k3e6-w{w:g}")
            nets.append((a, _train_net(args, root, a, f"k3e6 x{w:g}", "width", None, None)))
        wall.add("2_uniform_family", time.perf_counter() - t0)
    t0 = time.perf_counter()
    out = _time_nets(args, root, nets, "uniform family")
    wall.add("2_uniform_family", time.perf_counter() - t0)
    return out


def random_choices(space, n: int, seed: int, exclude: list[list[int]]) -> list[list[int]]:
    """``n`` distinct networks of ``space``, each searchable layer's candidate drawn uniformly with
    the generator seeded by ``seed`` (then, in a space with widths, each stage's width), none in
    ``exclude``; the first k of n are the k drawn for k."""
    rng = np.random.default_rng(seed)
    seen = {tuple(c) for c in exclude}
    out: list[list[int]] = []
    for _ in range(1000 * max(n, 1)):  # the space has ~10^5 networks: this ends long before the bound
        if len(out) == n:
            break
        c = tuple(int(rng.integers(len(space.layers[i].candidates))) for i in space.searchable)
        c += tuple(int(rng.integers(len(space.widths))) for _ in range(space.width_stages))
        if c not in seen:
            seen.add(c)
            out.append(list(c))
    return out


def part_random(args, root: Path, wall: _Wall, pred) -> list[NetResult]:
    from profiler.spaces import load_space

    space = load_space(SPACE)
    uniform = [space.uniform_choices(op) for op in UNIFORM_OPS]
    if space.width_stages:
        uniform += [space.uniform_choices("k3e6", w) for w in args.widths]
    picks = random_choices(space, args.random, args.random_seed, uniform)
    nets = []
    for i, c in enumerate(picks):
        t0 = time.perf_counter()
        a = space.arch(c, f"{SPACE}-random-{i}")
        nets.append((a, _train_net(args, root, a, f"random-{i}", "random", c, pred)))
        wall.add("3_random", time.perf_counter() - t0)
    t0 = time.perf_counter()
    out = _time_nets(args, root, nets, "random networks")
    wall.add("3_random", time.perf_counter() - t0)
    return out


# ---- 4. the supernet -------------------------------------------------------------------------

def part_supernet(args, root: Path, wall: _Wall, runs: list[dict[str, Any]], nets: list[NetResult]) -> dict[str, Any]:
    """Inherited against from-scratch accuracy on the middle target's supernet."""
    from search.train import inherited_accuracy

    t0 = time.perf_counter()
    mid = runs[len(runs) // 2]
    warm = [{"target_ms": r["target_ms"], "train_acc_after_warmup": r.get("train_acc_after_warmup")} for r in runs]
    out: dict[str, Any] = {"supernet_of": mid["run"], "target_ms": mid["target_ms"], "train_acc_after_warmup": warm}
    if mid.get("error"):
        return dict(out, error=f"the middle target's run failed: {mid['error']}")
    subs = [n for n in nets if n.family in ("uniform", "width", "random") and n.choices is not None]
    found = NetResult(name=f"found {mid['target_ms']:g} ms", family="found", key=mid["key"], choices=mid["choices"],
                      test_acc=mid["test_acc"], test_acc_seeds=mid["test_acc_seeds"], measured_ms=mid["measured_ms"])
    subs.append(found)
    # choices -> inherited accuracy, one file per supernet (deterministic for a supernet: computed once).
    # Before 2026-12-03 one root/inherited.json served every search of the work folder, so a search
    # seed's or --skip-drop's supernet reused the default's numbers; that file is no longer read.
    done = inherited_cache(root, Path(mid["run"]))
    cached = json.loads(done.read_text()) if done.exists() else {}
    todo = [n for n in subs if json.dumps(n.choices) not in cached]
    if todo:
        log(f"inherited accuracy of {len(todo)} sub-networks of {mid['run']}/search (BN recalibrated)")
        try:
            accs = inherited_accuracy(Path(mid["run"]) / "search", [n.choices for n in todo],
                                      threads=len(os.sched_getaffinity(0)))
        except Exception as e:
            wall.add("4_supernet", time.perf_counter() - t0)
            return dict(out, error=f"inherited accuracy: {_error(e)}")
        cached.update({json.dumps(n.choices): a for n, a in zip(todo, accs)})
        _write(done, cached)
    rows = [{"name": n.name, "family": n.family, "choices": n.choices,
             "inherited_acc": cached[json.dumps(n.choices)], "scratch_acc": n.test_acc} for n in subs]
    pairs = [(r["inherited_acc"], r["scratch_acc"]) for r in rows if r["scratch_acc"] is not None]
    tau, p = _tau(*zip(*pairs)) if len(pairs) >= 3 else (None, None)
    wall.add("4_supernet", time.perf_counter() - t0)
    return dict(out, networks=rows, n=len(pairs), kendall_tau=tau, kendall_p=p,
                scratch_split_half=split_half_tau(subs, [r["inherited_acc"] for r in rows]))


def inherited_cache(root: Path, run: Path) -> Path:
    """Where the inherited accuracies of the supernet of search run `run` are kept."""
    return root / "inherited" / f"{run.name}.json"


def seeds_by_name(res: dict[str, Any]) -> dict[str, list[float]]:
    """Every trained network's seed accuracies in a result file, by the name the supernet rows use."""
    seeds = {n["name"]: n["test_acc_seeds"] for n in res["networks"]}
    seeds.update({f"found {r['target_ms']:g} ms": r["test_acc_seeds"] for r in res["searches"]["runs"]
                  if not r.get("error")})
    return seeds


def _tau(a, b) -> tuple[float | None, float | None]:
    from scipy.stats import kendalltau

    kt = kendalltau(a, b)
    return (None if np.isnan(kt.statistic) else float(kt.statistic)), (None if np.isnan(kt.pvalue) else float(kt.pvalue))


def split_half_tau(subs: list[NetResult], inherited: list[float]) -> dict[str, Any]:
    """How well training from scratch ranks the sub-networks against itself: the seeds of every
    network split in two halves (the first and the second half of its seeds; seed 0 against seed 1
    with two), the Kendall tau between the halves' mean accuracies, beside the tau of the inherited
    accuracies against each half. A supernet cannot be shown to rank better than the from-scratch
    reference agrees with itself; the half-against-half tau is that reference's own reproducibility
    at this recipe (with more seeds, the mean of all of them is a sharper reference than either half)."""
    k = min((len(n.test_acc_seeds) for n in subs), default=0)
    if k < 2 or len(subs) < 3:
        return {"seeds": k, "networks": len(subs), "tau_half_vs_half": None}
    a = [float(np.mean(n.test_acc_seeds[:k // 2])) for n in subs]
    b = [float(np.mean(n.test_acc_seeds[k // 2:k])) for n in subs]
    hh, hp = _tau(a, b)
    ia, _ = _tau(inherited, a)
    ib, _ = _tau(inherited, b)
    return {"seeds": k, "networks": len(subs), "halves": [list(range(k // 2)), list(range(k // 2, k))],
            "tau_half_vs_half": hh, "p_half_vs_half": hp, "tau_inherited_vs_first_half": ia,
            "tau_inherited_vs_second_half": ib}


# ---- 5. and 6. analysis ----------------------------------------------------------------------

def seed_spread(nets: list[NetResult]) -> dict[str, Any]:
    """Largest gap between two seeds of any network (max - min of its seeds) and the pooled standard
    deviation of a training (`hwnas.report.pooled_seed_std`), in accuracy shares."""
    from hwnas.report import pooled_seed_std

    many = [n for n in nets if len(n.test_acc_seeds) > 1]
    if not many:
        return {"max_abs_diff": None, "pooled_std": None, "networks": 0}
    worst = max(many, key=lambda n: max(n.test_acc_seeds) - min(n.test_acc_seeds))
    sd, dof = pooled_seed_std([n.test_acc_seeds for n in many])
    return {"max_abs_diff": max(worst.test_acc_seeds) - min(worst.test_acc_seeds), "max_abs_diff_network": worst.name,
            "pooled_std": sd, "dof": dof, "networks": len(many)}


def t_margin(f: NetResult, b: NetResult, pooled_std: float, dof: int) -> float:
    """Half-width (accuracy share) of the 95 % confidence interval of the difference between the mean
    accuracies of ``f`` and ``b`` (`hwnas.report.mean_margin`): two networks whose means differ by less
    are as accurate as far as their seeds can tell."""
    from hwnas.report import mean_margin

    return mean_margin(len(f.test_acc_seeds), len(b.test_acc_seeds), pooled_std, dof)


def architecture_effect(nets: list[NetResult]) -> dict[str, Any]:
    """One-way ANOVA of test accuracy over ``nets`` (each a group of its seeds): do the networks'
    accuracies differ by more than seed-to-seed noise explains? F, its p-value, and the share of the
    accuracy variance that lies between networks (eta squared). A milder test than the largest seed
    gap (which one unlucky pair of seeds decides), and the usual one for "architectures differ"."""
    from scipy.stats import f_oneway

    groups = [n.test_acc_seeds for n in nets if len(n.test_acc_seeds) > 1]
    if len(groups) < 2:
        return {"networks": len(groups), "F": None, "p": None, "eta_squared": None, "differs": None}
    res = f_oneway(*groups)
    allv = np.concatenate([np.asarray(g, dtype=float) for g in groups])
    between = sum(len(g) * (np.mean(g) - allv.mean()) ** 2 for g in groups)
    total = float(np.sum((allv - allv.mean()) ** 2))
    return {"networks": len(groups), "F": float(res.statistic), "p": float(res.pvalue),
            "eta_squared": None if total == 0 else float(between / total), "differs": bool(res.pvalue < 0.05)}


def _member(n: NetResult) -> dict[str, Any]:
    return {"op": n.name, "acc": n.test_acc, "accs": n.test_acc_seeds, "ms": n.measured_ms}


def _goal(f: NetResult, family: list[NetResult], baselines: list[NetResult], margin) -> dict[str, Any]:
    """The issue's goal for ``f`` with "as accurate" meaning a difference of means within ``margin(b)``
    (accuracy share) of baseline ``b``: the fastest family member as accurate and the speed-up over it,
    or more accurate by more than the margin than every baseline that is no slower (vacuous, so not
    counted, when no baseline is as fast)."""
    peers = [m for m in family if abs(m.test_acc - f.test_acc) <= margin(m)]
    best = min(peers, key=lambda m: m.measured_ms) if peers else None
    no_slower = [b for b in baselines if b.measured_ms <= f.measured_ms]
    faster = best is not None and best.measured_ms / f.measured_ms >= GOAL_SPEEDUP
    more = bool(no_slower) and all(f.test_acc - b.test_acc > margin(b) for b in no_slower)
    return {"best": best, "peers": [m.name for m in peers], "no_slower": [b.name for b in no_slower],
            "less_accurate_than": [m.name for m in family if m.test_acc - f.test_acc > margin(m)],
            "goal_speedup_met": faster, "goal_more_accurate_met": more, "goal": faster or more}


def judge(f: NetResult, family: list[NetResult], randoms: list[NetResult], spread: float | None,
          pooled: tuple[float, int] | None = None) -> dict[str, Any]:
    """Point 6 for one found network (every input measured; baselines that failed are left out).
    ``spread``: the largest seed gap, the tolerance of "as accurate" that the issue's goal uses;
    ``pooled`` (pooled seed std, its degrees of freedom): the same goal judged with `t_margin` too."""
    from hwnas.report import compare

    family = [n for n in family if n.ok]
    baselines = family + [n for n in randoms if n.ok]
    out: dict[str, Any] = {"vs_uniform_family": compare(_member(f), [_member(n) for n in family]),
                           "vs_random": compare(_member(f), [_member(n) for n in randoms if n.ok], family="random")}
    # Pareto front of the baselines: the found network is on or above it where no baseline is no
    # slower and more accurate (means; and, more leniently, by more than the seed spread)
    out["dominated_by"] = [b.name for b in baselines if b.measured_ms <= f.measured_ms and b.test_acc > f.test_acc]
    out["on_or_above_pareto_front"] = not out["dominated_by"]
    if spread is None:
        return dict(out, goal=None, goal_note="no seed spread: the goal cannot be judged")
    out["dominated_by_more_than_spread"] = [b.name for b in baselines if b.measured_ms <= f.measured_ms
                                            and b.test_acc > f.test_acc + spread]
    g = _goal(f, family, baselines, lambda b: spread)
    best = g.pop("best")
    out["fastest_uniform_as_accurate"] = None if best is None else {
        "name": best.name, "measured_ms": best.measured_ms, "test_acc": best.test_acc,
        "speedup": best.measured_ms / f.measured_ms}
    out["baselines_no_slower"] = g.pop("no_slower")
    out.update(goal_speedup_met=g["goal_speedup_met"], goal_more_accurate_met=g["goal_more_accurate_met"],
               goal=g["goal"])
    if pooled is not None:
        # the same test with "as accurate" read statistically: the means' difference inside its 95 % interval
        sd, dof = pooled
        t = _goal(f, family, baselines, lambda b: t_margin(f, b, sd, dof))
        best_t = t.pop("best")
        t.pop("no_slower")
        out["t_test"] = {
            "as_accurate_uniform": t.pop("peers"), "less_accurate_than": t.pop("less_accurate_than"),
            "fastest_uniform_as_accurate": None if best_t is None else {
                "name": best_t.name, "measured_ms": best_t.measured_ms, "test_acc": best_t.test_acc,
                "speedup": best_t.measured_ms / f.measured_ms, "margin": t_margin(f, best_t, sd, dof)}, **t}
    return out


def analyse(runs: list[dict[str, Any]], family: list[NetResult], randoms: list[NetResult]) -> dict[str, Any]:
    found = [NetResult(name=f"found {r['target_ms']:g} ms", family="found", key=r["key"], choices=r["choices"],
                       test_acc=r["test_acc"], test_acc_seeds=r["test_acc_seeds"], measured_ms=r["measured_ms"],
                       p10_ms=r["p10_ms"], p90_ms=r["p90_ms"], predicted_ms=r["predicted_ms"])
             for r in runs if not r.get("error")]
    # several targets may find the same network (trained with the same seeds): it counts once
    distinct = list({n.key: n for n in found}.values())
    spread = seed_spread([n for n in family + randoms + distinct if n.test_acc is not None])
    fam = [n for n in family if n.ok]
    ke = [n for n in fam if n.family == "uniform"]

    def span(ns):
        return None if len(ns) < 2 else max(n.test_acc for n in ns) - min(n.test_acc for n in ns)

    fs = span(fam)
    tol = spread["max_abs_diff"]
    fam_spread = {"all_members": fs, "kernel_expand_only": span(ke),
                  "members": [n.name for n in fam],
                  "differs_more_than_seed_spread": None if fs is None or tol is None else bool(fs > tol),
                  # the same question asked with the seeds of every member (one-way ANOVA, p < 0.05)
                  "anova_family": architecture_effect(fam),
                  "anova_all_baselines": architecture_effect(fam + [n for n in randoms if n.ok])}
    pooled = (spread["pooled_std"], spread["dof"]) if spread.get("pooled_std") else None
    per_found = [dict(target_ms=r["target_ms"], name=f.name, **judge(f, family, randoms, tol, pooled))
                 for r, f in zip([r for r in runs if not r.get("error")], found)]
    return {"seed_spread": spread, "family_spread": fam_spread, "found": per_found,
            "any_goal_met": any(p.get("goal") for p in per_found),
            "any_goal_met_t_test": any((p.get("t_test") or {}).get("goal") for p in per_found),
            "goal": f"at least {GOAL_SPEEDUP}x faster than the fastest uniform network (kernel x expand or "
                    "width-scaled) at least as accurate as it within the seed spread, or more accurate by more than "
                    "the seed spread than every baseline (uniform, width-scaled, random) that is no slower"}


# ---- output ----------------------------------------------------------------------------------

def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, FuncFormatter

    fig, ax = plt.subplots(figsize=(8, 5.8))
    nets = [NetResult(**n) for n in res["networks"]]
    by_key: dict[str, list[dict[str, Any]]] = {}  # several targets may find one network: one point, every target
    for r in res["searches"]["runs"]:
        if not r.get("error"):
            by_key.setdefault(r["key"], []).append(r)
    found = [NetResult(name="found " + ", ".join(f"{r['target_ms']:g}" for r in rs) + " ms", family="found",
                       key=k, choices=rs[0]["choices"], test_acc=rs[0]["test_acc"],
                       test_acc_seeds=rs[0]["test_acc_seeds"], measured_ms=rs[0]["measured_ms"])
             for k, rs in by_key.items()]
    style = {"uniform": ("o", "tab:blue", "uniform kernel x expand (every layer the same)"),
             "width": ("s", "tab:green", "uniform k3e6, widths scaled"),
             "random": ("^", "0.45", "random networks of the space"),
             "found": ("*", "tab:red", "found by the search (target in ms)")}
    for fam, (marker, color, label) in style.items():
        pts = [n for n in nets + found if n.family == fam and n.ok]
        if not pts:
            continue
        x = [n.measured_ms for n in pts]
        y = [100 * n.test_acc for n in pts]
        yerr = [[100 * (n.test_acc - min(n.test_acc_seeds)) for n in pts],
                [100 * (max(n.test_acc_seeds) - n.test_acc) for n in pts]]
        ax.errorbar(x, y, yerr=yerr, fmt=marker, color=color, ms=14 if fam == "found" else 7, capsize=3,
                    label=label, zorder=3 if fam == "found" else 2, mfc="none" if fam == "width" else color)
        if fam in ("uniform", "width", "found"):
            for n in pts:
                ax.annotate(n.name.replace("found ", "target "), (n.measured_ms, 100 * n.test_acc),
                            textcoords="offset points", xytext=(5, -11 if fam == "found" else 4), fontsize=7,
                            color=color)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    # minor ticks labelled at 2, 3 and 5 x a power of ten only: 0.08 and 0.09 written side by side overlap
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "235" else ""))
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("measured latency, ExecuTorch XNNPACK, 1 thread (ms, median; log scale)")
    ax.set_ylabel(f"test accuracy, Fashion-MNIST 10,000 test images (%)\nmean of {len(res['config']['seeds'])} "
                  "seeds; bars: lowest to highest seed")
    m, c = res["machine"], res["config"]
    ax.set_title(f"{SPACE} on {DATA} ({c['limit']} training images, {c['train_epochs']} epoch"
                 f"{'' if c['train_epochs'] == 1 else 's'} each)"
                 f"{' SMOKE' if c['smoke'] else ''}\n{m['cpu_model']}, {m['cores']} cores", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _acc(n: dict[str, Any] | NetResult) -> str:
    d = asdict(n) if isinstance(n, NetResult) else n
    if d.get("test_acc") is None:
        return "—"
    return f"{d['test_acc']:.4f} ({', '.join(f'{a:.4f}' for a in d['test_acc_seeds'])})"


def _f(v: float | None, fmt: str = ".4g") -> str:
    return "—" if v is None else format(v, fmt)


def tables(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=160)
    m = res["machine"]
    s = res["searches"]
    t = Table(title=f"1. searches ({m['cpu_model']}, {m['cores']} cores; predicted fastest network "
                    f"{s['predicted']['space_fastest_ms']:.4g} ms, fastest uniform "
                    f"{min(s['predicted']['uniform_predicted_ms'].values()):.4g} ms)")
    for c in ("target ms", "choices", "predicted ms", "measured ms", "meas./target", "<= target +10%",
              "test acc (seeds)", "train acc after warm-up"):
        t.add_column(c, justify="right")
    for r in s["runs"]:
        if r.get("error"):
            t.add_row(f"{r['target_ms']:g}", f"FAILED: {r['error']}", *[""] * 6)
            continue
        t.add_row(f"{r['target_ms']:g}", str(r["choices"]), f"{r['predicted_ms']:.4f}", f"{r['measured_ms']:.4f}",
                  f"{r['measured_over_target']:.2f}", "yes" if r["within_10pct_or_below"] else "NO", _acc(r),
                  _f(r["train_acc_after_warmup"], ".4f"))
    con.print(t)
    sup = res["supernet"]
    inh = {json.dumps(r["choices"]): r["inherited_acc"] for r in sup.get("networks", [])}
    t = Table(title="2./3. networks trained and timed here (ExecuTorch, measured)")
    for c in ("network", "family", "measured ms (p10-p90)", "predicted ms", "test acc (seeds)",
              "inherited acc", "train s", "error"):
        t.add_column(c, justify="right")
    for n in res["networks"]:
        ms = "—" if n["measured_ms"] is None else f"{n['measured_ms']:.4f} ({n['p10_ms']:.4f}-{n['p90_ms']:.4f})"
        t.add_row(n["name"], n["family"], ms, _f(n["predicted_ms"]), _acc(n),
                  _f(inh.get(json.dumps(n["choices"])) if n["choices"] else None, ".4f"),
                  _f(n["train_seconds"], ".0f"), n["error"] or "")
    con.print(t)
    if sup.get("error"):
        con.print(f"4. supernet: {sup['error']}")
    else:
        f = sup["networks"][-1]
        con.print(f"4. supernet of {sup['supernet_of']}: Kendall tau inherited vs from-scratch accuracy "
                  f"{_f(sup['kendall_tau'], '.3f')} (p {_f(sup['kendall_p'], '.2g')}) over {sup['n']} sub-networks; "
                  f"found network inherits {f['inherited_acc']:.4f} (from scratch {_f(f['scratch_acc'], '.4f')})")
        sh = sup.get("scratch_split_half") or {}
        if sh.get("tau_half_vs_half") is not None:
            h1, h2 = (", ".join(map(str, h)) for h in sh["halves"])
            con.print(f"   from scratch against itself (seeds {h1} against {h2}, {sh['networks']} sub-networks): "
                      f"Kendall tau {sh['tau_half_vs_half']:.3f} (p {_f(sh['p_half_vs_half'], '.2g')}); inherited "
                      f"against each half {_f(sh['tau_inherited_vs_first_half'], '.3f')} / "
                      f"{_f(sh['tau_inherited_vs_second_half'], '.3f')}")
    con.print("   train accuracy after the warm-up: " + ", ".join(
        f"{w['target_ms']:g} ms {_f(w['train_acc_after_warmup'], '.4f')}" for w in sup["train_acc_after_warmup"]))
    a = res["analysis"]
    sp, fs = a["seed_spread"], a["family_spread"]
    con.print(f"5. seed spread: largest seed gap (max - min) {_f(sp['max_abs_diff'], '.4f')} "
              f"({sp.get('max_abs_diff_network')}), "
              f"pooled std {_f(sp['pooled_std'], '.4f')} over {sp['networks']} networks; uniform family spread "
              f"(max - min of means) {_f(fs['all_members'], '.4f')} "
              f"(kernel x expand only {_f(fs['kernel_expand_only'], '.4f')}): "
              + {None: "cannot tell", True: "the family differs by MORE than the seed spread",
                 False: "the family differs by no more than the seed spread"}[fs["differs_more_than_seed_spread"]])
    for label, k in (("uniform family", "anova_family"), ("every baseline", "anova_all_baselines")):
        an = fs.get(k) or {}
        if an.get("F") is not None:
            con.print(f"   one-way ANOVA over the seeds, {label} ({an['networks']} networks): F {an['F']:.2f}, "
                      f"p {an['p']:.2g}, between-network share of the variance {an['eta_squared']:.2f}: "
                      + ("architecture changes accuracy beyond the seed noise" if an["differs"]
                         else "no difference beyond the seed noise"))
    t = Table(title="6. found networks against the baselines")
    for c in ("found", "vs uniform family", "vs random", "Pareto", "fastest uniform as accurate", "goal",
              "by t-test: as accurate / goal"):
        t.add_column(c)
    for p in a["found"]:
        fu = p.get("fastest_uniform_as_accurate")
        tt = p.get("t_test") or {}
        ft = tt.get("fastest_uniform_as_accurate")
        t.add_row(p["name"], p["vs_uniform_family"]["verdict"], p["vs_random"]["verdict"],
                  "on/above" if p["on_or_above_pareto_front"] else f"below ({', '.join(p['dominated_by'])})",
                  "none" if not fu else f"{fu['name']}: {fu['speedup']:.2f}x",
                  {None: "—", True: "MET", False: "missed"}[p.get("goal")],
                  ("none" if not ft else f"{ft['name']}: {ft['speedup']:.2f}x (margin {100 * ft['margin']:.2f} pt)")
                  + " / " + {None: "—", True: "MET", False: "missed"}[tt.get("goal")])
    con.print(t)
    con.print(f"goal ({a['goal']}): {'met' if a['any_goal_met'] else 'missed'}; with \"as accurate\" by a t-test on "
              f"the means (95 %): {'met' if a.get('any_goal_met_t_test') else 'missed'}")
    con.print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in res["wall_seconds"].items()))


# ---- the benchmark ---------------------------------------------------------------------------

def bench(args) -> dict[str, Any]:
    from hwnas.pipeline import load_run_predictor
    from hwnas.rundir import Run

    root = Path(args.work)
    if args.fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    info = machine()
    resumed = (root / "wall.json").exists()
    log(f"machine: {info['cpu_model']}, {info['cores']} cores, load {info['loadavg_start']}; work folder {root}"
        + (" (resuming)" if resumed else ""))
    wall = _Wall(root)
    t_all = time.perf_counter()
    rng, targets, runs = part_searches(args, root, wall)
    pred = load_run_predictor(Run(root / "probe"))
    family = part_family(args, root, wall, pred)
    randoms = part_random(args, root, wall, pred)
    sup = part_supernet(args, root, wall, runs, family + randoms)
    t0 = time.perf_counter()
    ana = analyse(runs, family, randoms)
    wall.add("5_6_analysis", time.perf_counter() - t0)
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    cfg = _cfg(args, root, "<run>", None)
    return {
        "benchmark": "search_quality", "issue": 12, "date": datetime.date.today().isoformat(), "machine": info,
        "command": " ".join([".venv/bin/python", "benchmarks/search_quality.py", *sys.argv[1:]]),
        "config": {"space": SPACE, "data": DATA, "limit": args.limit, "test_images": 10_000,
                   "search_epochs": args.search_epochs, "warmup_epochs": args.warmup_epochs,
                   "train_epochs": args.train_epochs, "seeds": list(range(args.seed, args.seed + args.seeds)), "batch_size": cfg.batch_size,
                   "search_seed": args.search_seed, "skip_drop": args.skip_drop,
                   "found_seeds": list(range(args.search_seed, args.search_seed + args.seeds)),
                   "weights": cfg.weights, "loss": "abs", "weight": cfg.weight, "lat_temperature": cfg.lat_temperature,
                   "arch_lr": cfg.arch_lr, "search_lr": cfg.search_lr, "calibrate": args.calibrate,
                   "timing": "executorch (XNNPACK), local, 1 thread, " + ("quick" if args.smoke else "default")
                             + " timing protocol",
                   "target_ladder": args.ladder,
                   "target_rule": "T = fastest x (fastest uniform / fastest)^s (predicted ms, probe's predictor)",
                   "widths": args.widths, "random": args.random, "random_seed": args.random_seed,
                   "smoke": args.smoke, "work": str(root), "resumed": resumed,
                   "pipeline": "hwnas.pipeline.run per target (baseline=[]); the family and the random networks are "
                               "trained with the pipeline's train stage (hwnas.pipeline.train_seeds, same options) and "
                               "timed "
                               "with the harness as the pipeline times networks, in the same store"},
        "searches": {"predicted": rng, "targets_ms": targets, "runs": runs,
                     "all_within_10pct_or_below": all(r.get("within_10pct_or_below") for r in runs)},
        "networks": [asdict(n) for n in family + randoms],
        "supernet": sup,
        "analysis": ana,
        "wall_seconds": dict(wall.sec, this_session_total=round(time.perf_counter() - t_all, 1)),
    }


def _floats(text: str, what: str) -> list[float]:
    try:
        v = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: give comma-separated numbers, e.g. 0.25,0.5,0.75") from None
    if not v:
        raise argparse.ArgumentTypeError(f"{what}: give at least one number")
    return v


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="tiny-mnist", choices=("tiny-mnist", "tiny-mnist-w"),
                    help="the search space: tiny-mnist (kernel x expand x skip per layer) or tiny-mnist-w (the same, "
                         "and a width per stage: x0.5, x0.75, x1; the searches choose widths too, and the width-scaled "
                         "k3e6 networks are the space's own). Default tiny-mnist; other spaces' work folders and "
                         "results are named after them")
    ap.add_argument("--work", help="work folder: store, compile cache, run folders, per-network results (resumable; "
                                   "default runs/bench-search-quality, with --smoke runs/bench-search-quality-smoke)")
    ap.add_argument("--fresh", action="store_true", help="delete --work first (everything trained and timed again)")
    ap.add_argument("--limit", type=int, help="training images of Fashion-MNIST (count; default 10000, smoke 600)")
    ap.add_argument("--train-epochs", type=int, help="epochs of training from scratch, every network and seed "
                                                     "(count; default 3, smoke 1)")
    ap.add_argument("--search-epochs", type=int,
                    help="epochs of each search, warm-up included (count; default 6, smoke 2)")
    ap.add_argument("--warmup-epochs", type=int, default=1, help="weight-only epochs of each search (count; default 1)")
    ap.add_argument("--calibrate", type=int, help="networks timed end to end for the predictor's network model "
                                                  "(count; default 10, smoke 4)")
    ap.add_argument("--ladder", default="0.25,0.5,0.75",
                    type=lambda s: _floats(s, "--ladder"),
                    help="targets T = fastest x (fastest uniform / fastest)^s, one search per s (unitless exponents; "
                         "0: the space's fastest network, 1: its fastest uniform network; default 0.25,0.5,0.75)")
    ap.add_argument("--widths", default="0.5,0.75", type=lambda s: _floats(s, "--widths"),
                    help="width multipliers of the uniform k3e6 network (unitless; default 0.5,0.75)")
    ap.add_argument("--random", type=int, help="random networks of the space (count; default 10, smoke 3)")
    ap.add_argument("--random-seed", type=int, default=0, help="seed of the random networks' draw (default 0)")
    ap.add_argument("--seed", type=int, default=0, help="first training seed; the others follow it (default 0)")
    ap.add_argument("--seeds", type=int, default=2,
                    help="training seeds of every network trained from scratch (count, at least 2; default 2). The "
                         "searches' runs train their found network with 2; the benchmark trains it with the rest. "
                         "Raised on a finished work folder, only the missing seeds are trained")
    ap.add_argument("--skip-drop", type=float, default=0.0,
                    help="the searches' stochastic depth (`hwnas run --skip-drop`: each skippable layer skipped with "
                         "this probability in a weight step; share, 0 to below 1; default 0). Run folders and result "
                         "are named after it; the family and the random networks are reused")
    ap.add_argument("--search-seed", type=int,
                    help="seed of the searches' runs (sampling, supernet weights, calibration draw) and first training "
                         "seed of their found networks (default: --seed). Run folders and result are named after it")
    ap.add_argument("--out", help="folder of the result files (default benchmarks/results; smoke: the work folder)")
    ap.add_argument("--smoke", action="store_true",
                    help="a check of the script only, a few minutes: 600 images, 1 epoch, 2 search epochs, "
                         "3 random networks, 4 calibration networks, the quick timing protocol (numbers mean nothing)")
    args = ap.parse_args()
    smoke = args.smoke
    for name, full, small in (("limit", 10_000, 600), ("train_epochs", 3, 1), ("search_epochs", 6, 2),
                              ("calibrate", 10, 4), ("random", 10, 3)):
        if getattr(args, name) is None:
            setattr(args, name, small if smoke else full)
    for name in ("limit", "train_epochs", "search_epochs", "random"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} {getattr(args, name)}: give a whole number of at least 1")
    if args.search_seed is None:
        args.search_seed = args.seed
    if not 0 <= args.skip_drop < 1:
        ap.error(f"--skip-drop {args.skip_drop:g}: give a share from 0 to below 1")
    if args.seeds < 2:
        ap.error(f"--seeds {args.seeds}: give at least 2 (the seed-to-seed spread needs two)")
    if args.limit < 128:
        ap.error(f"--limit {args.limit}: give at least 128 training images (two batches of 64 after the valid split)")
    if args.calibrate < 0:
        ap.error(f"--calibrate {args.calibrate}: give 0 or more networks")
    if not 0 <= args.warmup_epochs < args.search_epochs:
        ap.error("need 0 <= --warmup-epochs < --search-epochs")
    if any(w <= 0 for w in args.widths):
        ap.error("--widths: give positive multipliers, e.g. 0.5,0.75")
    global SPACE
    SPACE = args.space
    tag = "" if SPACE == "tiny-mnist" else f"-{SPACE}"
    args.work = args.work or str(ROOT / "runs" / f"bench-search-quality{tag}{'-smoke' if smoke else ''}")
    out_dir = Path(args.out) if args.out else (Path(args.work) if smoke else ROOT / "benchmarks" / "results")
    from profiler.errors import HwnasError

    try:
        res = bench(args)
    except HwnasError as e:  # the probe run could not reach its predictor: nothing to search with
        print(f"search_quality: {e}", file=sys.stderr)
        return 1
    variant = search_tag(args) + (f"-seeds{args.seeds}" if args.seeds != 2 else "")
    out = out_dir / f"search_quality{tag}-{res['date']}{variant}{'-smoke' if smoke else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    plot(res, png)
    res["plot"] = str(png.relative_to(ROOT)) if png.is_relative_to(ROOT) else str(png)
    out.write_text(json.dumps(res, indent=2))
    tables(res)
    print(f"written: {out}\nplot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
