"""Experiment (issue 12, Kendall tau): does the shared supernet penalise skipped layers more than
training from scratch does? Every sub-network of `search_quality.py --space tiny-mnist-w --limit
10000 --train-epochs 3` that skips a layer is paired with the same network with each skip replaced
by k3e3; both are scored by inheritance from the middle target's supernet (BN recalibrated) and from
scratch (the benchmark's recipe; the skip-free twins are trained here with 2 seeds, the originals'
seeds come from the result file). Needs that benchmark's work folder and result file:

    .venv/bin/python benchmarks/skip_penalty.py [--result <file>.json]

What a skip costs, per pair: inherited(with skips) - inherited(skip-free) against the same difference
from scratch. Writes benchmarks/results/skip_penalty-<date>.json.
"""
import argparse
import datetime
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))
import numpy as np  # noqa: E402

import benchmarks.search_quality as sq  # noqa: E402

W = ROOT / "runs" / "bench-search-quality-tiny-mnist-w"
RESULT = ROOT / "benchmarks" / "results" / "search_quality-tiny-mnist-w-2026-12-02-seeds4.json"
SKIP, K3E3 = 6, 0  # candidate indices of tiny-mnist-w's layers: the zero op and k3e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--result", default=str(RESULT), help="the search_quality result (sub-networks, seeds)")
    args = ap.parse_args()
    from hwnas.pipeline import train_seeds
    from profiler.spaces import load_space
    from search.train import inherited_accuracy

    sq.SPACE = "tiny-mnist-w"
    space = load_space(sq.SPACE)
    n_ops = len(space.searchable)
    res = json.loads(Path(args.result).read_text())
    seeds = sq.seeds_by_name(res)
    rows = [r for r in res["supernet"]["networks"] if SKIP in r["choices"][:n_ops]]
    if not rows:
        print("skip_penalty: no sub-network of the result skips a layer", file=sys.stderr)
        return 1
    twins = [[K3E3 if (i < n_ops and c == SKIP) else c for i, c in enumerate(r["choices"])] for r in rows]
    supernet = Path(res["supernet"]["supernet_of"]) / "search"
    inh = inherited_accuracy(supernet, [r["choices"] for r in rows] + twins, threads=len(os.sched_getaffinity(0)))
    cfg = sq._cfg(argparse.Namespace(smoke=False, calibrate=10, search_epochs=6, warmup_epochs=1, train_epochs=3,
                                     limit=10000, seed=0), W, "nets", None, 2)
    out_rows = []
    for k, (r, twin) in enumerate(zip(rows, twins)):
        name = f"skip-free {r['name']}"
        tr = train_seeds(cfg, space.arch(twin, f"{sq.SPACE}-{sq._slug(name)}"), W / "train" / sq._slug(name),
                         sq._Progress(name))
        orig = seeds[r["name"]]
        row = {"name": r["name"], "choices": r["choices"], "skips": sum(1 for c in r["choices"][:n_ops] if c == SKIP),
               "twin": twin, "inherited": inh[k], "inherited_twin": inh[len(rows) + k],
               "scratch": float(np.mean(orig[:2])), "scratch_seeds": orig[:2],
               "scratch_twin": tr.test_acc, "scratch_twin_seeds": list(tr.test_acc_seeds)}
        row["inherited_cost"] = row["inherited_twin"] - row["inherited"]  # accuracy lost to the skips (share)
        row["scratch_cost"] = row["scratch_twin"] - row["scratch"]
        out_rows.append(row)
        sq.log(f"{r['name']}: skips cost {100 * row['inherited_cost']:+.2f} points inherited, "
               f"{100 * row['scratch_cost']:+.2f} from scratch")
    summary = {"pairs": len(out_rows),
               "mean_inherited_cost": float(np.mean([r["inherited_cost"] for r in out_rows])),
               "mean_scratch_cost": float(np.mean([r["scratch_cost"] for r in out_rows]))}
    print(json.dumps(summary))
    (ROOT / "benchmarks" / "results" / f"skip_penalty-{datetime.date.today()}.json").write_text(json.dumps(
        {"experiment": "skipped layers replaced by k3e3: inherited (the middle target's supernet) and from-scratch "
                       "accuracy (seeds 0 and 1) of each pair", "reference": args.result,
         "machine": sq.machine(), "summary": summary, "pairs": out_rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
