"""Registers ``kv_cache=paged`` (modes q8 / f16 / f32: the page dtype) for the native engine.

    provider = factory("q8", engine="native", model=path, config=cfg)
    store = provider.allocate(n_layers, n_kv_heads, head_dim, max_tokens, n_seqs)   # a PagedKVStore
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from corert import Implementation, Mode, hookimpl
from corert.errors import PluginError

from .config import DEFAULT_BUDGET_CAP, PagedConfig

if TYPE_CHECKING:  # the store's numba kernels load with the first store, not with the plugin listing
    from .store import PagedKVStore


class PagedKV:
    """The plugin's provider: allocates a paged store for a model's dimensions."""

    name = "paged"

    def __init__(self, cfg: PagedConfig):
        self.cfg = cfg
        self.stores: list["PagedKVStore"] = []

    def allocate(self, n_layers: int, n_kv_heads: int, head_dim: int, max_tokens: int,
                 n_seqs: int = 1) -> "PagedKVStore":
        from .store import PagedKVStore

        store = PagedKVStore(self.cfg, n_layers, n_kv_heads, head_dim, max_tokens, n_seqs)
        self.stores.append(store)
        return store

    def stats(self) -> dict[str, Any]:
        """The stats of the stores this provider allocated (one per loaded model)."""
        return {"config": {"dtype": self.cfg.dtype, "page_tokens": self.cfg.page_tokens,
                           "budget_bytes": self.cfg.budget_bytes, "default_budget_cap_bytes": DEFAULT_BUDGET_CAP,
                           "kernel": self.cfg.kernel},
                "stores": [s.stats() for s in self.stores]}


def _factory(variant: str, engine: str = "native", config: Any = None, **ctx: Any) -> PagedKV:
    if engine != "native":
        raise PluginError(f"kv_cache=paged stores K/V for the native engine, not {engine!r} "
                          f"(llama.cpp keeps its own cache: use kv_cache=llama_cpp)")
    return PagedKV(PagedConfig.from_env(variant, config))


@hookimpl
def register_kv_caches(register):
    register(Implementation(
        area="kv_cache", name="paged", engines=("native",), factory=_factory,
        variants=(Mode("q8", priority=10, description="int8 pages + f16 scale per 32 values (0.27x f32)"),
                  Mode("f16", priority=5, description="f16 pages (0.5x f32)"),
                  Mode("f32", priority=0, description="f32 pages (exact)")),
        description="16-token pages in one pool under a byte budget: prefix sharing, copy-on-write, "
                    "LRU eviction, compaction; attention dequantizes pages in the kernel"))
