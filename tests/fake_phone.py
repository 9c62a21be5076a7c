"""A phone for the loopback ADB device (tests/adb_double.py): a fake /sys tree, getprop/taskset/cmd,
and an `executor_runner` double.

The runner double keeps ExecuTorch's command line and log line (``--model_path``,
``--num_executions``, ``--etdump_path``; ``Model executed successfully N time(s) in T ms.``), and
really runs the .pte: the pushed "binary" is a small stdlib-only Python client that hands its argv to
a `RunnerService` in the test process, which loads the program with the ExecuTorch runtime
(pybindings), binds inputs of the shapes the program declares, executes it N times and answers with
the text and exit code a runner would give. Why not the real binary: executor_runner is C++ built
from ExecuTorch's source tree with CMake (the user builds it with the NDK for the phone), which the
pip wheel does not ship and this machine cannot fetch; a Python process per invocation would spend
seconds importing torch.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

# Snapdragon 855-like: 4 LITTLE at 1.79 GHz, 3 big at 2.42 GHz, 1 prime at 2.84 GHz
MAX_KHZ = [1785600] * 4 + [2419200] * 3 + [2841600]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def make_sysroot(root: Path, temp_mc: int = 38000, zones: list[tuple[str, str]] | None = None) -> Path:
    """A Snapdragon-855-like /sys: cpufreq per core, thermal `zones` ((type, raw temp) each; default one
    CPU zone at `temp_mc` millidegrees), a battery at 64 %."""
    for i, khz in enumerate(MAX_KHZ):
        d = root / f"sys/devices/system/cpu/cpu{i}"
        if i:
            _write(d / "online", "1")
        _write(d / "cpufreq/cpuinfo_max_freq", str(khz))
        _write(d / "cpufreq/cpuinfo_min_freq", "300000")
        _write(d / "cpufreq/scaling_cur_freq", str(khz // 2))
        _write(d / "cpufreq/scaling_governor", "schedutil")
    (root / "sys/devices/system/cpu/cpufreq").mkdir(parents=True, exist_ok=True)  # not a core: skipped
    for i, (kind, temp) in enumerate(zones or [("cpu-0-0-usr", str(temp_mc))]):
        _write(root / f"sys/class/thermal/thermal_zone{i}/type", kind)
        _write(root / f"sys/class/thermal/thermal_zone{i}/temp", temp)
    _write(root / "sys/class/power_supply/battery/capacity", "64")
    _write(root / "sys/class/power_supply/battery/status", "Discharging")
    return root


def set_temp(sysroot: Path, temp_mc: int) -> None:
    _write(sysroot / "sys/class/thermal/thermal_zone0/temp", str(temp_mc))


def make_bin(folder: Path, log_dir: Path) -> Path:
    """getprop, cmd and taskset as a phone has them; taskset logs its mask and runs unpinned (the
    fake tree's big cores 4-7 need not exist on this host)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "getprop").write_text(
        "#!/bin/sh\ncase $1 in\n ro.product.model) echo 'Fake Phone 8';;\n ro.product.manufacturer) echo Acme;;\n"
        " ro.soc.model) echo SM8150;;\n ro.product.cpu.abi) echo arm64-v8a;;\n ro.build.version.release) echo 14;;\n"
        " ro.build.version.sdk) echo 34;;\n ro.serialno) echo FAKE0001;;\n ro.hardware.egl) echo adreno;;\n"
        " *) ;;\nesac\n")
    (folder / "cmd").write_text(f"#!/bin/sh\necho \"$*\" >> '{log_dir}/cmd.log'\n")
    (folder / "taskset").write_text(f"#!/bin/sh\necho \"$1\" >> '{log_dir}/taskset.log'\nshift\nexec \"$@\"\n")
    for f in folder.iterdir():
        f.chmod(0o755)
    return folder


def phone_env(sysroot: Path, bindir: Path) -> dict[str, str]:
    return dict(os.environ, HWNAS_SYSROOT=str(sysroot), PATH=f"{bindir}:{os.environ['PATH']}")


