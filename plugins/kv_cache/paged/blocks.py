"""Integer accounting of the page pool, kept apart from the K/V arrays (nano-vllm's block manager style).

A page is free (ref 0) or held by one or more sequences (ref = how many page tables list it).  A full page
of known tokens gets a chain hash — hash(previous page's hash, its tokens) — so a later sequence whose
prompt starts with the same tokens can take the page instead of recomputing it.  A freed page keeps its
hash while it sits in the free list: it is still a valid cache entry until the page is handed out again
(oldest freed first, so the free list doubles as the LRU of cached prefixes).
"""
from __future__ import annotations

from typing import Sequence

import attrs

from corert.errors import InputError


def chain_hash(prev: int, tokens: Sequence[int]) -> int:
    """Hash of a full page given the hash of the page before it (-1 for the first page)."""
    return hash((prev, tuple(tokens)))


@attrs.define
class PagePool:
    """Which pages are free, who references them and which hold a known prefix."""

    n_pages: int
    ref: list[int] = attrs.field(init=False)
    free: dict[int, None] = attrs.field(init=False)  # an ordered set: oldest freed first
    key: list[tuple | None] = attrs.field(init=False)  # page -> (hash, prev hash, tokens) if cached
    by_hash: dict[int, int] = attrs.field(init=False)  # hash -> page

    def __attrs_post_init__(self) -> None:
        self.ref = [0] * self.n_pages
        self.free = dict.fromkeys(range(self.n_pages))
        self.key = [None] * self.n_pages
        self.by_hash = {}

    # -- allocation ------------------------------------------------------------------------------------
    def can_allocate(self, n: int) -> bool:
        return len(self.free) >= n

    def allocate(self) -> int:
        """A fresh page (ref 1).  If it still cached a prefix, that entry is dropped now."""
        if not self.free:
            raise InputError("KV page pool exhausted")
        page = next(iter(self.free))
        del self.free[page]
        self.forget(page)
        self.ref[page] = 1
        return page

    def incref(self, page: int) -> None:
        if self.ref[page] == 0:
            del self.free[page]  # a cached free page comes back to life
        self.ref[page] += 1

    def decref(self, page: int) -> None:
        if self.ref[page] <= 0:
            raise AssertionError(f"page {page} released more often than taken")
        self.ref[page] -= 1
        if self.ref[page] == 0:
            self.free[page] = None

    # -- prefix cache ----------------------------------------------------------------------------------
    def register(self, page: int, h: int, prev: int, tokens: tuple[int, ...]) -> None:
        """Mark a full page as holding ``tokens`` after the prefix ``prev`` (first writer wins)."""
        if h in self.by_hash or self.key[page] is not None:
            return
        self.key[page] = (h, prev, tokens)
        self.by_hash[h] = page

    def lookup(self, h: int, prev: int, tokens: tuple[int, ...]) -> int | None:
        page = self.by_hash.get(h)
        if page is None:
            return None
        k = self.key[page]
        return page if k is not None and k[1] == prev and k[2] == tokens else None  # no collision trust

    def forget(self, page: int) -> None:
        """The page's contents are about to change: it no longer caches a prefix."""
        k = self.key[page]
        if k is not None:
            self.by_hash.pop(k[0], None)
            self.key[page] = None

    def renumber(self, perm: Sequence[int]) -> None:
        """Pages moved: old page ``p`` is now ``perm[p]`` (compaction)."""
        ref, key = [0] * self.n_pages, [None] * self.n_pages
        for old, new in enumerate(perm):
            ref[new], key[new] = self.ref[old], self.key[old]
        self.ref, self.key = ref, key
        self.by_hash = {k[0]: p for p, k in enumerate(key) if k is not None}
        free_old = list(self.free)
        self.free = dict.fromkeys(perm[p] for p in free_old)

    # -- figures ---------------------------------------------------------------------------------------
    @property
    def used(self) -> int:
        return self.n_pages - len(self.free)

    @property
    def shared(self) -> int:
        return sum(1 for r in self.ref if r > 1)

    @property
    def cached_free(self) -> int:
        return sum(1 for p in self.free if self.key[p] is not None)

    def check(self, tables: Sequence[Sequence[int]]) -> None:
        """Consistency: every ref count equals the number of tables listing the page (tests call this)."""
        count = [0] * self.n_pages
        for t in tables:
            for p in t:
                count[p] += 1
        if count != self.ref:
            bad = [p for p in range(self.n_pages) if count[p] != self.ref[p]][:5]
            raise AssertionError(f"ref counts disagree with the page tables at pages {bad}")
        if set(self.free) != {p for p in range(self.n_pages) if self.ref[p] == 0}:
            raise AssertionError("free list disagrees with ref counts")
