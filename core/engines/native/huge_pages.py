"""The mapped layout files' pages as 2 MiB ones, whatever state the page cache was left in.

Why.  A decode step streams every weight once; from 4 KiB pages a product takes 1.3-1.6x its time from 2 MiB
pages (layout_cache.py).  A mapping that asked for huge pages (``MADV_HUGEPAGE``) gets them only where the page
cache holds the file in 2 MiB folios.  Pages another process read in first, with ``read()`` or a mapping that
did not ask, sit in small folios and stay so while cached: on this machine a Qwen 1.5B load mapped 368 of its
850 MB of layout pages as 2 MiB (2026-12-04), and which share depended on the machine's history.  The same
folios mapped as 4 KiB pages decode 4-5% slower at 2 threads (48 greedy tokens, quiet, alternating in one
process: 0.99-1.03 s against 0.956-0.961 s).

So once a model is loaded (:func:`settle`): fault every mapped layout page in, read from /proc/self/smaps how
much of each mapping is 2 MiB-mapped, and for a file whose small pages are more than its tail (the part past
its last 2 MiB boundary, which cannot be huge): drop our page table entries (the mapping is private and never
written: nothing is lost), ask the kernel to drop the file's cached pages (``POSIX_FADV_DONTNEED``: only
those no process maps; another process's pages stay, and so do our small ones there) and fault it in again:
the mapping's huge-page advice now reads it in 2 MiB folios.  A file replaced since we mapped it (its path now
names another inode) is left as it is.  The weights are resident after a load either
way (the first forward reads them all); this makes them so a little earlier, after the kernels loaded.
Linux only; elsewhere, or where the advice is missing, nothing happens.
"""
from __future__ import annotations

import contextlib
import mmap
import os
import re
from typing import Iterable

import attrs
import numpy as np

#: madvise(2) MADV_POPULATE_READ (Linux 5.14+; Python's mmap module may not name it): fault pages in, read only
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)
HUGE = 2 << 20
_MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")
_DELETED = " (deleted)"


@attrs.frozen
class MappedFile:
    """One mapped layout file: its path and the ``mmap`` object of the mapping (the whole file)."""

    path: str
    raw: mmap.mmap


@attrs.frozen
class PageReport:
    """How a set of mappings is paged (kB, as /proc/self/smaps counts)."""

    resident_kb: int
    huge_kb: int
    repaired_files: int  # files whose cached pages were dropped and read again in 2 MiB folios

    def to_dict(self) -> dict[str, int]:
        return attrs.asdict(self)


def mapped_files(arrays: Iterable[np.ndarray]) -> list[MappedFile]:
    """The files (each once) that ``arrays`` are views of a memory map of (np.memmap, as layout_cache.py
    maps them); arrays in ordinary memory are left out."""
    seen: dict[str, MappedFile] = {}
    for a in arrays:
        while a is not None and not isinstance(a, np.memmap):
            a = a.base if isinstance(a, np.ndarray) else None
        raw = getattr(a, "_mmap", None)
        if raw is not None and a.filename and a.filename not in seen:
            seen[a.filename] = MappedFile(os.path.realpath(a.filename), raw)
    return list(seen.values())


def supported() -> bool:
    return hasattr(mmap, "MADV_HUGEPAGE") and hasattr(os, "posix_fadvise") and os.path.exists("/proc/self/smaps")


def mapped_kb(paths: Iterable[str]) -> dict[str, tuple[int, int, int]]:
    """path -> (resident kB, kB mapped as 2 MiB pages, inode), summed over this process's mappings of
    ``paths``.  A file deleted since it was mapped (another process replaced it) still counts, under its path."""
    want = set(paths)
    out: dict[str, list[int]] = {}
    cur: list[int] | None = None
    with open("/proc/self/smaps") as fh:
        for line in fh:
            if _MAPPING.match(line):
                fields = line.split(None, 5)
                name = fields[5].rstrip("\n") if len(fields) > 5 else ""
                name = name[:-len(_DELETED)] if name.endswith(_DELETED) else name
                cur = out.setdefault(name, [0, 0, int(fields[4])]) if name in want else None
            elif cur is not None:
                if line.startswith("Rss:"):
                    cur[0] += int(line.split()[1])
                elif line.startswith("FilePmdMapped:"):
                    cur[1] += int(line.split()[1])
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def _populate(raw: mmap.mmap) -> None:
    try:
        raw.madvise(MADV_POPULATE_READ)
    except (OSError, ValueError):  # an older kernel, or interrupted: a read of every page does the same
        with contextlib.suppress(OSError, ValueError, TypeError):
            np.frombuffer(raw, np.uint8)[::mmap.PAGESIZE].max()


def _fragmented(size: int, resident_kb: int, huge_kb: int) -> bool:
    """More small pages than the file's tail: some 2 MiB span that could be huge is not."""
    return resident_kb - huge_kb > (size % HUGE) // 1024 + 4


def _reread(f: MappedFile, inode: int) -> bool:
    """Drop the file's small pages and read it again; False (nothing done) when the path now names another
    file than the one mapped (replaced by another process: its pages cannot be reached by path)."""
    try:
        fd = os.open(f.path, os.O_RDONLY)
    except OSError:
        return False
    try:
        if os.fstat(fd).st_ino != inode:
            return False
        f.raw.madvise(mmap.MADV_DONTNEED)  # private, never written: the pages come back from the file
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except (OSError, ValueError):
        return False
    finally:
        os.close(fd)
    _populate(f.raw)
    return True


def settle(files: list[MappedFile]) -> PageReport | None:
    """Fault ``files`` in and read again, in 2 MiB folios, those whose pages came small (see the module doc);
    returns how they are paged after it, or None where this cannot be done here."""
    if not files or not supported():
        return None
    for f in files:
        _populate(f.raw)
    before = mapped_kb(f.path for f in files)
    repaired = 0
    for f in files:
        rss, huge, inode = before.get(f.path, (0, 0, 0))
        if _fragmented(len(f.raw), rss, huge) and _reread(f, inode):
            repaired += 1
    after = mapped_kb(f.path for f in files) if repaired else before
    return PageReport(sum(v[0] for v in after.values()), sum(v[1] for v in after.values()), repaired)
