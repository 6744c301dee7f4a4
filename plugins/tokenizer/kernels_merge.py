"""numba kernels of the merge loops: byte-level BPE (ranked merges) and SentencePiece BPE (scores).

Both keep the symbols of a word in a doubly linked list and the candidate pairs in a binary heap, like
llama.cpp: O(n log n) per word, never quadratic, whatever the word's length.  Heap keys pack
``(priority << 32) | left_index`` into one int64, so ties go to the leftmost pair exactly as llama.cpp's
comparators order them.  Stale heap entries are recognised and skipped when popped.

Hash tables are open-addressing arrays (a multiplicative hash, linear probing) built once per vocabulary.

Long words and long SentencePiece segments switch to rank buckets (``bpe_word_long``,
``spm_fragment_long``): the pairs of the best rank are applied in one sorted left-to-right sweep, which
keeps memory access in order and a 1 MB word near the per-byte cost of a 10 kB one.

These loops have one shape for every CPU variant: heap and linked-list work is pointer chasing with no
lanes to fill, so the avx2/neon variants differ in the scan (kernels_scan), where wide blocks pay.
"""
from __future__ import annotations

import numpy as np
from numba import njit

_GOLD = np.uint64(0x9E3779B97F4A7C15)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


# -- hashing ---------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _slot(h, mask):
    return np.int64((np.uint64(h) * _GOLD) >> np.uint64(40)) & mask


@njit(cache=True)
def fnv1a(data, start, end):
    h = _FNV_OFFSET
    for i in range(start, end):
        h = (h ^ np.uint64(data[i])) * _FNV_PRIME
    return h


@njit(cache=True)
def build_pair_table(left, right, cap):
    """Hash (left_id, right_id) -> merge rank; the first (lowest) rank wins a duplicated pair.

    Returns keys (cap,) int64 (-1 empty) and ranks (cap,) int32.
    """
    keys = np.full(cap, -1, dtype=np.int64)
    vals = np.full(cap, -1, dtype=np.int32)
    mask = cap - 1
    for r in range(left.shape[0]):
        a = left[r]
        b = right[r]
        if a < 0 or b < 0:
            continue
        key = (np.int64(a) << 32) | np.int64(b)
        s = _slot(key, mask)
        while keys[s] != -1 and keys[s] != key:
            s = (s + 1) & mask
        if keys[s] == -1:
            keys[s] = key
            vals[s] = r
    return keys, vals


@njit(cache=True, inline="always")
def pair_rank(keys, vals, a, b):
    if a < 0 or b < 0:
        return -1
    key = (np.int64(a) << 32) | np.int64(b)
    mask = keys.shape[0] - 1
    s = _slot(key, mask)
    while True:
        k = keys[s]
        if k == key:
            return np.int64(vals[s])
        if k == -1:
            return np.int64(-1)
        s = (s + 1) & mask


@njit(cache=True)
def build_text_table(blob, offs, cap):
    """Hash token text -> id (the first id wins a duplicated text).  Returns (cap,) int32, -1 empty."""
    table = np.full(cap, -1, dtype=np.int32)
    mask = cap - 1
    for t in range(offs.shape[0] - 1):
        s = _slot(fnv1a(blob, offs[t], offs[t + 1]), mask)
        while table[s] != -1:
            s = (s + 1) & mask
        table[s] = t
    return table


@njit(cache=True)
def text_to_id(table, blob, offs, data, start, end):
    """The id of the token whose text is data[start:end], or -1."""
    mask = table.shape[0] - 1
    s = _slot(fnv1a(data, start, end), mask)
    n = end - start
    while True:
        t = table[s]
        if t == -1:
            return -1
        o = offs[t]
        if offs[t + 1] - o == n:
            same = True
            for i in range(n):
                if blob[o + i] != data[start + i]:
                    same = False
                    break
            if same:
                return t
        s = (s + 1) & mask


# -- heap of int64 keys with an int64 payload ---------------------------------------------------------
@njit(cache=True, inline="always")
def _heap_push(keys, aux, size, key, val):
    i = size
    while i > 0:
        parent = (i - 1) >> 1
        if keys[parent] <= key:
            break
        keys[i] = keys[parent]
        aux[i] = aux[parent]
        i = parent
    keys[i] = key
    aux[i] = val
    return size + 1


