"""Experiments (issue 12, Kendall tau): the middle target's search of `search_quality.py --space
tiny-mnist-w --limit 10000 --train-epochs 3` again with one change to the shared supernet, then the
inherited accuracy of that benchmark's 19 sub-networks (BN recalibrated) against their from-scratch
accuracy (the mean of every seed the result file holds: accuracies do not depend on the machine, so
the stored result serves on any host). The search runs on this machine's profile and predictor (the
benchmark's probe folder, made here if missing) at its middle target (s = 0.5 of its ladder):

    .venv/bin/python benchmarks/supernet_variants_tau.py --variant uniform-ops [--result <file>.json]

Variants (each patched in here for this process, none an option of the product unless it earns one;
skip-more has become one, `hwnas run --skip-drop`, and runs through it):

- ``uniform-ops``: every weight step draws each layer's op uniformly instead of from p (widths are
  uniform in both). Asks whether the ops near the latency target being trained more is what ranks
  e3 above e6.
- ``kernel-maps``: Once-for-All's kernel transformation matrices (Cai et al., ICLR 2020, section 3.2):
  the 5x5 kernel is T_75 applied to the centre 5x5 of the 7x7 one, the 3x3 kernel T_53 applied to the
  centre 3x3 of the 5x5 one; each T a (k^2 x k^2) matrix per layer, shared by its channels, started
  at the identity. The plain centre (Single-Path NAS's superkernel) must serve every size at once.
- ``nn-init``: no start-as-the-smallest initialisation (`SharedMBConv._start_as_smallest`: the
  kernel ring and the projection columns past e3 start at zero, so every candidate starts as the
  smallest and the larger ones grow out of it): nn's own draw instead. Asks whether starting equal is
  what keeps a short search from telling e6 from e3.
- ``skip-more``: in every weight step each layer that can be skipped is skipped with probability
  ``SKIP_SHARE`` (the run's ``skip_drop``; else its op comes from p as before): stochastic depth on the supernet, so that later
  layers learn to work without the ones before them (benchmarks/skip_penalty.py measured that the
  default supernet charges a skipped layer about a point that training from scratch does not).
- ``longer``: nothing changed but the search's length (``--search-epochs``, default 6 as in the
  benchmark): is the supernet simply trained too little to rank? ``default`` is the same name for the
  unchanged search (with its 6 epochs).
- ``distill``: the product's ``--weight-paths distill``: each weight step trains the space's largest
  network on the labels, then the sampled path and the smallest network on the largest's predictions
  (in-place distillation: slimmable networks, Yu and Huang 2019; BigNAS, Yu et al. 2020). The plain
  sandwich (the same three networks, all on the labels) ranked worse on 5,000 images (tau 0.15 against
  0.33); the teacher's soft labels are what BigNAS credits for sub-networks that need no retraining.

- ``depth-tail``: the product's ``--depth tail`` (Once-for-All's elastic depth): in a stage, the k-th
  layer that runs uses the k-th layer's weights, so a sub-network that skips a middle layer runs as the
  same network skipping the stage's last one. The default supernet charges skipping a stage's second
  layer (random-1, random-6, random-9) and not its last (random-2, -5, -7): the layer after a skipped
  one sees an input it is rarely trained on.
- ``depth-tail-distill``: both of the last two (``--depth tail --weight-paths distill``): tail depth
  removes the skip penalty, distillation sets the inherited levels.

``--skip-drop P`` adds the product's stochastic depth to any variant (skip-more is ``--skip-drop 0.25``).
Where the benchmark's probe folder (profile, calibration and predictor, no search) is missing, it is
made first: a profile of the space into the work folder's store (ExecuTorch, this machine), the
calibration networks and the latency predictor, as ``search_quality.py`` makes them.

Writes benchmarks/results/supernet_variant_tau-<variant>-<date>.json (the uniform-ops result of
2026-12-02, from this experiment's first script, is weight_ops_tau-2026-12-02.json).
"""
import argparse
import dataclasses
import datetime
import json
import os
import shutil
import sys
import time
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
from search.supernet import SharedMBConv, Supernet  # noqa: E402
from search.train import inherited_accuracy  # noqa: E402