_CLIENT = """#!{python} -IS
# executor_runner double: hands argv to the runner service of the test ({sock})
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect({sock!r})
s.sendall(json.dumps(sys.argv[1:]).encode() + b"\\n")
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
reply = json.loads(data)
sys.stdout.write(reply["out"])
sys.stdout.flush()
sys.exit(reply["code"])
"""


class RunnerService:
    """Serves executor_runner invocations over a Unix socket; `write_client(path)` makes the binary."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="hwr")  # short: a Unix socket path has at most 107 bytes
        self.path = os.path.join(self.dir, "s")
        self.calls: list[list[str]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        self._sock.listen(8)
        self._lock = threading.Lock()  # one execution at a time, as on a pinned phone core
        threading.Thread(target=self._accept, daemon=True).start()

    def write_client(self, path: Path) -> Path:
        path.write_text(_CLIENT.format(python=sys.executable, sock=self.path))
        path.chmod(0o755)
        return path

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
            argv = json.loads(buf)
            self.calls.append(argv)
            with self._lock:
                code, out = self.run(argv)
            conn.sendall(json.dumps({"code": code, "out": out}).encode())

    @staticmethod
    def run(argv: list[str]) -> tuple[int, str]:
        import torch
        from executorch.extension.pybindings import portable_lib

        opts = {"--num_executions": "1", "--etdump_path": ""}
        it = iter(argv)
        for a in it:
            if a not in ("--model_path", "--num_executions", "--etdump_path"):
                return 1, f"ERROR: unknown command line flag '{a}'\n"
            opts[a] = next(it, "")
        path, n = opts.get("--model_path"), int(opts["--num_executions"])
        try:
            buf = Path(path).read_bytes()
            prog = portable_lib._load_program_from_buffer(buf, enable_etdump=bool(opts["--etdump_path"]))
            method = prog.load_method("forward")
            meta = method.method_meta()
            inputs = [torch.ones(tuple(meta.input_tensor_meta(i).sizes())) for i in range(meta.num_inputs())]
            method.set_inputs(inputs)
        except Exception as e:  # what the real runner prints before it aborts
            return 134, f"E executorch:executor_runner.cpp:0] Loading of program failed: {type(e).__name__}: {e}\n"
        t0 = time.perf_counter_ns()
        for _ in range(n):
            method.execute()
        ms = (time.perf_counter_ns() - t0) / 1e6
        out = (f"I 00:00:00.000000 executorch:executor_runner.cpp:0] Model executed successfully {n} time(s) "
               f"in {ms:f} ms.\nI 00:00:00.000000 executorch:executor_runner.cpp:0] 1 outputs: \n")
        if opts["--etdump_path"]:
            prog.write_etdump_result_to_file(opts["--etdump_path"], opts["--etdump_path"] + ".debug")
        return 0, out

    def close(self) -> None:
        self._sock.close()
        try:
            os.unlink(self.path)
            os.rmdir(self.dir)
        except OSError:
            pass


_TVM_RPC = """#!/bin/sh
# tvm_rpc double: the command line of TVM's C++ RPC server (apps/cpp_rpc), served by TVM's Python
# RPC server on this host (the real server, the real protocol; only the binary is not built here)
[ "$1" = server ] || {{ echo "usage: tvm_rpc server --tracker=H:P --key=K ..." >&2; exit 2; }}
shift
for a in "$@"; do
  case $a in
    --host=*) host=${{a#--host=}} ;;
    --port=*) port=${{a#--port=}} ;;
    --port-end=*) port_end=${{a#--port-end=}} ;;
    --tracker=*) tracker=${{a#--tracker=}} ;;
    --key=*) key=${{a#--key=}} ;;
    --custom-addr=*) addr=${{a#--custom-addr=}} ;;
    --work-dir=*) cd "${{a#--work-dir=}}" || exit 3 ;;
    *) echo "tvm_rpc: unknown option $a" >&2; exit 2 ;;
  esac
done
export TVM_NUM_THREADS=1
exec {python} -m tvm.exec.rpc_server --host 127.0.0.1 --port "$port" --port-end "$port_end" \\
  --tracker "$tracker" --key "$key" --custom-addr "$addr"
"""


def make_tvm_rpc(path: Path) -> Path:
    path.write_text(_TVM_RPC.format(python=sys.executable))
    path.chmod(0o755)
    return path
