"""Per-codepoint character classes for the pre-tokenizers, as llama.cpp's unicode tables define them.

llama.cpp classifies a codepoint by its Unicode general category (L* letter, N* number, everything else
"other") plus a fixed White_Space set.  The pre-tokenizer kernels need only these classes, with space and
CR/LF told apart because the regexes treat them specially.  The table (one byte per codepoint, 1.1 MB) is
built once from ``unicodedata`` and kept in the user cache.
"""
from __future__ import annotations

import functools
import os
import unicodedata
from pathlib import Path

import numpy as np

MAX_CODEPOINT = 0x110000

# Class codes shared with the kernels (kernels_scan.py).
LETTER = 1
NUMBER = 2
SPACE = 3      # U+0020
NEWLINE = 4    # \r or \n
WS = 5         # any other White_Space codepoint (\t, \v, \f, NBSP, U+3000, ...)
OTHER = 6      # punctuation, symbols, marks, controls, unassigned

# The White_Space set of Unicode's PropList.txt, as llama.cpp lists it.
_WHITESPACE = (list(range(0x09, 0x0E)) + list(range(0x2000, 0x200B))
               + [0x20, 0x85, 0xA0, 0x1680, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000])

_TABLE_VERSION = 1


def _cache_dir() -> Path:
    env = os.environ.get("CORERT_TOKENIZER_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("corert")) / "tokenizer"


def build_table() -> np.ndarray:
    """The class of every codepoint, shape (0x110000,), uint8."""
    table = np.full(MAX_CODEPOINT, OTHER, dtype=np.uint8)
    category = unicodedata.category
    for cp in range(MAX_CODEPOINT):
        c = category(chr(cp))[0]
        if c == "L":
            table[cp] = LETTER
        elif c == "N":
            table[cp] = NUMBER
    table[_WHITESPACE] = WS
    table[0x20] = SPACE
    table[0x0A] = NEWLINE
    table[0x0D] = NEWLINE
    return table


@functools.lru_cache(maxsize=1)
def class_table() -> np.ndarray:
    """The table, from the cache when it is there (building it takes ~0.5 s)."""
    name = f"unicode-classes-v{_TABLE_VERSION}-ucd{unicodedata.unidata_version}.npy"
    path = _cache_dir() / name
    try:
        table = np.load(path)
        if table.shape == (MAX_CODEPOINT,) and table.dtype == np.uint8:
            return table
    except (OSError, ValueError):
        pass
    table = build_table()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, table)
        os.replace(tmp, path)
    except OSError:  # a read-only cache costs time, never correctness
        pass
    return table
