"""Benchmark: memory of one search step, binarised paths (ProxylessNAS) against all paths (DARTS)
and against one training step of the derived network alone, same batch and input size.

Each case runs in a fresh Python process (so peak RSS belongs to that case alone) and reports:
  - saved_mb: bytes of the tensors autograd keeps for the backward pass (activation memory),
    counted with `torch.autograd.graph.saved_tensors_hooks`;
    (each storage once);
  - step_peak_rss_mb: peak resident set (`resource.getrusage` ru_maxrss) during the first step minus
    the resident set just before it (the model, data and imports are already loaded);
  - step_s: wall time of the second step (one thread).

Cases: derived (the network that binary-weight samples, trained alone), binary-weight (one sampled path per layer), binary-arch (two sampled paths, binary gates),
all-paths (every candidate, p-weighted sum).

    .venv/bin/python benchmarks/search.py [--space tiny-mnist] [--batch 64]

Writes benchmarks/results/search-<space>-b<batch>-<date>.json and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = ("derived", "binary-weight", "binary-arch", "all-paths")


def _child(space_name: str, batch: int, case: str) -> dict:
    import resource
    import time

    import torch
    import torch.nn.functional as F

    from profiler.spaces import load_space
    from search.supernet import Supernet

    torch.set_num_threads(1)
    space = load_space(space_name)
    x = torch.randn(batch, space.in_channels, space.input_size, space.input_size)
    y = torch.randint(0, space.num_classes, (batch,))
    gen = torch.Generator().manual_seed(0)
    if case == "derived":
        # the network binary-weight samples at its first step (same generator seed), trained alone
        choices = Supernet(space, "binary").sample_paths(torch.Generator().manual_seed(0))
        net = space.arch(choices).build().train()
        setup = lambda: None  # noqa: E731
    else:
        net = Supernet(space, "all" if case == "all-paths" else "binary")
        if case == "binary-arch":
            for p in net.weight_parameters():  # as in the search's architecture step
                p.requires_grad_(False)
            setup = lambda: net.sample_pairs(gen)  # noqa: E731
        elif case == "binary-weight":
            setup = lambda: net.sample_paths(gen)  # noqa: E731
        else:
            setup = lambda: None  # noqa: E731

    storages: dict[int, int] = {}

    def pack(t):
        # a tensor saved by several ops (or views of one storage) counts once
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()
        return t

    def step(count: bool):
        setup()
        if count:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = F.cross_entropy(net(x), y)
        else:
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        for p in net.parameters():
            p.grad = None

    rss_before = _rss_kb()
    step(True)  # the first step: its peak is the step's memory (the allocator has not cached anything)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gen.manual_seed(0)
    t0 = time.perf_counter()
    step(False)  # timed: the second step
    dt = time.perf_counter() - t0
    saved = sum(storages.values())
    return {"case": case, "saved_mb": round(saved / 2 ** 20, 2),
            "step_peak_rss_mb": round(max(0, peak - rss_before) / 1024, 1), "step_s": round(dt, 3),
            "params": sum(p.numel() for p in net.parameters())}


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="tiny-mnist")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.space, args.batch, args.child)))
        return
    rows = []
    for case in CASES:
        p = subprocess.run([sys.executable, __file__, "--space", args.space, "--batch", str(args.batch),
                            "--child", case], capture_output=True, text=True, cwd=ROOT)
        if p.returncode != 0:
            raise SystemExit(f"benchmark case {case} failed:\n{p.stderr[-2000:]}")
        rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
    base = rows[0]["saved_mb"]
    for r in rows:
        r["saved_vs_derived"] = round(r["saved_mb"] / base, 2) if base else None
    out = ROOT / "benchmarks" / "results" / f"search-{args.space}-b{args.batch}-{datetime.date.today()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"space": args.space, "batch": args.batch, "torch_threads": 1, "rows": rows}, indent=2))
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"memory of one step: {args.space}, batch {args.batch}")
    for c in ("case", "saved activations MB", "x derived", "step peak RSS MB", "step s"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["case"], f"{r['saved_mb']:.1f}", f"{r['saved_vs_derived']:.2f}", f"{r['step_peak_rss_mb']:.1f}",
                  f"{r['step_s']:.3f}")
    Console().print(t)
    print(f"written: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