@njit(cache=True, inline="always")
def _heap_pop(keys, aux, size):
    """Removes the minimum (returned by the caller reading keys[0]/aux[0] first); returns the new size."""
    size -= 1
    key = keys[size]
    val = aux[size]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= size:
            break
        if c + 1 < size and keys[c + 1] < keys[c]:
            c += 1
        if keys[c] >= key:
            break
        keys[i] = keys[c]
        aux[i] = aux[c]
        i = c
    if size > 0:
        keys[i] = key
        aux[i] = val
    return size


# -- byte-level BPE ----------------------------------------------------------------------------------------
@njit(cache=True)
def bpe_word(data, s, e, byte_ids, pkeys, pvals, m_left, m_right, m_result,
             ids, nxt, prv, hkeys, haux, out, o):
    """Merge the bytes data[s:e] by rank; writes the ids to out[o:] and returns the new o.

    Scratch arrays ids/nxt/prv need e - s slots, hkeys/haux 3 * (e - s).
    """
    n = e - s
    if n == 1:
        t = byte_ids[data[s]]
        if t >= 0:
            out[o] = t
            o += 1
        return o
    for i in range(n):
        ids[i] = byte_ids[data[s + i]]
        nxt[i] = i + 1
        prv[i] = i - 1
    nxt[n - 1] = -1
    hs = 0
    for i in range(n - 1):
        r = pair_rank(pkeys, pvals, ids[i], ids[i + 1])
        if r >= 0:
            hs = _heap_push(hkeys, haux, hs, (r << 32) | i, 0)
    while hs > 0:
        key = hkeys[0]
        hs = _heap_pop(hkeys, haux, hs)
        r = key >> 32
        left = key & 0xFFFFFFFF
        if ids[left] != m_left[r]:
            continue
        right = nxt[left]
        if right < 0 or ids[right] != m_right[r]:
            continue
        ids[left] = m_result[r]
        ids[right] = -2
        nn = nxt[right]
        nxt[left] = nn
        if nn >= 0:
            prv[nn] = left
        pl = prv[left]
        if pl >= 0:
            r2 = pair_rank(pkeys, pvals, ids[pl], ids[left])
            if r2 >= 0:
                hs = _heap_push(hkeys, haux, hs, (r2 << 32) | pl, 0)
        if nn >= 0:
            r2 = pair_rank(pkeys, pvals, ids[left], ids[nn])
            if r2 >= 0:
                hs = _heap_push(hkeys, haux, hs, (r2 << 32) | left, 0)
    i = 0
    while i != -1:
        if ids[i] >= 0:  # a byte with no token of its own is dropped, as llama.cpp does
            out[o] = ids[i]
            o += 1
        i = nxt[i]
    return o


LONG_WORD = 128


@njit(cache=True, inline="always")
def _lowest_bit(x):
    """Index of the lowest set bit of a non-zero uint64."""
    x = x & (~x + np.uint64(1))
    i = 0
    if x & np.uint64(0xFFFFFFFF00000000):
        i += 32
    if x & np.uint64(0xFFFF0000FFFF0000):
        i += 16
    if x & np.uint64(0xFF00FF00FF00FF00):
        i += 8
    if x & np.uint64(0xF0F0F0F0F0F0F0F0):
        i += 4
    if x & np.uint64(0xCCCCCCCCCCCCCCCC):
        i += 2
    if x & np.uint64(0xAAAAAAAAAAAAAAAA):
        i += 1
    return i


@njit(cache=True, inline="always")
def _add_entry(head, bits, ent_left, ent_next, ne, r, left):
    if head[r] < 0:
        bits[r >> 6] |= np.uint64(1) << np.uint64(r & 63)
    ent_left[ne] = left
    ent_next[ne] = head[r]
    head[r] = ne
    return ne + 1


