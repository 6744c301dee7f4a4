"""llama.cpp's reading of raw bytes as text, for byte input that may not be valid UTF-8.

llama.cpp's byte-level BPE decodes each fragment to codepoints (an invalid byte becomes U+FFFD, one per
byte; overlong forms and surrogates are accepted as they decode) and rebuilds the words from those
codepoints.  ``llama_utf8`` produces the same bytes, so the kernels, which assume UTF-8, see what llama.cpp
sees.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _put(out, o, cp):
    if cp < 0x80:
        out[o] = cp
        return o + 1
    if cp < 0x800:
        out[o] = 0xC0 | (cp >> 6)
        out[o + 1] = 0x80 | (cp & 0x3F)
        return o + 2
    if cp < 0x10000:
        out[o] = 0xE0 | (cp >> 12)
        out[o + 1] = 0x80 | ((cp >> 6) & 0x3F)
        out[o + 2] = 0x80 | (cp & 0x3F)
        return o + 3
    out[o] = 0xF0 | (cp >> 18)
    out[o + 1] = 0x80 | ((cp >> 12) & 0x3F)
    out[o + 2] = 0x80 | ((cp >> 6) & 0x3F)
    out[o + 3] = 0x80 | (cp & 0x3F)
    return o + 4


@njit(cache=True, inline="always")
def _cont(data, i):
    return (np.int64(data[i]) & 0xC0) == 0x80


@njit(cache=True)
def llama_utf8_kernel(data):
    n = data.shape[0]
    out = np.empty(3 * n, dtype=np.uint8)
    i = 0
    o = 0
    while i < n:
        b = np.int64(data[i])
        cp = np.int64(-1)
        step = 1
        if b < 0x80:
            cp = b
        elif b & 0x40 == 0:
            cp = -1
        elif b & 0x20 == 0:
            if i + 1 < n and _cont(data, i + 1):
                cp = ((b & 0x1F) << 6) | (np.int64(data[i + 1]) & 0x3F)
                step = 2
        elif b & 0x10 == 0:
            if i + 2 < n and _cont(data, i + 1) and _cont(data, i + 2):
                cp = ((b & 0x0F) << 12) | ((np.int64(data[i + 1]) & 0x3F) << 6) | (np.int64(data[i + 2]) & 0x3F)
                step = 3
        elif b & 0x08 == 0:
            if i + 3 < n and _cont(data, i + 1) and _cont(data, i + 2) and _cont(data, i + 3):
                cp = ((b & 0x07) << 18) | ((np.int64(data[i + 1]) & 0x3F) << 12) \
                    | ((np.int64(data[i + 2]) & 0x3F) << 6) | (np.int64(data[i + 3]) & 0x3F)
                step = 4
        if cp < 0 or cp > 0x10FFFF:  # llama.cpp cannot re-encode past U+10FFFF either
            cp = 0xFFFD
        o = _put(out, o, cp)
        i += step
    return out[:o]


def llama_utf8(raw: bytes) -> bytes:
    """``raw`` as llama.cpp's tokenizer reads it, re-encoded as UTF-8."""
    if not raw:
        return b""
    return llama_utf8_kernel(np.frombuffer(raw, dtype=np.uint8)).tobytes()
