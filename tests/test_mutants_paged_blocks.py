"""PagePool, the paged KV cache's integer accounting: allocation order, ref counts, the prefix cache and its
LRU, compaction and the consistency check.  Written to kill mutmut's mutants of
corert/plugins/kv_cache/paged/blocks.py (scripts/mutation.sh); the K/V arrays are tested in test_kv_paged.py.
"""
from __future__ import annotations

import pytest

from corert.errors import InputError
from corert.plugins.kv_cache.paged.blocks import PagePool, chain_hash


def test_chain_hash_depends_on_prefix_and_tokens():
    assert chain_hash(-1, [1, 2, 3]) == chain_hash(-1, (1, 2, 3))
    assert chain_hash(-1, [1, 2, 3]) != chain_hash(7, [1, 2, 3])
    assert chain_hash(-1, [1, 2, 3]) != chain_hash(-1, [1, 2, 4])
    assert chain_hash(-1, [1, 2, 3]) == hash((-1, (1, 2, 3)))


def test_fresh_pool():
    p = PagePool(4)
    assert p.ref == [0, 0, 0, 0] and list(p.free) == [0, 1, 2, 3]
    assert p.key == [None] * 4 and p.by_hash == {}
    assert (p.used, p.shared, p.cached_free) == (0, 0, 0)
    assert p.can_allocate(4) and p.can_allocate(0) and not p.can_allocate(5)
    p.check([])


def test_allocate_in_order_until_exhausted():
    p = PagePool(3)
    assert [p.allocate() for _ in range(3)] == [0, 1, 2]
    assert p.ref == [1, 1, 1] and p.used == 3 and not p.can_allocate(1) and p.can_allocate(0)
    with pytest.raises(InputError, match="^KV page pool exhausted$"):
        p.allocate()
    p.check([[0, 1], [2]])


def test_freed_pages_come_back_oldest_first():
    p = PagePool(4)
    for _ in range(4):
        p.allocate()
    p.decref(2)
    p.decref(0)
    assert list(p.free) == [2, 0] and p.used == 2
    assert p.allocate() == 2
    assert p.allocate() == 0


def test_shared_pages_and_release():
    p = PagePool(3)
    a = p.allocate()
    p.incref(a)
    assert p.ref[a] == 2 and p.shared == 1 and a not in p.free
    p.check([[a], [a]])
    p.decref(a)
    assert p.ref[a] == 1 and p.shared == 0 and a not in p.free
    p.decref(a)
    assert p.ref[a] == 0 and a in p.free and p.used == 0
    with pytest.raises(AssertionError, match=f"^page {a} released more often than taken$"):
        p.decref(a)


def test_prefix_cache_register_lookup_and_first_writer_wins():
    p = PagePool(4)
    a, b = p.allocate(), p.allocate()
    toks = (5, 6, 7, 8)
    h = chain_hash(-1, toks)
    assert p.lookup(h, -1, toks) is None
    p.register(a, h, -1, toks)
    assert p.key[a] == (h, -1, toks) and p.by_hash == {h: a}
    assert p.lookup(h, -1, toks) == a
    p.register(b, h, -1, toks)  # same contents in another page: the first stays the cache entry
    assert p.by_hash == {h: a} and p.key[b] is None
    h2 = chain_hash(h, toks)
    p.register(a, h2, h, toks)  # a page already caching a prefix keeps it
    assert p.key[a] == (h, -1, toks) and h2 not in p.by_hash
    # the hash alone is not trusted: prefix and tokens must match too
    assert p.lookup(h, 99, toks) is None
    assert p.lookup(h, -1, (5, 6, 7, 9)) is None


def test_cached_free_page_is_revived_or_dropped_on_reuse():
    p = PagePool(2)
    a, b = p.allocate(), p.allocate()
    toks = (1, 2)
    h = chain_hash(-1, toks)
    p.register(a, h, -1, toks)
    p.decref(a)
    assert p.cached_free == 1 and p.lookup(h, -1, toks) == a
    p.incref(a)  # a later sequence takes the cached page back
    assert p.ref[a] == 1 and a not in p.free and p.cached_free == 0 and p.lookup(h, -1, toks) == a
    p.decref(a)
    p.decref(b)
    assert list(p.free) == [a, b] and p.cached_free == 1
    assert p.allocate() == a  # handed out again: its cache entry goes
    assert p.lookup(h, -1, toks) is None and p.key[a] is None and p.by_hash == {}
    assert p.cached_free == 0


def test_forget_only_touches_cached_pages():
    p = PagePool(2)
    a, b = p.allocate(), p.allocate()
    p.register(a, 11, -1, (1,))
    p.register(b, 12, -1, (2,))
    p.forget(a)
    assert p.key[a] is None and p.by_hash == {12: b}
    p.forget(a)  # already forgotten: nothing else changes
    assert p.by_hash == {12: b} and p.key[b] == (12, -1, (2,))


def test_renumber_moves_refs_keys_hashes_and_free_order():
    p = PagePool(4)
    pages = [p.allocate() for _ in range(4)]
    p.register(pages[1], 21, -1, (1,))
    p.register(pages[3], 23, 21, (2,))
    p.incref(pages[3])
    p.decref(pages[2])
    p.decref(pages[0])
    assert list(p.free) == [2, 0]
    perm = [3, 0, 2, 1]  # old page p is now perm[p]
    p.renumber(perm)
    assert p.ref == [1, 2, 0, 0]
    assert p.key == [(21, -1, (1,)), (23, 21, (2,)), None, None]
    assert p.by_hash == {21: 0, 23: 1}
    assert list(p.free) == [2, 3]
    assert p.lookup(23, 21, (2,)) == 1
    p.check([[0, 1], [1]])


def test_check_names_the_pages_whose_counts_disagree():
    p = PagePool(8)
    for _ in range(8):
        p.allocate()
    p.check([list(range(8))])
    with pytest.raises(AssertionError, match=r"^ref counts disagree with the page tables at pages \[0, 1, 2, 3, 4\]$"):
        p.check([])
    with pytest.raises(AssertionError, match=r"at pages \[6\]$"):
        p.check([[0, 1, 2, 3, 4, 5, 6, 7, 6]])


def test_check_catches_a_free_list_out_of_step():
    p = PagePool(2)
    a = p.allocate()
    p.free[a] = None  # listed free while a table holds it
    with pytest.raises(AssertionError, match="^free list disagrees with ref counts$"):
        p.check([[a]])
    q = PagePool(2)
    b = q.allocate()
    q.ref[b] = 0  # nobody holds it, yet it is not free
    with pytest.raises(AssertionError, match="^free list disagrees with ref counts$"):
        q.check([[]])
