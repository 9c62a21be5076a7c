"""Benchmark: TVM tuned with MetaSchedule, TVM untuned, and ExecuTorch/XNNPACK on proxyless-mobile blocks.

Times the same blocks three ways with the real `hwnas profile --block ...` command on this host:
  1. ExecuTorch (XNNPACK delegate), the reference;
  2. TVM with its default schedules (untuned);
  3. TVM tuned by MetaSchedule with --tune-trials N per block (the `tune` extra: xgboost).
Prints a table of medians and their ratio to XNNPACK, states the machine and the trial budget, and
writes benchmarks/results/tvm_tuned-<date>.json. Check that the machine is quiet first (the script
records the load average before and after); tuning itself times candidates on this CPU.

    .venv/bin/python benchmarks/tvm_tuned.py [--trials 64] [--blocks 12] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from profiler.devices import local_info  # noqa: E402
from profiler.spaces import load_space  # noqa: E402
from profiler.store import Store  # noqa: E402


def pick_blocks(n: int) -> list[str]:
    """``n`` MBConv blocks of proxyless-mobile spread over its shapes and, in turn, its ops.

    The space lists each shape's 6 ops (kernel x expand) together, so every 6th block is the same op:
    the i-th pick takes shape group i (spread evenly over the groups) and the group's op i mod 6, so
    each kernel and expand ratio is sampled, not only the one that a stride lands on."""
    groups: dict[tuple, list[str]] = {}
    for b in load_space("proxyless-mobile").blocks():
        if b.kind == "mbconv":
            shape = b.key.split("-expand:")[0], b.key.split("-stride:")[1]
            groups.setdefault(shape, []).append(b.key)
    ordered = list(groups.values())
    step = len(ordered) / max(1, n)
    picks = [ordered[min(len(ordered) - 1, int(i * step))] for i in range(min(n, len(ordered)))]
    return [g[i % len(g)] for i, g in enumerate(picks)]


def profile(keys: list[str], backend: str, db: Path, env: dict, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "hwnas", "profile", "--backend", backend, "--db", str(db), "--json", *extra]
    for k in keys:
        cmd += ["--block", k]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(f"benchmark: {' '.join(cmd[:8])} ... failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return time.perf_counter() - t0


def medians(db: Path) -> dict[str, dict]:
    with Store(db) as st:
        df = st.dataframe()
    return {r.block_key: {"status": r.status, "median_ms": None if r.status != "ok" else float(r.median_ms),
                          "error": r.error if r.status != "ok" else None,
                          "flags": r.flags if isinstance(r.flags, list) else []} for r in df.itertuples()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=64, help="MetaSchedule trials per block (count)")
    ap.add_argument("--blocks", type=int, default=12, help="blocks of proxyless-mobile to time (count)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--name", default=None, help="results file name (default tvm_tuned-<date>)")
    args = ap.parse_args()

    keys = pick_blocks(args.blocks)
    info = local_info()
    res = {"machine": {k: info.get(k) for k in ("cpu_model", "cores", "machine", "os", "governor")},
           "date": time.strftime("%Y-%m-%d %H:%M"), "trials_per_block": args.trials, "blocks": keys,
           "loadavg_before": os.getloadavg(), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="hwnas-tvm-tuned-") as tmp:
        env = {**os.environ, "HWNAS_CACHE_DIR": str(Path(tmp) / "cache")}
        plan = {"executorch": ("executorch", []), "tvm-untuned": ("tvm", []),
                "tvm-tuned": ("tvm", ["--tune-trials", str(args.trials)])}
        for name, (backend, extra) in plan.items():
            db = Path(tmp) / f"{name}.db"
            print(f"[{name}] {len(keys)} blocks ...", flush=True)
            wall = profile(keys, backend, db, env, extra)
            res["runs"][name] = {"wall_s": round(wall, 1), "rows": medians(db)}
    res["loadavg_after"] = os.getloadavg()

    rows, within = [], 0
    for k in keys:
        et = res["runs"]["executorch"]["rows"].get(k, {}).get("median_ms")
        un = res["runs"]["tvm-untuned"]["rows"].get(k, {}).get("median_ms")
        tu = res["runs"]["tvm-tuned"]["rows"].get(k, {}).get("median_ms")
        r_un = un / et if un and et else None
        r_tu = tu / et if tu and et else None
        within += bool(r_tu is not None and r_tu <= 1.5)
        rows.append({"block": k, "executorch_ms": et, "tvm_untuned_ms": un, "tvm_tuned_ms": tu,
                     "untuned_over_xnnpack": r_un, "tuned_over_xnnpack": r_tu})
    res["table"] = rows
    res["tuned_within_1_5x_of_xnnpack"] = f"{within}/{len(keys)}"

    def f(v, d=3):
        return "failed" if v is None else f"{v:.{d}f}"

    print(f"\nmachine: {res['machine']['cpu_model']}, {res['machine']['cores']} cores; "
          f"MetaSchedule {args.trials} trials per block; load {res['loadavg_before'][0]:.2f} -> "
          f"{res['loadavg_after'][0]:.2f}")
    print(f"{'block':<92} {'XNNPACK ms':>10} {'TVM ms':>9} {'tuned ms':>9} {'untuned/X':>9} {'tuned/X':>8}")
    for r in rows:
        print(f"{r['block']:<92} {f(r['executorch_ms']):>10} {f(r['tvm_untuned_ms']):>9} {f(r['tvm_tuned_ms']):>9} "
              f"{f(r['untuned_over_xnnpack'], 2):>9} {f(r['tuned_over_xnnpack'], 2):>8}")
    print(f"tuned TVM within 1.5x of XNNPACK: {res['tuned_within_1_5x_of_xnnpack']} blocks; wall "
          + ", ".join(f"{n} {v['wall_s']} s" for n, v in res["runs"].items()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.name or 'tvm_tuned-' + time.strftime('%Y-%m-%d')}.json"
    path.write_text(json.dumps(res, indent=1, default=str))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
