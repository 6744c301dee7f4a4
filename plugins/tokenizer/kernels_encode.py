"""numba pipelines: text fragments -> ids, for one text and for a batch of texts in parallel.

A text arrives cut into fragments by the special-token partition (special.py): each fragment is either a
byte range of raw text or one token id.  Byte-level BPE classifies and splits each raw fragment into words
(kernels_scan) and merges every word (kernels_merge), going through the word cache first.  SentencePiece
BPE merges each raw fragment whole, as llama.cpp does.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .kernels_merge import (CACHE_MAX_WORD, LONG_WORD, bpe_word, bpe_word_long, cache_get, cache_put,
                            _cache_hash, new_word_cache, spm_fragment)
from .kernels_scan import classify, split


@njit(cache=True)
def bpe_fragments(kind, variant, data, fs, fe, ft, f0, f1, table, byte_ids, pkeys, pvals,
                  m_left, m_right, m_result, slots, wbytes, wids, state, use_cache, out, o):
    """Encode fragments f0..f1-1 of ``data``; ids go to out[o:]; returns the new o."""
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
                    ent_next = np.empty(3 * n, dtype=np.int32)
                    lefts = np.empty(3 * n, dtype=np.int32)
                o2 = bpe_word_long(data, s, e, byte_ids, pkeys, pvals, m_left, m_right, m_result,
                                   ids, nxt, prv, head, bits, hkeys, ent_next, lefts, out, o)
            if o2 < 0:
                o2 = bpe_word(data, s, e, byte_ids, pkeys, pvals, m_left, m_right, m_result,
                              ids, nxt, prv, hkeys, haux, out, o)
            if cached:
                cache_put(slots, wbytes, wids, state, data, s, e, h, out, o, o2)
            o = o2
    return o


@njit(cache=True, parallel=True)
def bpe_batch(kind, variant, data, fs, fe, ft, text_f0, text_f1, out_off, n_chunks, table, byte_ids,
              pkeys, pvals, m_left, m_right, m_result, counts):
    """Encode many texts: chunk c handles texts c, c + n_chunks, ... with its own word cache.  Text t's
    ids go to out[out_off[t]:out_off[t] + counts[t]]."""
    out = np.empty(out_off[-1], dtype=np.int32)
    n_texts = text_f0.shape[0]
    for c in prange(n_chunks):
        slots = np.zeros((1 << 14, 5), dtype=np.int64)
        wbytes = np.empty(1 << 19, dtype=np.uint8)
        wids = np.empty(1 << 18, dtype=np.int32)
        state = np.zeros(3, dtype=np.int64)
        for t in range(c, n_texts, n_chunks):
            o = bpe_fragments(kind, variant, data, fs, fe, ft, text_f0[t], text_f1[t], table, byte_ids,
                              pkeys, pvals, m_left, m_right, m_result, slots, wbytes, wids, state, True,
                              out, out_off[t])
            counts[t] = o - out_off[t]
    return out


@njit(cache=True)
def spm_fragments(data, fs, fe, ft, f0, f1, table, blob, offs, srank, byte_tok, out, o):
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
    for f in range(f0, f1):
        if ft[f] >= 0:
            out[o] = ft[f]
            o += 1
            continue
        o = spm_fragment(data, fs[f], fe[f], table, blob, offs, srank, byte_tok,
                         st, ln, tok, nxt, prv, hkeys, haux, out, o)
    return o


@njit(cache=True, parallel=True)
def spm_batch(data, fs, fe, ft, text_f0, text_f1, out_off, table, blob, offs, srank, byte_tok, counts):
    out = np.empty(out_off[-1], dtype=np.int32)
    for t in prange(text_f0.shape[0]):
        o = spm_fragments(data, fs, fe, ft, text_f0[t], text_f1[t], table, blob, offs, srank, byte_tok,
                          out, out_off[t])
        counts[t] = o - out_off[t]
    return out


__all__ = ["bpe_fragments", "bpe_batch", "spm_fragments", "spm_batch", "new_word_cache"]
