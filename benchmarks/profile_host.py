"""Benchmark: profile the whole proxyless-mobile space on this host with ExecuTorch and TVM.

Per backend, three runs of the real `hwnas profile` command:
  1. cold: empty compile cache, empty store;
  2. independent: warm compile cache, empty store (every block timed again, nothing compiled);
  3. re-run: the cold run's command again (everything stored: the resume path, nothing to do).
Reports wall times, compile time per block, the median CV of the blocks, and the run-to-run
agreement of runs 1 and 2 (share of blocks whose medians agree within 5%).

    .venv/bin/python benchmarks/profile_host.py [--backends executorch tvm] [--space proxyless-mobile]

Writes benchmarks/results/profile_host-<date>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from profiler.devices import local_info  # noqa: E402
from profiler.store import Store  # noqa: E402


def run(cmd: list[str], env: dict) -> tuple[float, dict]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"benchmark: {' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return wall, json.loads(p.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", nargs="+", default=["executorch", "tvm"])
    ap.add_argument("--space", default="proxyless-mobile")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    import os

    info = local_info()
    results = {"machine": {k: info[k] for k in ("cpu_model", "cores", "machine", "os", "governor")},
               "space": args.space, "date": time.strftime("%Y-%m-%d %H:%M"), "backends": {}}
    hwnas = [sys.executable, "-m", "hwnas"]
    with tempfile.TemporaryDirectory(prefix="hwnas-bench-") as tmp:
        for be in args.backends:
            cache = Path(tmp) / f"cache-{be}"
            env = {**os.environ, "HWNAS_CACHE_DIR": str(cache)}
            db1, db2 = Path(tmp) / f"{be}-1.db", Path(tmp) / f"{be}-2.db"
            base = hwnas + ["profile", "--space", args.space, "--backend", be, "--json"]
            print(f"[{be}] cold run ...", flush=True)
            cold_s, cold = run(base + ["--db", str(db1)], env)
            print(f"[{be}] independent run (warm cache, new store) ...", flush=True)
            warm_s, warm = run(base + ["--db", str(db2)], env)
            print(f"[{be}] re-run of the cold command (everything stored) ...", flush=True)
            rerun_s, rerun = run(base + ["--db", str(db1)], env)
            with Store(db1) as s1, Store(db2) as s2:
                d1 = s1.dataframe(status="ok").set_index("block_key")
                d2 = s2.dataframe(status="ok").set_index("block_key")
            common = d1.index.intersection(d2.index)
            rel = (d1.loc[common, "median_ms"] - d2.loc[common, "median_ms"]).abs() / d1.loc[common, "median_ms"]
            results["backends"][be] = {
                "blocks": cold["summary"]["blocks"],
                "ok": int(len(d1)), "failed": cold["summary"]["failed_stored"],
                "cold_wall_s": round(cold_s, 1),
                "compile_s_per_block_mean": round(float(d1.compile_s.mean()), 3),
                "compile_s_per_block_max": round(float(d1.compile_s.max()), 3),
                "compile_s_total": round(float(d1.compile_s.sum()), 1),
                "independent_run_wall_s": round(warm_s, 1),
                "independent_run_compiled": warm["summary"]["compiled"],
                "rerun_wall_s": round(rerun_s, 1),
                "rerun_measured": rerun["summary"]["measured"],
                "median_cv": round(float(d1.cv.median()), 4),
                "median_rel_spread_p10_p90": round(float(d1.rel_spread.median()), 4),
                "agree_within_5pct": round(float((rel <= 0.05).mean()), 3),
                "agree_within_10pct": round(float((rel <= 0.10).mean()), 3),
                "max_disagreement": round(float(rel.max()), 3),
                "sum_of_medians_ms": round(float(d1.median_ms.sum()), 3),
                "flagged_rows": int(d1["flags"].map(bool).sum()),
                "peak_gflops": round(float(cold["summary"]["peak_gflops"] or float("nan")), 1),
                "threads": cold["summary"]["threads"], "cores": cold["summary"]["cores"],
                "worst_disagreements": [
                    {"block": k, "run1_ms": round(float(d1.loc[k, "median_ms"]), 4),
                     "run2_ms": round(float(d2.loc[k, "median_ms"]), 4), "rel": round(float(rel[k]), 4)}
                    for k in rel.sort_values(ascending=False).index[:5]],
            }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"profile_host-{time.strftime('%Y%m%d-%H%M')}.json"
    path.write_text(json.dumps(results, indent=2))
    keys = ["blocks", "ok", "failed", "cold_wall_s", "compile_s_per_block_mean", "independent_run_wall_s",
            "rerun_wall_s", "median_cv", "agree_within_5pct", "agree_within_10pct", "max_disagreement",
            "sum_of_medians_ms", "peak_gflops"]
    print(f"\nmachine: {results['machine']['cpu_model']}, {results['machine']['cores']} cores, "
          f"{results['machine']['os']}; space {args.space}")
    header = "| metric | " + " | ".join(results["backends"]) + " |"
    print(header)
    print("|" + "---|" * (len(results["backends"]) + 1))
    for k in keys:
        print(f"| {k} | " + " | ".join(str(results["backends"][b][k]) for b in results["backends"]) + " |")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
