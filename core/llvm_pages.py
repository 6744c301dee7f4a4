"""Give back the pages of LLVM's code that numba touched, once numba is done with LLVM.

``import numba`` loads libllvmlite (~150 MB of code and read-only data); LLVM's static initializers and
numba's first set-up touch ~110 MB of it, and the kernel exits a little of it for every kernel numba
compiles or loads from its cache.  Those pages count in the process's RSS, and in its peak, for as long as
they stay mapped, yet after the kernels are loaded nothing runs that code again: a call into a compiled
kernel never enters LLVM.

So after numba leaves its compiler lock (the last step of every compile and every cache load) we tell the
kernel we do not need the pages (``MADV_DONTNEED``).  That is safe only for pages that are exactly the file's
bytes: we advise only libllvmlite's private, read-only (``r--p``/``r-xp``) mappings that hold no
anonymous (copy-on-write) page, so the next access just maps the file's page again from the page cache.
The writable data and the relocated read-only data (those with anonymous pages) are never touched.
Linux only; elsewhere this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

import attrs
import numba.core.event as ev

#: madvise(2)'s advice: the pages may be dropped; a file-backed clean page is read back on the next access
MADV_DONTNEED = 4
#: the library numba's JIT runs in (llvmlite's binding)
LIBRARY = "libllvmlite"
SMAPS = "/proc/self/smaps"


@attrs.frozen
class Mapping:
    """One line-group of /proc/self/smaps: an address range, its permissions, its file, its page counts."""

    start: int
    end: int
    perms: str
    path: str
    anonymous_kb: int
    private_dirty_kb: int
    rss_kb: int = 0

    @property
    def clean_file_code(self) -> bool:
        """Private, read-only, and holding only the file's own bytes (nothing copied on write)."""
        return self.perms in ("r--p", "r-xp") and self.anonymous_kb == 0 and self.private_dirty_kb == 0


def parse_smaps(text: str) -> list[Mapping]:
    maps: list[Mapping] = []
    head: list[str] | None = None
    fields: dict[str, int] = {}

    def flush() -> None:
        if head is not None:
            lo, hi = head[0].split("-")
            maps.append(Mapping(int(lo, 16), int(hi, 16), head[1], head[5] if len(head) > 5 else "",
                                fields.get("Anonymous", 0), fields.get("Private_Dirty", 0), fields.get("Rss", 0)))

    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if not parts[0].endswith(":") and "-" in parts[0]:  # a mapping's header line
            flush()
            head, fields = parts, {}
        elif len(parts) >= 2 and parts[1].isdigit():
            fields[parts[0][:-1]] = int(parts[1])
    flush()
    return maps


def library_ranges(text: str, library: str = LIBRARY) -> list[tuple[int, int]]:
    """The address ranges of ``library``'s mappings that may be dropped (see Mapping.clean_file_code)."""
    return [(m.start, m.end) for m in parse_smaps(text)
            if os.path.basename(m.path).startswith(library) and m.clean_file_code]


def resident_mb(library: str = LIBRARY) -> float:
    """How much of ``library`` this process holds resident now (all its mappings), MB."""
    with open(SMAPS) as fh:
        maps = parse_smaps(fh.read())
    return sum(m.rss_kb for m in maps if os.path.basename(m.path).startswith(library)) / 1024


class PageReleaser:
    """Drops libllvmlite's clean pages on :meth:`release`; the ranges are read once (the library does not
    move), after it is loaded."""

    def __init__(self, ranges: list[tuple[int, int]]):
        self.ranges = ranges
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._madvise = libc.madvise
        self._madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self._madvise.restype = ctypes.c_int

    @classmethod
    def for_this_process(cls) -> "PageReleaser | None":
        """None where there is nothing to do or no way to do it (not Linux, library not loaded)."""
        try:
            with open(SMAPS) as fh:
                ranges = library_ranges(fh.read())
        except OSError:
            return None
        return cls(ranges) if ranges else None

    def release(self) -> None:
        for start, end in self.ranges:
            self._madvise(start, end - start, MADV_DONTNEED)  # a failure only leaves the pages mapped


class _ReleaseAfterCompiling(ev.Listener):
    """numba's event listener: releases the pages when a thread leaves numba's (re-entrant) compiler lock
    for the last time, i.e. after a whole compile or cache load."""

    def __init__(self, releaser: PageReleaser):
        super().__init__()
        self.releaser = releaser
        self._depth = threading.local()

    def on_start(self, event) -> None:
        self._depth.n = getattr(self._depth, "n", 0) + 1

    def on_end(self, event) -> None:
        self._depth.n = getattr(self._depth, "n", 1) - 1
        if self._depth.n == 0:
            self.releaser.release()


def install() -> PageReleaser | None:
    """Drop the LLVM pages that numba's import and set-up touched, and drop them again after every compile
    or cache load.  Call once, after numba's set-up (numba_import.py)."""
    releaser = PageReleaser.for_this_process()
    if releaser is None:
        return None
    ev.register("numba:compiler_lock", _ReleaseAfterCompiling(releaser))
    releaser.release()
    return releaser
