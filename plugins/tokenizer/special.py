"""Special-token partition: cut a text into raw fragments and special-token ids, as llama.cpp does.

llama.cpp takes the special tokens longest first; for each one it finds every non-overlapping occurrence
(leftmost first) inside the fragments that are still raw text and splits them there.  User-defined tokens
are always split out; control and unknown tokens only with ``parse_special``.  (llama.cpp sorts equal-length
tokens with an unstable sort; we order them by id.  Only two equal-length specials overlapping in one text
could tell the difference.)
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def partition(data, cand_blob, cand_offs, cand_ids):
    """Fragments of ``data``: (start, end, token) arrays, token -1 for raw text.

    cand_*: the special tokens that occur in data, in priority order (longest first)."""
    n = data.shape[0]
    cap = n + 1
    fs = np.empty(cap, dtype=np.int64)
    fe = np.empty(cap, dtype=np.int64)
    ft = np.empty(cap, dtype=np.int64)
    gs = np.empty(cap, dtype=np.int64)
    ge = np.empty(cap, dtype=np.int64)
    gt = np.empty(cap, dtype=np.int64)
    nf = 0
    if n > 0:
        fs[0] = 0
        fe[0] = n
        ft[0] = -1
        nf = 1
    for c in range(cand_ids.shape[0]):
        o = cand_offs[c]
        L = cand_offs[c + 1] - o
        if L == 0:
            continue
        first = cand_blob[o]
        ng = 0
        for f in range(nf):
            if ft[f] >= 0:
                gs[ng] = fs[f]
                ge[ng] = fe[f]
                gt[ng] = ft[f]
                ng += 1
                continue
            pos = fs[f]
            end = fe[f]
            i = pos
            while i + L <= end:
                if data[i] == first:
                    same = True
                    for j in range(1, L):
                        if data[i + j] != cand_blob[o + j]:
                            same = False
                            break
                    if same:
                        if i > pos:
                            gs[ng] = pos
                            ge[ng] = i
                            gt[ng] = -1
                            ng += 1
                        gs[ng] = i
                        ge[ng] = i + L
                        gt[ng] = cand_ids[c]
                        ng += 1
                        i += L
                        pos = i
                        continue
                i += 1
            if pos < end:
                gs[ng] = pos
                ge[ng] = end
                gt[ng] = -1
                ng += 1
        fs, gs = gs, fs
        fe, ge = ge, fe
        ft, gt = gt, ft
        nf = ng
    return fs[:nf], fe[:nf], ft[:nf]


class SpecialTokens:
    """The special tokens of a vocabulary, in llama.cpp's matching order, with a cheap presence test."""

    def __init__(self, texts: list[bytes], ids: list[int], always: list[bool]):
        order = sorted(range(len(ids)), key=lambda i: (-len(texts[i]), ids[i]))
        self._all = [(texts[i], ids[i]) for i in order if texts[i]]
        self._always = [(texts[i], ids[i]) for i in order if texts[i] and always[i]]

    def candidates(self, data: bytes, parse_special: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The special tokens occurring in ``data`` as (blob, offsets, ids) in priority order."""
        pool = self._all if parse_special else self._always
        found = [(t, i) for t, i in pool if t in data] if pool else []
        blob = np.frombuffer(b"".join(t for t, _ in found), dtype=np.uint8)
        offs = np.zeros(len(found) + 1, dtype=np.int64)
        if found:
            np.cumsum([len(t) for t, _ in found], out=offs[1:])
        return blob, offs, np.array([i for _, i in found], dtype=np.int64)

    def split(self, data: bytes, parse_special: bool):
        """(starts, ends, tokens) of ``data``'s fragments; tokens -1 marks raw text."""
        arr = np.frombuffer(data, dtype=np.uint8)
        blob, offs, ids = self.candidates(data, parse_special)
        if ids.shape[0] == 0:
            n = len(data)
            if n == 0:
                e = np.zeros(0, dtype=np.int64)
                return e, e, e
            return (np.zeros(1, dtype=np.int64), np.full(1, n, dtype=np.int64),
                    np.full(1, -1, dtype=np.int64))
        return partition(arr, blob, offs, ids)
