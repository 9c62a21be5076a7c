"""Network-level accuracy of the block-sum latency predictor on this host (ExecuTorch, XNNPACK).

    flock /tmp/hwnas-bench.lock .venv/bin/python benchmarks/predictor_host.py [--networks 100] [--seed 0]
        [--db data/bench-predictor_host.db] [--folds 10] [--out-dir benchmarks/results]

1. Draws ``--networks`` distinct random networks of the proxyless-mobile space (every searchable layer
   uniform over its candidates, the zero op included; fixed seed).
2. Per-block measurements of this host: the shipped data/measurements/*.parquet rows when their
   device id is this host's, otherwise every block of the space is profiled here (default protocol).
3. Each network is measured end to end with the real profiler (`profiler.harness.profile`, ExecuTorch,
   one thread pinned to one core; a shorter timing protocol than the blocks': at least 15 samples,
   at most 3 s).
4. Compares the measured network latency with
   - the block sum of a predictor fitted to the block measurements (`fit_predictor`, hybrid: the
     measured table, so every block of the space is an exact table entry);
   - the block sum plus a per-network overhead (`fit_overhead`), fitted on ``--folds`` folds of the
     networks and scored on the held-out ones;
   - scale x block sum + overhead (least squares), the same folds;
   - block costs refined on the networks (`fit_refined`: a factor per block, shrunk toward 1 by a
     ridge chosen by an inner 5-fold CV on the training networks), the same folds;
   - the FLOPs baseline: latency = a * FLOPs + b fitted on the networks, the same folds;
   and, at block level, the leave-one-out accuracy of the regression on the blocks (auto family).
Metrics (`predictor.metrics`): RMSPE, MAPE, share within +-5 % / +-10 %, Kendall's tau, RMSE (ms).

Writes benchmarks/results/predictor_host-<date>.json (with the machine) and two PNG scatters
(predicted vs measured, +-10 % band). Stores measurements in ``--db`` (resumable: a stopped run
measures only what is missing when started again); the default is a fresh temporary store.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# run as a script, this file's folder comes first on sys.path and its name shadows the `predictor`
# package; drop that entry before importing the package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from predictor import fit_predictor, metrics  # noqa: E402
from predictor.evaluate import Evaluation, cross_validate, plot  # noqa: E402
from predictor.lut import Entry  # noqa: E402
from predictor import fold_indices  # noqa: E402
from predictor.network import fit_overhead, fit_refined  # noqa: E402
from profiler import TimingProtocol, profile  # noqa: E402
from profiler.blocks import flops  # noqa: E402
from profiler.devices import local_id, local_info  # noqa: E402
from profiler.harness import Progress  # noqa: E402
from profiler.spaces import load_space  # noqa: E402
from profiler.store import Store  # noqa: E402

BACKEND = "executorch"
#: networks are timed with fewer samples than blocks (a network lasts tens of ms; 15 samples of one
#: call each give a median whose standard error is well under 1 % on this host)
NET_PROTOCOL = TimingProtocol(min_runs=15, max_runs=60, max_seconds=3.0, target_rel_err=0.01)


class _Print(Progress):
    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.n: dict[str, int] = {}
        self.total: dict[str, int] = {}

    def phase(self, name: str, total: int) -> None:
        self.n[name], self.total[name] = 0, total
        print(f"[{time.perf_counter() - self.t0:7.1f} s] {name}: {total}", flush=True)

    def advance(self, name: str, label: str) -> None:
        self.n[name] += 1
        if self.n[name] % 10 == 0 or self.n[name] == self.total[name]:
            print(f"[{time.perf_counter() - self.t0:7.1f} s] {name} {self.n[name]}/{self.total[name]}", flush=True)

    def message(self, text: str) -> None:
        print(text, flush=True)


def random_archs(space, n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    archs, seen = [], set()
    while len(archs) < n:
        choices = [int(rng.integers(len(space.layers[i].candidates))) for i in space.searchable]
        a = space.arch(choices, f"{space.name}-random")
        if a.key not in seen:
            seen.add(a.key)
            archs.append(a)
    return archs


def shipped_blocks(device_id: str) -> dict[str, Entry] | None:
    """Block medians of this host from data/measurements/*.parquet, or None when no file is of this host."""
    import pandas as pd

    for f in sorted((ROOT / "data" / "measurements").glob("*.parquet")):
        df = pd.read_parquet(f)
        df = df[(df.status == "ok") & (df.kind == "block") & (df.backend == BACKEND) & (df.device_id == device_id)]
        if len(df):
            print(f"block measurements of this host: {f.name} ({len(df)} rows)")
            return {r.block_key: Entry(float(r.median_ms), int(r.n or 0), float((r.std_ms or 0.0) ** 2))
                    for r in df.itertuples()}
    return None


def compile_all(models: list, progress: Progress) -> None:
    """Compile with the profiler's own `compile_many` into its cache (the harness then finds every
    artifact there and only times)."""
    import os

    from profiler.backends import get_backend
    from profiler.compile import compile_many, default_cache_dir

    target = get_backend(BACKEND).target_for("local", None)
    progress.phase("compile", len(models))
    errors = []

    def done(model, art, err, cached) -> None:
        if err:
            errors.append(f"{model.key[:60]}: {err}")
        progress.advance("compile", model.key)

    compile_many(BACKEND, models, target, {}, default_cache_dir(), len(os.sched_getaffinity(0)), done)
    for e in errors[:3]:
        print(f"compile failed: {e}")


def _cv_linear(cols: np.ndarray, y: np.ndarray, folds) -> np.ndarray:
    """Out-of-fold predictions of y = cols @ w (least squares), ms."""
    out = np.empty(len(y))
    for tr, te in folds:
        w, *_ = np.linalg.lstsq(cols[tr], y[tr], rcond=None)
        out[te] = cols[te] @ w
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--networks", type=int, default=100, help="random networks to measure (count)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random networks and the folds")
    ap.add_argument("--folds", type=int, default=10, help="folds of the networks for the fitted network models")
    ap.add_argument("--db", help="SQLite store to keep the measurements in (default: a temporary one)")
    ap.add_argument("--space", default="proxyless-mobile", help="search space (another one for a smoke run)")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--name", help="stem of the result files (default predictor_host-<date>)")
    args = ap.parse_args()
    t_start = time.perf_counter()
    space = load_space(args.space)
    archs = random_archs(space, args.networks, args.seed)
    info = local_info()
    tmp = None
    if args.db:
        db = Path(args.db)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="hwnas-bench-")
        db = Path(tmp.name) / "predictor_host.db"
    progress = _Print()

    # 0. compile every block and network first (into the profiler's compile cache, both cores), so
    # that nothing else runs on this machine once timing starts
    entries = shipped_blocks(info["id"])
    t = time.perf_counter()
    compile_all(([] if entries is not None else space.blocks()) + archs, progress)
    compile_wall_s = time.perf_counter() - t

    # 1. blocks: the shipped rows of this host, or measured here
    block_source = "data/measurements (this host)"
    t = time.perf_counter()
    if entries is None:
        block_source = f"profiled here ({space.name}, default protocol)"
        print(f"no shipped block measurements of {info['id']}: profiling the {len(space.blocks())} blocks", flush=True)
        r = profile(space.blocks(), BACKEND, db, progress=progress)
        if r.failed:
            print(f"warning: {len(r.failed)} block(s) failed: {r.failed[0].error}")
        with Store(db, create=False) as st:
            df = st.dataframe(status="ok", backend=BACKEND, kind="block", device_id=info["id"])
        entries = {r.block_key: Entry(float(r.median_ms), int(r.n or 0), float((r.std_ms or 0.0) ** 2))
                   for r in df.itertuples()}
    blocks_s = time.perf_counter() - t

    # 2. whole networks, end to end
    t = time.perf_counter()
    r = profile(archs, BACKEND, db, protocol=NET_PROTOCOL, progress=progress)
    nets_s = time.perf_counter() - t
    with Store(db, create=False) as st:
        df = st.dataframe(status="ok", backend=BACKEND, kind="network", device_id=info["id"])
        every = st.dataframe(status="ok", backend=BACKEND, device_id=info["id"])
    got = {r.block_key: r for r in df.itertuples()}
    # how quiet the machine was: other processes on a 2-vCPU VM show up as load and as flagged rows
    conditions = {kind: {"rows": int(len(g)),
                         "flags": g["flags"].map(lambda f: ",".join(f) if f else "none").value_counts().to_dict(),
                         "loadavg_1min": [float(g.env_before.map(lambda e: e["loadavg"][0]).min()),
                                          float(g.env_before.map(lambda e: e["loadavg"][0]).max())],
                         "median_cv": float(g.cv.median())}
                  for kind, g in every.groupby("kind")}
    archs_ok = [a for a in archs if a.key in got]
    failed = len(archs) - len(archs_ok)
    if len(archs_ok) < args.folds:
        raise SystemExit(f"benchmark: only {len(archs_ok)} networks measured; see the compile and timing logs")
    y = np.array([got[a.key].median_ms for a in archs_ok])
    net_cv = np.array([got[a.key].cv for a in archs_ok], dtype=float)
    compile_s = [got[a.key].compile_s for a in archs_ok if got[a.key].compile_s is not None]

    # 3. predictions
    pred = fit_predictor(entries, "hybrid", meta={"device_id": info["id"], "backend": BACKEND})
    block_sum = np.array([float(np.sum(pred.predict_ms(a.blocks))) for a in archs_ok])
    net_flops = np.array([sum(flops(b) for b in a.blocks) for a in archs_ok], dtype=float)
    folds = fold_indices(len(y), args.folds, args.seed)
    with_overhead = np.empty(len(y))
    refined = np.empty(len(y))
    overheads, ridges = [], []
    for tr, te in folds:
        p = fit_overhead(pred, [archs_ok[i].blocks for i in tr], y[tr])
        overheads.append(p.overhead_ms)
        with_overhead[te] = [p.predict_network_ms(archs_ok[i]) for i in te]
        p = fit_refined(pred, [archs_ok[i].blocks for i in tr], y[tr], seed=args.seed)
        ridges.append(p.meta["ridge"])
        refined[te] = [p.predict_network_ms(archs_ok[i]) for i in te]
    one = np.ones(len(y))
    scaled = _cv_linear(np.column_stack([block_sum, one]), y, folds)
    flops_net = _cv_linear(np.column_stack([net_flops / 1e6, one]), y, folds)
    # the FLOPs law of the blocks (a * FLOPs + b per block, fitted on the block rows), summed
    bk = [b for a in archs_ok for b in a.blocks]
    from profiler.blocks import BlockSpec

    bl = [BlockSpec.from_key(k) for k in entries]
    by = np.array([e.mean_ms for e in entries.values()])
    bx = np.array([flops(b) / 1e6 for b in bl])
    (slope, icpt), *_ = np.linalg.lstsq(np.column_stack([bx, np.ones(len(bx))]), by, rcond=None)
    flops_blocks = np.array([sum(slope * flops(b) / 1e6 + icpt for b in a.blocks if b.kind != "zero")
                             for a in archs_ok])
    full = np.column_stack([block_sum, one])
    w_all, *_ = np.linalg.lstsq(full, y, rcond=None)

    rows = {
        "block sum (fit_predictor on this host's blocks)": block_sum,
        f"block sum + overhead ({args.folds}-fold CV)": with_overhead,
        f"scale x block sum + overhead ({args.folds}-fold CV)": scaled,
        f"block costs refined on networks ({args.folds}-fold CV)": refined,
        f"FLOPs baseline: a*FLOPs+b on networks ({args.folds}-fold CV)": flops_net,
        "FLOPs baseline: a*FLOPs+b on blocks, summed": flops_blocks,
    }
    scores = {name: metrics(y, p) for name, p in rows.items()}

    # 4. block level: leave-one-out of the regression on the blocks (auto family)
    ev_blocks = cross_validate(bl, by, "auto", "loo", args.seed)

    # 5. report
    print()
    hdr = f"{'model':<58} {'RMSPE %':>8} {'MAPE %':>7} {'<=5 %':>6} {'<=10 %':>7} {'tau':>6} {'RMSE ms':>8}"
    print(f"{len(y)} random {space.name} networks on {info['cpu_model']} ({BACKEND}, 1 thread); "
          f"measured {y.min():.2f}..{y.max():.2f} ms (median {np.median(y):.2f})")
    print(hdr)
    print("-" * len(hdr))
    for name, s in scores.items():
        print(f"{name:<58} {100 * s['rmspe']:8.2f} {100 * s['mape']:7.2f} {100 * s['within_5pct']:5.0f}% "
              f"{100 * s['within_10pct']:6.0f}% {s['kendall_tau']:6.3f} {s['rmse_ms']:8.3f}")
    eb = ev_blocks.scores
    print(f"{'block level: leave-one-out regression on ' + str(eb['n']) + ' blocks':<58} {100 * eb['rmspe']:8.2f} "
          f"{100 * eb['mape']:7.2f} {100 * eb['within_5pct']:5.0f}% {100 * eb['within_10pct']:6.0f}% "
          f"{eb['kendall_tau']:6.3f} {eb['rmse_ms']:8.3f}")
    fb = eb["flops_baseline"]
    print(f"{'  ... its FLOPs baseline (same folds)':<58} {100 * fb['rmspe']:8.2f} {100 * fb['mape']:7.2f} "
          f"{100 * fb['within_5pct']:5.0f}% {100 * fb['within_10pct']:6.0f}% {fb['kendall_tau']:6.3f} "
          f"{fb['rmse_ms']:8.3f}")
    print(f"network model on all networks: measured = {w_all[0]:.4f} x block sum + {w_all[1]:.3f} ms; "
          f"mean overhead (measured - block sum) {np.mean(y - block_sum):.3f} ms")
    print("reference: nn-Meter reports 99.0 % of models within +-10 % on a phone CPU")

    from importlib.metadata import version

    date = time.strftime("%Y-%m-%d")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    res = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "flock /tmp/hwnas-bench.lock .venv/bin/python benchmarks/predictor_host.py "
                   f"--networks {args.networks} --seed {args.seed} --folds {args.folds} --space {space.name}"
                   + (f" --db {args.db}" if args.db else ""),
        "machine": {k: info[k] for k in ("id", "cpu_model", "cores", "machine", "os", "governor")},
        "versions": {p: version(p) for p in ("torch", "executorch", "numpy", "scikit-learn")}
        | {"python": sys.version.split()[0]},
        "space": space.name, "backend": BACKEND, "threads": 1, "cores": r.config.cores,
        "networks": {"asked": args.networks, "measured": len(y), "failed": failed, "seed": args.seed,
                     "measured_ms": {"min": float(y.min()), "median": float(np.median(y)), "max": float(y.max())},
                     "median_cv": float(np.nanmedian(net_cv)),
                     "compile_s_mean": float(np.mean(compile_s)) if compile_s else None,
                     "protocol": NET_PROTOCOL.to_dict()},
        "blocks": {"source": block_source, "count": len(entries), "predictor": pred.describe()},
        "wall_s": {"compile": round(compile_wall_s, 1), "blocks": round(blocks_s, 1), "networks": round(nets_s, 1),
                   "total": round(time.perf_counter() - t_start, 1)},
        "conditions": conditions,
        "network_level": scores,
        "network_model_all": {"scale": float(w_all[0]), "overhead_ms": float(w_all[1]),
                              "mean_overhead_ms": float(np.mean(y - block_sum)),
                              "overhead_ms_per_fold": overheads, "refine_ridge_per_fold": ridges},
        "block_level_loo": ev_blocks.to_dict(rows=False),
        "reference": "nn-Meter (Zhang et al., MobiSys 2021): 99.0 % of models within +-10 % on a phone CPU",
        "rows": [{"arch": a.key, "blocks": a.keys, "measured_ms": float(m), "block_sum_ms": float(b),
                  "gflops": float(f / 1e9)} for a, m, b, f in zip(archs_ok, y, block_sum, net_flops)],
    }
    stem = args.name or f"predictor_host-{date}"
    out = out_dir / f"{stem}.json"
    out.write_text(json.dumps(res, indent=1, default=lambda o: None))
    names = list(rows)
    p1 = plot(Evaluation([a.key for a in archs_ok], y, block_sum, flops_net, {"mode": "block sum"}),
              out_dir / f"{stem}-blocksum.png",
              title=f"{len(y)} networks, {info['cpu_model']}: block sum vs measured")
    p2 = plot(Evaluation([a.key for a in archs_ok], y, with_overhead, flops_net, {"mode": names[1]}),
              out_dir / f"{stem}-overhead.png",
              title=f"{len(y)} networks: block sum + overhead ({args.folds}-fold CV)")
    p3 = plot(Evaluation([a.key for a in archs_ok], y, refined, flops_net, {"mode": names[3]}),
              out_dir / f"{stem}-refined.png",
              title=f"{len(y)} networks: block costs refined on networks ({args.folds}-fold CV)")
    print(f"wrote {out}, {p1.name}, {p2.name}, {p3.name}; total {time.perf_counter() - t_start:.0f} s")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
