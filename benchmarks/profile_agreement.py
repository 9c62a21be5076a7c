"""Benchmark: do two profiles of the same space agree, quiet and beside CPU-bound neighbours?

Runs the real `hwnas profile` command into fresh stores (one compile cache, warm after the first run):

  quiet-1, quiet-2   two back-to-back runs on a quiet machine (interference check on, the default);
  quiet-nocheck      a quiet run with --no-interference-check (the check's cost: timing wall time);
  busy               beside N `yes` processes writing to /dev/null (other tenants of the host), default flags;
  busy-nocheck       the same neighbours, --no-interference-check --retime-flagged 0 (the behaviour before
                     the check: every number stored and used; no real-time priority either);
  quiet-nocheck-2    (only when named in --runs) a second unchecked quiet run: scatter without the check.

For each run against quiet-1: the share of blocks whose medians agree within 5 % (all rows), the rows the
run flags as distrusted (busy, interference, unconverged: re-timed, then left out by fits), the share of
the rows both runs trust that agree, and how many rows both runs trust are more than 5 % apart (noise
that escaped), and the median of the signed ratios (this run / quiet-1 - 1): a shift of every block one
way (a systematic effect) rather than scatter. The results keep each run's per-block numbers (median,
min, p10, samples, CV, flags, dropped/taken, signed ratio) under "per_block". The check's cost: the summed per-row timing wall time (load, warm-up, samples) of
quiet-1 over quiet-nocheck. The memory reference (a read of twice the last-level cache the worker
records beside each block): each run's median read, and against quiet-1 the median ratio of the two
runs' reads (slower run over faster run) for the blocks more than 5 % apart and for the rest: above 1
for the first and near 1 for the second says the disagreement came with a slower memory system.

    .venv/bin/python benchmarks/profile_agreement.py [--space proxyless-mobile] [--backend executorch]
        [--neighbours 2] [--runs quiet-1 quiet-2 quiet-nocheck busy busy-nocheck] [--force]

Refuses to start unless the 1-minute load average is below 0.5 (--force skips the check; the numbers then
say little). Prints a table, writes benchmarks/results/profile_agreement-<date>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from profiler.devices import local_info  # noqa: E402
from profiler.store import Store, is_trusted  # noqa: E402

RUNS = {  # name -> (neighbours?, extra CLI flags)
    "quiet-1": (False, []),
    "quiet-2": (False, []),
    "quiet-nocheck": (False, ["--no-interference-check", "--retime-flagged", "0"]),
    "busy": (True, []),
    "busy-nocheck": (True, ["--no-interference-check", "--retime-flagged", "0"]),
    # not run by default: a second unchecked quiet run, to tell the check's effect from run-to-run scatter
    "quiet-nocheck-2": (False, ["--no-interference-check", "--retime-flagged", "0"]),
}
DEFAULT_RUNS = ["quiet-1", "quiet-2", "quiet-nocheck", "busy", "busy-nocheck"]


@contextlib.contextmanager
def neighbours(n: int):
    """`n` CPU-bound processes (`yes` into /dev/null), unpinned, for the duration of the block."""
    procs = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(n)]
    try:
        time.sleep(1.0)  # let the scheduler spread them
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def profile(db: Path, args, extra: list[str], env: dict) -> tuple[float, dict]:
    from profile_host import run  # the same subprocess runner: wall time and the command's --json

    return run([sys.executable, "-m", "hwnas", "profile", "--space", args.space, "--backend", args.backend,
                "--db", str(db), "--json", *extra], env)


def code_origin(env: dict) -> str:
    """Where the subprocess imports the profiler from (so a worktree's run says it timed the worktree's code)."""
    p = subprocess.run([sys.executable, "-c", "import profiler; print(profiler.__file__)"], env=env, cwd=ROOT,
                       capture_output=True, text=True, check=True)
    return p.stdout.strip()


def rows(db: Path):
    with Store(db) as st:
        df = st.latest(status="ok").set_index("block_key")
    df["trusted"] = [is_trusted("ok", f) for f in df["flags"]]
    return df


def per_block(df, ref=None) -> dict:
    """Each block's stored latency (median_ms), spread, sample count and flags; with `ref`, the signed
    ratio to it (this run / reference - 1: positive = slower than the reference)."""
    out = {}
    for key, r in df.iterrows():
        noise = (r.get("env_after") or {}).get("noise") if isinstance(r.get("env_after"), dict) else None
        d = {"median_ms": round(float(r["median_ms"]), 5), "min_ms": round(float(r["min_ms"]), 5),
             "p10_ms": round(float(r["p10_ms"]), 5), "n": int(r["n"]), "cv": round(float(r["cv"]), 4),
             "inner_runs": int(r["inner_runs"]), "flags": list(r["flags"]), "trusted": bool(r["trusted"]),
             "timing_wall_s": round(float(r["wall_s"]), 3)}
        procs = (r.get("env_after") or {}).get("processes") if isinstance(r.get("env_after"), dict) else None
        if procs:
            d["process_medians_ms"] = procs.get("median_ms")
        if noise:
            d["dropped"] = int(noise.get("dropped", 0))
            d["taken"] = int(noise.get("taken", 0))
            mem = noise.get("memory_reference")
            if mem:  # the kept process's memory reference: the faster of its reads before and after
                d["memory_ref_ms"] = round(min(mem["before_ms"], mem["after_ms"]), 4)
        if ref is not None and key in ref.index:
            d["ratio_to_quiet_1"] = round(float(r["median_ms"] / ref.loc[key, "median_ms"] - 1), 4)
        out[key] = d
    return out


def _process_medians(df) -> dict:
    out = {}
    for key, r in df.iterrows():
        ea = r.get("env_after")
        meds = (ea.get("processes") or {}).get("median_ms") if isinstance(ea, dict) else None
        if meds and None not in meds:
            out[key] = meds
    return out


def estimators(frames: dict, runs: list[str]) -> dict:
    """With blocks timed in several processes (--processes): the share of blocks within 5 % of quiet-1
    had each run kept only its first process, the lower of its first two, or the lowest of all: what
    the extra processes buy, from the same runs."""
    ref = _process_medians(frames["quiet-1"])
    if not ref:
        return {}
    rules = {"first process": lambda m: m[0], "min of first 2": lambda m: min(m[:2]), "min of all": min}
    out = {}
    for name in runs:
        if name == "quiet-1":
            continue
        other = _process_medians(frames[name])
        keys = [k for k in ref if k in other]
        if keys:
            out[name] = {rule: round(float(sum(abs(f(other[k]) / f(ref[k]) - 1) <= 0.05 for k in keys) / len(keys)), 4)
                         for rule, f in rules.items()} | {"blocks": len(keys)}
    return out


def _upper_median(values: list[float]) -> float:
    return float(sorted(values)[len(values) // 2])


def memory_reference(per: dict, runs: list[str]) -> dict:
    """Does the memory reference (a read of 2x the last-level cache beside each block's timing) see what
    makes two profiles disagree? Per run: its median memory read (ms); against quiet-1, for the blocks
    more than 5 % apart and for the rest, the median ratio of the two runs' memory reads, oriented so
    that above 1 means the slower run's read was slower too."""
    ref = per.get("quiet-1", {})
    out = {}
    for name in runs:
        mem = [d["memory_ref_ms"] for d in per[name].values() if "memory_ref_ms" in d]
        if not mem:
            continue
        row = {"median_ms": round(_upper_median(mem), 4), "blocks": len(mem)}
        if name != "quiet-1" and ref:
            off, on = [], []
            for key, d in per[name].items():
                q = ref.get(key)
                if not q or "memory_ref_ms" not in d or "memory_ref_ms" not in q:
                    continue
                slower_ratio = d["median_ms"] / q["median_ms"]
                mem_ratio = d["memory_ref_ms"] / q["memory_ref_ms"]
                (off if abs(slower_ratio - 1) > 0.05 else on).append(mem_ratio if slower_ratio >= 1 else 1 / mem_ratio)
            row |= {"off_by_5pct": len(off),
                    "off_mem_ratio_slower_over_faster": round(_upper_median(off), 3) if off else None,
                    "agreeing_mem_ratio_slower_over_faster": round(_upper_median(on), 3) if on else None}
        out[name] = row
    return out


def compare(ref, other) -> dict:
    common = ref.index.intersection(other.index)
    signed = other.loc[common, "median_ms"] / ref.loc[common, "median_ms"] - 1
    rel = (other.loc[common, "median_ms"] - ref.loc[common, "median_ms"]).abs() / ref.loc[common, "median_ms"]
    trusted = other.loc[common, "trusted"]
    both = trusted & ref.loc[common, "trusted"]
    off = rel > 0.05
    return {
        "blocks": int(len(common)),
        # a systematic shift (this run slower or faster on every block) against scatter around zero
        "signed_ratio_median": round(float(signed.median()), 4),
        "signed_ratio_p10_p90": [round(float(signed.quantile(0.1)), 4), round(float(signed.quantile(0.9)), 4)],
        "agree_within_5pct": round(float((rel <= 0.05).mean()), 3),
        "agree_within_10pct": round(float((rel <= 0.10).mean()), 3),
        "worst": round(float(rel.max()), 3),
        "flagged": int((~trusted).sum()),
        "trusted_agree_within_5pct": round(float((rel[both] <= 0.05).mean()), 3) if both.any() else None,
        "trusted_worst": round(float(rel[both].max()), 3) if both.any() else None,
        # noise that escaped: both runs vouch for their numbers, yet they disagree
        "off_by_5pct_both_trusted": int((off & both).sum()),
        "off_by_10pct_both_trusted": int(((rel > 0.10) & both).sum()),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="proxyless-mobile")
    ap.add_argument("--backend", default="executorch")
    ap.add_argument("--neighbours", type=int, default=2, help="CPU-bound `yes` processes beside the busy runs")
    ap.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, choices=list(RUNS))
    ap.add_argument("--keep-stores", metavar="DIR", help="copy each run's store (raw samples) into DIR")
    ap.add_argument("--cache-dir", help="compile cache (default: $HWNAS_CACHE_DIR or ~/.cache/hwnas/artifacts)")
    ap.add_argument("--force", action="store_true", help="run even if the machine is not quiet")
    ap.add_argument("--processes", type=int, help="`hwnas profile --processes N` in every run: fresh timing "
                                                  "processes per block (count; default: the command's own)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    load1 = os.getloadavg()[0]
    if load1 >= 0.5 and not args.force:
        raise SystemExit(f"benchmark: the 1-minute load average is {load1:.2f}; run it on a quiet machine "
                         f"(below 0.5), or pass --force")
    if "quiet-1" not in args.runs:
        raise SystemExit("benchmark: quiet-1 is the reference run; keep it in --runs")
    info = local_info()
    # the `hwnas profile` subprocesses run from this checkout (cwd and PYTHONPATH), not the venv's install
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in os.environ.get(
        "PYTHONPATH", "").split(os.pathsep) if p])}
    if args.cache_dir:
        env["HWNAS_CACHE_DIR"] = args.cache_dir
    results = {"machine": {k: info[k] for k in ("cpu_model", "cores", "machine", "os", "governor")},
               "load_avg_at_start": [round(x, 2) for x in os.getloadavg()], "space": args.space,
               "backend": args.backend, "neighbours": args.neighbours, "date": time.strftime("%Y-%m-%d %H:%M"),
               "commands": {}, "runs": {}, "code": code_origin(env)}
    frames = {}
    with tempfile.TemporaryDirectory(prefix="hwnas-agree-") as tmp:
        for name in args.runs:
            busy, extra = RUNS[name]
            extra = extra + (["--processes", str(args.processes)] if args.processes else [])
            db = Path(tmp) / f"{name}.db"
            print(f"[{name}] profiling{' beside %d neighbours' % args.neighbours if busy else ''} ...", flush=True)
            with neighbours(args.neighbours) if busy else contextlib.nullcontext():
                wall, out = profile(db, args, extra, env)
            frames[name] = rows(db)
            if args.keep_stores:
                Path(args.keep_stores).mkdir(parents=True, exist_ok=True)
                shutil.copy(db, Path(args.keep_stores) / db.name)
            s = out["summary"]
            results["commands"][name] = (f"{'(beside %d x `yes > /dev/null`) ' % args.neighbours if busy else ''}"
                                         f"hwnas profile --space {args.space} --backend {args.backend} "
                                         f"--db {name}.db --json {' '.join(extra)}").strip()
            results["runs"][name] = {"wall_s": round(wall, 1), "measured": s["measured"], "retimed": s["retimed"],
                                     "unclean": len(s["unclean"]), "compiled": s["compiled"],
                                     "timing_wall_s_sum": round(float(frames[name].wall_s.sum()), 1)}
    ref = frames["quiet-1"]
    for name in args.runs[1:] if args.runs[0] == "quiet-1" else [r for r in args.runs if r != "quiet-1"]:
        results["runs"][name]["vs_quiet_1"] = compare(ref, frames[name])
    results["runs"]["quiet-1"]["flagged"] = int((~ref.trusted).sum())
    results["per_block"] = {name: per_block(frames[name], None if name == "quiet-1" else ref) for name in args.runs}
    est = estimators(frames, args.runs)
    if est:
        results["estimators_within_5pct"] = est
    mem = memory_reference(results["per_block"], args.runs)
    if mem:
        results["memory_reference"] = mem
    if "quiet-nocheck" in frames:
        results["check_cost_timing_wall_ratio"] = round(
            results["runs"]["quiet-1"]["timing_wall_s_sum"] / max(results["runs"]["quiet-nocheck"]["timing_wall_s_sum"],
                                                                  1e-9), 2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"profile_agreement-{time.strftime('%Y%m%d-%H%M')}.json"
    path.write_text(json.dumps(results, indent=2))

    m = results["machine"]
    print(f"code: {results['code']}")
    print(f"\nmachine: {m['cpu_model']}, {m['cores']} cores, {m['os']}; load at start {results['load_avg_at_start']}; "
          f"{args.backend} on {args.space}; busy runs beside {args.neighbours} x `yes > /dev/null`")
    keys = ["signed_ratio_median", "agree_within_5pct", "agree_within_10pct", "worst", "flagged", "trusted_agree_within_5pct",
            "trusted_worst", "off_by_5pct_both_trusted", "off_by_10pct_both_trusted"]
    names = [n for n in args.runs if n != "quiet-1"]
    print("| vs quiet-1 | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for k in keys:
        print(f"| {k} | " + " | ".join(str(results["runs"][n]["vs_quiet_1"][k]) for n in names) + " |")
    for k in ("wall_s", "timing_wall_s_sum", "retimed", "unclean"):
        print(f"| {k} | " + " | ".join(str(results["runs"][n][k]) for n in names) + " |")
    q1 = results["runs"]["quiet-1"]
    print(f"quiet-1: wall {q1['wall_s']} s, timing {q1['timing_wall_s_sum']} s, flagged {q1['flagged']}")
    if "check_cost_timing_wall_ratio" in results:
        print(f"the check's cost: timing wall time quiet-1 / quiet-nocheck = {results['check_cost_timing_wall_ratio']}")
    for name, e in results.get("estimators_within_5pct", {}).items():
        print(f"{name}: within 5 % of quiet-1 keeping " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in e.items()
                                                                   if k != "blocks") + f" ({e['blocks']} blocks)")
    for name, r in results.get("memory_reference", {}).items():
        extra = (f"; blocks off by > 5 %: {r['off_by_5pct']}, their memory reads slower run / faster run "
                 f"{r['off_mem_ratio_slower_over_faster']} (agreeing blocks {r['agreeing_mem_ratio_slower_over_faster']})"
                 if "off_by_5pct" in r else "")
        print(f"{name}: memory reference (read of 2x LLC) median {r['median_ms']} ms{extra}")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
