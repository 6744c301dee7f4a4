"""Per-codepoint character classes for the pre-tokenizers, as llama.cpp's unicode tables define them.

llama.cpp classifies a codepoint by its Unicode general category (L* letter, N* number, everything else
"other") plus a fixed White_Space set.  Its tables are generated from Unicode 15.1 (probing llama.cpp shows
CJK Extension I, new in 15.1, as letters and the 16.0 additions as unassigned), while this Python's
``unicodedata`` may be older or newer; so the classes ship as a range file generated once from Unicode
15.1 (``python -m corert.plugins.tokenizer.unicode_classes`` with ``unicodedata2==15.1.0`` installed).
At run time the 1.1 MB lookup table (one byte per codepoint) is expanded from the ranges in milliseconds.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np

MAX_CODEPOINT = 0x110000
UNICODE_VERSION = "15.1.0"

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

RANGES_FILE = Path(__file__).with_name(f"unicode_classes_{UNICODE_VERSION.replace('.', '_')}.json")


def _cache_dir() -> Path:
    env = os.environ.get("CORERT_TOKENIZER_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("corert")) / "tokenizer"


def build_table(category) -> np.ndarray:
    """The class of every codepoint from a ``unicodedata``-like module's ``category``, (0x110000,) uint8."""
    table = np.full(MAX_CODEPOINT, OTHER, dtype=np.uint8)
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


def table_to_ranges(table: np.ndarray) -> tuple[list[int], list[int]]:
    starts = np.concatenate([[0], np.nonzero(np.diff(table))[0] + 1])
    return starts.tolist(), table[starts].tolist()


def table_from_ranges(starts: list[int], classes: list[int]) -> np.ndarray:
    s = np.asarray(starts, dtype=np.int64)
    lengths = np.diff(np.append(s, MAX_CODEPOINT))
    return np.repeat(np.asarray(classes, dtype=np.uint8), lengths)


@functools.lru_cache(maxsize=1)
def class_table() -> np.ndarray:
    """The lookup table of the shipped Unicode 15.1 classes."""
    data = json.loads(RANGES_FILE.read_text())
    table = table_from_ranges(data["starts"], data["classes"])
    table.setflags(write=False)
    return table


def _generate() -> None:
    import unicodedata2

    if unicodedata2.unidata_version != UNICODE_VERSION:
        raise SystemExit(f"need unicodedata2 for Unicode {UNICODE_VERSION}, "
                         f"have {unicodedata2.unidata_version}")
    starts, classes = table_to_ranges(build_table(unicodedata2.category))
    RANGES_FILE.write_text(json.dumps({"unicode": UNICODE_VERSION, "starts": starts,
                                       "classes": classes}, separators=(",", ":")))
    print(f"wrote {RANGES_FILE} ({len(starts)} ranges)")


if __name__ == "__main__":
    _generate()
