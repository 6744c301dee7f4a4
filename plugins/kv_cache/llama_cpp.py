"""Reference KV cache for the llama.cpp engine: llama.cpp keeps K/V itself; this plugin picks its type and
whether attention over it is flash attention.

Modes are cache types: ``f16`` (llama.cpp's default), ``q8_0`` (K and V in 8-bit blocks) and ``f32``.
Flash attention is on by default, as in llama-server, and applies to both of the model's llama.cpp
contexts (its own and the continuous-batching one, which copies its parameters), so a request decodes the
same tokens alone and in a batch.  ``llama.flash_attn = false`` (``CORERT_LLAMA_FLASH_ATTN=0``,
``--set llama.flash_attn=false``) turns it off; a quantized V cache needs it, so ``q8_0`` refuses that.
The choice sits here because in llama.cpp it shapes the cache: without flash attention V is stored
transposed.
"""
from __future__ import annotations

from typing import Any

import attrs

from corert import Implementation, Mode, hookimpl
from corert.config import LlamaConfig
from corert.errors import ConfigError

_TYPES = {"f16": 1, "q8_0": 8, "f32": 0}  # ggml type ids (GGML_TYPE_F16 / Q8_0 / F32)
_NEEDS_FLASH_ATTN = {"q8_0"}  # llama.cpp refuses a quantized V cache without flash attention


@attrs.frozen
class LlamaCppKV:
    cache_type: str
    flash_attn: bool = True

    def __attrs_post_init__(self):
        if self.cache_type in _NEEDS_FLASH_ATTN and not self.flash_attn:
            raise ConfigError(f"kv_cache=llama_cpp:{self.cache_type} needs flash attention (llama.cpp reads a "
                              f"quantized V cache only through it): drop llama.flash_attn=false or use "
                              f"kv_cache=llama_cpp:f16")

    def context_params(self) -> dict:
        t = _TYPES[self.cache_type]
        return {"type_k": t, "type_v": t, "flash_attn": self.flash_attn}

    def settings(self) -> dict[str, Any]:
        """What ``corert plugins`` shows: the cache type and whether attention is flash attention."""
        return {"cache_type": self.cache_type, "flash_attn": self.flash_attn}

    def truncate(self, llama, n_tokens: int) -> None:
        """Drop every cached position from ``n_tokens`` on (rollback for speculative decoding)."""
        llama._ctx.kv_cache_seq_rm(0, n_tokens, -1)


def _factory(variant: str, config: Any = None, **ctx: Any) -> LlamaCppKV:
    return LlamaCppKV(variant, flash_attn=LlamaConfig.of(config).flash_attn)


@hookimpl
def register_kv_caches(register):
    register(Implementation(
        area="kv_cache", name="llama_cpp", engines=("llama.cpp",),
        variants=(Mode("f16", priority=10, description="llama.cpp default"),
                  Mode("q8_0", priority=5, description="8-bit K/V blocks (needs flash attention)"),
                  Mode("f32", priority=0, description="full precision")),
        factory=_factory,
        description="llama.cpp's own KV cache; the variant is its cache type, flash attention per "
                    "llama.flash_attn (on)"))