W = ROOT / "runs" / "bench-search-quality-tiny-mnist-w"
SOURCE = W / "probe"  # search_quality.py's probe: profile, calibration and predictor, no search
RESULT = ROOT / "benchmarks" / "results" / "search_quality-tiny-mnist-w-2026-12-02-seeds4.json"
SKIP_PAIRS = ROOT / "benchmarks" / "results" / "skip_penalty-2026-12-02.json"


# -- uniform-ops
_from_p = Supernet.sample_paths


def _uniform_ops(self, gen, widths=True, skip_drop=0.0):
    """The weight step (widths=False) draws each layer's op uniformly; the architecture step as before."""
    if widths:
        return _from_p(self, gen, widths)
    out = []
    for m in self.mixed:
        c = int(torch.multinomial(torch.ones_like(m.probs.detach()), 1, generator=gen))
        m.set_path(c)
        out.append(c)
    return out


# -- kernel-maps
_init = SharedMBConv.__init__


def _init_with_maps(self, specs):
    _init(self, specs)
    self.kernel_sizes = sorted({s.kernel for s in self.specs}, reverse=True)
    # one matrix per smaller size b: from the centre b x b of the next larger size a to the b x b kernel
    self.kernel_maps = nn.ParameterDict({f"{a}to{b}": nn.Parameter(torch.eye(b * b))
                                         for a, b in zip(self.kernel_sizes, self.kernel_sizes[1:])})


def _mapped_dw_weight(self, s):
    w = self.depthwise.weight[:s.mid_c]  # (mid, 1, k_max, k_max)
    for a, b in zip(self.kernel_sizes, self.kernel_sizes[1:]):
        if a <= s.kernel:
            break
        lo = (a - b) // 2
        centre = w[:, :, lo:lo + b, lo:lo + b].reshape(w.shape[0], b * b)
        w = (centre @ self.kernel_maps[f"{a}to{b}"].T).reshape(w.shape[0], 1, b, b)
    return w


# -- skip-more
SKIP_SHARE = 0.25


def _patch(variant: str) -> None:
    if variant == "uniform-ops":
        Supernet.sample_paths = _uniform_ops
    elif variant == "kernel-maps":
        SharedMBConv.__init__, SharedMBConv._dw_weight = _init_with_maps, _mapped_dw_weight
    elif variant == "nn-init":
        SharedMBConv._start_as_smallest = lambda self: None
    elif variant not in ("longer", "default", "skip-more", "distill", "depth-tail", "depth-tail-distill"):
        raise SystemExit(f"--variant {variant}: use {', '.join(VARIANTS)}")


