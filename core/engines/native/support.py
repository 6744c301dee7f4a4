"""Can the native engine run this GGUF file on this CPU?  What ``engine="auto"`` asks before it loads.

    verdict = check(read_header(path, want_arrays=False))
    verdict.ok, verdict.reason      # True, "llama with Q4_1, F32 on the avx2 variant"

Three things must hold: the architecture and its hyperparameters are ones the native transformer builds
(model.ModelConfig, with every tensor it reads present and of the right shape), every tensor in the file
has a GGML type the native engine decodes (dequant.BLOCKS), and this CPU has a vectorized variant of the
native kernels (the scalar reference runs anywhere, but far slower than llama.cpp: never chosen by auto).
The check reads the header only; nothing is mapped or decoded.
"""
from __future__ import annotations

from ...cpu import CpuInfo, info
from ...errors import ModelError
from ...interfaces import SupportVerdict
from ...models.gguf_header import GGUFHeader, read_header

__all__ = ["SupportVerdict", "check", "check_file", "type_name", "unsupported_tensor"]


def type_name(ggml_type: int) -> str:
    from gguf.constants import GGMLQuantizationType

    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"type {ggml_type}"


def unsupported_tensor(header: GGUFHeader) -> str | None:
    """Why the first tensor whose type the native engine cannot decode fails, or None."""
    from .dequant import BLOCKS

    for t in header.tensors:
        if t.ggml_type not in BLOCKS:
            return f"tensor {t.name!r} has type {type_name(t.ggml_type)}, which the native engine does not run"
    return None


def check(header: GGUFHeader, cpu: CpuInfo | None = None) -> SupportVerdict:
    from .model import ModelConfig
    from .plugin import VARIANTS

    try:
        cfg = ModelConfig.from_header(header)
        cfg.check_tensors(header)
    except ModelError as exc:
        return SupportVerdict(False, str(exc).removeprefix(f"{header.path}: ").removesuffix("; use --engine llama.cpp"))
    bad = unsupported_tensor(header)
    if bad is not None:
        return SupportVerdict(False, bad)
    cpu = cpu or info()
    fast = [v for v in VARIANTS if v.name != "scalar" and v.supported(cpu)]
    if not fast:
        return SupportVerdict(False, f"this CPU ({cpu.machine}, {cpu.isa}) has no vectorized variant of the "
                                     f"native kernels; llama.cpp is faster there")
    best = max(fast, key=lambda v: v.priority)
    types = ", ".join(sorted({type_name(t.ggml_type) for t in header.tensors}))
    return SupportVerdict(True, f"{cfg.arch} with {types} on the {best.name} variant")


def check_file(path: str) -> SupportVerdict:
    """``check`` of a file's header; a file the header reader rejects is not supported either."""
    from .model import header_arrays

    try:
        header = read_header(path, want_arrays=header_arrays)
    except ModelError as exc:
        return SupportVerdict(False, str(exc))
    return check(header)
