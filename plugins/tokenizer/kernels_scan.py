"""numba kernels of the pre-tokenization scan: UTF-8 decode + character classes, then the word splitters.

Variants (the dispatch table is ``CLASSIFY`` / ``VARIANT_CODES``):

* ``scalar``: one codepoint per step, ASCII classes from a 128-entry table.
* ``avx2``: 32-byte blocks; a block that is all ASCII (one OR-reduction) is classified with compares and
  selects that LLVM turns into ymm instructions; run ends ("while the class is LETTER") are found 32
  classes at a time.
* ``neon``: the same shape with 16-byte blocks.

Every variant produces the same classes and therefore the same words (tests compare them).

The splitters reproduce llama.cpp's pre-tokenizers exactly (llama-vocab.cpp / unicode.cpp):

* ``split_gpt2_digits`` ("smollm" and friends): first ``\\p{N}`` isolates every number codepoint, then the
  GPT-2 pattern ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+`` runs on
  each piece, with its look-ahead bounded by the piece.
* ``split_qwen2`` ("qwen2"): ``(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?
  \\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+`` with ECMAScript leftmost-first
  alternation, which is what llama.cpp's std::regex fallback runs for it.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .unicode_classes import LETTER, NEWLINE, NUMBER, OTHER, SPACE, WS

# Bit masks of classes for run scans.
M_LETTER = 1 << LETTER
M_NUMBER = 1 << NUMBER
M_OTHER = 1 << OTHER
M_NEWLINE = 1 << NEWLINE
M_WS = (1 << SPACE) | (1 << NEWLINE) | (1 << WS)

VARIANT_CODES = {"scalar": 0, "neon": 1, "avx2": 2}


# -- decode + classify ---------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _decode_one(data, i, n, table, cls, boff, k):
    """Classify the (possibly multi-byte) codepoint at byte i; returns the next byte index."""
    b = np.int32(data[i])
    boff[k] = i
    if b < 0x80:
        cls[k] = table[b]
        return i + 1
    if b >= 0xF0 and i + 3 < n:
        cp = ((b & 0x07) << 18) | ((np.int32(data[i + 1]) & 0x3F) << 12) \
            | ((np.int32(data[i + 2]) & 0x3F) << 6) | (np.int32(data[i + 3]) & 0x3F)
        step = 4
    elif b >= 0xE0 and i + 2 < n:
        cp = ((b & 0x0F) << 12) | ((np.int32(data[i + 1]) & 0x3F) << 6) | (np.int32(data[i + 2]) & 0x3F)
        step = 3
    elif b >= 0xC0 and i + 1 < n:
        cp = ((b & 0x1F) << 6) | (np.int32(data[i + 1]) & 0x3F)
        step = 2
    else:  # a stray byte (never in valid UTF-8): "other", like llama.cpp's U+FFFD
        cls[k] = OTHER
        return i + 1
    cls[k] = table[cp] if cp < 0x110000 else OTHER
    return i + step


@njit(cache=True, inline="never")
def _decode_slow(data, i, n, table, cls, boff, k):
    # Kept out of line: inlined, its branches stop LLVM from vectorizing the ASCII blocks around it.
    return _decode_one(data, i, n, table, cls, boff, k)


@njit(cache=True)
def classify_scalar(data, start, end, table, cls, boff):
    """Classes and byte offsets of the codepoints of data[start:end]; returns their count.

    cls: (n_cp,) uint8 class codes; boff: (n_cp + 1,) int32 byte offset of each codepoint (and the end).
    """
    i = start
    k = 0
    while i < end:
        i = _decode_one(data, i, end, table, cls, boff, k)
        k += 1
    boff[k] = end
    return k


@njit(cache=True, inline="always")
def _ascii_class(b):
    # Arithmetic form of the ASCII classes (the sets are disjoint) so that a block of them vectorizes:
    # letter 1, digit 2, space 3, CR/LF 4, other whitespace 5, everything else 6.
    letter = np.int32(np.uint32((b | 32) - 97) < 26)
    digit = np.int32(np.uint32(b - 48) < 10)
    space = np.int32(b == 32)
    crlf = np.int32(b == 10) | np.int32(b == 13)
    ws = np.int32(np.uint32(b - 9) < 5)
    return np.uint8(6 - 5 * letter - 4 * digit - 3 * space - crlf - ws)


@njit(cache=True, inline="always")
def _ascii_block(data, i, end, cls, boff, k, width):
    """Classify data[i:i + width] if it is all ASCII (one OR-reduction); returns whether it was."""
    if i + width > end:
        return False
    # Unsigned indices: numba then skips its negative-index wraparound, which blocks vectorization.
    ui = np.uint64(i)
    uk = np.uint64(k)
    acc = np.uint8(0)
    for j in range(width):
        acc |= data[ui + np.uint64(j)]
    if acc >= 0x80:
        return False
    for j in range(width):
        cls[uk + np.uint64(j)] = _ascii_class(np.int32(data[ui + np.uint64(j)]))
        boff[uk + np.uint64(j)] = i + j
    return True


@njit(cache=True)
def classify_block32(data, start, end, table, cls, boff):
    """avx2 shape of :func:`classify_scalar`: all-ASCII 32-byte blocks in one vector pass."""
    i = start
    k = 0
    while i < end:
        if _ascii_block(data, i, end, cls, boff, k, 32):
            i += 32
            k += 32
            continue
        # not all ASCII: a block's worth one codepoint at a time, so non-ASCII text costs one failed
        # block test per 32 bytes, not per character
        stop = min(i + 32, end)
        while i < stop:
            i = _decode_one(data, i, end, table, cls, boff, k)
            k += 1
    boff[k] = end
    return k


@njit(cache=True)
def classify_block16(data, start, end, table, cls, boff):
    """neon shape of :func:`classify_scalar`: 16-byte blocks."""
    i = start
    k = 0
    while i < end:
        if _ascii_block(data, i, end, cls, boff, k, 16):
            i += 16
            k += 16
            continue
        # not all ASCII: a block's worth one codepoint at a time, so non-ASCII text costs one failed
        # block test per 16 bytes, not per character
        stop = min(i + 16, end)
        while i < stop:
            i = _decode_one(data, i, end, table, cls, boff, k)
            k += 1
    boff[k] = end
    return k


@njit(cache=True)
def classify(variant, data, start, end, table, cls, boff):
    if variant == 2:
        return classify_block32(data, start, end, table, cls, boff)
    if variant == 1:
        return classify_block16(data, start, end, table, cls, boff)
    return classify_scalar(data, start, end, table, cls, boff)


# -- run scans -------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _in(mask, c):
    return (mask >> np.int64(c)) & 1


@njit(cache=True)
def run_end_scalar(cls, p, end, mask):
    """First index q >= p (q <= end) whose class is not in ``mask``."""
    while p < end and _in(mask, cls[p]):
        p += 1
    return p


@njit(cache=True)
def run_end_block32(cls, p, end, mask):
    # most runs are short: a few plain steps first, blocks only for long runs
    stop = min(p + 16, end)
    while p < stop:
        if not _in(mask, cls[p]):
            return p
        p += 1
    while p + 32 <= end:
        up = np.uint64(p)
        miss = np.int64(0)
        for j in range(32):
            miss |= _in(mask, cls[up + np.uint64(j)]) ^ 1
        if miss:
            break
        p += 32
    while p < end and _in(mask, cls[p]):
        p += 1
    return p


@njit(cache=True)
def run_end_block16(cls, p, end, mask):
    # most runs are short: a few plain steps first, blocks only for long runs
    stop = min(p + 16, end)
    while p < stop:
        if not _in(mask, cls[p]):
            return p
        p += 1
    while p + 16 <= end:
        up = np.uint64(p)
        miss = np.int64(0)
        for j in range(16):
            miss |= _in(mask, cls[up + np.uint64(j)]) ^ 1
        if miss:
            break
        p += 16
    while p < end and _in(mask, cls[p]):
        p += 1
    return p


@njit(cache=True, inline="always")
def run_end(variant, cls, p, end, mask):
    m = np.int64(mask)  # a constant mask would compile its own run_end_* specialization
    if variant == 2:
        return run_end_block32(cls, p, end, m)
    if variant == 1:
        return run_end_block16(cls, p, end, m)
    return run_end_scalar(cls, p, end, m)


# -- splitters -------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _byte_at(data, boff, k):
    return np.int32(data[boff[k]])


@njit(cache=True)
def _gpt2_piece(variant, data, cls, boff, s, e, words, nw):
    """The GPT-2 pattern on codepoints [s, e); appends word ends (codepoint indices) to ``words``."""
    p = s
    while p < e:
        b = _byte_at(data, boff, p)
        if b == 39 and p + 1 < e:  # 's 't 'm 'd 're 've 'll (case-sensitive)
            b1 = _byte_at(data, boff, p + 1)
            if b1 == 115 or b1 == 116 or b1 == 109 or b1 == 100:
                p += 2
                words[nw] = p
                nw += 1
                continue
            if p + 2 < e:
                b2 = _byte_at(data, boff, p + 2)
                if (b1 == 114 and b2 == 101) or (b1 == 118 and b2 == 101) or (b1 == 108 and b2 == 108):
                    p += 3
                    words[nw] = p
                    nw += 1
                    continue
        c2 = np.int32(cls[p])
        lead = 0
        if b == 32:
            lead = 1
            c2 = np.int32(cls[p + 1]) if p + 1 < e else np.int32(0)
        if c2 == LETTER:
            p = run_end(variant, cls, p + lead, e, M_LETTER)
        elif c2 == NUMBER:
            p = run_end(variant, cls, p + lead, e, M_NUMBER)
        elif c2 == OTHER:
            p = run_end(variant, cls, p + lead, e, M_OTHER)
        else:
            q = run_end(variant, cls, p, e, M_WS)
            nws = q - p
            if nws > 1 and q < e:  # \s+(?!\S): leave the last space to the next word
                p = q - 1
            elif nws > 0:
                p = q
            else:
                p += 1
        words[nw] = p
        nw += 1
    return nw


@njit(cache=True)
def split_gpt2_digits(variant, data, cls, boff, s, e, words, nw):
    """"\\p{N}" then the GPT-2 pattern (llama.cpp pre-tokenizer types smollm, starcoder, ...)."""
    p = s
    while p < e:
        q = p
        while q < e and cls[q] != NUMBER:
            q = run_end(variant, cls, q, e, M_LETTER | M_OTHER | M_WS)
        if q > p:
            nw = _gpt2_piece(variant, data, cls, boff, p, q, words, nw)
        if q < e:  # one number codepoint is one piece
            words[nw] = q + 1
            nw += 1
            q += 1
        p = q
    return nw


@njit(cache=True)
def split_qwen2(variant, data, cls, boff, s, e, words, nw, max_digits=1):
    """The qwen2 pattern on codepoints [s, e) (see the module docstring); with ``max_digits=3`` it is
    llama3's (``\\p{N}{1,3}``), which llama.cpp runs as custom code with the same semantics."""
    p = s
    while p < e:
        c = np.int32(cls[p])
        b = _byte_at(data, boff, p)
        if b == 39 and p + 1 < e:  # contractions, either case
            b1 = _byte_at(data, boff, p + 1) | 32
            if b1 == 115 or b1 == 116 or b1 == 109 or b1 == 100:
                p += 2
                words[nw] = p
                nw += 1
                continue
            if p + 2 < e:
                b2 = _byte_at(data, boff, p + 2) | 32
                if (b1 == 114 and b2 == 101) or (b1 == 118 and b2 == 101) or (b1 == 108 and b2 == 108):
                    p += 3
                    words[nw] = p
                    nw += 1
                    continue
        if c == LETTER:
            p = run_end(variant, cls, p + 1, e, M_LETTER)
        elif c != NEWLINE and c != NUMBER and p + 1 < e and cls[p + 1] == LETTER:
            p = run_end(variant, cls, p + 2, e, M_LETTER)
        elif c == NUMBER:
            if max_digits == 1:
                p += 1
            else:
                p = min(run_end(variant, cls, p, min(e, p + max_digits), M_NUMBER), e)
        elif c == SPACE and p + 1 < e and cls[p + 1] == OTHER:
            p = run_end(variant, cls, p + 2, e, M_OTHER)
            p = run_end(variant, cls, p, e, M_NEWLINE)
        elif c == OTHER:
            p = run_end(variant, cls, p + 1, e, M_OTHER)
            p = run_end(variant, cls, p, e, M_NEWLINE)
        else:  # whitespace
            q = run_end(variant, cls, p, e, M_WS)
            r = q - 1
            while r >= p and cls[r] != NEWLINE:
                r -= 1
            if r >= p:  # \s*[\r\n]+ ends at the run's last CR/LF
                p = r + 1
            elif q == e or q - p == 1:
                p = q
            else:  # \s+(?!\S)
                p = q - 1
        words[nw] = p
        nw += 1
    return nw


SPLIT_SMOLLM = 0
SPLIT_QWEN2 = 1
SPLIT_GPT2 = 2
SPLIT_LLAMA3 = 3


@njit(cache=True)
def split(kind, variant, data, cls, boff, s, e, words, nw):
    # Constant arguments would be typed as literals and compile a specialization of each splitter (and of
    # the run scans they call) per value: int64 here, so each compiles once.
    s0, n0 = np.int64(s), np.int64(nw)
    if kind == SPLIT_QWEN2:
        return split_qwen2(variant, data, cls, boff, s0, e, words, n0, np.int64(1))
    if kind == SPLIT_LLAMA3:
        return split_qwen2(variant, data, cls, boff, s0, e, words, n0, np.int64(3))
    if kind == SPLIT_GPT2:
        return _gpt2_piece(variant, data, cls, boff, s0, e, words, n0)
    return split_gpt2_digits(variant, data, cls, boff, s0, e, words, n0)


#: variant name -> classify kernel (the SIMD ones are what the assembly test inspects)
CLASSIFY = {"scalar": classify_scalar, "neon": classify_block16, "avx2": classify_block32}
RUN_END = {"scalar": run_end_scalar, "neon": run_end_block16, "avx2": run_end_block32}
