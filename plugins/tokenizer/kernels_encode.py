"""numba pipelines: text fragments -> ids, for one text and for a batch of texts in parallel.

A text arrives cut into fragments by the special-token partition (special.py): each fragment is either a
byte range of raw text or one token id.  Byte-level BPE classifies and splits each raw fragment into words
(kernels_scan) and merges every word (kernels_merge), going through the word cache first.  SentencePiece
BPE merges each raw fragment whole, as llama.cpp does.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from corert import numba_setup  # noqa: F401  (threading layer before the first prange)

from .kernels_merge import (CACHE_MAX_WORD, LONG_WORD, _cache_hash, _utf8_len, bpe_word, bpe_word_long,
                            cache_get, cache_put, new_word_cache, spm_fragment, spm_fragment_long, text_to_id)
from .kernels_scan import classify, split


@njit(cache=True)
def bpe_fragments(kind, variant, data, fs, fe, ft, f0, f1, table, byte_ids, pkeys, pvals,
                  m_left, m_right, m_result, raw_table, raw_blob, raw_offs, ignore_merges,
                  slots, wbytes, wids, state, use_cache, out, o):
    """Encode fragments f0..f1-1 of ``data``; ids go to out[o:]; returns the new o.  With
    ``ignore_merges`` a word that is a token as a whole (raw_* hash of token bytes) is that token."""
    longest = 0
    for f in range(f0, f1):
        if ft[f] < 0 and fe[f] - fs[f] > longest:
            longest = fe[f] - fs[f]
    if longest == 0:
        for f in range(f0, f1):
            if ft[f] >= 0:
                out[o] = ft[f]
                o += 1
        return o
    cls = np.empty(longest, dtype=np.uint8)
    boff = np.empty(longest + 1, dtype=np.int32)
    words = np.empty(longest, dtype=np.int32)
    scratch = 0
    ids = np.empty(0, dtype=np.int32)
    nxt = np.empty(0, dtype=np.int32)
    prv = np.empty(0, dtype=np.int32)
    hkeys = np.empty(0, dtype=np.int64)
    haux = np.empty(0, dtype=np.int64)
    head = np.empty(0, dtype=np.int32)  # rank buckets, allocated at the first long word
    bits = np.empty(0, dtype=np.uint64)
    ent_left = np.empty(0, dtype=np.int32)
    ent_next = np.empty(0, dtype=np.int32)
    lefts = np.empty(0, dtype=np.int32)
    for f in range(f0, f1):
        if ft[f] >= 0:
            out[o] = ft[f]
            o += 1
            continue
        m = classify(variant, data, fs[f], fe[f], table, cls, boff)
        nw = split(kind, variant, data, cls, boff, 0, m, words, 0)
        prev = 0
        for w in range(nw):
            s = boff[prev]
            e = boff[words[w]]
            prev = words[w]
            n = e - s
            if n == 1:
                t = byte_ids[data[s]]
                if t >= 0:
                    out[o] = t
                    o += 1
                continue
            if ignore_merges:
                t = text_to_id(raw_table, raw_blob, raw_offs, data, s, e)
                if t >= 0:
                    out[o] = t
                    o += 1
                    continue
            cached = use_cache and n <= CACHE_MAX_WORD
            h = np.int64(0)
            if cached:
                h = _cache_hash(data, s, e)
                o2 = cache_get(slots, wbytes, wids, data, s, e, h, out, o)
                if o2 >= 0:
                    o = o2
                    continue
            if n > scratch:  # grow the merge scratch to the longest word seen
                scratch = max(n, 64)
                ids = np.empty(scratch, dtype=np.int32)
                nxt = np.empty(scratch, dtype=np.int32)
                prv = np.empty(scratch, dtype=np.int32)
                hkeys = np.empty(3 * scratch, dtype=np.int64)
                haux = np.empty(3 * scratch, dtype=np.int64)
            o2 = -1
            if n >= LONG_WORD:
                if head.shape[0] == 0:
                    head = np.full(m_left.shape[0], -1, dtype=np.int32)
                    bits = np.zeros((m_left.shape[0] + 63) // 64, dtype=np.uint64)
                if ent_next.shape[0] < 3 * n:
                    ent_left = np.empty(3 * n, dtype=np.int32)
                    ent_next = np.empty(3 * n, dtype=np.int32)
                    lefts = np.empty(3 * n, dtype=np.int32)
                o2 = bpe_word_long(data, s, e, byte_ids, pkeys, pvals, m_left, m_right, m_result,
                                   ids, nxt, prv, head, bits, ent_left, ent_next, lefts, out, o)
            if o2 < 0:
                o2 = bpe_word(data, s, e, byte_ids, pkeys, pvals, m_left, m_right, m_result,
                              ids, nxt, prv, hkeys, haux, out, o)
            if cached:
                cache_put(slots, wbytes, wids, state, data, s, e, h, out, o, o2)
            o = o2
    return o


@njit(cache=True, parallel=True)
def bpe_batch(kind, variant, data, fs, fe, ft, text_f0, text_f1, out_off, n_chunks, table, byte_ids,
              pkeys, pvals, m_left, m_right, m_result, raw_table, raw_blob, raw_offs, ignore_merges,
              slots0, wbytes0, wids0, state0, cache_slots, counts):
    """Encode many texts: chunk c handles texts c, c + n_chunks, ...  Chunk 0 uses the caller's word
    cache (slots0...), the others a fresh one of ``cache_slots`` entries.  Text t's ids go to
    out[out_off[t]:out_off[t] + counts[t]]."""
    out = np.empty(out_off[-1], dtype=np.int32)
    n_texts = text_f0.shape[0]
    for c in prange(n_chunks):
        if c == 0:
            slots, wbytes, wids, state = slots0, wbytes0, wids0, state0
        else:
            slots = np.zeros((cache_slots, 5), dtype=np.int64)
            wbytes = np.empty(cache_slots * 32, dtype=np.uint8)
            wids = np.empty(cache_slots * 16, dtype=np.int32)
            state = np.zeros(3, dtype=np.int64)
        for t in range(c, n_texts, n_chunks):
            o = bpe_fragments(kind, variant, data, fs, fe, ft, text_f0[t], text_f1[t], table, byte_ids,
                              pkeys, pvals, m_left, m_right, m_result, raw_table, raw_blob, raw_offs,
                              ignore_merges, slots, wbytes, wids, state, True, out, out_off[t])
            counts[t] = o - out_off[t]
    return out


@njit(cache=True, inline="always")
def _is_escaped_space(data, p, end):
    return p + 3 <= end and data[p] == 0xE2 and data[p + 1] == 0x96 and data[p + 2] == 0x81


@njit(cache=True)
def _mark_crossings(data, s, e, cross_blob, cross_offs, cross_at, unsafe):
    """unsafe[p - s] = 1 where a token that spans a character-then-▁ place occurs over position p."""
    for c in range(cross_at.shape[0]):
        o = cross_offs[c]
        L = cross_offs[c + 1] - o
        for x in range(s, e - L + 1):
            same = True
            for j in range(L):
                if data[x + j] != cross_blob[o + j]:
                    same = False
                    break
            if same:
                unsafe[x + cross_at[c] - s] = 1


@njit(cache=True)
def spm_fragments(data, fs, fe, ft, f0, f1, table, blob, offs, srank, byte_tok,
                  cross_blob, cross_offs, cross_at, slots, wbytes, wids, state, use_cache, out, o):
    """SentencePiece BPE of fragments f0..f1-1.

    A raw fragment is merged in segments that each start at a run of ▁ (an escaped space) following
    another character.  No merge can cross such a place unless the vocabulary has a token with a ▁ right
    after another character, and the places those tokens cover are not cut; so each segment merges
    exactly as inside the whole fragment (merges of different segments never touch one another), and
    repeated segments ("▁the") come from the word cache.
    """
    longest = 0
    for f in range(f0, f1):
        if ft[f] < 0 and fe[f] - fs[f] > longest:
            longest = fe[f] - fs[f]
    st = np.empty(longest, dtype=np.int64)
    ln = np.empty(longest, dtype=np.int64)
    tok = np.empty(longest, dtype=np.int64)
    nxt = np.empty(longest, dtype=np.int64)
    prv = np.empty(longest, dtype=np.int64)
    hkeys = np.empty(3 * longest + 1, dtype=np.int64)
    haux = np.empty(3 * longest + 1, dtype=np.int64)
    unsafe = np.zeros(longest + 1, dtype=np.uint8)
    head = np.empty(0, dtype=np.int32)  # score buckets, allocated at the first long segment
    bits = np.empty(0, dtype=np.uint64)
    ent_next = np.empty(0, dtype=np.int64)
    lefts = np.empty(0, dtype=np.int64)
    vals = np.empty(0, dtype=np.int64)
    for f in range(f0, f1):
        if ft[f] >= 0:
            out[o] = ft[f]
            o += 1
            continue
        s = fs[f]
        e = fe[f]
        unsafe[:e - s + 1] = 0
        _mark_crossings(data, s, e, cross_blob, cross_offs, cross_at, unsafe)
        a = s
        while a < e:
            # Walk symbol by symbol (UTF-8 lengths as llama.cpp reads them, even in broken text) to the
            # next cut: a ▁ after a symbol that is not ▁, at a place no crossing token covers.
            q = a
            p = a + min(_utf8_len(data[a]), e - a)
            while p < e:
                if (_is_escaped_space(data, p, e) and unsafe[p - s] == 0
                        and not (p - q == 3 and _is_escaped_space(data, q, e))):
                    break
                q = p
                p += min(_utf8_len(data[p]), e - p)
            b = p
            n = b - a
            cached = use_cache and n <= CACHE_MAX_WORD
            h = np.int64(0)
            hit = -1
            if cached:
                h = _cache_hash(data, a, b)
                hit = cache_get(slots, wbytes, wids, data, a, b, h, out, o)
            if hit >= 0:
                o = hit
            else:
                o2 = -1
                if n >= LONG_WORD:
                    if head.shape[0] == 0:
                        head = np.full(srank.shape[0], -1, dtype=np.int32)
                        bits = np.zeros((srank.shape[0] + 63) // 64, dtype=np.uint64)
                        ent_next = np.empty(3 * longest + 1, dtype=np.int64)
                        lefts = np.empty(3 * longest + 1, dtype=np.int64)
                        vals = np.empty(3 * longest + 1, dtype=np.int64)
                    o2 = spm_fragment_long(data, a, b, table, blob, offs, srank, byte_tok, st, ln, tok, nxt,
                                           prv, head, bits, hkeys, haux, ent_next, lefts, vals, out, o)
                if o2 < 0:
                    o2 = spm_fragment(data, a, b, table, blob, offs, srank, byte_tok,
                                      st, ln, tok, nxt, prv, hkeys, haux, out, o)
                if cached:
                    cache_put(slots, wbytes, wids, state, data, a, b, h, out, o, o2)
                o = o2
            a = b
    return o


@njit(cache=True, parallel=True)
def spm_batch(data, fs, fe, ft, text_f0, text_f1, out_off, n_chunks, table, blob, offs, srank, byte_tok,
              cross_blob, cross_offs, cross_at, slots0, wbytes0, wids0, state0, cache_slots, counts):
    out = np.empty(out_off[-1], dtype=np.int32)
    n_texts = text_f0.shape[0]
    for c in prange(n_chunks):
        if c == 0:
            slots, wbytes, wids, state = slots0, wbytes0, wids0, state0
        else:
            slots = np.zeros((cache_slots, 5), dtype=np.int64)
            wbytes = np.empty(cache_slots * 32, dtype=np.uint8)
            wids = np.empty(cache_slots * 16, dtype=np.int32)
            state = np.zeros(3, dtype=np.int64)
        for t in range(c, n_texts, n_chunks):
            o = spm_fragments(data, fs, fe, ft, text_f0[t], text_f1[t], table, blob, offs, srank, byte_tok,
                              cross_blob, cross_offs, cross_at, slots, wbytes, wids, state, True,
                              out, out_off[t])
            counts[t] = o - out_off[t]
    return out


__all__ = ["bpe_fragments", "bpe_batch", "spm_fragments", "spm_batch", "new_word_cache"]
