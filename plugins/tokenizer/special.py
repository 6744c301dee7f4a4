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


def _prefix_key(t: bytes) -> int:
    k = t[:4]
    return int.from_bytes(k, "little")


def _window_keys(arr: np.ndarray, k: int) -> np.ndarray:
    """The distinct k-byte windows of arr as little-endian integers (k <= 4)."""
    n = arr.shape[0] - k + 1
    if n <= 0:
        return np.zeros(0, dtype=np.uint32)
    keys = arr[:n].astype(np.uint32)
    for j in range(1, k):
        keys |= arr[j:j + n].astype(np.uint32) << np.uint32(8 * j)
    return np.unique(keys)


class _Pool:
    """Special tokens in priority order, with their 1..4-byte prefix keys for a quick presence filter."""

    def __init__(self, items: list[tuple[bytes, int]]):
        self.items = items
        self.klen = np.array([min(len(t), 4) for t, _ in items], dtype=np.int64)
        self.keys = np.array([_prefix_key(t) for t, _ in items], dtype=np.uint32)

    def present(self, data: bytes) -> list[tuple[bytes, int]]:
        if not self.items:
            return []
        if len(self.items) * (len(data) + 500) < 3_000_000:  # then plain substring searches are cheaper
            return [(t, i) for t, i in self.items if t in data]
        arr = np.frombuffer(data, dtype=np.uint8)
        maybe = np.zeros(len(self.items), dtype=bool)
        for k in range(1, 5):
            sel = self.klen == k
            if sel.any():
                maybe[sel] = np.isin(self.keys[sel], _window_keys(arr, k))
        return [self.items[j] for j in np.nonzero(maybe)[0] if self.items[j][0] in data]


class SpecialTokens:
    """The special tokens of a vocabulary, in llama.cpp's matching order, with a cheap presence test."""

    def __init__(self, texts: list[bytes], ids: list[int], always: list[bool]):
        order = sorted(range(len(ids)), key=lambda i: (-len(texts[i]), ids[i]))
        self._all = _Pool([(texts[i], ids[i]) for i in order if texts[i]])
        self._always = _Pool([(texts[i], ids[i]) for i in order if texts[i] and always[i]])

    def candidates(self, data: bytes, parse_special: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The special tokens occurring in ``data`` as (blob, offsets, ids) in priority order."""
        found = (self._all if parse_special else self._always).present(data)
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
