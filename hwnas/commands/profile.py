"""`hwnas devices`, `hwnas spaces`, `hwnas profile`, `hwnas table`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from typing import Any

from hwnas.cli import UserError, check_out_file, write_error

HELP_FMT = argparse.ArgumentDefaultsHelpFormatter


def register(sub) -> None:
    p = sub.add_parser("devices", help="list the devices this machine can profile", formatter_class=HELP_FMT,
                       description="List the host CPU (`local`: model, cores, governor, frequencies, "
                                   "temperatures), its CUDA GPU (`local:cuda`) where one exists, and the "
                                   "Android phones the adb server sees (serial, model, SoC, ABI, Android "
                                   "version, big/little cores, governor, battery, temperature).")
    p.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    p.add_argument("--no-phones", action="store_true", help="do not ask `adb devices` for phones")
    _adb_args(p, runner=False)
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("device-info", help="describe one device (a phone: runs device_scripts/info.sh on it)",
                       formatter_class=HELP_FMT,
                       description="Everything hwnas reads from a device: for a phone (adb:SERIAL or "
                                   "adb:HOST:PORT) the getprop facts, every core's frequencies and governor, "
                                   "thermal zones and battery; for local the host CPU.")
    p.add_argument("device", help="local, local:cuda, adb:SERIAL or adb:HOST:PORT")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _adb_args(p, runner=False)
    p.set_defaults(func=cmd_device_info)

    p = sub.add_parser("spaces", help="list the shipped search spaces", formatter_class=HELP_FMT)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--keys", metavar="SPACE", help="print the block keys of one space, one per line")
    p.set_defaults(func=cmd_spaces)

    p = sub.add_parser("profile", help="compile and time every block of a search space on a device",
                       formatter_class=HELP_FMT,
                       description="Compile each distinct block of a search space with a backend, time it on "
                                   "a device in a pinned worker process, and store every measurement in an "
                                   "SQLite file as soon as it is taken. Blocks already stored are skipped, so "
                                   "the same command resumes a stopped run.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--space", help="search space name (see `hwnas spaces`) or a space .yaml file")
    what.add_argument("--block", action="append", metavar="KEY",
                      help="a block key (ProxylessNAS / Once-for-All LUT format); repeat for more")
    p.add_argument("--backend", required=True, choices=["executorch", "tvm", "torch"],
                   help="compiler/runtime: executorch (XNNPACK .pte), tvm (Relax, llvm), torch (eager baseline)")
    p.add_argument("--device", default="local",
                   help="device: local (host CPU), local:cuda (host GPU), adb:SERIAL or adb:HOST:PORT (an "
                        "Android phone; --backend executorch with --runner, or tvm with --tvm-rpc), or rpc:HOST:PORT/KEY (a device "
                        "behind a TVM RPC tracker, e.g. a phone running TVM's RPC app; --backend tvm)")
    p.add_argument("--cross", choices=["host", "aarch64-android", "aarch64-linux"],
                   help="build for a remote device of another kind than this host (rpc and adb devices; "
                        "default: the host's own target, and aarch64-android for TVM on an arm64 phone)")
    p.add_argument("--gpu", action="store_true",
                   help="time on the phone's GPU: OpenCL (Adreno, Mali) with --backend tvm, Vulkan with "
                        "--backend executorch (the runner must be built with ExecuTorch's Vulkan backend); "
                        "recorded in the row's target; refused where the phone has no such driver")
    p.add_argument("--db", default="data/hwnas.db", help="SQLite store file (created if missing; the same default as `hwnas run`)")
    p.add_argument("--threads", type=int, default=1, help="runtime threads during timing (count)")
    p.add_argument("--cores", help="cores of the timing worker, e.g. 1 or 0-3 (default: the fastest "
                                   "THREADS cores, highest-numbered first)")
    p.add_argument("--jobs", type=int, default=None,
                   help="parallel compile processes (count; default: all cores). Compilation never "
                        "overlaps timing")
    p.add_argument("--cache-dir", help="compile cache folder (default: $HWNAS_CACHE_DIR or "
                                       "~/.cache/hwnas/artifacts)")
    p.add_argument("--per-op", action="store_true",
                   help="also record per-operator times (ExecuTorch ETDump + Inspector), stored with the row")
    p.add_argument("--tune-trials", type=int, default=0,
                   help="TVM only: MetaSchedule tuning trials per block, shared by its kernels (count; 0 = untuned "
                        "default schedules; 192, about 64 per kernel, took about 3 min per block on 2 vCPUs). "
                        "Tuning compiles one block at a time, for the --threads it is timed with. The records go "
                        "to one tuning database per target in --cache-dir's metaschedule/ folder: a kernel that "
                        "several blocks share is tuned once, and `hwnas verify --tune-trials N` builds whole "
                        "networks from them")
    p.add_argument("--retry-failed", action="store_true", help="measure again the blocks stored as failures")
    p.add_argument("--retime-flagged", type=int, default=2, metavar="N",
                   help="time a block whose row is flagged busy, interference or unconverged (stored, or just "
                        "taken) up to N more times, after waiting briefly for the timing cores to be quiet; "
                        "0: leave flagged rows as they are (count)")
    p.add_argument("--processes", type=int, default=2, metavar="N",
                   help="time each block in N fresh timing processes on this host and keep the fastest "
                        "process's samples (a block's time shifts as a whole from one process to the next: "
                        "where its buffers land in the caches); every process's median is stored with the "
                        "row; with 2 or more, a block whose processes' medians are not within 3 %% of each "
                        "other is timed in up to 2 more (count; 1: one process, half the timing time)")
    p.add_argument("--limit", type=int, help="profile only the first N blocks of the space (count)")
    _adb_args(p, runner=True)
    g = p.add_argument_group("timing protocol")
    g.add_argument("--warmup-runs", type=int, default=10, help="untimed runs before timing (count)")
    g.add_argument("--min-runs", type=int, default=25, help="timed samples at least (count)")
    g.add_argument("--max-runs", type=int, default=300, help="timed samples at most (count)")
    g.add_argument("--max-seconds", type=float, default=6.0, help="timing budget per block (seconds)")
    g.add_argument("--target-rel-err", type=float, default=0.005,
                   help="stop once the median's relative standard error is below this (fraction, 0.005 = 0.5%%)")
    g.add_argument("--min-sample-ms", type=float, default=2.0,
                   help="calls are batched so one sample lasts at least this long (milliseconds)")
    g.add_argument("--no-interference-check", action="store_true",
                   help="do not time the reference kernel between samples nor drop samples taken while another "
                        "process had the timing core, and keep the timing threads at normal priority (the check "
                        "runs them at real-time priority SCHED_FIFO 1 where the OS allows it); local devices; for "
                        "comparisons only")
    g.add_argument("--quick", action="store_true", help="a fast, looser protocol for smoke runs")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("table", help="show or export the stored measurements", formatter_class=HELP_FMT,
                       description="Summarise the store per device and backend, print the rows, or export them "
                                   "to Parquet or CSV.")
    p.add_argument("--db", default="data/hwnas.db", help="SQLite store file")
    p.add_argument("--out", help="export the rows to this .parquet or .csv file")
    p.add_argument("--backend", help="only rows of this backend")
    p.add_argument("--device", help="only rows of this device spec (e.g. local)")
    p.add_argument("--rows", action="store_true", help="print every row, not only the summary")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_table)


def _adb_args(p, runner: bool) -> None:
    g = p.add_argument_group("Android phones (adb:...)")
    if runner:
        g.add_argument("--runner", metavar="PATH",
                       help="ExecuTorch's executor_runner built for the phone with the Android NDK (see "
                            "docs/phones.md); pushed once and cached on the phone by its SHA-256")
        g.add_argument("--tvm-rpc", metavar="PATH",
                       help="--backend tvm: TVM's tvm_rpc server (apps/cpp_rpc) built for the phone; pushed once "
                            "(cached by SHA-256), started over adb and registered with a tracker on this host")
        g.add_argument("--tracker", metavar="HOST:PORT",
                       help="--backend tvm: a TVM RPC tracker the phone can reach (default: one started on "
                            "this host's loopback, tunnelled with adb reverse)")
        g.add_argument("--cpu-mask", default="auto",
                       help="cores to pin the runner to, as a hex mask for taskset (e.g. f0); auto: the big "
                            "cores (max frequency at least 80%% of the fastest core's)")
        g.add_argument("--max-temp", type=int, default=45,
                       help="wait before each block while the hottest thermal zone is above this (degrees C)")
        g.add_argument("--cool-wait", type=int, default=120,
                       help="longest wait for the phone to cool before a block fails as `hot` (seconds)")
        g.add_argument("--reconnect", type=float, default=60.0,
                       help="how long to keep reconnecting a phone that disconnected mid-run (seconds)")
        g.add_argument("--no-prepare", action="store_true",
                       help="leave the phone's performance mode and governors alone (default: fixed-"
                            "performance mode where Android offers it, governor performance where rooted; "
                            "undone at the end)")
    g.add_argument("--remote-dir", default="/data/local/tmp/hwnas",
                   help="folder on the phone for scripts, the cached runner and artifacts")
    g.add_argument("--adb-key", metavar="PATH",
                   help="this host's ADB private key (default: ~/.config/hwnas/adbkey, created 0600)")


def _adb_options(args):
    from profiler.adb.device import AdbOptions

    return AdbOptions(runner=getattr(args, "runner", None), tvm_rpc=getattr(args, "tvm_rpc", None),
                      tracker=getattr(args, "tracker", None), remote_base=args.remote_dir, key_path=args.adb_key,
                      mask=getattr(args, "cpu_mask", "auto"), max_temp_c=getattr(args, "max_temp", 45),
                      cool_wait_s=getattr(args, "cool_wait", 120), reconnect_s=getattr(args, "reconnect", 60.0),
                      prepare=not getattr(args, "no_prepare", False))


# ---- devices / spaces -------------------------------------------------------------------------

def _phones(args) -> tuple[list[dict[str, Any]], str | None]:
    """Phones the adb server lists, each described by info.sh; (rows, a note when none can be listed)."""
    import shutil
    import subprocess

    from profiler.adb.device import read_info

    adb = shutil.which("adb")
    if adb is None:
        return [], ("phones: `adb` is not on PATH, so attached phones are not listed (apt-get install adb); "
                    "a phone on the network is described by `hwnas device-info adb:HOST:PORT`")
    try:
        p = subprocess.run([adb, "devices", "-l"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return [], f"phones: `adb devices` failed: {e}"
    rows = []
    for line in p.stdout.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 2:
            continue
        serial, state = parts[0], parts[1]
        row: dict[str, Any] = {"device": f"adb:{serial}", "state": state}
        if state != "device":
            row["error"] = {"unauthorized": "tap 'Allow USB debugging' on the phone",
                            "offline": "reconnect the cable or restart adb"}.get(state, state)
        else:
            try:
                row.update(_phone_row(read_info(serial, _adb_options(args))))
            except Exception as e:  # one broken phone (adb, parse, auth) must not hide the others
                row["error"] = f"{type(e).__name__}: {e}"
        rows.append(row)
    return rows, None if rows else "phones: none attached (`adb devices` lists none)"


def _phone_row(info) -> dict[str, Any]:
    """One line of `hwnas devices` from a phone's `profiler.adb.parsers.PhoneInfo`."""
    p = info.props
    cpus = info.cpus
    clusters: dict[int, int] = {}
    for c in cpus:
        if c.max_khz:
            clusters[c.max_khz] = clusters.get(c.max_khz, 0) + 1
    return {"model": " ".join(x for x in (p.get("manufacturer"), p.get("model")) if x), "soc": p.get("soc"),
            "abi": p.get("abi"), "android": p.get("android_release"), "sdk": p.get("sdk"),
            "serialno": p.get("serialno"), "gpu": p.get("gpu"), "opencl": p.get("gpu_opencl"),
            "vulkan": p.get("gpu_vulkan"),
            "clusters_mhz": {f"{k / 1000:.0f}": n for k, n in sorted(clusters.items())},
            "big_cores": list(info.big_cores), "big_core_mask": info.big_core_mask,
            "governors": sorted({c.governor for c in cpus if c.governor}),
            "battery_pct": info.battery.level_pct, "battery_status": info.battery.status,
            "max_temp_c": info.max_temp_c}


