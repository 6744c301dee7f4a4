"""Reference KV cache for the llama.cpp engine: llama.cpp keeps K/V itself; this plugin picks its type.

Modes are cache types: ``f16`` (llama.cpp's default), ``q8_0`` (K and V in 8-bit blocks; a quantized V
cache needs flash attention, so it is switched on) and ``f32``.
"""
from __future__ import annotations

import attrs

from corert import Implementation, Mode, hookimpl

_TYPES = {"f16": 1, "q8_0": 8, "f32": 0}  # ggml type ids (GGML_TYPE_F16 / Q8_0 / F32)


@attrs.frozen
class LlamaCppKV:
    cache_type: str

    def context_params(self) -> dict:
        t = _TYPES[self.cache_type]
        return {"type_k": t, "type_v": t, "flash_attn": self.cache_type == "q8_0"}

    def truncate(self, llama, n_tokens: int) -> None:
        """Drop every cached position from ``n_tokens`` on (rollback for speculative decoding)."""
        llama._ctx.kv_cache_seq_rm(0, n_tokens, -1)


@hookimpl
def register_kv_caches(register):
    register(Implementation(
        area="kv_cache", name="llama_cpp", engines=("llama.cpp",),
        variants=(Mode("f16", priority=10, description="llama.cpp default"),
                  Mode("q8_0", priority=5, description="8-bit K/V blocks, flash attention on"),
                  Mode("f32", priority=0, description="full precision")),
        factory=lambda variant, **ctx: LlamaCppKV(variant),
        description="llama.cpp's own KV cache; the variant is its cache type"))
