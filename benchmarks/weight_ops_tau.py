"""Experiment (issue 12, Kendall tau): the middle target's search of `search_quality.py --space
tiny-mnist-w --limit 10000 --train-epochs 3` again, with every weight step's ops drawn uniformly instead
of from p (widths are uniform in both), then the inherited accuracy of the benchmark's 19 sub-networks
against their from-scratch accuracy. Needs that benchmark's work folder and result file (run it first):

    .venv/bin/python benchmarks/weight_ops_tau.py

The uniform draw is patched in here (Supernet.sample_paths for the weight step only), not an option of
the product: it did not earn one (benchmarks/README.md). Writes benchmarks/results/weight_ops_tau-<date>.json.
"""
import argparse
import datetime
import json
import os
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))
from scipy.stats import kendalltau  # noqa: E402

import benchmarks.search_quality as sq  # noqa: E402
from hwnas.pipeline import run  # noqa: E402
from search.supernet import Supernet  # noqa: E402
from search.train import inherited_accuracy  # noqa: E402

W = ROOT / "runs" / "bench-search-quality-tiny-mnist-w"
RESULT = ROOT / "benchmarks" / "results" / "search_quality-tiny-mnist-w-2026-12-02.json"
SOURCE, EXP = W / "target-0.126ms", W / "exp-uniform-ops"
_from_p = Supernet.sample_paths


def _uniform_ops(self, gen, widths=True):
    """The weight step (widths=False) draws each layer's op uniformly; the architecture step as before."""
    if widths:
        return _from_p(self, gen, widths)
    out = []
    for m in self.mixed:
        c = int(torch.multinomial(torch.ones_like(m.probs.detach()), 1, generator=gen))
        m.set_path(c)
        out.append(c)
    return out


def main() -> None:
    # the middle target's run up to its predictor (same profile, calibration and predictor), search again
    shutil.rmtree(EXP, ignore_errors=True)
    EXP.mkdir(parents=True)
    for f in ("calibrate.json", "config.yaml", "latency-predictor.json", "predictor.json", "profile.csv",
              "profile.json"):
        shutil.copy(SOURCE / f, EXP / f)
    stages = json.loads((SOURCE / "stages.json").read_text())
    (EXP / "stages.json").write_text(json.dumps({k: stages[k] for k in ("profile", "calibrate", "predictor")}))
    Supernet.sample_paths = _uniform_ops
    args = argparse.Namespace(smoke=False, calibrate=10, search_epochs=6, warmup_epochs=1, train_epochs=3,
                              limit=10000, seed=0)
    sq.SPACE = "tiny-mnist-w"
    run(sq._cfg(args, W, EXP.name, 0.126), sq._Progress("uniform ops"), until="search")
    rows = json.loads(RESULT.read_text())["supernet"]["networks"]
    accs = inherited_accuracy(EXP / "search", [r["choices"] for r in rows], threads=len(os.sched_getaffinity(0)))
    scratch = [r["scratch_acc"] for r in rows]
    kt, old = kendalltau(accs, scratch), kendalltau([r["inherited_acc"] for r in rows], scratch)
    out = {"experiment": "weight steps with ops drawn uniformly (widths uniform as before), target 0.126 ms, "
                         "10,000 Fashion-MNIST images, seed 0",
           "kendall_tau": kt.statistic, "p": kt.pvalue, "default_tau": old.statistic,
           "found": json.loads((EXP / "search.json").read_text())["choices"],
           "networks": [dict(r, inherited_uniform_ops=x) for r, x in zip(rows, accs)]}
    print(json.dumps({k: v for k, v in out.items() if k != "networks"}))
    (ROOT / "benchmarks" / "results" / f"weight_ops_tau-{datetime.date.today()}.json").write_text(
        json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