def cmd_device_info(args) -> int:
    from profiler.devices import cuda_info, local_info, parse_device

    dev = parse_device(args.device)
    if dev.kind == "local":
        info = local_info()
    elif dev.kind == "cuda":
        info = cuda_info()
        if info is None:
            raise UserError("local:cuda: torch sees no CUDA GPU on this machine")
    elif dev.kind == "adb":
        from profiler.adb.device import read_info

        phone = read_info(dev.address, _adb_options(args))
        info = {"device": args.device, **_phone_row(phone), **phone.to_json()}
    else:
        raise UserError(f"{args.device}: a TVM RPC device tells nothing about itself; name the phone behind "
                        f"it with adb:SERIAL")
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for k, v in info.items():
        if k in ("cpus", "thermal"):
            continue
        print(f"{k:>16}: {v}")
    for c in info.get("cpus", []):
        print(f"  cpu{c['index']}: online={c['online']} max={c['max_khz']} kHz cur={c['cur_khz']} kHz "
              f"governor={c['governor']}")
    for z in info.get("thermal", []):
        print(f"  thermal{z['zone']} {z['type']}: {z['temp_c']} C")
    return 0


def cmd_devices(args) -> int:
    from profiler.devices import cuda_info, local_info

    devs: list[dict[str, Any]] = [local_info()]
    cuda = cuda_info()
    if cuda:
        devs.append(cuda)
    phones, note = ([], None) if args.no_phones else _phones(args)
    if args.json:
        print(json.dumps(devs + phones, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title="devices")
    t.add_column("device")
    t.add_column("what")
    t.add_column("details")
    loc = devs[0]
    freqs = ", ".join(f"{c}:{v:.0f}" for c, v in loc["freq_mhz"].items())
    gov = loc["governor"] if isinstance(loc["governor"], str) else ", ".join(sorted(set(loc["governor"].values())))
    temps = loc["temp_c"] if isinstance(loc["temp_c"], str) else ", ".join(f"{v:.0f}" for v in loc["temp_c"].values())
    t.add_row("local", loc["cpu_model"],
              f"{loc['cores']} cores ({loc['core_ids']}), {loc['machine']}, governor: {gov}\n"
              f"MHz now: {freqs}\ntemperatures (C): {temps}\nload: {', '.join(f'{x:.2f}' for x in loc['loadavg'])}")
    if cuda:
        t.add_row("local:cuda", cuda["name"], f"{cuda['memory_gib']} GiB, compute {cuda['capability']}")
    for ph in phones:
        if "error" in ph:
            t.add_row(ph["device"], ph["state"], f"[red]{ph['error']}")
            continue
        clusters = " + ".join(f"{n}x{mhz} MHz" for mhz, n in ph["clusters_mhz"].items())
        t.add_row(ph["device"], f"{ph['model']} ({ph['soc']})",
                  f"Android {ph['android']} (SDK {ph['sdk']}), {ph['abi']}, GPU: {ph['gpu'] or '?'}\n"
                  f"cores: {clusters}; big: {ph['big_core_mask']}; governor: {', '.join(ph['governors'])}\n"
                  f"battery: {ph['battery_pct']}% {ph['battery_status'] or ''}; hottest zone: {ph['max_temp_c']} C")
    Console().print(t)
    if not cuda:
        print("local:cuda: not available (torch sees no CUDA GPU on this machine)")
    if note:
        print(note)
    return 0


def cmd_spaces(args) -> int:
    from profiler.spaces import list_spaces, load_space

    if args.keys:
        for b in load_space(args.keys).blocks():
            print(b.key)
        return 0
    rows = []
    for name in list_spaces():
        sp = load_space(name)
        rows.append({"name": name, "input": sp.input_size, "layers": len(sp.layers),
                     "searchable": len(sp.searchable), "widths": list(sp.widths), "distinct_blocks": len(sp.blocks()),
                     "architectures": sp.size(), "description": sp.description})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title="search spaces")
    for c in ("name", "input", "searchable", "widths", "distinct_blocks", "architectures", "description"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["name"], str(r["input"]), str(r["searchable"]), "/".join(f"{w:g}" for w in r["widths"]),
                  str(r["distinct_blocks"]),
                  f"{r['architectures']:.2e}", r["description"])
    Console().print(t)
    return 0


