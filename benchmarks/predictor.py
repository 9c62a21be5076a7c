"""Predictor accuracy on the shipped measurements (70 proxyless-mobile blocks per backend).

    .venv/bin/python benchmarks/predictor.py [--out benchmarks/results/predictor-<date>.json] [--plots DIR]

For each backend in data/measurements/host-xeon-2vcpu-proxyless-mobile.parquet: 5-fold CV of the
auto-chosen family (nested: chosen inside each training fold), and leave-one-out of every family,
each beside the FLOPs baseline fitted on the same folds. Scores are fractions (0.05 = 5 %), ms.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import sys

# run as a script, this file's folder comes first on sys.path and its name shadows the `predictor`
# package; drop that entry before importing the package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import pandas as pd  # noqa: E402

from predictor.evaluate import cross_validate, plot  # noqa: E402
from predictor.regression import FAMILIES  # noqa: E402
from profiler.blocks import BlockSpec  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "measurements" / "host-xeon-2vcpu-proxyless-mobile.parquet"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=f"benchmarks/results/predictor-{time.strftime('%Y-%m-%d')}.json")
    ap.add_argument("--plots", help="folder for predicted-vs-measured PNGs")
    args = ap.parse_args()
    df = pd.read_parquet(DATA)
    df = df[(df.status == "ok") & (df.kind == "block")]
    res: dict = {"data": str(DATA.name), "results": {}}
    for backend, g in df.groupby("backend"):
        blocks = [BlockSpec.from_key(k) for k in g.block_key]
        y = g.median_ms.to_numpy(float)
        r: dict = {}
        t = time.perf_counter()
        ev = cross_validate(blocks, y, "auto", 5)
        r["auto_5fold"] = dict(ev.to_dict(rows=False), seconds=round(time.perf_counter() - t, 1))
        if args.plots:
            plot(ev, Path(args.plots) / f"predictor-{backend}-5fold.png", title=f"{backend}: 5-fold CV (auto)")
        for fam in FAMILIES:
            r[f"{fam}_loo"] = cross_validate(blocks, y, fam, "loo").to_dict(rows=False)
        res["results"][backend] = r
        print(backend, {k: (round(v["mape"], 3), round(v["flops_baseline"]["mape"], 3), round(v["kendall_tau"], 3))
                        for k, v in r.items()})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1, default=lambda o: None))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
