"""What instruction-set extensions this CPU really offers, as the kernel reports them.

Virtual machines and containers often mask features of the silicon: a VM on an AMD EPYC Genoa host
shows avx2 and fma but no AVX-512, while LLVM still names the CPU ``znver4`` (which implies
AVX-512). Code built for the name dies with SIGILL there. The kernel's ``/proc/cpuinfo`` flags come
from CPUID as the guest sees it, so they are what a compiler may use.

The tables map the kernel's flag names to LLVM's feature names for the extensions a compiler can
emit (SIMD, bit manipulation, crypto); tuning features (``fast-*``, ``macrofusion``) are not
instruction sets and are left to the CPU name.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuFlags", "kernel_cpu_flags", "llvm_features_lacking", "LLVM_FEATURE_OF_FLAG"]

#: x86: kernel flag (arch/x86/include/asm/cpufeatures.h spelling) -> LLVM feature
_X86 = {
    "sse": "sse", "sse2": "sse2", "pni": "sse3", "ssse3": "ssse3", "sse4_1": "sse4.1", "sse4_2": "sse4.2",
    "sse4a": "sse4a", "avx": "avx", "avx2": "avx2", "fma": "fma", "fma4": "fma4", "xop": "xop", "f16c": "f16c",
    "bmi1": "bmi", "bmi2": "bmi2", "abm": "lzcnt", "popcnt": "popcnt", "movbe": "movbe", "adx": "adx",
    "aes": "aes", "pclmulqdq": "pclmul", "vaes": "vaes", "vpclmulqdq": "vpclmulqdq", "gfni": "gfni",
    "sha_ni": "sha", "rdrand": "rdrnd", "rdseed": "rdseed", "xsave": "xsave", "xsaveopt": "xsaveopt",
    "xsavec": "xsavec", "xsaves": "xsaves", "clflushopt": "clflushopt", "clwb": "clwb", "fsgsbase": "fsgsbase",
    "avx512f": "avx512f", "avx512cd": "avx512cd", "avx512bw": "avx512bw", "avx512dq": "avx512dq",
    "avx512vl": "avx512vl", "avx512ifma": "avx512ifma", "avx512vbmi": "avx512vbmi",
    "avx512_vbmi2": "avx512vbmi2", "avx512_vnni": "avx512vnni", "avx512_bf16": "avx512bf16",
    "avx512_bitalg": "avx512bitalg", "avx512_vpopcntdq": "avx512vpopcntdq", "avx512_fp16": "avx512fp16",
    "avx512_vp2intersect": "avx512vp2intersect", "avx_vnni": "avxvnni", "avx_vnni_int8": "avxvnniint8",
    "avx_ifma": "avxifma", "avx_ne_convert": "avxneconvert", "amx_tile": "amx-tile", "amx_int8": "amx-int8",
    "amx_bf16": "amx-bf16", "amx_fp16": "amx-fp16", "cx16": "cx16", "sha512": "sha512", "sm3": "sm3", "sm4": "sm4",
}
#: aarch64: kernel hwcap name (the "Features" line) -> LLVM feature
_AARCH64 = {
    "fp": "fp-armv8", "asimd": "neon", "aes": "aes", "sha2": "sha2", "sha3": "sha3", "sm4": "sm4", "crc32": "crc",
    "atomics": "lse", "fphp": "fullfp16", "asimdrdm": "rdm", "lrcpc": "rcpc", "asimddp": "dotprod",
    "asimdfhm": "fp16fml", "sve": "sve", "sve2": "sve2", "i8mm": "i8mm", "bf16": "bf16", "jscvt": "jsconv",
    "fcma": "complxnum", "dcpop": "ccpp", "sb": "sb", "ssbs": "ssbs", "bti": "bti", "mte": "mte",
}
#: machine (``uname -m``) -> its table
LLVM_FEATURE_OF_FLAG = {"x86_64": _X86, "aarch64": _AARCH64, "arm64": _AARCH64}


@dataclass(frozen=True)
class CpuFlags:
    """The kernel's feature flags of the CPU this process runs on, and the machine they belong to."""

    machine: str
    flags: frozenset[str]
    source: str

    def llvm_features(self) -> frozenset[str]:
        """The LLVM features these flags grant (only those the table knows)."""
        table = LLVM_FEATURE_OF_FLAG.get(self.machine, {})
        return frozenset(table[f] for f in self.flags if f in table)


def kernel_cpu_flags(cpuinfo_text: str | None = None, machine: str | None = None) -> CpuFlags | None:
    """Parse ``/proc/cpuinfo`` (or the given text) into the first CPU's feature flags.

    Returns None where the kernel gives no flags (not Linux, or an architecture without a table);
    callers then cannot check features and must say so.
    """
    machine = machine or platform.machine()
    if machine not in LLVM_FEATURE_OF_FLAG:
        return None
    source = "given text"
    if cpuinfo_text is None:
        path = Path("/proc/cpuinfo")
        try:
            cpuinfo_text = path.read_text()
        except OSError:
            return None
        source = str(path)
    # x86 names the line "flags", arm64 "Features"; every CPU repeats it, the first one suffices
    for line in cpuinfo_text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return CpuFlags(machine, frozenset(value.split()), source)
    return None


def llvm_features_lacking(implied: set[str] | frozenset[str], cpu: CpuFlags) -> list[str]:
    """The instruction-set features a CPU name implies (LLVM's view) that the kernel does not offer.

    Only features the table knows are judged: an unknown LLVM feature (a tuning flag) is left alone.
    """
    table = LLVM_FEATURE_OF_FLAG.get(cpu.machine, {})
    judged = set(table.values())
    granted = cpu.llvm_features()
    return sorted(f for f in implied if f in judged and f not in granted)
