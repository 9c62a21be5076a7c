"""The report of a `hwnas run` folder: ``report.html`` (self-contained: the PNG plots are embedded)
beside ``plots/*.png`` and ``summary.json``.

Everything is read from the run folder's stage results, so ``hwnas report RUN`` rebuilds it at any
time; a stage that has not run yet is shown as missing, never filled in.
"""

from __future__ import annotations

import base64
import html
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.rundir import STAGES, Run

__all__ = ["write_report", "summary"]


def _load(run: Path, stage: str) -> dict[str, Any] | None:
    return Run(run).result(stage)


def _fig(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _op_label(b) -> str:
    if b.kind == "zero":
        return "zero"
    return f"k{b.kernel}e{b.mid_c // max(b.in_c, 1)}"


# ---- plots -----------------------------------------------------------------------------------------

def plot_heatmap(run: Path, cfg: dict[str, Any], out: Path) -> Path | None:
    """Measured latency of every candidate of every searchable layer (ms): layers x (kernel, expand)."""
    import pandas as pd

    from profiler.spaces import load_space

    csv = run / "profile.csv"
    if not csv.exists():
        return None
    ms = {r.block_key: r.median_ms for r in pd.read_csv(csv).itertuples() if r.status == "ok"}
    space = load_space(cfg["space"])
    layers = [space.layers[i] for i in space.searchable]
    cols = sorted({_op_label(c) for layer in layers for c in layer.candidates if c.kind != "zero"},
                  key=lambda s: (int(s[1:s.index("e")]), int(s[s.index("e") + 1:])))
    grid = np.full((len(layers), len(cols)), np.nan)
    for i, layer in enumerate(layers):
        for c in layer.candidates:
            if c.kind != "zero" and c.key in ms:
                grid[i, cols.index(_op_label(c))] = ms[c.key]
    fig = _fig(1.1 * len(cols) + 2.5, 0.42 * len(layers) + 1.6)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        txt = "n/a" if np.isnan(v) else f"{v:.3g}"
        ax.text(j, i, txt, ha="center", va="center", fontsize=7,
                color="white" if np.isnan(v) or v < np.nanmean(grid) else "black")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(layers)),
                  [f"{i}: {layer.candidates[0].in_h}x{layer.candidates[0].in_w}x{layer.candidates[0].in_c}"
                   f"->{layer.candidates[0].out_c}" + (" s2" if layer.candidates[0].stride == 2 else "")
                   for i, layer in zip(space.searchable, layers)], fontsize=7)
    ax.set_xlabel("candidate (kernel k, expand ratio e)")
    ax.set_ylabel("searchable layer (input -> output channels)")
    ax.set_title(f"measured block latency (ms, median), {cfg['backend']} on {cfg['device']}", fontsize=9)
    fig.colorbar(im, ax=ax, label="ms")
    return _save(fig, out)


