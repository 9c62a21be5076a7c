"""`hwnas run` (the whole pipeline, resumable) and `hwnas report` (rebuild a run's report)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from typing import Any

from hwnas.cli import UserError

HELP_FMT = argparse.RawDescriptionHelpFormatter

#: option -> (type, help); defaults come from hwnas.pipeline.RunConfig and are shown in --help
_OPTIONS: dict[str, tuple[Any, str]] = {
    "device": (str, "device spec: local, local:cuda, adb:SERIAL, adb:HOST:PORT, rpc:HOST:PORT/KEY"),
    "backend": (str, "compiler/runtime: executorch, tvm or torch"),
    "space": (str, "search space name (`hwnas spaces`) or a space .yaml file"),
    "data": (str, "fashion-mnist (Debian's dataset-fashion-mnist: 60,000 train and the official 10,000 test images; "
                    "--limit N for a subset), mnist5k (5,000 MNIST digits, offline), digits (scikit-learn), or a folder "
                    "of class folders"),
    "target_ms": (float, "latency target of the found network (ms, whole network, batch 1)"),
    "target_speedup": (float, "instead of --target-ms: aim at the fastest --baseline network's predicted latency "
                              "divided by this factor (x; 1.2 = 1.2x faster), whatever this machine's speed"),
    "db": (str, "SQLite measurement store, shared by runs and devices (path)"),
    "threads": (int, "runtime threads while timing (count)"),
    "processes": (int, "fresh timing processes each block and network is timed in on this host; the fastest "
                       "trusted one is kept (count; 1: half the timing time; see `hwnas profile --help`)"),
    "tune_trials": (int, "TVM on this host: profile, calibrate and measure tuned by MetaSchedule with this many trials "
                         "per block (count; 0: the compiler's default schedules). Kernels shared by blocks are tuned "
                         "once (one tuning database per target in the cache folder); about 3 min per block on 2 "
                         "vCPUs at 192"),
    "calibrate": (int, "random networks timed end to end to fit the per-network overhead (count; 0: none)"),
    "predictor": (str, "latency model: hybrid (table where measured, regression elsewhere), lut, regression"),
    "weights": (str, "supernet candidates: shared (one 7x7 superkernel per layer whose centres are the 3x3 and 5x5 "
                     "kernels, smaller expansions the first channels of the largest: every step trains every "
                     "candidate) or separate (ProxylessNAS: each candidate its own weights)"),
    "weight_paths": (str, "what each weight step of the search trains: one (a path sampled from the "
                          "probabilities; ProxylessNAS) or sandwich (also the space's largest and smallest "
                          "networks, gradients summed: BigNAS, Once-for-All; 3x the step's cost; on tiny-mnist-w it "
                          "raised the supernet's accuracy but lowered Kendall tau, 0.33 to 0.15) or distill (the "
                          "same three, the largest on the labels and the other two on its predictions: in-place "
                          "distillation, BigNAS; 3x the step's cost; inherited accuracies within about a point of "
                          "from-scratch ones, Kendall tau no better)"),
    "skip_drop": (float, "stochastic depth in the search's weight steps: each layer that may be skipped is "
                         "skipped with this probability, else its path is drawn from the probabilities (share, "
                         "0 to below 1; 0: off). Sub-networks that skip a layer then inherit fairer accuracies "
                         "(README: the skip penalty)"),
    "depth": (str, "which weights a layer of the supernet runs on where a sub-network skips: any (its own) or "
                   "tail (Once-for-All's elastic depth: the k-th layer a stage runs uses the stage's k-th layer's "
                   "weights, since skipping a middle layer gives the same network as skipping the last; a sub-network "
                   "that skips then inherits weights trained in its own configuration; the default: it cut what "
                   "inheritance charges a skipped layer from 1.66 to 0.25-0.63 points)"),
    "search_epochs": (int, "search epochs, warm-up included (count)"),
    "warmup_epochs": (int, "weight-only epochs before the architecture is updated (count)"),
    "loss": (str, "latency loss: abs (CE + weight * |LAT / T - 1|: steers to T), ratio (CE * (LAT / T)^beta), ceiling (CE * max(1, LAT / T)^beta: T binds), hinge (CE + weight * max(0, LAT / T - 1)), mul (CE * (log LAT / log T)^beta, T > 1 ms) or add (CE + lambda * LAT)"),
    "lam": (float, "weight of the additive latency loss (1/ms)"),
    "beta": (float, "exponent of the multiplicative latency loss"),
    "weight": (float, "weight of the hinge and abs latency losses (loss per unit of LAT / T - 1, unitless)"),
    "lat_temperature": (float, "the latency loss uses E[LAT] under softmax(alpha / t); below 1 it is nearer the "
                               "latency of the argmax network the search returns (unitless)"),
    "arch_lr": (float, "architecture learning rate (Adam)"),
    "arch_every": (int, "weight steps per architecture step (count)"),
    "search_lr": (float, "initial weight learning rate of the supernet (SGD, cosine to 0)"),
    "train_epochs": (int, "epochs to train the found network and each baseline from scratch (count)"),
    "seeds": (int, "trainings of each network from scratch, with seeds seed, seed+1, ... (count); their spread "
                   "decides which networks count as equally accurate"),
    "batch_size": (int, "images per step (count)"),
    "limit": (int, "use only this many images of the data set (count)"),
    "seed": (int, "seed of everything random (sampling, weights, splits, random networks)"),
    "train_threads": (int, "torch threads for search and training (count; 0: all cores, and the seeds of a network trained side by side, one process each)"),
    "cache_dir": (str, "compile cache folder (default ~/.cache/hwnas/artifacts)"),
    "runner": (str, "a phone (adb:...) with executorch: ExecuTorch's executor_runner built for it (path; docs/phones.md)"),
    "tvm_rpc": (str, "a phone (adb:...) with tvm: TVM's tvm_rpc built for it (path; docs/phones.md)"),
    "remote_dir": (str, "a phone (adb:...): hwnas's folder on it"),
}


def register(sub) -> None:
    from hwnas.pipeline import STAGES, RunConfig

    defaults = {f.name: f.default for f in fields(RunConfig) if f.name != "out"}
    defaults["baseline"] = RunConfig(out="").baseline
    p = sub.add_parser(
        "run", help="the whole job: profile, fit, search, train, export, measure, report",
        formatter_class=HELP_FMT,
        description="From a device to a network specialised for it, verified there. Stages: "
                    + ", ".join(STAGES) + ". Each stage's result is kept in --out; run the same command "
                    "again after a kill and it resumes at the stage it was in. The options are saved in "
                    "OUT/config.yaml: `hwnas run --config OUT/config.yaml` repeats the run exactly.",
        epilog="examples:\n  hwnas run --device local --backend executorch --target-speedup 1.2 --data mnist5k --out runs/host"
               "\n  hwnas run --device local --backend tvm --target-ms 3 --data mnist5k --out runs/host-tvm")
    p.add_argument("--out", help="run folder (required, here or in --config)")
    p.add_argument("--config", help="a YAML file of options (any long option, e.g. `target_ms: 3`); "
                                    "options given on the command line win")
    for name, (typ, text) in _OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        if name == "lam":
            flag = "--lambda"
        p.add_argument(flag, dest=name, type=typ, default=None, help=f"{text} [default: {defaults[name]}]")
    p.add_argument("--quick", action="store_true", default=None,
                   help="a looser timing protocol (smoke runs; the report says so) [default: off]")
    p.add_argument("--baseline", default=None,
                   help="uniform family for the accuracy-latency comparison, comma-separated kKeE "
                        f"(kernel K, expand ratio E in every layer) [default: {','.join(defaults['baseline'])}]")
    p.add_argument("--until", choices=STAGES, help="stop after this stage")
    p.add_argument("--json", action="store_true", help="print summary.json at the end instead of a table")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="rebuild a run folder's report.html and summary.json",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", help="a run folder written by `hwnas run`")
    p.add_argument("--json", action="store_true", help="print summary.json")
    p.set_defaults(func=cmd_report)


def _config(args) -> Any:
    from hwnas.pipeline import RunConfig, RunError, load_config

    opts: dict[str, Any] = {}
    try:
        if args.config:
            opts.update(load_config(args.config))
    except RunError as e:
        raise UserError(str(e)) from None
    for name in list(_OPTIONS) + ["quick", "out"]:
        v = getattr(args, name)
        if v is not None:
            opts[name] = v
    if args.baseline is not None:
        opts["baseline"] = [b.strip() for b in args.baseline.split(",") if b.strip()]
    elif isinstance(opts.get("baseline"), str):
        opts["baseline"] = [b.strip() for b in opts["baseline"].split(",") if b.strip()]
    if not opts.get("out"):
        raise UserError("name the run folder: --out DIR (or `out:` in --config)")
    try:
        return RunConfig(**opts)
    except TypeError as e:
        raise UserError(f"bad options: {e}") from None


class _Bars:
    """Rich progress for the pipeline: a line per stage, bars for the profiler and the epochs."""

    def __init__(self, quiet: bool):
        from rich.console import Console

        self.console = Console(file=sys.stderr, quiet=quiet)
        self.bar = None
        self.tasks: dict[str, Any] = {}

    def _ensure(self):
        if self.bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=self.console, transient=True)
            self.bar.start()
        return self.bar

    def stop(self):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
            self.tasks.clear()

    def stage(self, name, index, total, skipped):
        self.stop()
        self.console.print(f"[bold][{index + 1}/{total}] {name}[/bold]" + (" (done before, kept)" if skipped else ""))

    def stage_done(self, name, seconds, summary):
        self.stop()
        self.console.print(f"      {summary} [dim]({seconds:.1f} s)[/dim]")

    def phase(self, name, total):
        bar = self._ensure()
        if name in self.tasks:
            bar.remove_task(self.tasks[name])
        self.tasks[name] = bar.add_task(name, total=total)

    def advance(self, name, label):
        if self.bar is not None and name in self.tasks:
            self.bar.advance(self.tasks[name])

    def epoch_start(self, epoch, epochs, steps, phase):
        self.phase("epoch", steps)
        if self.bar is not None:
            self.bar.update(self.tasks["epoch"], description=f"epoch {epoch + 1}/{epochs} ({phase})")

    def step(self):
        self.advance("epoch", "")

    def epoch_end(self, row):
        from search.train import accuracy_text

        txt = f"      epoch {row['epoch'] + 1}: {accuracy_text(row)}"
        if "expected_ms" in row:
            txt += f", E[LAT] {row['expected_ms']:.4g} ms, argmax {row['argmax_ms']:.4g} ms"
        (self.bar.console if self.bar else self.console).print(txt + f" [dim]({row['seconds']:.1f} s)[/dim]")

    def message(self, text):
        (self.bar.console if self.bar else self.console).print(f"      {text}")


def cmd_run(args) -> int:
    from hwnas.pipeline import RunError, run

    cfg = _config(args)
    bars = _Bars(quiet=args.json)
    try:
        s = run(cfg, progress=bars, until=args.until)
    except RunError as e:
        raise UserError(str(e)) from None
    finally:
        bars.stop()
    return _print_summary(s, cfg.out, args.json)


def _print_summary(s: dict[str, Any], out: str, as_json: bool) -> int:
    if as_json:
        print(json.dumps(s, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    if "stages" in s:  # stopped early (--until): what is done so far
        done = ", ".join(f"{k} ({v['seconds']:.1f} s)" for k, v in s["stages"].items())
        Console().print(f"stages done in {out}: {done}; run the same command without --until to go on")
        return 0

    t = Table(title=f"hwnas run {out}")
    t.add_column("")
    t.add_column("value")

    def ms(v):
        return "—" if v is None else f"{v:.4g} ms"

    t.add_row("device / backend", f"{s.get('device')} / {s.get('backend')}")
    t.add_row("target", ms(s.get("target_ms")))
    t.add_row("found network, predicted", ms(s.get("predicted_ms")))
    t.add_row("found network, measured", ms(s.get("measured_ms")))
    if s.get("prediction_error") is not None:
        t.add_row("prediction error", f"{100 * s['prediction_error']:+.1f} %")
    if s.get("accuracy") is not None:
        t.add_row("test accuracy", f"{s['accuracy']:.4f}")
    for b in s.get("baseline") or []:
        t.add_row(f"uniform {b['op']}", f"{ms(b['measured_ms'])}, accuracy {b['test_acc']:.4f}")
    for k, v in (s.get("stage_seconds") or {}).items():
        t.add_row(f"time: {k}", f"{v:.1f} s")
    Console().print(t)
    print(f"report: {out}/report.html")
    return 0


def cmd_report(args) -> int:
    from hwnas.report import summary, write_report
    from hwnas.rundir import Run

    paths = write_report(args.run)
    s = summary(args.run)
    Run(args.run).write_summary(s)
    if args.json:
        print(json.dumps(s, indent=2))
    else:
        print(f"report: {paths['html']}")
    return 0
