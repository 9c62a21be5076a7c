"""Benchmark: does the supernet learn in a short search? Weight-only training (the search's warm-up)
of a space's supernet, train accuracy after each epoch, for

  - fixed-k3e3 / fixed-k7e6: one fixed path (the smallest / largest MBConv in every searchable layer),
    separate weights: one plain network trained alone, the reference;
  - separate: ProxylessNAS's supernet, every candidate owns its weights, paths sampled uniformly;
  - shared: the weight-shared supernet (search.supernet.SharedMBConv), paths sampled uniformly;
  - shared-nninit: the same with nn.Conv2d's own initialisation instead of SharedMBConv's (every
    candidate starting as the smallest one): what that choice is worth.

Train accuracy is the running accuracy over the epoch's batches, as the search's log reports it
(for a sampled supernet: the accuracy of the paths it sampled). After training, each case's
sub-networks k3e3 and k7e6 are exported as plain networks (`Supernet.derived_state_dict` into
`ArchSpec.build()`), their BatchNorm statistics re-estimated on 20 training batches, and scored on
the test split: what the search would hand on.

Protocol: SGD lr 0.05 (constant), momentum 0.9, Nesterov, weight decay 4e-5, batch 64, the
search's default augmentation (pad + random crop), one torch thread. These are accuracies, not
timings: a busy machine changes only the seconds column.

    .venv/bin/python benchmarks/supernet_quality.py [--space tiny-mnist] [--epochs 2] [--seeds 0]

Data: mnist5k (3,500 train images after the 70/15/15 split) and fashion-mnist --limit 10000
(8,500 train images; the official 10,000 test images). Writes
benchmarks/results/supernet_quality-<date>.json and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# run as a script, this file's folder comes first on sys.path and benchmarks/search.py shadows the
# `search` package; drop that entry before importing the package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from profiler.spaces import load_space  # noqa: E402
from search.data import load_data  # noqa: E402
from search.supernet import Supernet  # noqa: E402

CASES = ("fixed-k3e3", "fixed-k7e6", "separate", "shared", "shared-nninit")
DATA = (("mnist5k", None), ("fashion-mnist", 10_000))


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _path(space, which: str) -> list[int]:
    """The index of the smallest (k3e3: least kernel, least expand) or largest MBConv per layer."""
    out = []
    for i in space.searchable:
        cands = [(c.kernel, c.mid_c, j) for j, c in enumerate(space.layers[i].candidates) if c.kind == "mbconv"]
        out.append((min if which == "k3e3" else max)(cands)[2])
    return out


def _loader(ds, batch: int, seed: int, epoch: int) -> DataLoader:
    return DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True,
                      generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def _subnet_test_acc(space, net: Supernet, choices: list[int], data, seed: int) -> float:
    """Test accuracy of the exported plain network ``choices`` with re-estimated BN statistics."""
    model = space.arch(choices).build()
    model.load_state_dict(net.derived_state_dict(choices))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for i, (x, _) in enumerate(_loader(data.train, 64, seed + 7, 0)):
            if i == 20:
                break
            model(x)
        model.eval()
        correct = total = 0
        for x, y in DataLoader(data.test, batch_size=256):
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return correct / total


def run_case(space, data, case: str, epochs: int, seed: int, lr: float, batch: int) -> dict:
    torch.manual_seed(seed)  # augmentation
    net = Supernet(space, "binary", seed, weights="shared" if case.startswith("shared") else "separate")
    if case == "shared-nninit":
        for m in net.mixed:
            for mod in m.shared.modules():
                if mod is not m.shared and hasattr(mod, "reset_parameters"):
                    mod.reset_parameters()  # nn.Conv2d's and nn.BatchNorm2d's own draws
    fixed = _path(space, case.split("-")[1]) if case.startswith("fixed") else None
    params = net.weight_parameters()
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=4e-5)
    gen = torch.Generator().manual_seed(seed)
    accs, t0 = [], time.perf_counter()
    for epoch in range(epochs):
        correct = seen = 0
        net.train()
        for x, y in _loader(data.train, batch, seed, epoch):
            if fixed is None:
                net.sample_paths(gen)  # alpha = 0: uniform over each layer's candidates
                logits = net(x)
            else:
                with net.fixed_paths(fixed):
                    logits = net(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        accs.append(round(correct / seen, 4))
    seconds = time.perf_counter() - t0
    # subnets a separate-weights fixed path never trained are left out (their weights are untouched)
    subs = {}
    for which in ("k3e3", "k7e6"):
        if fixed is None or case == f"fixed-{which}":
            subs[which] = round(_subnet_test_acc(space, net, _path(space, which), data, seed), 4)
    return {"case": case, "seed": seed, "train_acc": accs, "test_acc_subnet": subs,
            "steps": epochs * (len(data.train) // batch), "seconds": round(seconds, 1)}


def _summary(rows: list[dict], epochs: int) -> dict:
    """Per data set and case: last-epoch train accuracy averaged over seeds, and its gap to the
    fixed k3e3 network in points (negative: behind)."""
    out: dict[str, dict] = {}
    for name in dict.fromkeys(r["data"] for r in rows):
        accs = {c: [r["train_acc"][epochs - 1] for r in rows if r["data"] == name and r["case"] == c] for c in CASES}
        ref = sum(accs["fixed-k3e3"]) / len(accs["fixed-k3e3"])
        out[name] = {c: {"train_acc_last": round(sum(a) / len(a), 4), "gap_points": round(100 * (sum(a) / len(a) - ref), 1)}
                     for c, a in accs.items() if a}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default="tiny-mnist")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seeds", default="0,1", help="comma-separated seeds; each case runs once per seed")
    ap.add_argument("--data", default=",".join(d for d, _ in DATA), help="comma-separated: mnist5k, fashion-mnist")
    args = ap.parse_args()
    torch.set_num_threads(1)
    space = load_space(args.space)
    seeds = [int(s) for s in args.seeds.split(",")]
    limits = dict(DATA)
    rows = []
    for name in args.data.split(","):
        for seed in seeds:
            data = load_data(name, space.input_size, space.in_channels, seed, "auto", limits.get(name))
            for case in CASES:
                r = run_case(space, data, case, args.epochs, seed, args.lr, args.batch)
                r.update(data=name, train_images=len(data.train), test_images=len(data.test))
                rows.append(r)
                subs = " ".join(f"{k} {v:.3f}" for k, v in r["test_acc_subnet"].items())
                print(f"{name:14s} seed {seed} {case:13s} train acc by epoch "
                      f"{' '.join(f'{a:.3f}' for a in r['train_acc'])}  test acc of subnets: {subs}  "
                      f"({r['seconds']:.0f} s)", flush=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    machine = {"cpu": _cpu(), "cores": os.cpu_count(), "torch_threads": 1, "torch": torch.__version__,
               "python": platform.python_version()}
    summary = _summary(rows, args.epochs)
    print(f"\nmachine: {machine['cpu']}, {machine['cores']} cores (shared), torch {machine['torch']}, 1 thread")
    print(f"{'data':14s} {'seed':>4s} {'case':13s} " + " ".join(f"ep{e + 1} train" for e in range(args.epochs))
          + "  test k3e3  test k7e6")
    for r in rows:
        t = r["test_acc_subnet"]
        print(f"{r['data']:14s} {r['seed']:4d} {r['case']:13s} " + " ".join(f"{a:9.3f}" for a in r["train_acc"])
              + f"  {t.get('k3e3', float('nan')):9.3f}  {t.get('k7e6', float('nan')):9.3f}")
    print("\nlast-epoch train accuracy, mean over seeds; gap: points behind fixed-k3e3 (goal for shared: < 5)")
    for name, cases in summary.items():
        print(f"{name:14s} " + "  ".join(f"{c} {v['train_acc_last']:.3f} ({v['gap_points']:+.1f})"
                                         for c, v in cases.items()))
    out = ROOT / "benchmarks" / "results" / f"supernet_quality-{datetime.date.today().isoformat()}.json"
    out.write_text(json.dumps({"benchmark": "supernet_quality", "commit": commit, "space": args.space, "epochs": args.epochs,
                               "lr": args.lr, "batch": args.batch, "optimizer": "SGD momentum 0.9 Nesterov, wd 4e-5, "
                               "constant lr", "machine": machine, "summary": summary, "rows": rows},
                              indent=1))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
