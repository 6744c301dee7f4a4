"""Large zeroed buffers that cost memory only where they are written (KV caches sized for a whole context).

``np.zeros`` of a large array is lazy too (fresh pages from the kernel), but not under transparent huge pages
set to ``always`` (the default of many distributions, and of this machine): the first write in each 2 MiB
span makes the whole span resident.  A KV cache laid out (layer, head, position, ...) is written a few
positions into every head's run, so a 16-token prompt made SmolLM2's whole 94 MB f32 cache resident.  These
buffers ask the kernel for small pages (``MADV_NOHUGEPAGE``): resident memory follows the tokens held.
"""
from __future__ import annotations

import mmap

import numpy as np

#: below this a buffer is an ordinary numpy array (huge pages cannot inflate it much)
MIN_LAZY_BYTES = 4 << 20


def lazy_zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A zeroed, writable C-ordered array whose pages become resident as they are written."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    if nbytes < MIN_LAZY_BYTES or not flags or not hasattr(mmap, "MADV_NOHUGEPAGE"):
        return np.zeros(shape, dtype)
    buf = mmap.mmap(-1, nbytes, flags=flags)  # private anonymous: zero pages, nothing shared
    buf.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buf, dtype).reshape(shape)  # the array keeps the mapping alive


def trim_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing).  A model
    load frees tens of MB of temporaries (header, vocabulary, conversions) that glibc otherwise keeps
    mapped, counted in RSS, below the first block still in use."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)
