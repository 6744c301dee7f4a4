"""CPU feature detection, done once, and the choice of a kernel variant.

numba compiles for the host CPU (or the one ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` name: then only the
features both have count) and has no per-function ISA switch, so a variant is a different kernel shape (wide
blocks LLVM vectorizes, or a plain scalar loop).  A variant declares the features it needs;
the host picks the best one this CPU has.  Tests force features with :func:`override`.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
from typing import ClassVar, Iterable, Iterator

import attrs

from .errors import PluginError

#: Preference order when no variant is asked for: widest SIMD first.
VARIANT_PREFERENCE = ("avx512", "avx2", "neon", "scalar")


@attrs.frozen
class CpuInfo:
    machine: str
    features: frozenset[str]

    @property
    def isa(self) -> str:
        """The widest instruction-set family this CPU has, as a variant name."""
        for name in VARIANT_PREFERENCE:
            if name == "scalar" or name in self.features:
                return name
        return "scalar"


_forced: list[frozenset[str]] = []


@functools.lru_cache(maxsize=1)
def _detect() -> CpuInfo:
    machine = platform.machine().lower()
    features: set[str] = set()
    if machine in ("aarch64", "arm64"):
        features.add("neon")  # mandatory on AArch64
    elif machine in ("x86_64", "amd64", "i686", "x86"):
        # /proc/cpuinfo first: loading LLVM (llvmlite) just to read flags costs ~80 MB of RSS, which a
        # runtime that never JIT-compiles anything (llama.cpp engine + reference plugins) should not pay.
        flags = _proc_cpuinfo_flags() or _llvm_flags()
        target = _numba_target_flags()
        if target is not None:  # numba compiles for another CPU: only what both have
            flags = {f for f in flags if _llvm_name(f) in target}
        if "avx2" in flags and "fma" in flags:
            features.add("avx2")
        if "avx512f" in flags and "avx512bw" in flags:
            features.add("avx512")
        features |= {f for f in flags if f.startswith("avx512")}
        if AMX_FLAGS <= flags and request_amx_permission():  # the tile state is the kernel's to grant
            features |= AMX_FLAGS | (AMX_BF16_FLAGS & flags)
    env = os.environ.get("CORERT_CPU_FEATURES")
    if env is not None:  # an override for tests and A/B on other hardware profiles
        features = {f.strip() for f in env.split(",") if f.strip()}
    return CpuInfo(machine=machine, features=frozenset(features))


def _llvm_flags() -> set[str]:
    try:
        import llvmlite.binding as llvm

        raw = llvm.get_host_cpu_features()
        return {f[1:] for f in raw.flatten().split(",") if f.startswith("+")}
    except Exception:  # noqa: BLE001 - no llvmlite, or a platform it does not know
        return set()


def _llvm_name(flag: str) -> str:
    """A /proc/cpuinfo or LLVM flag without separators (``avx512_vnni`` and ``avx512vnni`` -> ``avx512vnni``,
    ``sse4_1`` and ``sse4.1`` -> ``sse41``, ``amx_int8`` and ``amx-int8`` -> ``amxint8``)."""
    return flag.replace("_", "").replace(".", "").replace("-", "")


def _numba_target_flags() -> set[str] | None:
    """The flags numba compiles for (LLVM spelling) when told not to compile for this CPU, else None.

    ``NUMBA_CPU_NAME=generic`` (numba's advice for a cache shared between machines) or an explicit
    ``NUMBA_CPU_FEATURES`` make numba's code lack instructions this CPU has.  A kernel with explicit
    intrinsics (the native engine's ``vnni``) compiled for such a target aborts the process in LLVM, so a
    variant is chosen from the features both have.  Only ``+flags`` listed count: those a named CPU implies
    are not known without LLVM, so they are taken as absent (slower kernels, never a crash).  Read from the
    environment as numba reads it, so a runtime that never compiles anything does not load LLVM.
    """
    name = os.environ.get("NUMBA_CPU_NAME")
    listed = os.environ.get("NUMBA_CPU_FEATURES")
    if listed is None:
        if name is None or name.strip().lower() != "generic":
            return None  # numba uses this CPU's features
        listed = ""
    return {_llvm_name(f.strip()[1:]) for f in listed.split(",") if f.strip().startswith("+")}


#: the /proc/cpuinfo flags of AMX's int8 tile products (the native engine's ``amx`` variant)
AMX_FLAGS = frozenset({"amx_int8", "amx_tile"})
#: AMX's bf16 tile products (the ``amx-bf16`` variant's prompt products); granted with the same tile state
AMX_BF16_FLAGS = frozenset({"amx_bf16"})
#: arch_prctl's request for an extended state component, and AMX's tile data component (linux/asm/prctl.h)
ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 0x1023, 18
_SYS_ARCH_PRCTL = 158  # x86-64


@functools.lru_cache(maxsize=1)
def request_amx_permission() -> bool:
    """Ask Linux for this process's AMX tile state (process-wide, idempotent); whether it was granted.
    Linux hands the 8 KB of tile registers to a process only when asked: without it the first tile
    instruction is SIGILL.  False off x86-64 Linux, or when the kernel refuses (too old, or a VM hides it)."""
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(ctypes.c_long(_SYS_ARCH_PRCTL), ctypes.c_long(ARCH_REQ_XCOMP_PERM),
                            ctypes.c_long(XFEATURE_XTILEDATA)) == 0
    except (OSError, AttributeError):
        return False


def _proc_cpuinfo_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


#: L2 bytes a core is taken to have when the OS does not say (Zen 4's; Intel server cores have 1-2 MB)
DEFAULT_L2_BYTES = 1 << 20
_CACHE_DIR = "/sys/devices/system/cpu/cpu0/cache"


@functools.lru_cache(maxsize=None)
def l2_bytes(cache_dir: str = _CACHE_DIR) -> int:
    """The L2 size of the first core, from Linux's cache description (``index*/level`` 2, ``size`` e.g.
    "1024K"); DEFAULT_L2_BYTES when there is none (another OS, a container hiding it)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        for entry in sorted(os.listdir(cache_dir)):
            base = os.path.join(cache_dir, entry)
            if not entry.startswith("index") or _read(os.path.join(base, "level")) != "2":
                continue
            size = _read(os.path.join(base, "size"))
            if size and size[-1] in units and size[:-1].isdigit():
                return int(size[:-1]) * units[size[-1]]
            if size.isdigit():
                return int(size)
    except OSError:
        pass
    return DEFAULT_L2_BYTES


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return ""


def info() -> CpuInfo:
    """This CPU's features (or the forced ones inside :func:`override`)."""
    real = _detect()
    if _forced:
        return CpuInfo(machine=real.machine, features=_forced[-1])
    return real


@contextlib.contextmanager
def override(features: Iterable[str]) -> Iterator[CpuInfo]:
    """Pretend the CPU has exactly ``features`` (e.g. ``{"neon"}`` or ``set()`` for scalar only)."""
    _forced.append(frozenset(features))
    try:
        yield info()
    finally:
        _forced.pop()


@attrs.frozen
class Variant:
    """A CPU variant: one kernel shape of an implementation and the CPU features it needs.  (A plugin's
    behaviour options are modes, :class:`corert.implementation.Mode`, chosen the same way minus the CPU check.)"""

    kind: ClassVar[str] = "variant"
    name: str
    requires: frozenset[str] = attrs.field(factory=frozenset, converter=frozenset)
    #: Higher wins when several variants are supported and none was asked for.
    priority: int = 0
    description: str = ""

    def supported(self, cpu: CpuInfo) -> bool:
        return self.requires <= cpu.features


def choose_variant(variants: Iterable[Variant], wanted: str | None, owner: str,
                   cpu: CpuInfo | None = None) -> tuple[Variant, str]:
    """Pick a variant: the one asked for (error if unknown or unsupported), else the best supported one.

    Returns the variant and a short reason, shown by ``corert plugins``.
    """
    cpu = cpu or info()
    variants = list(variants)
    if not variants:
        raise PluginError(f"{owner} declares no variants")
    modes = variants[0].kind == "mode"
    if wanted:
        for v in variants:
            if v.name == wanted:
                if not v.supported(cpu):
                    missing = ",".join(sorted(v.requires - cpu.features))
                    raise PluginError(
                        f"variant {owner}:{wanted} needs CPU features {missing} that this CPU "
                        f"({cpu.machine}) lacks; choose one of "
                        f"{', '.join(x.name for x in variants if x.supported(cpu))}")
                return v, "chosen explicitly"
        raise PluginError(f"unknown variant {owner}:{wanted}; known {'modes' if modes else 'CPU variants'}: "
                          f"{', '.join(v.name for v in variants)}")
    ok = [v for v in variants if v.supported(cpu)]
    if not ok:
        raise PluginError(f"no variant of {owner} runs on this CPU ({cpu.machine})")
    best = max(ok, key=lambda v: v.priority)  # ties: the first declared
    if modes:
        return best, "mode of highest priority"
    need = ",".join(sorted(best.requires)) or "nothing"
    return best, f"variant best supported on this CPU (needs {need})"


def simd_variants(scalar_desc: str = "plain reference loop") -> tuple[Variant, ...]:
    """The standard variant set of a numba kernel plugin: avx2, neon and the scalar reference.

    avx512 machines run the avx2 kernels (LLVM widens them to zmm where it pays).
    """
    return (
        Variant("avx2", requires={"avx2"}, priority=20, description="32-byte blocks, vectorized"),
        Variant("neon", requires={"neon"}, priority=10, description="16-byte blocks, vectorized"),
        Variant("scalar", requires=(), priority=0, description=scalar_desc),
    )
