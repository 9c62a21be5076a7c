"""`hwnas fit`, `hwnas evaluate`, `hwnas predict`, `hwnas export-lut`: latency predictors."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

from hwnas.cli import UserError, check_out_file, write_error

HELP_FMT = argparse.ArgumentDefaultsHelpFormatter


TUNE_HELP = ("with --db: only rows that TVM MetaSchedule tuned with this many trials per block (count; 0: "
             "untuned rows; default: any, refused when the store holds several tunings)")


def _tuning(args) -> str | None:
    """`Config.tuning` of the rows --tune-trials asks for (None: any)."""
    from profiler.measurement import tuning_of

    trials = getattr(args, "tune_trials", None)
    if trials is not None and trials < 0:
        raise UserError(f"--tune-trials {trials}: give a trial count of 0 (untuned) or more")
    return None if trials is None else tuning_of(trials)


def register(sub) -> None:
    from predictor import MODELS
    from predictor.network import NETWORK_MODELS

    p = sub.add_parser("fit", help="fit a latency predictor to measured blocks or networks", formatter_class=HELP_FMT,
                       description="Fit a latency predictor (ms) and save it as one JSON file. From a store or a "
                                   "LUT: a hybrid by default (the measured latency where a block was measured, a "
                                   "regression chosen by cross-validation elsewhere). From whole-network "
                                   "measurements: per-block costs and a per-network overhead; with --db or --lut "
                                   "too, only the overhead is fitted on top of the block predictor.")
    src = p.add_argument_group("training data (--db or --lut, and/or --networks)")
    src.add_argument("--db", help="SQLite store of measured blocks (`hwnas profile`)")
    src.add_argument("--lut", help="a ProxylessNAS (count/mean/var) or Once-for-All (count/mean/std) LUT .yaml, ms")
    src.add_argument("--networks", help="whole-network latencies: .jsonl lines {\"blocks\": [...], \"latency_ms\": x} "
                                        "or .csv with the columns blocks (JSON list) and latency_ms")
    p.add_argument("--device", default="local", help="with --db: the device spec whose rows to use")
    p.add_argument("--backend", default="executorch", help="with --db: the backend whose rows to use")
    p.add_argument("--threads", type=int, help="with --db: only rows timed with this many threads (count)")
    p.add_argument("--tune-trials", type=int, help=TUNE_HELP)
    p.add_argument("--model", default="hybrid", choices=MODELS,
                   help="hybrid: table + CV-chosen regression; lut: exact keys only; regression: CV-chosen "
                        "family only; or one family")
    p.add_argument("--folds", default="5", help="cross-validation folds for choosing the family (count, or loo)")
    p.add_argument("--network-model", default="overhead", choices=NETWORK_MODELS,
                   help="with --networks and --db/--lut: overhead fits one per-network constant (ms) on top of "
                        "the block predictor; linear also a scale (x) on the block sum; block also a cost per "
                        "non-zero block (ms: what a block timed alone pays per call and a network pays once; "
                        "needs networks with different numbers of blocks); auto the best of these by "
                        "leave-one-out; refine learns a factor per block (its cost inside networks "
                        "against alone), shrunk toward 1 by a ridge chosen by 5-fold CV on the networks")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds and the tree ensembles")
    p.add_argument("--out", required=True, help="predictor file to write (.json)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("evaluate", help="how accurate a predictor is (RMSE, MAPE, Kendall tau, vs a FLOPs baseline)",
                       formatter_class=HELP_FMT,
                       description="Score a saved predictor on measured blocks (--predictor with --db or --lut) "
                                   "or on whole networks (--predictor with --networks), or cross-validate fresh "
                                   "models on them (--cv 5 or --cv loo; with --networks, network-level models are "
                                   "fitted on the folds of the networks, on top of a block predictor fitted to "
                                   "--db/--lut when one is given). Relative errors are fractions in --json (0.05 "
                                   "= 5 %); latencies are ms. A FLOPs-proportional model (a * FLOPs + b) "
                                   "fitted on the same folds is reported beside.")
    p.add_argument("--predictor", help="a saved predictor (.json) to score")
    p.add_argument("--db", help="SQLite store of measured blocks")
    p.add_argument("--lut", help="a ProxylessNAS / Once-for-All LUT .yaml of measured blocks")
    p.add_argument("--networks", help="whole-network latencies (.jsonl lines {\"blocks\": [...], \"latency_ms\": x}, "
                                      "or .csv with the columns blocks and latency_ms): evaluate at network level")
    p.add_argument("--device", default="local", help="with --db: device spec")
    p.add_argument("--backend", default="executorch", help="with --db: backend")
    p.add_argument("--threads", type=int, help="with --db: thread count")
    p.add_argument("--tune-trials", type=int, help=TUNE_HELP)
    p.add_argument("--cv", help="cross-validate fresh models instead: a fold count (e.g. 5) or loo")
    p.add_argument("--model", default="auto", help="with --cv: auto (chosen per fold) or one family "
                                                   "(linear, loglinear, gbt, forest)")
    p.add_argument("--network-model", default="overhead", choices=NETWORK_MODELS,
                   help="with --networks --cv and --db/--lut: what is fitted on the folds on top of the block "
                        "predictor (see `hwnas fit --help`)")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds and the tree ensembles")
    p.add_argument("--plot", help="write a predicted-vs-measured scatter here: PNG (.png added when the name "
                                  "has no suffix), or .svg, .pdf, ...")
    p.add_argument("--rows", action="store_true", help="with --json: include every row's prediction")
    p.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="predicted latency (ms) of a network or of blocks", formatter_class=HELP_FMT)
    p.add_argument("--predictor", required=True, help="a saved predictor (.json)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--arch", help="an arch.json (ArchSpec): the network latency, overhead included")
    what.add_argument("--block", action="append", metavar="KEY", help="a block key; repeat for more")
    what.add_argument("--model", metavar="MODULE:FACTORY",
                      help="any torch nn.Module: package.module:factory, a callable returning it (the current "
                           "folder is searched too); decomposed into blocks through torch.export, and parts "
                           "that match no block kind are listed")
    what.add_argument("--net-config", "--ofa-net", dest="net_config", metavar="NET_CONFIG",
                      help="a network as Once-for-All or ProxylessNAS publish it (net.config, e.g. "
                           "proxyless_mobile.config): ProxylessNASNets or MobileNetV3, blocks under conv or "
                           "mobile_inverted_conv; its input size is --image-size, or the file's own resolution "
                           "where it writes one (MCUNet's do), else 224 (--ofa-net is the old name of this "
                           "option)")
    p.add_argument("--image-size", type=int, default=None,
                   help="with --model or --net-config: input height and width (pixels); default 224, or a "
                        "net.config's own resolution")
    p.add_argument("--save-arch", metavar="FILE",
                   help="with --net-config: also write the network as an arch.json (ArchSpec), which "
                        "`hwnas verify --arch` measures on a device")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object; each block with its latency (ms) and its source: table (the "
                        "lookup table), regression, or zero (a skipped layer, 0 ms)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export-lut", help="write a ProxylessNAS-format LUT (.yaml) of a space from a predictor",
                       formatter_class=HELP_FMT,
                       description="Predict every distinct block of a search space and write a ProxylessNAS "
                                   "lookup table (key -> {count, mean, var}; mean in ms). count is the number of "
                                   "samples behind a measured entry, 0 for a predicted one.")
    p.add_argument("--predictor", required=True, help="a saved predictor (.json)")
    p.add_argument("--space", required=True, help="search space name or a space .yaml file")
    p.add_argument("--out", required=True, help="LUT file to write (.yaml)")
    p.set_defaults(func=cmd_export_lut)


# ---- helpers ---------------------------------------------------------------------------------

def _user(fn: Callable, *a: Any, **kw: Any) -> Any:
    """Call a library function; its input errors become one-line `UserError`s."""
    from predictor import PredictorError, UnknownBlockError

    try:
        return fn(*a, **kw)
    except UnknownBlockError as e:
        raise UserError(str(e)) from None
    except PredictorError as e:
        raise UserError(str(e)) from None


def _folds(text: str) -> int | str:
    if text == "loo":
        return "loo"
    try:
        k = int(text)
    except ValueError:
        raise UserError(f"folds {text!r}: give a count of at least 2, or loo") from None
    if k < 2:
        raise UserError(f"folds {k}: give a count of at least 2, or loo")
    return k


def _entries(args) -> tuple[dict, dict]:
    """Measured blocks named by --db or --lut: (key -> Entry, metadata)."""
    from predictor.io import read_lut_yaml, store_entries

    if args.db and args.lut:
        raise UserError("give --db or --lut, not both")
    if args.db:
        return _user(store_entries, args.db, device=args.device, backend=args.backend, threads=args.threads,
                     tuning=_tuning(args))
    if args.lut:
        if not Path(args.lut).exists():
            raise UserError(f"{args.lut}: no such LUT file")
        t = _user(read_lut_yaml, args.lut)
        return t.entries, dict(t.meta)
    return {}, {}


def _load(path: str):
    from predictor import load_predictor

    if not Path(path).exists():
        raise UserError(f"{path}: no such predictor file (write one with `hwnas fit`)")
    return _user(load_predictor, path)


def _clean(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


# ---- fit ---------------------------------------------------------------------------------------

def cmd_fit(args) -> int:
    from predictor import fit_predictor, save_predictor
    from predictor.io import read_networks
    from predictor.network import fit_network_model
    from predictor.regression import MIN_ROWS

    if not (args.db or args.lut or args.networks):
        raise UserError("name the training data: --db DB, --lut FILE.yaml or --networks FILE.jsonl")
    check_out_file(args.out, "predictor.json")  # before fitting, which can take minutes
    folds = _folds(args.folds)
    entries, meta = _entries(args)
    if (args.db or args.lut) and len(entries) < MIN_ROWS and args.model != "lut":
        raise UserError(f"{args.db or args.lut}: {len(entries)} measured block(s); a predictor needs at least "
                        f"{MIN_ROWS} (profile a space, or use --model lut for a table of what is there)")
    if entries:
        pred = _user(fit_predictor, entries, args.model, folds, args.seed, meta)
    else:
        pred = None
    if args.networks:
        if not Path(args.networks).exists():
            raise UserError(f"{args.networks}: no such file")
        nets, y = _user(read_networks, args.networks)
        meta = dict(meta, networks_source=args.networks)
        pred = _user(fit_network_model, pred, nets, y, args.network_model, args.seed, meta)
    meta = dict(pred.meta, model=args.model, fitted_by="hwnas fit")
    pred.meta = meta
    if hasattr(pred, "regression"):
        pred.regression.meta = meta
    try:
        _user(save_predictor, pred, args.out)
    except OSError as e:
        raise write_error(args.out, e) from None
    reg = getattr(pred, "regression", pred)
    summary = {"out": args.out, "predictor": pred.describe(), "overhead_ms": pred.overhead_ms,
               "family": getattr(reg, "family", None), "cv": getattr(reg, "cv", {}),
               "rows": len(entries), **{k: meta[k] for k in ("device", "backend", "threads") if k in meta}}
    if args.json:
        print(json.dumps(_clean(summary), indent=2))
        return 0
    print(f"wrote {args.out}: {pred.describe()}; per-network overhead {pred.overhead_ms:.4f} ms")
    scores = summary["cv"].get("scores") if summary["cv"] else None
    if scores:
        _print_cv(scores, summary["family"], summary["cv"].get("folds"))
    if args.networks and "residual_rms_ms" in pred.meta:
        print(f"fitted from {pred.meta['networks']} networks ({pred.meta['distinct_blocks']} distinct blocks, "
              f"rank {pred.meta['rank']}): residual RMS {pred.meta['residual_rms_ms']:.4f} ms")
    return 0


def _print_cv(scores: dict, chosen: str, folds: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"family chosen by {folds}-fold cross-validation (MAPE)", title_justify="left")
    for c in ("family", "MAPE %", "RMSPE %", "within 10 %", "Kendall tau", ""):
        t.add_column(c)
    for fam, s in scores.items():
        t.add_row(fam, f"{100 * s['mape']:.1f}", f"{100 * s['rmspe']:.1f}", f"{100 * s['within_10pct']:.0f} %",
                  f"{s['kendall_tau']:.3f}", "chosen" if fam == chosen else "")
    Console().print(t)


# ---- evaluate -----------------------------------------------------------------------------------

def _evaluate_networks(args):
    """--networks: score a predictor on whole networks, or cross-validate network-level models."""
    from predictor.evaluate import cross_validate_networks, score_networks
    from predictor.io import read_networks

    if not Path(args.networks).exists():
        raise UserError(f"{args.networks}: no such file")
    nets, y = _user(read_networks, args.networks)
    if args.predictor:
        if args.db or args.lut:
            raise UserError("--predictor with --networks scores the saved predictor; --db/--lut are used with --cv only")
        return _user(score_networks, _load(args.predictor), nets, y, 5, args.seed)
    base = None
    if args.db or args.lut:  # a block predictor from the block rows; only the overhead is fitted on the folds
        from predictor import fit_predictor
        from predictor.regression import MIN_ROWS

        entries, meta = _entries(args)
        if len(entries) < MIN_ROWS:
            raise UserError(f"{args.db or args.lut}: {len(entries)} measured block(s); a block predictor needs at "
                            f"least {MIN_ROWS}")
        model = "hybrid" if args.model == "auto" else args.model
        base = _user(fit_predictor, entries, model, 5, args.seed, meta)
    return _user(cross_validate_networks, nets, y, _folds(args.cv), args.seed, base, args.network_model)


def cmd_evaluate(args) -> int:
    from predictor.evaluate import cross_validate, plot, plot_formats, plot_path, score
    from profiler.blocks import BlockSpec

    if not (args.db or args.lut or args.networks):
        raise UserError("name the data to evaluate on: --db DB or --lut FILE.yaml (blocks), or --networks FILE "
                        "(whole networks)")
    if bool(args.predictor) == bool(args.cv):
        raise UserError("give --predictor P (score a saved predictor) or --cv 5|loo (cross-validate), one of them")
    if args.plot:
        suffix = plot_path(args.plot).suffix.lower().lstrip(".")
        if suffix not in plot_formats():
            raise UserError(f"--plot {args.plot}: matplotlib writes no .{suffix} images; end the name with .png, "
                            ".svg or .pdf")
        check_out_file(str(plot_path(args.plot)), "plot.png", "--plot")
    if args.networks:
        ev = _evaluate_networks(args)
        data = args.networks
    else:
        entries, meta = _entries(args)
        keys = [k for k, e in entries.items() if e.mean_ms > 0]
        blocks = [BlockSpec.from_key(k) for k in keys]
        y = [entries[k].mean_ms for k in keys]
        if args.cv:
            ev = _user(cross_validate, blocks, y, args.model, _folds(args.cv), args.seed)
        else:
            pred = _load(args.predictor)
            ev = _user(score, pred, blocks, y, 5, args.seed)
        data = args.db or args.lut
    ev.how["data"] = data
    written = None
    if args.plot:
        try:
            written = plot(ev, args.plot, title=f"{Path(data).name}: " + (
                f"{args.cv}-fold CV" if args.cv and args.cv != "loo" else "leave-one-out" if args.cv
                else args.predictor))
        except OSError as e:
            raise write_error(args.plot, e, "--plot") from None
    if args.json:
        print(json.dumps(_clean(ev.to_dict(rows=args.rows)), indent=2))
        return 0
    s = ev.scores
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{ev.how.get('mode')} on {s['n']} {ev.unit}s of {data}", title_justify="left")
    for c in ("model", "RMSE ms", "RMSPE %", "MAPE %", "within 5 %", "within 10 %", "Kendall tau"):
        t.add_column(c)
    name = ev.how.get("predictor") or (ev.how["label"] if ev.unit == "network" else f"regression ({args.model})")
    for label, m in ((name, s), ("FLOPs baseline (a*FLOPs+b)", s["flops_baseline"])):
        t.add_row(label, f"{m['rmse_ms']:.4f}", f"{100 * m['rmspe']:.1f}", f"{100 * m['mape']:.1f}",
                  f"{100 * m['within_5pct']:.0f} %", f"{100 * m['within_10pct']:.0f} %", f"{m['kendall_tau']:.3f}")
    Console().print(t)
    if ev.how.get("networks_in_training"):
        print(f"note: the predictor was fitted on {ev.how['networks_in_training']} networks; if these are among "
              "them, use --cv for an out-of-sample estimate")
    if ev.how.get("seen_in_training"):
        print(f"note: {ev.how['seen_in_training']} of {s['n']} blocks were in the predictor's training data; "
              "use --cv for an out-of-sample estimate")
    if "chosen_per_fold" in ev.how:
        from collections import Counter

        counts = Counter(ev.how["chosen_per_fold"])
        print("family chosen per fold: " + ", ".join(f"{f} x{n}" for f, n in counts.most_common()))
    if ev.unit == "network" and "model" in ev.how:
        print(f"model: {ev.how['model']}")
    if "selection" in ev.how:
        print(f"family: {ev.how['selection']}")
    if written:
        print(f"plot: {written}", file=sys.stderr)
    return 0


# ---- predict / export-lut -----------------------------------------------------------------------

def _per_block(pred, blocks: list) -> tuple[Any, list[dict]]:
    """Each block's predicted latency (ms) and where it came from (the predictor's ``sources``)."""
    per = _user(pred.predict_ms, blocks)
    src = _user(pred.sources, blocks)
    return per, [{"block_key": b.key, "latency_ms": float(v), "source": s} for b, v, s in zip(blocks, per, src)]


def _print_rows(rows: list[dict]) -> None:
    for r in rows:
        print(f"{r['latency_ms']:9.4f} ms  {r['source']:<10}  {r['block_key']}")


def _source_counts(rows: list[dict]) -> str:
    from collections import Counter

    n = Counter(r["source"] for r in rows)
    return ", ".join(f"{n[s]} {label}" for s, label in (("table", "from the table"), ("regression", "regressed"),
                                                        ("zero", "skipped")) if n[s])


def cmd_predict(args) -> int:
    from profiler.blocks import ArchSpec, BlockSpec

    pred = _load(args.predictor)
    if args.arch or args.net_config:
        if args.net_config:
            from predictor.ofa_net import read_ofa_net

            arch = _user(read_ofa_net, args.net_config, args.image_size)
            if arch.meta.get("resolution_in_file") not in (None, arch.input_size):
                print(f"note: {args.net_config} was published at {arch.meta['resolution_in_file']} px; predicting "
                      f"at --image-size {arch.input_size}", file=sys.stderr)
        else:
            if not Path(args.arch).exists():
                raise UserError(f"{args.arch}: no such file")
            arch = ArchSpec.from_json(Path(args.arch).read_text(encoding="utf-8"))
        blocks = list(arch.blocks)
        per, rows = _per_block(pred, blocks)
        total = float(per.sum() + pred.overhead_ms)
        if args.net_config and args.save_arch:  # written once the network is known to be predictable
            try:
                Path(args.save_arch).write_text(arch.to_json(), encoding="utf-8")
            except OSError as e:
                raise UserError(f"--save-arch {args.save_arch}: cannot write it ({e.strerror})") from None
        out = {"latency_ms": total, "blocks_ms": float(per.sum()), "overhead_ms": pred.overhead_ms,
               "arch": args.arch or args.net_config, "predictor": args.predictor, "blocks": rows}
        if args.json:
            print(json.dumps(_clean(out), indent=2))
            return 0
        _print_rows(rows)
        print(f"{total:.4f} ms  ({len(blocks)} blocks {per.sum():.4f} ms + overhead {pred.overhead_ms:.4f} ms; "
              f"{_source_counts(rows)})")
        return 0
    if args.model:
        return _predict_model(pred, args)
    blocks = [BlockSpec.from_key(k) for k in args.block]
    per, rows = _per_block(pred, blocks)
    if args.json:
        print(json.dumps(_clean({"latency_ms": float(per.sum()) if len(blocks) > 1 else float(per[0]),
                                 "blocks": rows}), indent=2))
    else:
        _print_rows(rows)
    return 0


def _predict_model(pred, args) -> int:
    """--model: decompose the module into blocks; predict the matched part and say what it leaves out."""
    from predictor.decompose import decompose_factory

    d = _user(decompose_factory, args.model, 224 if args.image_size is None else args.image_size)
    if not d.blocks:
        raise UserError(f"--model {args.model}: no part of it matches a block kind ({d.unmatched_summary()}); "
                        "nothing to predict")
    per, rows = _per_block(pred, list(d.blocks))
    blocks_ms = float(sum(per))
    total = blocks_ms + pred.overhead_ms
    out = {"latency_ms": total, "blocks_ms": blocks_ms, "overhead_ms": pred.overhead_ms, "model": args.model,
           "input_shape": list(d.input_shape), "predictor": args.predictor, "complete": d.complete,
           "covers": "the whole network" if d.complete else "only the matched blocks; see unmatched",
           "blocks": rows,
           "unmatched": [u.to_dict() for u in d.unmatched]}
    if args.json:
        print(json.dumps(_clean(out), indent=2))
        return 0
    _print_rows(rows)
    print(f"{total:.4f} ms  {args.model} at {'x'.join(map(str, d.input_shape))} ({len(d.blocks)} blocks "
          f"{blocks_ms:.4f} ms + overhead {pred.overhead_ms:.4f} ms)")
    if d.unmatched:
        print(f"covers only the matched part: {len(d.unmatched)} graph node(s) match no block kind and are "
              f"not in the prediction ({d.unmatched_summary()}):")
        for u in d.unmatched:
            shp = "x".join(map(str, u.output_shape)) if u.output_shape else "?"
            print(f"  {u.node}: {u.op} -> {shp} ({u.reason})")
    return 0


def cmd_export_lut(args) -> int:
    from predictor.io import write_lut_yaml
    from predictor.lut import Entry
    from profiler.spaces import load_space

    check_out_file(args.out, "lut.yaml")
    pred = _load(args.predictor)
    space = load_space(args.space)
    blocks = space.blocks()
    ms = _user(pred.predict_ms, blocks)
    table = getattr(pred, "entries", None) or getattr(getattr(pred, "table", None), "entries", {})
    rows, measured = {}, 0
    for b, v in zip(blocks, ms):
        e = table.get(b.key)
        if e is not None and e.count:
            measured += 1
            rows[b.key] = e
        else:
            rows[b.key] = Entry(float(v), 0, 0.0)
    meta = pred.meta
    header = (f"latency lookup table of space {space.name} (ProxylessNAS format: mean in ms, var in ms^2)\n"
              f"predictor: {args.predictor} ({pred.describe()}); device {meta.get('device', '?')}, "
              f"backend {meta.get('backend', '?')}\n"
              f"{measured} of {len(rows)} entries measured (count > 0), the rest predicted (count 0)")
    try:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_lut_yaml(args.out, rows, header)
    except OSError as e:
        raise write_error(args.out, e) from None
    print(f"wrote {args.out}: {len(rows)} blocks ({measured} measured, {len(rows) - measured} predicted)")
    return 0