@njit(cache=True)
def bpe_word_long(data, s, e, byte_ids, pkeys, pvals, m_left, m_right, m_result,
                  ids, nxt, prv, head, bits, ent_left, ent_next, lefts, out, o):
    """The same merges as :func:`bpe_word`, for long words, in rank buckets: all pairs of the lowest rank
    are applied in one left-to-right sweep over a sorted list, so memory is touched in order and a 1 MB
    word costs about what a thousand 1 kB words do.

    A merge only ever creates pairs of a higher rank in a vocabulary trained the usual way; if one is
    lower, the sweep order would differ from llama.cpp's heap order, so this returns -1 and the caller
    runs :func:`bpe_word` instead.  The ranks present are a bitset (19 kB for 151k merges) scanned
    upward; ``head`` ((n_merges,) int32, all -1) and ``bits`` (all 0) are left that way again.
    Scratch: ids/nxt/prv need e - s slots; ent_left/ent_next/lefts 3 * (e - s).
    """
    n = e - s
    for i in range(n):
        ids[i] = byte_ids[data[s + i]]
        nxt[i] = i + 1
        prv[i] = i - 1
    nxt[n - 1] = -1
    ne = 0
    for i in range(n - 1):
        r = pair_rank(pkeys, pvals, ids[i], ids[i + 1])
        if r >= 0:
            ne = _add_entry(head, bits, ent_left, ent_next, ne, r, i)
    monotone = True
    w = 0
    nwords = bits.shape[0]
    while monotone:
        while w < nwords and bits[w] == 0:
            w += 1
        if w == nwords:
            break
        r = w * 64 + _lowest_bit(bits[w])
        bits[w] &= ~(np.uint64(1) << np.uint64(r & 63))
        k = 0
        ei = head[r]
        head[r] = -1
        while ei >= 0:  # the list is last-in first-out: mostly descending
            lefts[k] = ent_left[ei]
            k += 1
            ei = ent_next[ei]
        done = lefts[:k]
        ordered = True
        for j in range(k // 2):
            t = done[j]
            done[j] = done[k - 1 - j]
            done[k - 1 - j] = t
        for j in range(1, k):
            if done[j - 1] > done[j]:
                ordered = False
                break
        if not ordered:
            done.sort()
        ml = m_left[r]
        mr = m_right[r]
        mres = m_result[r]
        for j in range(k):
            left = done[j]
            if ids[left] != ml:
                continue
            right = nxt[left]
            if right < 0 or ids[right] != mr:
                continue
            ids[left] = mres
            ids[right] = -2
            nn = nxt[right]
            nxt[left] = nn
            if nn >= 0:
                prv[nn] = left
            pl = prv[left]
            if pl >= 0:
                r2 = pair_rank(pkeys, pvals, ids[pl], mres)
                if r2 >= 0:
                    if r2 <= r:
                        monotone = False
                        break
                    ne = _add_entry(head, bits, ent_left, ent_next, ne, r2, pl)
            if nn >= 0:
                r2 = pair_rank(pkeys, pvals, mres, ids[nn])
                if r2 >= 0:
                    if r2 <= r:
                        monotone = False
                        break
                    ne = _add_entry(head, bits, ent_left, ent_next, ne, r2, left)
    if not monotone:
        for j in range(w, nwords):
            while bits[j] != 0:
                r = j * 64 + _lowest_bit(bits[j])
                bits[j] &= ~(np.uint64(1) << np.uint64(r & 63))
                head[r] = -1
        return -1
    i = 0
    while i != -1:
        if ids[i] >= 0:
            out[o] = ids[i]
            o += 1
        i = nxt[i]
    return o


# -- the word cache: word bytes -> ids, kept across calls -------------------------------------------------
CACHE_SLOTS = 1 << 16
CACHE_MAX_WORD = 48
CACHE_BYTES = 1 << 21
CACHE_IDS = 1 << 20


def new_word_cache():
    """Arrays of an empty cache: slot table (hash, word offset, word length, ids offset, ids length) and
    the byte and id arenas.  state = [bytes used, ids used, entries]."""
    return (np.zeros((CACHE_SLOTS, 5), dtype=np.int64), np.zeros(CACHE_BYTES, dtype=np.uint8),
            np.zeros(CACHE_IDS, dtype=np.int32), np.zeros(3, dtype=np.int64))


@njit(cache=True, inline="always")
def _cache_hash(data, s, e):
    h = fnv1a(data, s, e)
    return np.int64(h >> np.uint64(1)) | 1  # never 0: 0 marks an empty slot


@njit(cache=True)
def cache_get(slots, wbytes, wids, data, s, e, h, out, o):
    """Copy the cached ids of data[s:e] to out[o:]; returns the new o, or -1 on a miss."""
    mask = slots.shape[0] - 1
    i = _slot(h, mask)
    n = e - s
    while True:
        sh = slots[i, 0]
        if sh == 0:
            return -1
        if sh == h and slots[i, 2] == n:
            wo = slots[i, 1]
            same = True
            for j in range(n):
                if wbytes[wo + j] != data[s + j]:
                    same = False
                    break
            if same:
                io = slots[i, 3]
                for j in range(slots[i, 4]):
                    out[o + j] = wids[io + j]
                return o + slots[i, 4]
        i = (i + 1) & mask


@njit(cache=True)
def cache_put(slots, wbytes, wids, state, data, s, e, h, ids, i0, i1):
    n = e - s
    m = i1 - i0
    if (state[2] * 2 >= slots.shape[0] or state[0] + n > wbytes.shape[0]
            or state[1] + m > wids.shape[0]):
        slots[:, 0] = 0  # full: start over (cheap, and the hot words come back at once)
        state[0] = 0
        state[1] = 0
        state[2] = 0
    mask = slots.shape[0] - 1
    i = _slot(h, mask)
    while slots[i, 0] != 0:
        i = (i + 1) & mask
    wo = state[0]
    io = state[1]
    for j in range(n):
        wbytes[wo + j] = data[s + j]
    for j in range(m):
        wids[io + j] = ids[i0 + j]
    slots[i, 0] = h
    slots[i, 1] = wo
    slots[i, 2] = n
    slots[i, 3] = io
    slots[i, 4] = m
    state[0] = wo + n
    state[1] = io + m
    state[2] += 1


# -- SentencePiece BPE (scores, byte fallback) -------------------------------------------------------------
@njit(cache=True, inline="always")
def _utf8_len(b):
    return 1 if b < 0xC0 else 2 if b < 0xE0 else 3 if b < 0xF0 else 4


@njit(cache=True, inline="always")
def _spm_try(data, st, ln, l, r, table, blob, offs, srank, hkeys, haux, hs):
    if l < 0 or r < 0:
        return hs
    size = ln[l] + ln[r]
    t = text_to_id(table, blob, offs, data, st[l], st[l] + size)
    if t < 0:
        return hs
    return _heap_push(hkeys, haux, hs, (np.int64(srank[t]) << 32) | l, (np.int64(t) << 20) | size)


@njit(cache=True)
def spm_fragment(data, s, e, table, blob, offs, srank, byte_tok,
                 st, ln, tok, nxt, prv, hkeys, haux, out, o):
    """SentencePiece BPE of data[s:e] (spaces already escaped to U+2581): highest score first, leftmost on
    ties; symbols that are no token fall back to byte tokens.  Scratch arrays need e - s slots (heap 3x)."""
    n = 0
    i = s
    while i < e:
        k = min(_utf8_len(data[i]), e - i)
        st[n] = i
        ln[n] = k
        tok[n] = -1
        nxt[n] = n + 1
        prv[n] = n - 1
        n += 1
        i += k
    if n == 0:
        return o
    nxt[n - 1] = -1
    hs = 0
    for j in range(1, n):
        hs = _spm_try(data, st, ln, j - 1, j, table, blob, offs, srank, hkeys, haux, hs)
    while hs > 0:
        key = hkeys[0]
        val = haux[0]
        hs = _heap_pop(hkeys, haux, hs)
        left = key & 0xFFFFFFFF
        size = val & 0xFFFFF
        right = nxt[left]
        if ln[left] == 0 or right < 0 or ln[right] == 0 or ln[left] + ln[right] != size:
            continue
        ln[left] = size
        ln[right] = 0
        tok[left] = val >> 20
        nn = nxt[right]
        nxt[left] = nn
        if nn >= 0:
            prv[nn] = left
        hs = _spm_try(data, st, ln, prv[left], left, table, blob, offs, srank, hkeys, haux, hs)
        hs = _spm_try(data, st, ln, left, nn, table, blob, offs, srank, hkeys, haux, hs)
    j = 0
    while j != -1:
        t = tok[j]
        if t < 0:
            t = text_to_id(table, blob, offs, data, st[j], st[j] + ln[j])
        if t >= 0:
            out[o] = t
            o += 1
        else:
            for b in range(st[j], st[j] + ln[j]):
                bt = byte_tok[data[b]]
                if bt >= 0:
                    out[o] = bt
                    o += 1
        j = nxt[j]
    return o


@njit(cache=True, inline="always")
def _spm_add(data, st, ln, l, r, table, blob, offs, srank, head, bits, ent_left, ent_val, ent_next, ne):
    """Bucket the bigram (l, r) under its score rank if its text is a token; returns (ne, rank or -1)."""
    if l < 0 or r < 0:
        return ne, np.int64(-1)
    size = ln[l] + ln[r]
    t = text_to_id(table, blob, offs, data, st[l], st[l] + size)
    if t < 0:
        return ne, np.int64(-1)
    k = np.int64(srank[t])
    if head[k] < 0:
        bits[k >> 6] |= np.uint64(1) << np.uint64(k & 63)
    ent_left[ne] = l
    ent_val[ne] = (np.int64(t) << 20) | size
    ent_next[ne] = head[k]
    head[k] = ne
    return ne + 1, k


@njit(cache=True)
def spm_fragment_long(data, s, e, table, blob, offs, srank, byte_tok, st, ln, tok, nxt, prv,
                      head, bits, ent_left, ent_val, ent_next, lefts, vals, out, o):
    """:func:`spm_fragment` for long text in score buckets (see :func:`bpe_word_long`): the bigrams of the
    best score are applied in one left-to-right sweep.  A merge that creates a bigram scoring at least as
    well as the current one would be taken next by llama.cpp's heap, which a sweep cannot do: then this
    returns -1 (state cleaned) and the caller runs :func:`spm_fragment`.  ``head`` (one per score rank,
    all -1) and ``bits`` (all 0) are left that way.  Scratch: 3 * (e - s) for the entry arrays."""
    n = 0
    i = s
    while i < e:
        k = min(_utf8_len(data[i]), e - i)
        st[n] = i
        ln[n] = k
        tok[n] = -1
        nxt[n] = n + 1
        prv[n] = n - 1
        n += 1
        i += k
    if n == 0:
        return o
    nxt[n - 1] = -1
    ne = 0
    for j in range(1, n):
        ne, _ = _spm_add(data, st, ln, j - 1, j, table, blob, offs, srank, head, bits,
                         ent_left, ent_val, ent_next, ne)
    monotone = True
    w = 0
    nwords = bits.shape[0]
    while monotone:
        while w < nwords and bits[w] == 0:
            w += 1
        if w == nwords:
            break
        rk = w * 64 + _lowest_bit(bits[w])
        bits[w] &= ~(np.uint64(1) << np.uint64(rk & 63))
        m = 0
        ei = head[rk]
        head[rk] = -1
        while ei >= 0:
            lefts[m] = ent_left[ei]
            vals[m] = ent_val[ei]
            m += 1
            ei = ent_next[ei]
        order = np.argsort(lefts[:m], kind="mergesort")
        for q in range(m):
            jj = order[q]
            left = lefts[jj]
            val = vals[jj]
            size = val & 0xFFFFF
            right = nxt[left]
            if ln[left] == 0 or right < 0 or ln[right] == 0 or ln[left] + ln[right] != size:
                continue
            ln[left] = size
            ln[right] = 0
            tok[left] = val >> 20
            nn = nxt[right]
            nxt[left] = nn
            if nn >= 0:
                prv[nn] = left
            ne, k2 = _spm_add(data, st, ln, prv[left], left, table, blob, offs, srank, head, bits,
                              ent_left, ent_val, ent_next, ne)
            if 0 <= k2 <= rk:
                monotone = False
                break
            ne, k2 = _spm_add(data, st, ln, left, nn, table, blob, offs, srank, head, bits,
                              ent_left, ent_val, ent_next, ne)
            if 0 <= k2 <= rk:
                monotone = False
                break
    if not monotone:
        for j in range(w, nwords):
            while bits[j] != 0:
                r = j * 64 + _lowest_bit(bits[j])
                bits[j] &= ~(np.uint64(1) << np.uint64(r & 63))
                head[r] = -1
        return -1
    j = 0
    while j != -1:
        t = tok[j]
        if t < 0:
            t = text_to_id(table, blob, offs, data, st[j], st[j] + ln[j])
        if t >= 0:
            out[o] = t
            o += 1
        else:
            for b in range(st[j], st[j] + ln[j]):
                bt = byte_tok[data[b]]
                if bt >= 0:
                    out[o] = bt
                    o += 1
        j = nxt[j]
    return o
