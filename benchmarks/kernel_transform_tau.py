"""Experiment (issue 12, Kendall tau): Once-for-All's kernel transformation matrices in the shared
supernet, on the middle target's search of `search_quality.py --space tiny-mnist-w --limit 10000
--train-epochs 3`, then the inherited accuracy of that benchmark's 19 sub-networks against their
from-scratch accuracy (mean of every seed the result file holds). Needs that benchmark's work folder
and result file (run it first):

    .venv/bin/python benchmarks/kernel_transform_tau.py [--result benchmarks/results/<file>.json]

The shared supernet (`search.supernet.SharedMBConv`) runs a k x k candidate on the plain centre of
the layer's k_max x k_max depthwise kernel (Single-Path NAS's superkernel). OFA (Cai et al., ICLR
2020, section 3.2, elastic kernel size) found that the centre then has to serve two roles, and puts a
learned linear map between sizes: the 5x5 kernel is T_75 applied to the centre 5x5 of the 7x7 one,
the 3x3 kernel T_53 applied to the centre 3x3 of the 5x5 one; each T is a (k^2 x k^2) matrix shared
by the layer's channels, started at the identity (so the supernet starts as the same function).
Patched in here (SharedMBConv.__init__ and _dw_weight), not an option of the product unless it earns
one. Writes benchmarks/results/kernel_transform_tau-<date>.json.
"""
import argparse
import datetime
import json
import os
import shutil
import sys
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))
import numpy as np  # noqa: E402
from scipy.stats import kendalltau  # noqa: E402

import benchmarks.search_quality as sq  # noqa: E402
from hwnas.pipeline import run  # noqa: E402
from search.supernet import SharedMBConv  # noqa: E402
from search.train import inherited_accuracy  # noqa: E402

W = ROOT / "runs" / "bench-search-quality-tiny-mnist-w"
SOURCE, EXP = W / "target-0.126ms", W / "exp-kernel-transform"
_init = SharedMBConv.__init__


def _patched_init(self, specs):
    _init(self, specs)
    self.kernel_sizes = sorted({s.kernel for s in self.specs}, reverse=True)
    # one matrix per smaller size b: from the centre b x b of the next larger size a to the b x b kernel
    self.kernel_maps = nn.ParameterDict({f"{a}to{b}": nn.Parameter(torch.eye(b * b))
                                         for a, b in zip(self.kernel_sizes, self.kernel_sizes[1:])})


def _dw_weight(self, s):
    w = self.depthwise.weight[:s.mid_c]  # (mid, 1, k_max, k_max)
    for a, b in zip(self.kernel_sizes, self.kernel_sizes[1:]):
        if a <= s.kernel:
            break
        lo = (a - b) // 2
        centre = w[:, :, lo:lo + b, lo:lo + b].reshape(w.shape[0], b * b)
        w = (centre @ self.kernel_maps[f"{a}to{b}"].T).reshape(w.shape[0], 1, b, b)
    return w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--result", default=str(ROOT / "benchmarks" / "results" / "search_quality-tiny-mnist-w-2026-12-02.json"),
                    help="the search_quality result whose sub-networks and from-scratch accuracies are the reference")
    args = ap.parse_args()
    shutil.rmtree(EXP, ignore_errors=True)
    EXP.mkdir(parents=True)
    for f in ("calibrate.json", "config.yaml", "latency-predictor.json", "predictor.json", "profile.csv",
              "profile.json"):
        shutil.copy(SOURCE / f, EXP / f)
    stages = json.loads((SOURCE / "stages.json").read_text())
    (EXP / "stages.json").write_text(json.dumps({k: stages[k] for k in ("profile", "calibrate", "predictor")}))
    SharedMBConv.__init__, SharedMBConv._dw_weight = _patched_init, _dw_weight
    cli = argparse.Namespace(smoke=False, calibrate=10, search_epochs=6, warmup_epochs=1, train_epochs=3,
                             limit=10000, seed=0)
    sq.SPACE = "tiny-mnist-w"
    run(sq._cfg(cli, W, EXP.name, 0.126), sq._Progress("kernel maps"), until="search")
    res = json.loads(Path(args.result).read_text())
    rows = res["supernet"]["networks"]
    seeds = {n["name"]: n["test_acc_seeds"] for n in res["networks"]}
    seeds.update({f"found {r['target_ms']:g} ms": r["test_acc_seeds"] for r in res["searches"]["runs"]})
    scratch = [float(np.mean(seeds[r["name"]])) for r in rows]
    accs = inherited_accuracy(EXP / "search", [r["choices"] for r in rows], threads=len(os.sched_getaffinity(0)))
    kt, old = kendalltau(accs, scratch), kendalltau([r["inherited_acc"] for r in rows], scratch)
    log = json.loads((EXP / "search.json").read_text())
    out = {"experiment": "OFA kernel transformation matrices in the shared supernet, target 0.126 ms, "
                         "10,000 Fashion-MNIST images, seed 0", "reference": args.result,
           "reference_seeds": min(len(v) for v in seeds.values()),
           "kendall_tau": kt.statistic, "p": kt.pvalue, "default_tau": old.statistic,
           "train_acc_after_warmup": log.get("train_acc_after_warmup"), "found": log["choices"],
           "networks": [dict(r, scratch_acc=s, inherited_kernel_maps=x) for r, s, x in zip(rows, scratch, accs)]}
    print(json.dumps({k: v for k, v in out.items() if k != "networks"}))
    (ROOT / "benchmarks" / "results" / f"kernel_transform_tau-{datetime.date.today()}.json").write_text(
        json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