def plot_networks(pred: dict[str, Any], measure: dict[str, Any] | None, baseline: dict[str, Any] | None,
                  out: Path) -> Path | None:
    """Whole networks: predicted against measured (ms), the +-10 % band."""
    nets = (pred or {}).get("networks") or {}
    pts: list[tuple[float, float, str]] = []
    for m, p in zip(nets.get("measured_ms", []), nets.get("predicted_loo_ms", [])):
        pts.append((m, p, "calibration networks (leave-one-out)"))
    for b in (baseline or {}).get("members", []):
        if b.get("measured_ms"):
            pts.append((b["measured_ms"], b["predicted_ms"], "uniform baseline"))
    if measure:
        pts.append((measure["measured_ms"], measure["predicted_ms"], "found network"))
    if not pts:
        return None
    fig = _fig(5.2, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    allv = np.array([v for p in pts for v in p[:2]])
    lo, hi = allv.min() / 1.25, allv.max() * 1.25
    line = np.linspace(lo, hi, 50)
    ax.fill_between(line, line * 0.9, line * 1.1, color="tab:green", alpha=0.15, label="±10 %")
    ax.plot(line, line, color="tab:green", lw=0.8)
    style = {"calibration networks (leave-one-out)": ("tab:blue", "o", 18),
             "uniform baseline": ("tab:orange", "s", 26), "found network": ("tab:red", "*", 140)}
    for label, (color, marker, size) in style.items():
        sel = [(m, p) for m, p, lab in pts if lab == label]
        if sel:
            a = np.array(sel)
            ax.scatter(a[:, 0], a[:, 1], color=color, marker=marker, s=size, label=label, zorder=3)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured latency (ms, median)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title("whole networks: predicted against measured", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, out)


def plot_search(search: dict[str, Any], out_curves: Path, out_probs: Path, labels: list[list[str]] | None = None,
                width_labels: list[list[str]] | None = None) -> tuple[Path | None, Path | None]:
    """The search's curves, and its probabilities as a heat map: a row per searchable layer
    (``labels``: each layer's candidates), then, in a space with widths, a row per stage
    (``width_labels``: each stage's multipliers)."""
    log = search.get("log") or []
    curves = probs = None
    if log:
        ep = [r["epoch"] + 1 for r in log]
        fig = _fig(6.4, 3.6)
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(ep, [r["train_acc"] for r in log], "o-", color="tab:blue", label="train accuracy (supernet)")
        held = [r.get("valid_acc", r.get("test_acc")) for r in log]  # logs before valid_acc scored test each epoch
        ax.plot(ep, [np.nan if v is None else v for v in held], "s-", color="tab:cyan",
                label="held-out accuracy (argmax network)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy")
        ax2 = ax.twinx()
        ax2.plot(ep, [r["expected_ms"] for r in log], "^--", color="tab:red", label="E[latency] (ms)")
        ax2.plot(ep, [r["argmax_ms"] for r in log], "v:", color="tab:purple", label="argmax network (ms)")
        if search.get("search_target_ms"):
            ax2.axhline(search["search_target_ms"], color="0.4", lw=0.8, ls="--", label="target (block sum, ms)")
        ax2.set_ylabel("predicted block-sum latency (ms)")
        warm = [r["epoch"] + 1 for r in log if r.get("phase") == "warm-up"]
        if warm:
            ax.axvspan(0.5, max(warm) + 0.5, color="0.9", zorder=0)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower left")
        ax.set_title("search: accuracy and latency per epoch (grey: weight warm-up)", fontsize=9)
        curves = _save(fig, out_curves)
    p = search.get("probabilities")
    if p:
        width = max(len(r) for r in p)
        grid = np.full((len(p), width), np.nan)
        for i, r in enumerate(p):
            grid[i, : len(r)] = r
        fig = _fig(0.8 * width + 2.5, 0.4 * len(p) + 1.5)
        ax = fig.add_subplot(1, 1, 1)
        im = ax.imshow(grid, cmap="magma", vmin=0, vmax=1, aspect="auto")
        # a space with widths: its last rows are the stages' width choices
        wlabels = width_labels or []
        n_ops = len(p) - len(wlabels)
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                name = f"{wlabels[i - n_ops][j]}\n" if i >= n_ops else ""
                ax.text(j, i, f"{name}{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if v < 0.5 else "black")
        for i, c in enumerate(search.get("choices") or []):
            ax.add_patch(_rect(c - 0.5, i - 0.5, 1, 1))
        ops = (labels or [])[:n_ops]
        longest = max(ops or [[]], key=len)
        if ops and len(longest) == width and all(lab == longest[: len(lab)] for lab in ops):
            ax.set_xticks(range(width), longest)
            ax.set_xlabel("candidate (kernel k, expand ratio e; boxed: chosen)"
                          + ("; width rows: stage width multiplier" if wlabels else ""))
        else:
            ax.set_xlabel("candidate index (boxed: chosen)")
        if wlabels:
            ax.set_yticks(range(len(p)), [str(i) for i in range(n_ops)]
                          + [f"stage {s} width" for s in range(len(wlabels))])
        ax.set_ylabel("searchable layer")
        ax.set_title("architecture probabilities after the search", fontsize=9)
        fig.colorbar(im, ax=ax)
        probs = _save(fig, out_probs)
    return curves, probs


def _rect(x, y, w, h, **kw):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, fill=False, edgecolor=kw.get("edgecolor", "cyan"), lw=kw.get("lw", 1.5))


def plot_arch(blocks: list[str], out: Path, title: str) -> Path:
    """The network as a row of blocks: width by expand ratio, colour by kernel size."""
    from matplotlib.patches import FancyBboxPatch

    from profiler.blocks import BlockSpec

    specs = [BlockSpec.from_key(k) for k in blocks]
    colors = {3: "#8ecae6", 5: "#ffb703", 7: "#fb8500"}
    fig = _fig(max(6.0, 0.75 * len(specs)), 2.3)
    ax = fig.add_subplot(1, 1, 1)
    x = 0.0
    for b in specs:
        if b.kind == "mbconv":
            e = b.mid_c // max(b.in_c, 1)
            w, label, c = 0.45 + 0.08 * e, f"MB{e}\n{b.kernel}x{b.kernel}", colors.get(b.kernel, "#adb5bd")
        elif b.kind == "zero":
            w, label, c = 0.45, "skip", "#e9ecef"
        else:
            w, label, c = 0.6, {"conv": f"Conv\n{b.kernel}x{b.kernel}", "final_conv": "Conv\n1x1",
                                 "logits": "Pool\n+FC", "pool": "Pool"}.get(b.kind, b.kind), "#ced4da"
        h = 0.5 + 0.5 * (b.out_c / max(s.out_c for s in specs))
        ax.add_patch(FancyBboxPatch((x, -h / 2), w, h, boxstyle="round,pad=0.02", facecolor=c, edgecolor="0.3"))
        ax.text(x + w / 2, 0, label, ha="center", va="center", fontsize=6.5)
        ax.text(x + w / 2, -h / 2 - 0.12, f"{b.out_c}" + ("/2" if b.stride == 2 else ""), ha="center", va="top",
                fontsize=5.5, color="0.35")
        x += w + 0.12
    ax.set_xlim(-0.1, x)
    ax.set_ylim(-0.85, 0.6)
    ax.axis("off")
    ax.set_title(title + "  (label: expand ratio, kernel; below: output channels, /2 = stride 2)", fontsize=8)
    return _save(fig, out)


def plot_pareto(measure: dict[str, Any] | None, train: dict[str, Any] | None, baseline: dict[str, Any] | None,
                target: float | None, out: Path) -> Path | None:
    def span(r: dict[str, Any]) -> tuple[float, float]:
        """Error bar below and above the mean accuracy: the seeds' lowest and highest."""
        accs = r.get("test_acc_seeds") or [r["test_acc"]]
        return r["test_acc"] - min(accs), max(accs) - r["test_acc"]

    pts = sorted((b["measured_ms"], b["test_acc"], b["op"], span(b)) for b in (baseline or {}).get("members", [])
                 if b.get("measured_ms"))
    if not pts and not (measure and train):
        return None
    fig = _fig(5.4, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    if pts:
        a = np.array([(m, acc) for m, acc, _, _ in pts])
        err = np.array([e for *_, e in pts]).T
        ax.errorbar(a[:, 0], a[:, 1], yerr=err, fmt="s--", color="tab:orange", capsize=3,
                    label="uniform family (same op in every layer)")
        for m, acc, op, _ in pts:
            ax.annotate(op, (m, acc), textcoords="offset points", xytext=(4, -10), fontsize=7)
    if measure and train:
        ax.errorbar([measure["measured_ms"]], [train["test_acc"]], yerr=np.array([span(train)]).T, fmt="*",
                    markersize=13, color="tab:red", capsize=3, label="found network", zorder=3)
    if target:
        ax.axvline(target, color="0.4", ls=":", lw=1, label=f"target {target:g} ms")
    ax.set_xlabel("measured latency (ms, median)")
    ax.set_ylabel("test accuracy (from scratch; bars: lowest-highest seed)")
    ax.set_title("accuracy against measured latency", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, out)


# ---- summary and HTML ------------------------------------------------------------------------------

def _target_ms(cfg: dict[str, Any], search: dict[str, Any] | None) -> float | None:
    """The network's target (ms): the search stage's (resolved from --target-speedup), else --target-ms."""
    return (search or {}).get("target_ms", cfg.get("target_ms"))


def summary(run: Path) -> dict[str, Any]:
    """The run's headline numbers (what ``summary.json`` holds), from its folder."""
    run = Path(run)
    r = Run(run)
    cfg, stages = r.options(), r.state()
    measure, train, search = _load(run, "measure"), _load(run, "train"), _load(run, "search")
    pred, base = _load(run, "predictor"), _load(run, "baseline")
    s: dict[str, Any] = {
        "run": str(run), "device": cfg.get("device"), "backend": cfg.get("backend"), "space": cfg.get("space"),
        "data": cfg.get("data"), "target_ms": _target_ms(cfg, search),
        "target_speedup": cfg.get("target_speedup"),
        "predicted_ms": measure["predicted_ms"] if measure else (search or {}).get("predicted_ms"),
        "measured_ms": measure["measured_ms"] if measure else None,
        "prediction_error": measure["error"] if measure else None,
        "within_10pct": measure["within_10pct"] if measure else None,
        "meets_target": measure["meets_target"] if measure else None,
        "accuracy": train["test_acc"] if train else None,
        "choices": measure["choices"] if measure and measure.get("choices") else (search or {}).get("choices"),
        "blocks": measure["blocks"] if measure and measure.get("blocks") else (search or {}).get("blocks"),
        "rounds": [{k: rnd.get(k) for k in ("round", "choices", "key", "predicted_ms", "measured_ms", "error",
                                            "within_10pct", "retimed", "first_measured_ms", "in_calibrated_range",
                                            "in_sample")}
                   for rnd in (measure or {}).get("rounds", [])],
        "stage_seconds": {k: v.get("seconds") for k, v in stages.items()},
        "total_seconds": round(sum(v.get("seconds") or 0 for v in stages.values()), 2),
    }
    if pred:
        s["predictor"] = {"model": pred["model"], "rows": pred["rows"], "overhead_ms": pred["overhead_ms"],
                          "network_model": (pred.get("networks") or {}).get("model"),
                          "network_scale": (pred.get("networks") or {}).get("scale"),
                          "network_block_ms": (pred.get("networks") or {}).get("block_ms")}
        if pred.get("blocks_loo"):
            bl = pred["blocks_loo"]
            s["predictor"]["blocks_loo"] = {k: bl[k] for k in ("n", "mape", "rmspe", "within_10pct", "kendall_tau")}
            s["predictor"]["blocks_loo"]["flops_baseline_mape"] = bl["flops_baseline"]["mape"]
        if pred.get("networks"):
            s["predictor"]["networks_loo"] = pred["networks"]["metrics_loo"]
    if search:
        inh = (base or {}).get("inherited") or {}
        pairs = [(v["inherited_acc"], v["scratch_acc"]) for v in inh.values() if v.get("scratch_acc") is not None]
        tau = None
        if len(pairs) >= 3:
            from scipy.stats import kendalltau

            tau = float(kendalltau(*zip(*pairs)).statistic)
        s["supernet"] = {"weights": search.get("weights"), "train_acc_after_warmup": search.get("train_acc_after_warmup"),
                         "test_acc_of_found_subnet": search.get("test_acc_supernet"), "inherited": inh,
                         "kendall_tau_inherited_vs_scratch": None if tau is None or np.isnan(tau) else tau}
    if base:
        s["baseline"] = [{k: b.get(k) for k in ("op", "measured_ms", "predicted_ms", "test_acc", "test_acc_seeds")}
                         for b in base["members"]]
        if measure and train:
            s["comparison"] = compare(
                {"acc": train["test_acc"], "accs": train.get("test_acc_seeds") or [train["test_acc"]],
                 "ms": measure["measured_ms"]},
                [{"op": b["op"], "acc": b["test_acc"], "accs": b.get("test_acc_seeds") or [b["test_acc"]],
                  "ms": b["measured_ms"]} for b in base["members"] if b.get("measured_ms")])
            c = s["comparison"]
            s["speedup_vs_uniform_at_equal_accuracy"] = (
                {"member": c["peer"], "ratio": c["speedup"]} if c.get("speedup") is not None else None)
    return s


def pooled_seed_std(seed_accs: list[list[float]]) -> tuple[float, int] | None:
    """Pooled seed-to-seed standard deviation of test accuracy over networks trained with several seeds
    (the square root of the summed squared deviations from each network's mean over the summed degrees of
    freedom), with its degrees of freedom; None where no network has two seeds."""
    many = [np.asarray(a, dtype=float) for a in seed_accs if len(a) > 1]
    dof = sum(len(a) - 1 for a in many)
    if not dof:
        return None
    return float(np.sqrt(sum(float(np.sum((a - a.mean()) ** 2)) for a in many) / dof)), dof


def mean_margin(n_a: int, n_b: int, pooled_std: float, dof: int) -> float:
    """Half-width of the 95 % confidence interval of the difference between two networks' mean accuracies
    over ``n_a`` and ``n_b`` seeds (Student's t on the pooled seed variance). Unlike the largest seed gap,
    which grows with every seed added, this narrows with more seeds."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof) * pooled_std * np.sqrt(1 / n_a + 1 / n_b))


def _gap(d: float) -> str:
    """An accuracy difference in points, signed in words: what a verdict of equal accuracy hides."""
    return "equally accurate" if abs(d) < 5e-5 else f"{100 * abs(d):.2f} points {'more' if d > 0 else 'less'} accurate"


#: a found network beats the family where it is at least this many times faster than the fastest uniform
#: network as accurate within the seed spread (issue 12's bar; ProxylessNAS reported 1.8x on a phone)
WIN_SPEEDUP = 1.5


def compare(found: dict[str, Any], members: list[dict[str, Any]], win_speedup: float = WIN_SPEEDUP,
            family: str = "uniform") -> dict[str, Any]:
    """The found network against the uniform family, honestly.

    ``found`` and each member: ``acc`` (mean test accuracy over seeds), ``accs`` (each seed's) and
    ``ms`` (measured latency). Two networks count as equally accurate where their accuracies differ
    by no more than the seed-to-seed spread (the largest difference between two seeds of one
    network) *and* no more than the 95 % interval of the difference of their means (Student's t on
    the pooled seed variance, see `mean_margin`), whichever is stricter. With 2 seeds and few networks
    the spread usually is; with more seeds the spread widens (the range of more draws) while the
    interval narrows, so the interval keeps the verdict from growing more lenient as seeds are added,
    and the verdict says when it drew the line. With one seed per
    network there is no spread and no claim of equal accuracy.

    ``beats_family``: the found network is at least ``win_speedup`` times faster than the fastest member
    that is as accurate within the spread, or it is more accurate, by more than the spread, than every
    member that is no slower (and at least one is). ``family`` names the members in the verdict
    ("uniform": "uniform k3e3", "the fastest uniform network").
    """
    spreads = [max(a) - min(a) for a in [found["accs"]] + [m["accs"] for m in members] if len(a) > 1]
    out: dict[str, Any] = {"seed_spread": max(spreads) if spreads else None, "peer": None, "speedup": None,
                           "win_speedup": win_speedup, "beats_family": None}
    if not members:
        return dict(out, verdict=f"no {family} network was measured")
    spread = out["seed_spread"]
    if spread is None:
        return dict(out, verdict="one training per network: the seed-to-seed spread is unknown, so no two "
                                 "accuracies are called equal (give --seeds 2)")
    pooled = pooled_seed_std([found["accs"]] + [m["accs"] for m in members])

    def tol(a: dict[str, Any], b: dict[str, Any]) -> float:
        """How far apart two networks' mean accuracies may be and still count as equally accurate."""
        if pooled is None or len(a["accs"]) < 2 or len(b["accs"]) < 2:
            return spread
        return min(spread, mean_margin(len(a["accs"]), len(b["accs"]), *pooled))

    out["pooled_std"], out["dof"] = pooled if pooled else (None, None)
    nets = [found] + members
    fastest = min(members, key=lambda m: m["ms"])
    pts = f"{100 * spread:.2f} points"
    peers = [m for m in members if abs(m["acc"] - found["acc"]) <= tol(found, m)]  # as accurate
    better = [m for m in members if m["acc"] > found["acc"] + tol(found, m)]  # clearly more accurate
    dominated = [m["op"] for m in better if m["ms"] <= found["ms"]]  # ... and no slower
    out.update(on_pareto_front=not dominated, dominated_by=dominated, more_accurate=[m["op"] for m in better],
               all_equally_accurate=all(abs(a["acc"] - b["acc"]) <= tol(a, b) for a in nets for b in nets))
    bar = min(peers, key=lambda m: m["ms"]) if peers else None  # the fastest member as accurate
    if bar is not None:
        out.update(peer=bar["op"], speedup=bar["ms"] / found["ms"], peer_margin=tol(found, bar))
    no_slower = [m for m in members if m["ms"] <= found["ms"]]
    out["goal_speedup_met"] = bar is not None and out["speedup"] >= win_speedup
    out["goal_more_accurate_met"] = bool(no_slower) and all(found["acc"] > m["acc"] + tol(found, m)
                                                            for m in no_slower)
    noise, label = "the seed spread", "spread"
    if pooled is not None and any(tol(found, m) < spread for m in members):
        # the interval, not the spread, drew the line (more than 2 seeds): say so
        noise, label = "the seed noise", "noise:"
        pts = (f"95 % interval of two means {100 * min(tol(found, m) for m in members):.2f} points at "
               f"{max(len(n['accs']) for n in nets)} seeds, stricter than the largest seed gap {pts}")
    out["beats_family"] = out["goal_speedup_met"] or out["goal_more_accurate_met"]
    win = (f"a win: {out['speedup']:.2f}x faster than {family} {bar['op']}, the fastest {family} network as "
           f"accurate within {noise} ({_gap(found['acc'] - bar['acc'])}, {label} {pts}; the bar is "
           f"{win_speedup:g}x)"
           if out["goal_speedup_met"] else
           f"a win: more accurate than every {family} network that is no slower "
           f"({', '.join(m['op'] for m in no_slower)}) by more than {noise} ({pts})")
    if out["all_equally_accurate"]:
        who = (f"the found network is the fastest ({fastest['ms'] / found['ms']:.2f}x the speed of {family} "
               f"{fastest['op']})" if found["ms"] <= fastest["ms"]
               else f"{family} {fastest['op']} is faster than the found network")
        out["verdict"] = (f"{win}; every network scores the same within {noise}, and {who}"
                          if out["beats_family"] else
                          f"every network scores the same within {noise} ({pts}): the fastest is the right "
                          f"answer, and {who}")
    elif dominated:
        out["verdict"] = (f"a loss: {family} {', '.join(dominated)} is no slower and more accurate by more than "
                          f"{noise} ({pts})")
    elif out["beats_family"]:
        out["verdict"] = win + (f"; {family} {', '.join(m['op'] for m in better)} is more accurate, and slower"
                                if better else "")
    elif better:
        out["verdict"] = (f"a trade, not a win: faster than {family} {', '.join(m['op'] for m in better)} but less "
                          f"accurate by more than {noise} ({pts})"
                          + (f"; {out['speedup']:.2f}x the speed of {family} {out['peer']}, as accurate "
                             f"({_gap(found['acc'] - bar['acc'])}; the bar for a win is {win_speedup:g}x)"
                             if out["speedup"] is not None else ""))
    elif out["speedup"] is not None:
        pace = (f"{out['speedup']:.2f}x faster than" if out["speedup"] >= 1
                else f"{1 / out['speedup']:.2f}x slower than")
        out["verdict"] = (f"{pace} {family} {out['peer']}, the fastest {family} network as "
                          f"accurate within {noise} ({pts}); none is more accurate; the bar for a win is "
                          f"{win_speedup:g}x")
    else:
        out["verdict"] = f"more accurate than every {family} network by more than {noise} ({pts})"
    return out


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee;margin:.4em 0}.big{font-size:1.25em}
.ok{color:#11772d}.bad{color:#b00020}.muted{color:#777}code{background:#f5f5f5;padding:0 .2em}"""


def _img(path: Path | None, alt: str) -> str:
    if not path or not Path(path).exists():
        return f'<p class="muted">({html.escape(alt)}: not available yet)</p>'
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(rows: list[list[Any]], head: list[str]) -> str:
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _ms(v: Any) -> str:
    return "—" if v is None else f"{v:.4g} ms"


def _pct(v: Any) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def write_report(run: str | Path) -> dict[str, Path]:
    """Write ``report.html`` and ``plots/*.png`` of a run folder; return their paths.

    Raises `FileNotFoundError` where ``run`` is not a run folder. ``summary.json`` is the caller's
    (`hwnas.pipeline.run` after the last stage, `hwnas report`): see `summary`.
    """
    folder = Path(run)
    r = Run(folder)
    if not r.is_run():
        raise FileNotFoundError(f"{folder}: not a run folder (no config.yaml); make one with `hwnas run --out {folder}`")
    ctx = _Context(folder, r.options(), {st: r.result(st) for st in STAGES if st != "report"}, folder / "plots")
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>hwnas run {e(folder.name)}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>hwnas: a network specialised for {e(str(ctx.cfg['device']))} ({e(ctx.cfg['backend'])})</h1>",
             f"<p class='muted'>run folder <code>{e(str(folder))}</code>, report written "
             f"{e(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}; search space <code>{e(ctx.cfg['space'])}</code>, "
             f"data <code>{e(str(ctx.cfg['data']))}</code>.</p>"]
    for section in (_headline, _stages, _device, _profiling, _predictor, _search, _found, _comparison):
        parts.extend(section(ctx, r))
    parts.append("<p class='muted'>Every latency on this page is a measurement of this device or a prediction "
                 "labelled as one; nothing is filled in for a missing measurement.</p></body></html>")
    (folder / "report.html").write_text("\n".join(parts))
    return {"html": folder / "report.html", "plots": ctx.plots}


@dataclass
class _Context:
    """What every section of the report reads: the folder, its options and its stage results."""

    run: Path
    cfg: dict[str, Any]
    res: dict[str, dict[str, Any] | None]
    plots: Path

    def __getattr__(self, stage: str) -> dict[str, Any] | None:  # ctx.measure, ctx.search, ...
        res = self.__dict__.get("res", {})
        if stage in res:
            return res[stage]
        raise AttributeError(stage)

    @property
    def target_ms(self) -> float | None:
        return _target_ms(self.cfg, self.search)


def _headline(ctx: _Context, r: Run) -> list[str]:
    measure, train = ctx.measure, ctx.train
    if not measure:
        return ["<p class='bad'>The found network has not been measured yet (the run stopped earlier).</p>"]
    ok, tgt, met = measure["within_10pct"], ctx.target_ms, measure.get("meets_target")
    out = [f"<p class='big'>Found network: measured <b>{_ms(measure['measured_ms'])}</b> "
           f"(p10–p90 {measure['p10_ms']:.4g}–{measure['p90_ms']:.4g} ms), predicted {_ms(measure['predicted_ms'])}: "
           f"<span class='{'ok' if ok else 'bad'}'>{100 * measure['error']:+.1f} %</span>"
           + (f"; target {tgt:g} ms <span class='{'ok' if met else 'bad'}'>{'met' if met else 'missed'}</span>"
              if tgt else "")
           + (f"; test accuracy <b>{train['test_acc']:.4f}</b>" if train else "") + ".</p>"]
    rounds = measure.get("rounds") or []
    if len(rounds) > 1:
        r1 = rounds[0]
        out.append(f"<p>Closed loop: round 1's network was predicted at {_ms(r1['predicted_ms'])} and measured at "
                   f"{_ms(r1['measured_ms'])} ({100 * r1['error']:+.1f} %, the out-of-sample error), also when "
                   f"re-timed; the network model was refitted with it and the network derived again (round 2, "
                   f"shown above).</p>")
    if measure.get("in_calibrated_range") is False:
        lo, hi = measure["calibrated_range_ms"]
        out.append(f"<p class='bad'>The found network's prediction lies outside the latencies the network model "
                   f"was fitted on ({lo:.4g}–{hi:.4g} ms): there it extrapolates.</p>")
    comp = summary(ctx.run).get("comparison")
    if comp:
        out.append(f"<p>Against the uniform family: <b>{html.escape(comp['verdict'])}</b>.</p>")
    return out


def _stages(ctx: _Context, r: Run) -> list[str]:
    st = r.state()
    return ["<h2>Stages</h2>" + _table(
        [[n, st[n]["status"], f"{st[n]['seconds']:.1f} s", st[n]["finished"]] if n in st else [n, "not run", "", ""]
         for n in STAGES], ["stage", "status", "wall time", "finished"])]


def _device(ctx: _Context, r: Run) -> list[str]:
    out = ["<h2>Device and environment</h2>"]
    if ctx.profile:
        env = ctx.profile.get("env", {})
        rows = [[k, json.dumps(v) if isinstance(v, (dict, list)) else v] for k, v in env.items()
                if k not in ("snapshot", "config")]
        rows += [[f"config.{k}", v] for k, v in (env.get("config") or {}).items()]
        out.append(_table(rows, ["", "value"]))
    return out


def _profiling(ctx: _Context, r: Run) -> list[str]:
    e, prof = html.escape, ctx.profile
    out = ["<h2>Profiling</h2>"]
    if prof:
        out.append(f"<p>{prof['ok']} of {prof['blocks']} distinct blocks measured ({prof['measured_now']} in this run, "
                   f"{prof['reused']} reused from <code>{e(prof['db'])}</code>).</p>")
        if prof.get("failed"):
            out.append(_table([[k, v] for k, v in prof["failed"].items()], ["failed block", "reason"]))
    out.append(_img(plot_heatmap(ctx.run, ctx.cfg, ctx.plots / "block_latency_heatmap.png"), "per-block latency heat map"))
    if (ctx.run / "profile.csv").exists():
        import pandas as pd

        df = pd.read_csv(ctx.run / "profile.csv")
        out.append("<details><summary>every block (" + str(len(df)) + " rows)</summary>" + _table(
            [[b.block_key, b.status, "" if np.isnan(b.median_ms) else f"{b.median_ms:.4g}",
              "" if np.isnan(b.p10_ms) else f"{b.p10_ms:.4g}–{b.p90_ms:.4g}", b.error if isinstance(b.error, str) else ""]
             for b in df.itertuples()], ["block", "status", "median ms", "p10–p90 ms", "error"]) + "</details>")
    return out


def _predictor(ctx: _Context, r: Run) -> list[str]:
    e, pred = html.escape, ctx.predictor
    out = ["<h2>Latency predictor</h2>"]
    if pred:
        nw = pred.get("networks") or {}
        span = f", measured {nw['range_ms'][0]:.4g}–{nw['range_ms'][1]:.4g} ms" if nw.get("range_ms") else ""
        per_block = (f" {1000 * nw['block_ms']:+.3g} µs x non-zero blocks" if nw and nw.get("block_ms") else "")
        how = (f"network model <b>{e(nw.get('model', 'offset'))}</b>: network = {nw.get('scale', 1.0):.3f} x block sum"
               f"{per_block} {nw['overhead_ms']:+.4g} ms, chosen by leave-one-out on {nw['n']} networks timed end to end "
               f"(spread over the space's latency range{span})") if nw else "no networks timed end to end"
        out.append(f"<p>{e(pred['model'])} fitted to {pred['rows']} measured blocks; {how}.</p>")
        rows = []
        if pred.get("blocks_loo"):
            bl = pred["blocks_loo"]
            rows.append(["blocks, leave-one-out (regression)", bl["n"], _pct(bl["mape"]), _pct(bl["rmspe"]),
                         _pct(bl["within_10pct"]), f"{bl['kendall_tau']:.3f}"])
            fb = bl["flops_baseline"]
            rows.append(["blocks, FLOPs baseline", fb["n"], _pct(fb["mape"]), _pct(fb["rmspe"]),
                         _pct(fb["within_10pct"]), f"{fb['kendall_tau']:.3f}"])
        for name, key in (("networks, block sum only", "metrics_block_sum"),
                          ("networks, network model (leave-one-out)", "metrics_loo")):
            m = nw.get(key)
            if not m:
                continue
            tau = m.get("kendall_tau")
            rows.append([name, m["n"], _pct(m["mape"]), _pct(m["rmspe"]), _pct(m["within_10pct"]),
                         "—" if tau is None or (isinstance(tau, float) and np.isnan(tau)) else f"{tau:.3f}"])
        out.append(_table(rows, ["evaluation", "n", "MAPE", "RMSPE", "within ±10 %", "Kendall τ"]))
        out.append(_img(ctx.plots / "predictor_blocks.png", "blocks: predicted against measured"))
    nets = plot_networks(pred, ctx.measure, ctx.baseline, ctx.plots / "networks_pred_vs_measured.png")
    out.append(_img(nets, "whole networks: predicted against measured"))
    return out


def _search(ctx: _Context, r: Run) -> list[str]:
    search, out = ctx.search, ["<h2>Search</h2>"]
    curves = probs = None
    if search:
        from profiler.spaces import load_space

        how = ("" if not ctx.cfg.get("target_speedup") else
               f" (the fastest uniform network's predicted latency / {ctx.cfg['target_speedup']:g})")
        out.append(f"<p>Target {_ms(ctx.target_ms)}{html.escape(how)} for the network; the search aimed its block sum "
                   f"at {_ms(search.get('search_target_ms'))} (the target through the network model). "
                   f"The space spans {search['fastest_ms']:.4g}–{search['slowest_ms']:.4g} ms predicted.</p>")
        space = load_space(ctx.cfg["space"])
        labels = [[_op_label(c) for c in space.layers[i].candidates] for i in space.searchable]
        widths = [[f"x{w:g}" for w in space.widths] for _ in range(space.width_stages)]
        curves, probs = plot_search(search, ctx.plots / "search_curves.png", ctx.plots / "search_probabilities.png",
                                    labels, widths)
    sn = summary(ctx.run).get("supernet") or {}
    if sn:
        tw, ts = sn.get("train_acc_after_warmup"), sn.get("test_acc_of_found_subnet")
        out.append(f"<p>Supernet ({html.escape(str(sn.get('weights')))} weights): train accuracy after the warm-up "
                   f"{'—' if tw is None else f'{tw:.4f}'}; the found sub-network's test accuracy in the supernet "
                   f"{'—' if ts is None else f'{ts:.4f}'}.</p>")
        if sn.get("inherited"):
            tau = sn.get("kendall_tau_inherited_vs_scratch")
            out.append(_table([[k, f"{v['inherited_acc']:.4f}", "—" if v.get("scratch_acc") is None
                                else f"{v['scratch_acc']:.4f}"] for k, v in sn["inherited"].items()],
                              ["network", "accuracy inherited from the supernet (BN recalibrated)",
                               "accuracy trained from scratch"])
                       + f"<p>Kendall τ between the two: {'—' if tau is None else f'{tau:.2f}'} "
                         f"(over {len(sn['inherited'])} networks; the benchmark measures it over more).</p>")
    return out + [_img(curves, "search curves"), _img(probs, "architecture probabilities")]


def _found(ctx: _Context, r: Run) -> list[str]:
    blocks = (ctx.measure or {}).get("blocks") or (ctx.search or {}).get("blocks")
    arch = plot_arch(blocks, ctx.plots / "found_arch.png", "found network") if blocks else None
    out = ["<h2>Found network</h2>", _img(arch, "found architecture")]
    if blocks:
        out.append("<details><summary>block keys</summary><pre>" + html.escape("\n".join(blocks))
                   + "</pre></details>")
    return out


def _range_mark(inside: bool | None) -> str:
    return {None: "—", True: "yes", False: "no: extrapolated"}[inside]


def _comparison(ctx: _Context, r: Run) -> list[str]:
    measure, train = ctx.measure, ctx.train
    rows = []
    rounds = (measure or {}).get("rounds") or ([measure] if measure else [])
    for rnd in rounds:
        last = rnd is rounds[-1]
        name = "found network" if len(rounds) == 1 else f"found network, round {rnd['round']}"
        if rnd.get("retimed"):
            name += f" (re-timed; first {rnd['first_measured_ms']:.4g} ms)"
        if rnd.get("in_sample"):
            name += " (in the refit: in-sample)"
        rows.append([name, _ms(rnd["predicted_ms"]), _ms(rnd["measured_ms"]),
                     f"{100 * rnd['error']:+.1f} %", _range_mark(rnd.get("in_calibrated_range")),
                     f"{train['test_acc']:.4f}" if train and last else "—"])
    for b in (ctx.baseline or {}).get("members", []):
        err = (b["predicted_ms"] - b["measured_ms"]) / b["measured_ms"] if b.get("measured_ms") else None
        rows.append([f"uniform {b['op']}", _ms(b["predicted_ms"]), _ms(b.get("measured_ms")),
                     "—" if err is None else f"{100 * err:+.1f} %", _range_mark(b.get("in_calibrated_range")),
                     f"{b['test_acc']:.4f}"])
    pareto = plot_pareto(measure, train, ctx.baseline, ctx.target_ms, ctx.plots / "accuracy_vs_latency.png")
    return ["<h2>Predicted against measured, and the uniform family</h2>",
            _table(rows, ["network", "predicted", "measured (median)", "error", "inside the calibrated range",
                          "test accuracy"]),
            _img(pareto, "accuracy against latency")]
