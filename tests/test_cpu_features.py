"""TVM builds host code for the features this CPU offers, not for the silicon LLVM names.

A VM that masks AVX-512 on an AVX-512 host CPU made every TVM block die with SIGILL; these tests
check the target on whatever machine runs the suite, and a masked CPU on this one.
"""

import json
import os
import platform
import shutil
import subprocess

import numpy as np
import pytest

from profiler._worker import TimingWorker, WorkerFailed
from profiler.backends import Artifact, get_backend
from profiler.blocks import BlockSpec
from profiler.compile import compile_model
from profiler.cpu_features import CpuFlags, kernel_cpu_flags, llvm_features_lacking

KEY = "expanded_conv-input:14x14x16-output:14x14x16-expand:3-kernel:3-stride:1-idskip:1"

X86_MASKED = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 pni ssse3 sse4_1 sse4_2 avx avx2 fma f16c bmi1 bmi2 abm popcnt movbe hypervisor
"""
ARM = """processor\t: 0
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
"""


def test_kernel_flags_parse_x86_and_arm():
    x86 = kernel_cpu_flags(X86_MASKED, machine="x86_64")
    assert {"avx2", "fma", "sse3", "sse4.1", "bmi", "lzcnt"} <= x86.llvm_features()
    assert not any(f.startswith("avx512") for f in x86.llvm_features())
    arm = kernel_cpu_flags(ARM, machine="aarch64")
    assert {"neon", "fp-armv8", "dotprod", "lse", "fullfp16"} <= arm.llvm_features()
    assert "sve" not in arm.llvm_features()
    assert kernel_cpu_flags("processor : 0\n", machine="x86_64") is None
    assert kernel_cpu_flags(X86_MASKED, machine="riscv64") is None


def test_lacking_judges_only_instruction_sets():
    cpu = kernel_cpu_flags(X86_MASKED, machine="x86_64")
    implied = {"avx2", "avx512f", "avx512vl", "fast-lzcnt", "macrofusion", "sse4.2"}
    assert llvm_features_lacking(implied, cpu) == ["avx512f", "avx512vl"]


def _features(target: str) -> set[str]:
    import tvm
    from tvm.target import codegen

    return set(codegen.llvm_get_cpu_features(tvm.target.Target(json.loads(target))))


def test_host_target_uses_only_what_this_cpu_offers():
    """On whatever machine runs the suite: no feature of the target is missing from the kernel's flags."""
    cpu = kernel_cpu_flags()
    if cpu is None:
        pytest.skip(f"the kernel lists no CPU flags on this {platform.machine()} machine")
    target = get_backend("tvm").target_for("local")
    assert llvm_features_lacking(_features(target), cpu) == []


def _masked_cpu() -> CpuFlags:
    cpu = kernel_cpu_flags()
    if cpu is None or cpu.machine != "x86_64":
        pytest.skip("needs an x86_64 Linux kernel's CPU flags")
    # what a VM that hides AVX-512 (and AVX2/FMA, to mask more than this CPU may have) shows
    return CpuFlags(cpu.machine, frozenset(f for f in cpu.flags if not f.startswith(("avx512", "avx2", "fma"))),
                    "a masked copy of /proc/cpuinfo")


def test_masked_cpu_gets_a_target_without_the_masked_features(cache_dir):
    from profiler.backends._tvm import host_cpu_target

    masked = json.dumps(host_cpu_target(_masked_cpu()), sort_keys=True)
    feats = _features(masked)
    assert not {f for f in feats if f.startswith("avx512") or f in ("avx2", "fma")}
    full = get_backend("tvm").target_for("local")
    if "avx2" in _features(full):  # this CPU offers more than the masked one: two targets, two cache entries
        be = get_backend("tvm")
        assert "-avx2" in json.loads(masked)["mattr"]
        assert be.cache_id(KEY, masked, {}) != be.cache_id(KEY, full, {})


def test_masked_target_compiles_and_times_in_the_worker(cache_dir):
    """A block built for the masked CPU runs (in the timing worker, so a crash cannot kill pytest)."""
    from profiler.backends._tvm import host_cpu_target

    target = json.dumps(host_cpu_target(_masked_cpu()), sort_keys=True)
    art = compile_model("tvm", KEY, target, {}, str(cache_dir))
    with TimingWorker([sorted(os.sched_getaffinity(0))[0]], 1) as w:
        res = w.call({"op": "outputs", "artifact": art, "device": "local"}, 120)
    spec = BlockSpec.from_key(KEY)
    eager = spec.build()(spec.example_input()).detach().numpy()
    np.testing.assert_allclose(np.asarray(res["outputs"][0]), eager, rtol=1e-3, atol=1e-4)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build a library that dies with SIGILL")
def test_sigill_in_the_worker_is_a_failure_that_names_the_cause(tmp_path):
    """A library whose code the CPU cannot execute: the row's reason says so, with the target."""
    src = tmp_path / "ill.c"
    src.write_text("#include <signal.h>\n__attribute__((constructor)) static void die(void) { raise(SIGILL); }\n")
    lib = tmp_path / "ill.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    target = get_backend("tvm").target_for("local")
    art = Artifact("tvm", target, KEY, str(lib), 0.0, (1, 16, 14, 14))
    with TimingWorker([sorted(os.sched_getaffinity(0))[0]], 1) as w:
        with pytest.raises(WorkerFailed) as e:
            w.call({"op": "outputs", "artifact": art.to_dict(), "device": "local"}, 120)
    assert e.value.stage == "crash"
    assert "illegal instruction" in e.value.error and "instructions this CPU lacks" in e.value.error
    assert target in e.value.error