VARIANTS = ("default", "uniform-ops", "kernel-maps", "nn-init", "skip-more", "longer", "distill", "depth-tail",
            "depth-tail-distill")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", required=True, choices=VARIANTS, help="the change to the shared supernet (see above)")
    ap.add_argument("--skip-drop", type=float, default=None,
                    help="stochastic depth of the weight steps (share of steps, 0 to below 1; default 0, "
                         f"skip-more {SKIP_SHARE})")
    ap.add_argument("--seed", type=int, default=0, help="the search's seed (default 0, the benchmark's)")
    ap.add_argument("--search-epochs", type=int, default=6,
                    help="epochs of the search, its 1 warm-up epoch included (count; default 6, the benchmark's)")
    ap.add_argument("--result", default=str(RESULT),
                    help="the search_quality result whose sub-networks and from-scratch accuracies are the "
                         "reference (default: the 4-seed run of 2026-12-02)")
    args = ap.parse_args()
    skip = args.skip_drop if args.skip_drop is not None else (SKIP_SHARE if args.variant == "skip-more" else 0.0)
    if not 0 <= skip < 1:
        ap.error(f"--skip-drop {skip:g}: give a share from 0 to below 1")
    tag = args.variant + ("" if args.search_epochs == 6 else f"-{args.search_epochs}ep") + \
        ("" if args.skip_drop is None else f"-drop{skip:g}") + ("" if args.seed == 0 else f"-seed{args.seed}")
    exp = W / f"exp-{tag}"
    cli = argparse.Namespace(smoke=False, calibrate=10, search_epochs=args.search_epochs, warmup_epochs=1, train_epochs=3,
                             limit=10000, seed=args.seed, skip_drop=0.0, search_seed=0)
    sq.SPACE = "tiny-mnist-w"
    probe = sq._cfg(cli, W, SOURCE.name, None)
    if not (SOURCE / "stages.json").exists() or \
            not all(k in json.loads((SOURCE / "stages.json").read_text()) for k in ("profile", "calibrate", "predictor")):
        print(f"{SOURCE}: no predictor yet; profiling the space and fitting it first (as search_quality.py does)")
        run(probe, sq._Progress("probe"), until="predictor")
    # the benchmark's middle target, from this machine's predictor (s = 0.5 of its ladder: 0.126 ms on the
    # 2026-12-02 host; a slower host has a slower range, and a fixed number could lie outside it)
    target = sq._targets(sq._uniform_predictions(probe), [0.5])[0]
    # the middle target's run up to its predictor (same profile, calibration and predictor), search again
    shutil.rmtree(exp, ignore_errors=True)
    exp.mkdir(parents=True)
    for f in ("calibrate.json", "latency-predictor.json", "predictor.json", "profile.csv",
              "profile.json"):
        shutil.copy(SOURCE / f, exp / f)
    stages = json.loads((SOURCE / "stages.json").read_text())
    (exp / "stages.json").write_text(json.dumps({k: stages[k] for k in ("profile", "calibrate", "predictor")}))
    _patch(args.variant)
    cli.skip_drop, cli.search_seed = skip, args.seed
    cfg = sq._cfg(cli, W, exp.name, target, search=True)
    if args.variant in ("distill", "depth-tail-distill"):
        cfg = dataclasses.replace(cfg, weight_paths="distill")
    # every other variant keeps the depth its results were measured with (any), though `hwnas run`'s
    # default is tail since 2026-12-07: the variants are changes to the same supernet, compared as such
    cfg = dataclasses.replace(cfg, depth="tail" if args.variant in ("depth-tail", "depth-tail-distill") else "any")
    t0 = time.perf_counter()
    run(cfg, sq._Progress(args.variant), until="search")
    search_s = time.perf_counter() - t0
    res = json.loads(Path(args.result).read_text())
    rows = res["supernet"]["networks"]
    seeds = sq.seeds_by_name(res)
    scratch = [float(np.mean(seeds[r["name"]])) for r in rows]
    # the skip penalty on benchmarks/skip_penalty.py's pairs (a sub-network that skips, its twin with k3e3)
    pairs = json.loads(SKIP_PAIRS.read_text())["pairs"] if SKIP_PAIRS.exists() else []
    both = [r["choices"] for r in rows] + [q["twin"] for q in pairs]
    got = inherited_accuracy(exp / "search", both, threads=len(os.sched_getaffinity(0)))
    accs, twins = got[:len(rows)], got[len(rows):]
    by_choices = {json.dumps(r["choices"]): a for r, a in zip(rows, accs)}
    skip_cost = [t - by_choices[json.dumps(q["choices"])] for q, t in zip(pairs, twins)]
    kt, old = kendalltau(accs, scratch), kendalltau([r["inherited_acc"] for r in rows], scratch)
    log = json.loads((exp / "search.json").read_text())
    out = {"experiment": f"{args.variant}: the {target:g} ms target's search ({args.search_epochs} epochs, 1 of them "
                         f"warm-up), 10,000 Fashion-MNIST images, seed {args.seed}",
           "reference": args.result, "reference_seeds": min(len(v) for v in seeds.values()),
           "kendall_tau": kt.statistic, "p": kt.pvalue, "default_tau": old.statistic,
           "train_acc_after_warmup": log.get("train_acc_after_warmup"), "found": log["choices"],
           "target_ms": target, "machine": sq.machine(), "skip_drop": skip, "weight_paths": cfg.weight_paths,
           "depth": cfg.depth,
           "search_seconds": round(search_s, 1),
           "skip_cost_inherited": {"pairs": len(pairs), "mean": float(np.mean(skip_cost)) if skip_cost else None,
                                   "each": [round(c, 4) for c in skip_cost],
                                   "default_mean": float(np.mean([q["inherited_cost"] for q in pairs])) if pairs else None,
                                   "scratch_mean": float(np.mean([q["scratch_cost"] for q in pairs])) if pairs else None},
           "networks": [dict(r, scratch_acc=s, inherited_variant=x) for r, s, x in zip(rows, scratch, accs)]}
    print(json.dumps({k: v for k, v in out.items() if k != "networks"}))
    (ROOT / "benchmarks" / "results" / f"supernet_variant_tau-{tag}-{datetime.date.today()}.json").write_text(
        json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
