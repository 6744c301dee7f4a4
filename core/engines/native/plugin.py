"""Registers the ``native`` engine (engine.py) with its CPU variants.

The engine's parts live one per module: engine.py (NativeEngine.load), loaded.py (NativeModel),
session.py (NativeSession); they are re-exported here for existing imports.
"""
from __future__ import annotations

from ...cpu import Variant, simd_variants
from ...implementation import Implementation
from ...plugin_host import hookimpl
from .engine import NativeEngine
from .loaded import DEFAULT_SEQS, NativeModel
from .session import NativeSession

__all__ = ["DEFAULT_SEQS", "NativeEngine", "NativeModel", "NativeSession", "VARIANTS", "VNNI", "register_engines"]


#: int8 ``vpdpbusd`` products (matmul_i8.py); preferred where the CPU has it
VNNI = Variant("vnni", requires={"avx512_vnni", "avx512bw"}, priority=30,
               description="activations as two int8 levels (~16 bits), AVX-512 VNNI dot products")
#: the native engine's CPU variants (support.py asks which of them this CPU runs)
VARIANTS = simd_variants("ordered f32 sums, no fastmath") + (VNNI,)


@hookimpl
def register_engines(register):
    register(Implementation(
        area="engine", name="native", factory=lambda variant, **ctx: NativeEngine(variant),
        variants=VARIANTS, priority=10,  # engine="auto" tries it first (when check_model says it runs the file)
        description="numpy/numba transformer over GGUF weights (llama, qwen2); 4-bit and 8-bit weight blocks"))
