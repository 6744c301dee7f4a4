"""An on-disk cache of the native engine's converted weight layout, memory-mapped.

The kernels want weights in their own layout (row groups, q4/q8 blocks; see products.py), which differs
from the GGUF file's.  Converting costs seconds (a minute for 1.5B parameters) and, held in anonymous
memory, a private copy per process.  So each converted matrix is written once to a file under the user
cache dir and mapped (copy-on-write, never written) by every later load: a restart or a second process
maps the same pages, and no load holds a weight twice.

    <user cache>/corert/layouts/<gguf stem>-<key>/<tensor name>.x<parts>.layout

``key`` hashes what the bytes depend on: the GGUF's real path, size and mtime, the layout family
(F32Products or I8Products) and the source of the conversion code (dequant, matmul, matmul_i8, products,
weights and this module), so a changed file or a changed converter never reads an old layout.  A file is
written to a temporary name and renamed into place: a crash leaves no half file, and two processes
converting at once each rename a whole one.  A file that does not read back (bad magic or header, wrong
length, other shapes) is converted again and replaced.  Older key directories of the same GGUF are removed
when a new one is made.

Huge pages.  The kernels stream each matrix once per token; from 4 KiB pages the same product took 1.3-1.6x
its time from 2 MiB pages here (EPYC, one thread).  A file's pages map as 2 MiB where the page cache holds
them in 2 MiB folios: a fresh write makes such folios (all but each file's tail), but pages read back after
eviction come in readahead-sized ones (70% of a 141 MB layout mapped as 2 MiB) unless the mapping asked for
huge pages before its first touch (then 99%), so every mapping asks (``MADV_HUGEPAGE``).

File: ``MAGIC`` · u64 header length · u64 data start · JSON header (names, kind, rows, cols; per part dtype,
shape and offset from the data start) · the parts, each at a multiple of ``ALIGN`` bytes.
"""
from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import json
import mmap
import os
import re
import shutil
import struct
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from ...models.gguf_header import GGUFHeader

MAGIC = b"CRTLAYT1"
ALIGN = 64
#: the modules whose code decides the converted bytes
_CODE = ("dequant.py", "matmul.py", "matmul_i8.py", "products.py", "weights.py", "layout_cache.py")


def default_root() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("corert")) / "layouts"


@functools.cache
def code_version() -> str:
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in _CODE:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def _file_name(names: Sequence[str]) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", names[0]) + f".x{len(names)}.layout"


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class LayoutCache:
    """The cached layouts of one GGUF file for one layout family."""

    def __init__(self, root: Path, header: GGUFHeader, family: str):
        src = Path(header.path).resolve()
        st = src.stat()
        self.identity = {"path": str(src), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "family": family,
                         "code": code_version()}
        key = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:16]
        self.root = Path(root)
        self.stem = src.stem
        self.dir = self.root / f"{self.stem}-{key}"

    @classmethod
    def open(cls, setting: str, header: GGUFHeader, family: str) -> "LayoutCache | None":
        """``setting``: "auto" (the user cache dir), "off", or a directory."""
        if setting == "off":
            return None
        return cls(default_root() if setting == "auto" else Path(setting), header, family)

    # -- reading ------------------------------------------------------------------------------------------
    def load(self, names: Sequence[str], kind: str, rows: int, cols: int) -> tuple[np.ndarray, ...] | None:
        """The cached parts of the matrix ``names`` (mapped, copy-on-write), or None when absent or unreadable."""
        path = self.dir / _file_name(names)
        try:
            size = path.stat().st_size
            with open(path, "rb") as fh:
                if fh.read(len(MAGIC)) != MAGIC:
                    return None
                n, data = struct.unpack("<QQ", fh.read(16))
                if n > size:
                    return None
                head = json.loads(fh.read(n))
            if (head.get("names"), head.get("kind"), head.get("rows"), head.get("cols")) != \
                    (list(names), kind, rows, cols):
                return None
            specs = [(np.dtype(p["dtype"]), tuple(p["shape"]), data + p["offset"]) for p in head["parts"]]
            sizes = [int(np.prod(shape, dtype=np.int64)) * dt.itemsize for dt, shape, _ in specs]
            if not specs or max(off + nb for (_, _, off), nb in zip(specs, sizes)) != size:
                return None
            mm = np.memmap(path, dtype=np.uint8, mode="c")  # copy-on-write: writable for numba, never written
            _ask_huge_pages(mm)
            return tuple(mm[off:off + nb].view(dt).reshape(shape) for (dt, shape, off), nb in zip(specs, sizes))
        except (OSError, ValueError, KeyError, TypeError, struct.error):
            return None

    # -- writing ------------------------------------------------------------------------------------------
    def store(self, names: Sequence[str], kind: str, rows: int, cols: int,
              parts: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        """Write the matrix and return its mapped parts (the caller drops the converted ones); where the cache
        cannot be written, the converted parts themselves."""
        specs, offset = [], 0
        for p in parts:
            specs.append({"dtype": p.dtype.str, "shape": list(p.shape), "offset": offset})
            offset = _aligned(offset + p.nbytes)
        raw = json.dumps({"names": list(names), "kind": kind, "rows": rows, "cols": cols, "parts": specs}).encode()
        data = _aligned(len(MAGIC) + 16 + len(raw))
        try:
            self._make_dir()
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-", suffix=".layout")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(MAGIC + struct.pack("<QQ", len(raw), data) + raw)
                    for s, p in zip(specs, parts):
                        fh.write(b"\0" * (data + s["offset"] - fh.tell()))
                        fh.write(np.ascontiguousarray(p).data)
                os.replace(tmp, self.dir / _file_name(names))
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            warnings.warn(f"corert: cannot write the native layout cache under {self.root} ({exc}); "
                          f"converting in memory", RuntimeWarning, stacklevel=3)
            return parts
        mapped = self.load(names, kind, rows, cols)
        return mapped if mapped is not None else parts

    def _make_dir(self) -> None:
        if self.dir.is_dir():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "source.json").write_text(json.dumps(self.identity, indent=1))
        for old in self.root.glob(f"{glob.escape(self.stem)}-*"):  # layouts of an older version of this file
            if old != self.dir and source_path(old) == self.identity["path"]:
                shutil.rmtree(old, ignore_errors=True)


def _ask_huge_pages(mm: np.memmap) -> None:
    """Ask for 2 MiB pages on a new mapping (see the module doc); a no-op where the OS has no such advice."""
    raw = getattr(mm, "_mmap", None)
    if raw is not None and hasattr(mmap, "MADV_HUGEPAGE"):
        with contextlib.suppress(OSError):
            raw.madvise(mmap.MADV_HUGEPAGE)


def source_path(d: Path) -> str | None:
    """The GGUF path a layout directory was converted from (its source.json), or None when unreadable."""
    try:
        return json.loads((d / "source.json").read_text()).get("path")
    except (OSError, ValueError, AttributeError):
        return None