# ---- profile ---------------------------------------------------------------------------------

class _RichProgress:
    def __init__(self, console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        self.console = console
        self.bar = Progress(TextColumn("[bold]{task.description:<8}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                            TextColumn("{task.fields[label]}", style="dim"), console=console, transient=False)
        self.tasks: dict[str, Any] = {}

    def phase(self, name: str, total: int) -> None:
        if not self.tasks:
            self.bar.start()
        self.tasks[name] = self.bar.add_task(name, total=total, label="")

    def advance(self, name: str, label: str) -> None:
        self.bar.update(self.tasks[name], advance=1, label=label[:60])

    def message(self, text: str) -> None:
        self.console.print(f"[yellow]{text}")

    def stop(self) -> None:
        if self.tasks:
            self.bar.stop()


def _protocol(args):
    p = _base_protocol(args)
    return dataclasses.replace(p, detect_interference=False) if args.no_interference_check else p


def _base_protocol(args):
    from profiler.measurement import TimingProtocol

    if args.quick:
        return TimingProtocol.quick()
    for name in ("warmup_runs", "min_runs", "max_runs"):
        if getattr(args, name) < (0 if name == "warmup_runs" else 1):
            raise UserError(f"--{name.replace('_', '-')} must be a positive count")
    if args.min_runs > args.max_runs:
        raise UserError("--min-runs must not exceed --max-runs")
    if not 0 < args.target_rel_err < 1:
        raise UserError("--target-rel-err is a fraction between 0 and 1, e.g. 0.005")
    return TimingProtocol(warmup_runs=args.warmup_runs, min_runs=args.min_runs, max_runs=args.max_runs,
                          max_seconds=args.max_seconds, target_rel_err=args.target_rel_err,
                          min_sample_ms=args.min_sample_ms)


def cmd_profile(args) -> int:
    from profiler.blocks import BlockSpec
    from profiler.devices import check_threads, parse_device
    from profiler.harness import ProfileOptions, profile_with
    from profiler.spaces import load_space
    from profiler.store import RowFilter, Store

    if args.threads < 1:
        raise UserError("--threads must be at least 1")
    if args.retime_flagged < 0:
        raise UserError("--retime-flagged must be 0 or more")
    if args.processes < 1:
        raise UserError(f"--processes {args.processes}: give 1 or more timing processes per block")
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: give a count of at least 1 compile process (default: all cores)")
    if args.tune_trials < 0:
        raise UserError(f"--tune-trials {args.tune_trials}: give 0 (untuned) or more trials")
    if parse_device(args.device).kind in ("local", "cuda"):
        check_threads(args.threads, args.cores)  # before the store file is created
    if args.space:
        blocks = load_space(args.space).blocks()
    else:
        blocks = [BlockSpec.from_key(k) for k in args.block]
    if args.limit is not None:
        if args.limit < 1:
            raise UserError("--limit must be at least 1")
        blocks = blocks[:args.limit]
    protocol = _protocol(args)
    # an existing file is opened now, so a corrupt or foreign one is refused before anything runs; a new
    # one is created by profile_with once the device and backend are known to work (a refused
    # --device leaves no empty store behind)
    from pathlib import Path

    store: Store | str = Store(args.db) if Path(args.db).exists() else args.db
    from rich.console import Console

    console = Console(stderr=True)
    prog = None if args.json else _RichProgress(console)
    try:
        options = ProfileOptions(
            backend=args.backend, device=args.device, threads=args.threads, cores=args.cores, protocol=protocol,
            jobs=args.jobs, cache_dir=args.cache_dir, per_op=args.per_op, tune_trials=args.tune_trials,
            retry_failed=args.retry_failed, cross=args.cross, gpu=args.gpu,
            adb=_adb_options(args) if args.device.startswith("adb:") else None, retime_flagged=args.retime_flagged,
            processes=args.processes)
        res = profile_with(blocks, store, options, prog)
    finally:
        if prog:
            prog.stop()
    keys = [b.key for b in blocks]
    if not isinstance(store, Store):
        store = Store(args.db, create=False)
    df = store.latest(dataclasses.replace(RowFilter.of(res.config), device=res.config.device), keys=keys)
    summary = {
        "db": args.db, "device": res.config.device, "device_id": res.config.device_id,
        "backend": res.config.backend, "target": res.config.target, "tuning": res.config.tuning,
        "threads": res.config.threads,
        "cores": res.config.cores, "blocks": res.total, "already_stored": res.skipped,
        "measured": len(res.measured), "failed_now": len(res.failed), "compiled": res.compiled,
        "failed_stored": int((df.status == "failed").sum()), "peak_gflops": res.peak_gflops,
        "wall_s": round(res.wall_s, 2), "retimed": res.retimed, "processes": res.process_passes,
        "unclean": res.unclean,
    }
    if args.json:
        print(json.dumps({"summary": summary, "rows": _rows_json(df)}, indent=2))
        if res.unclean:
            print(res.unclean_line(), file=sys.stderr)
    else:
        tuned = f", tuned {res.config.tuning}" if res.config.tuning else ""
        _print_rows(df, res.peak_gflops, title=f"{res.config.backend} on {res.config.device} "
                                                f"({res.config.threads} thread(s), cores {res.config.cores}{tuned})")
        print(f"{res.total} blocks: {len(res.measured)} measured now, {res.skipped} already stored, "
              f"{summary['failed_stored']} failed; {res.compiled} compiled; {res.wall_s:.1f} s; store: {args.db}")
        if summary["failed_stored"]:
            print("failed blocks keep their reason in the store (`hwnas table --rows`); "
                  "`--retry-failed` measures them again")
        if res.unclean:
            print(res.unclean_line())
    return 1 if summary["failed_stored"] == res.total and res.total else 0


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def _rows_json(df) -> list[dict[str, Any]]:
    cols = ["block_key", "backend", "device", "status", "stage", "error", "median_ms", "mean_ms", "p10_ms",
            "p90_ms", "cv", "n", "inner_runs", "flops", "gflops", "peak_share", "flags"]
    out = []
    for r in df[cols].to_dict("records"):
        out.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    return out


def _print_rows(df, peak, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    t.add_column("block")
    t.add_column("median ms", justify="right")
    t.add_column("p10-p90 %", justify="right")
    t.add_column("CV %", justify="right")
    t.add_column("MFLOPs", justify="right")
    t.add_column("GFLOP/s", justify="right")
    t.add_column("of peak", justify="right")
    t.add_column("flags / error")
    for r in df.itertuples():
        if r.status == "ok":
            t.add_row(r.block_key, _fmt(r.median_ms, ".4f"), _fmt(100 * r.rel_spread, ".1f"), _fmt(100 * r.cv, ".1f"),
                      _fmt(r.flops / 1e6, ".2f"), _fmt(r.gflops, ".1f"),
                      _fmt(100 * r.peak_share, ".0f") + "%" if r.peak_share == r.peak_share else "-",
                      ",".join(r.flags or []))
        else:
            t.add_row(r.block_key, "-", "-", "-", _fmt(r.flops / 1e6, ".2f"), "-", "-",
                      f"[red]failed ({r.stage}): {r.error}")
    Console().print(t)
    if peak:
        print(f"peak: {peak:.1f} GFLOP/s (fp32 matrix product on the same cores and threads)")


# ---- table ---------------------------------------------------------------------------------------

def cmd_table(args) -> int:
    from pathlib import Path

    from profiler.store import Store

    if not Path(args.db).exists():
        raise UserError(f"{args.db}: no such store; profile first (`hwnas profile ... --db {args.db}`)")
    if args.out:
        check_out_file(args.out, "rows.csv")
        if not args.out.endswith((".parquet", ".csv")):
            raise UserError(f"--out {args.out}: export to a .parquet or .csv file")
    store = Store(args.db, create=False)
    df = store.dataframe(backend=args.backend, device=args.device)
    if args.out:
        try:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            store.export(args.out, backend=args.backend, device=args.device)
        except OSError as e:
            raise write_error(args.out, e) from None
        print(f"wrote {len(df)} rows to {args.out}", file=sys.stderr)
    groups = []
    for (dev, dev_id, be, tgt, tu, th, co), g in df.groupby(["device", "device_id", "backend", "target", "tuning",
                                                             "threads", "cores"], sort=False):
        ok = g[g.status == "ok"]
        groups.append({"device": dev, "device_id": dev_id, "backend": be, "target": tgt, "tuning": tu,
                       "threads": int(th),
                       "cores": co, "rows": len(g), "ok": len(ok), "failed": int((g.status == "failed").sum()),
                       "sum_median_ms": float(ok.median_ms.sum()) if len(ok) else None,
                       "median_cv": float(ok.cv.median()) if len(ok) else None,
                       "flagged": int(ok["flags"].map(bool).sum()) if len(ok) else 0})
    if args.json:
        print(json.dumps({"db": args.db, "rows": len(df), "groups": groups,
                          **({"data": _rows_json(df)} if args.rows else {})}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{args.db}: {len(df)} rows", title_justify="left")
    for c in ("device", "backend", "tuning", "threads", "cores", "ok", "failed", "sum of medians ms", "median CV %",
              "flagged"):
        t.add_column(c)
    for g in groups:
        t.add_row(g["device"], g["backend"], g["tuning"] or "-", str(g["threads"]), g["cores"], str(g["ok"]),
                  str(g["failed"]),
                  _fmt(g["sum_median_ms"], ".3f"), _fmt(g["median_cv"] and 100 * g["median_cv"], ".2f"),
                  str(g["flagged"]))
    Console().print(t)
    if args.rows:
        for g in groups:
            sel = df[(df.backend == g["backend"]) & (df.device == g["device"]) & (df.threads == g["threads"])
                     & (df.cores == g["cores"]) & (df.tuning == g["tuning"])]
            _print_rows(sel, sel.peak_gflops.iloc[0] if len(sel) else None, title=f"{g['backend']} on {g['device']}")
    return 0
