"""Benchmark: a whole network measured tuned with TVM, built from the tuning database its blocks left.

For each network (an arch.json, or a uniform member of the space such as k3e6@0.5), on this host:
  1. `hwnas profile --backend tvm --tune-trials N` of its blocks (each kernel tuned once: one
     MetaSchedule database per target in the compile cache, shared by every block);
  2. `hwnas verify --backend tvm --tune-trials N` of the whole network: its kernels come from that
     database, a kernel no block had (none, where fusion keeps block boundaries) is tuned with N/3;
  3. the same network untuned (`--tune-trials 0`) and with ExecuTorch/XNNPACK.
Prints the sum of the tuned blocks against the tuned network, the kernels the network step had to tune,
each step's wall time, states the machine, and writes benchmarks/results/tvm_tuned_network-<date>.json.
Needs the `tune` extra (xgboost). Run it alone: tuning times its candidates on this CPU.

    .venv/bin/python benchmarks/tvm_tuned_network.py --arch runs/host/search/arch.json [--trials 96]
    .venv/bin/python benchmarks/tvm_tuned_network.py --space tiny-mnist-w --uniform k3e6@0.5
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

from profiler.blocks import ArchSpec  # noqa: E402
from profiler.compile import tuning_db_dir  # noqa: E402
from profiler.devices import local_info  # noqa: E402
from profiler.harness import profile  # noqa: E402
from profiler.spaces import load_space  # noqa: E402
from profiler.store import Store  # noqa: E402


def _hwnas(args: list[str], env: dict) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "hwnas", *args]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(f"benchmark: {' '.join(cmd[2:6])} ... failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return time.perf_counter() - t0, p.stdout


def _budget_entries(cache: Path) -> int:
    return sum(len(json.loads(f.read_text())) for f in tuning_db_dir(cache).glob("*/budgets.json"))


def _block_medians(db: Path, keys: list[str]) -> dict[str, float | None]:
    with Store(db) as st:
        df = st.dataframe(status="ok", backend="tvm", kind="block")
    got = {r.block_key: float(r.median_ms) for r in df.itertuples()}
    return {k: got.get(k) for k in keys}


def measure(name: str, arch: ArchSpec, trials: int, tmp: Path) -> dict:
    cache, db = tmp / "cache", tmp / f"{name}.db"
    env = {**os.environ, "HWNAS_CACHE_DIR": str(cache)}
    arch_file = tmp / f"{name}.arch.json"
    arch_file.write_text(arch.to_json())
    keys = list(dict.fromkeys(b.key for b in arch.blocks if b.kind != "zero"))
    out: dict = {"name": name, "blocks": keys}
    print(f"[{name}] {len(keys)} blocks tuned with {trials} trials each ...", flush=True)
    before = _budget_entries(cache)
    out["blocks_wall_s"], _ = _hwnas(["profile", "--backend", "tvm", "--tune-trials", str(trials), "--db", str(db),
                                      "--json", *[a for k in keys for a in ("--block", k)]], env)
    out["kernels_tuned_by_blocks"] = _budget_entries(cache) - before
    out["block_ms"] = _block_medians(db, keys)
    out["sum_of_tuned_blocks_ms"] = (sum(out["block_ms"][b.key] for b in arch.blocks if b.kind != "zero")
                                     if all(v is not None for v in out["block_ms"].values()) else None)
    print(f"[{name}] network, tuned ...", flush=True)
    before = _budget_entries(cache)
    wall, text = _hwnas(["verify", "--arch", str(arch_file), "--backend", "tvm", "--tune-trials", str(trials),
                         "--db", str(db), "--predict-from-db", "--json"], env)
    got = json.loads(text[text.index("{"):])
    out["tvm_tuned"] = {"measured_ms": got["measured_ms"], "wall_s": round(wall, 1), "stats": got.get("stats"),
                        "kernels_tuned_for_the_network": _budget_entries(cache) - before,
                        "predicted_from_tuned_blocks_ms": got["predicted_ms"]}
    for label, backend in (("tvm_untuned", "tvm"), ("executorch", "executorch")):
        print(f"[{name}] network, {label} ...", flush=True)
        t0 = time.perf_counter()
        r = profile([arch], backend, db, cache_dir=cache)
        if not r.measured:
            raise SystemExit(f"benchmark: {name} with {label}: " + (r.failed[0].error if r.failed else "not measured"))
        out[label] = {"measured_ms": r.measured[0].median_ms, "wall_s": round(time.perf_counter() - t0, 1)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", action="append", default=[], help="an arch.json (repeatable)")
    ap.add_argument("--space", default="tiny-mnist-w", help="the space of the --uniform members")
    ap.add_argument("--uniform", default="", help="uniform members of --space, comma-separated (k3e6@0.5,...)")
    ap.add_argument("--trials", type=int, default=96, help="MetaSchedule trials per block (count)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--name", default=None, help="results file name (default tvm_tuned_network-<date>)")
    args = ap.parse_args()
    nets: list[tuple[str, ArchSpec]] = [(Path(a).parent.parent.name or Path(a).stem,
                                          ArchSpec.from_json(Path(a).read_text())) for a in args.arch]
    if args.uniform:
        space = load_space(args.space)
        nets += [(op, space.arch(space.uniform_choices(op), f"{space.name}-uniform-{op}"))
                 for op in args.uniform.split(",") if op]
    if not nets:
        raise SystemExit("benchmark: give --arch FILE or --uniform k3e6@0.5")
    info = local_info()
    res = {"machine": {k: info.get(k) for k in ("cpu_model", "cores", "machine", "os", "governor")},
           "date": time.strftime("%Y-%m-%d %H:%M"), "trials_per_block": args.trials,
           "loadavg_before": os.getloadavg(), "networks": []}
    with tempfile.TemporaryDirectory(prefix="hwnas-tvm-net-") as tmp:
        for name, arch in nets:  # one cache for all: a later network reuses what an earlier one tuned
            res["networks"].append(measure(name, arch, args.trials, Path(tmp)))
    res["loadavg_after"] = os.getloadavg()

    def f(v, d=3):
        return "—" if v is None else f"{v:.{d}f}"

    print(f"\nmachine: {res['machine']['cpu_model']}, {res['machine']['cores']} cores; MetaSchedule "
          f"{args.trials} trials per block; load {res['loadavg_before'][0]:.2f} -> {res['loadavg_after'][0]:.2f}")
    print(f"{'network':<22} {'blocks':>6} {'sum tuned':>10} {'tuned net':>10} {'net/sum':>8} {'new kernels':>11} "
          f"{'untuned':>8} {'XNNPACK':>8} {'tune s':>7}")
    for n in res["networks"]:
        s, t = n["sum_of_tuned_blocks_ms"], n["tvm_tuned"]["measured_ms"]
        print(f"{n['name']:<22} {len(n['blocks']):>6} {f(s):>10} {f(t):>10} {f(t / s if s else None, 2):>8} "
              f"{n['tvm_tuned']['kernels_tuned_for_the_network']:>11} {f(n['tvm_untuned']['measured_ms']):>8} "
              f"{f(n['executorch']['measured_ms']):>8} {n['blocks_wall_s'] + n['tvm_tuned']['wall_s']:>7.0f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.name or 'tvm_tuned_network-' + time.strftime('%Y-%m-%d')}.json"
    path.write_text(json.dumps(res, indent=1, default=str))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
