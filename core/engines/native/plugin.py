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

__all__ = ["DEFAULT_SEQS", "NativeEngine", "NativeModel", "NativeSession", "AMX", "AMX_BF16", "VARIANTS", "VNNI",
           "register_engines"]


#: int8 ``vpdpbusd`` products (matmul_i8.py); preferred where the CPU has it
VNNI = Variant("vnni", requires={"avx512_vnni", "avx512bw"}, priority=30,
               description="activations as two int8 levels (~16 bits), AVX-512 VNNI dot products")
#: vnni with one int8 activation level (llama.cpp's Q8 activations), everywhere or for gate|up only: half
#: the integer work of a row at ~8-bit accuracy; chosen only when asked for (priority below vnni's)
VNNI_Q8 = Variant("vnni-q8", requires=VNNI.requires, priority=29,
                  description="activations as ONE int8 level (~8 bits, as llama.cpp), AVX-512 VNNI dot products")
VNNI_Q8FFN = Variant("vnni-q8ffn", requires=VNNI.requires, priority=28,
                     description="vnni with one int8 activation level for the FFN's gate|up products only")
#: vnni with the products of many rows (prompts, batches) on AMX-INT8 tiles (matmul_amx.py): the same results;
#: offered where cpu.py found the flags and Linux granted the tile state
AMX = Variant("amx", requires=VNNI.requires | {"amx_int8", "amx_tile"}, priority=40,
              description="vnni, with the products of 16 rows or more on AMX-INT8 tiles (the same results)")
#: amx, with the products of a prompt's rows (those whose logits nobody reads) on AMX-BF16 tiles
#: (matmul_bf16.py: split bf16 operands, f32 sums, no per-block epilogue): prompts 1.26-1.30x amx's
#: (bench-results/s14-bf14/gen-*.json), KL to a float64 forward 3.1e-7 (amx 4.8e-7); preferred where granted
AMX_BF16 = Variant("amx-bf16", requires=AMX.requires | {"amx_bf16"}, priority=41,
                   description="amx, with a prompt's rows on AMX-BF16 tiles (split bf16, f32 sums)")
#: the native engine's CPU variants (support.py asks which of them this CPU runs)
VARIANTS = simd_variants("ordered f32 sums, no fastmath") + (AMX, AMX_BF16, VNNI, VNNI_Q8, VNNI_Q8FFN)


@hookimpl
def register_engines(register):
    register(Implementation(
        area="engine", name="native", factory=lambda variant, **ctx: NativeEngine(variant),
        variants=VARIANTS, priority=10,  # engine="auto" tries it first (when check_model says it runs the file)
        description="numpy/numba transformer over GGUF weights (llama, qwen2, gemma3); 4-bit to 8-bit weight blocks (Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0), F16, BF16, F32"))
