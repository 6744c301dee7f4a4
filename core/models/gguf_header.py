"""A fast reader of a GGUF file's header: metadata and tensor table, without touching tensor data.

gguf's GGUFReader builds numpy views for every string of a vocabulary (~10 s for 262k tokens); this reader
walks the header once with struct over an mmap and decodes string arrays only when asked.  It is what
corert uses to validate a model file before llama.cpp (which aborts on some damage) opens it, and what the
tokenizer and native engine read metadata with.
"""
from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any, Callable, Iterable

import attrs
import numpy as np

from ..errors import ModelError

GGUF_MAGIC = b"GGUF"

# GGUF value types
_SCALARS = {0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4), 6: ("<f", 4),
            7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8)}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
          7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9


@attrs.frozen
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order: shape[0] is the innermost (contiguous) dimension
    ggml_type: int
    offset: int  # from the start of the data section
    n_bytes: int


@attrs.frozen
class GGUFHeader:
    path: str
    version: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    data_offset: int
    file_size: int

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def tensor(self, name: str) -> TensorInfo:
        for t in self.tensors:
            if t.name == name:
                return t
        raise ModelError(f"{self.path}: no tensor {name!r}")


class _Cursor:
    __slots__ = ("buf", "pos", "size", "path")

    def __init__(self, buf, path: str):
        self.buf, self.pos, self.size, self.path = buf, 0, len(buf), path

    def take(self, n: int) -> int:
        start = self.pos
        if start + n > self.size:
            raise ModelError(f"{self.path} is truncated inside its header")
        self.pos = start + n
        return start

    def unpack(self, fmt: str, n: int):
        return struct.unpack_from(fmt, self.buf, self.take(n))[0]

    def string(self) -> str:
        n = self.unpack("<Q", 8)
        start = self.take(n)
        return bytes(self.buf[start:start + n]).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        self.take(self.unpack("<Q", 8))


def _type_size(ggml_type: int) -> tuple[int, int]:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        return GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        raise ModelError(f"unknown GGML tensor type {ggml_type}") from None


def read_header(path: str | Path, want_arrays: Callable[[str], bool] | Iterable[str] | bool = True
                ) -> GGUFHeader:
    """Parse ``path``'s header.  ``want_arrays`` selects which array-valued keys are decoded (others are
    skipped and stored as None): True for all, False for none, a set of keys, or a predicate."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"model file not found: {p}")
    if not callable(want_arrays):
        if want_arrays is True:
            want = lambda key: True  # noqa: E731
        elif want_arrays is False:
            want = lambda key: False  # noqa: E731
        else:
            keys = set(want_arrays)
            want = keys.__contains__
    else:
        want = want_arrays
    size = p.stat().st_size
    if size < 24:
        raise ModelError(f"{p} is not a GGUF file (only {size} bytes)")
    with open(p, "rb") as fh:
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if mm[:4] != GGUF_MAGIC:
                raise ModelError(f"{p} is not a GGUF file (bad magic {bytes(mm[:4])!r})")
            view = memoryview(mm)
            try:
                return _parse(view, str(p), size, want)
            finally:
                view.release()


def _parse(buf: memoryview, path: str, size: int, want: Callable[[str], bool]) -> GGUFHeader:
    cur = _Cursor(buf, path)
    cur.take(4)
    version = cur.unpack("<I", 4)
    if version not in (2, 3):
        raise ModelError(f"{path}: unsupported GGUF version {version}")
    n_tensors = cur.unpack("<Q", 8)
    n_kv = cur.unpack("<Q", 8)
    if n_tensors > 1_000_000 or n_kv > 1_000_000:
        raise ModelError(f"{path}: implausible GGUF header (n_tensors={n_tensors}, n_kv={n_kv})")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        vtype = cur.unpack("<I", 4)
        metadata[key] = _value(cur, vtype, want(key))
    tensors = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.unpack("<I", 4)
        if n_dims > 8:
            raise ModelError(f"{path}: tensor {name!r} has {n_dims} dimensions")
        shape = tuple(cur.unpack("<Q", 8) for _ in range(n_dims))
        ggml_type = cur.unpack("<I", 4)
        offset = cur.unpack("<Q", 8)
        block, type_size = _type_size(ggml_type)
        n_elems = int(np.prod(shape, dtype=np.int64)) if shape else 1
        tensors.append(TensorInfo(name, shape, ggml_type, offset, n_elems // block * type_size))
    alignment = int(metadata.get("general.alignment", 32) or 32)
    data_offset = (cur.pos + alignment - 1) // alignment * alignment
    header = GGUFHeader(path, version, metadata, tuple(tensors), data_offset, size)
    end = max((data_offset + t.offset + t.n_bytes for t in tensors), default=data_offset)
    if end > size:
        raise ModelError(f"{path} is truncated: its tensors need {end} bytes, the file has {size}")
    return header


def _value(cur: _Cursor, vtype: int, decode_arrays: bool):
    if vtype in _SCALARS:
        fmt, n = _SCALARS[vtype]
        return cur.unpack(fmt, n)
    if vtype == _STRING:
        return cur.string()
    if vtype == _ARRAY:
        itype = cur.unpack("<I", 4)
        count = cur.unpack("<Q", 8)
        if itype in _SCALARS:
            n = _SCALARS[itype][1] * count
            start = cur.take(n)
            if not decode_arrays:
                return None
            return np.frombuffer(cur.buf[start:start + n], dtype=_NUMPY[itype]).copy()
        if itype == _STRING:
            if not decode_arrays:
                for _ in range(count):
                    cur.skip_string()
                return None
            return [cur.string() for _ in range(count)]
        if itype == _ARRAY:
            return [_value(cur, _ARRAY, decode_arrays) for _ in range(count)]
        raise ModelError(f"{cur.path}: unknown GGUF array item type {itype}")
    raise ModelError(f"{cur.path}: unknown GGUF value type {vtype}")


def string_array_bytes(path: str | Path, key: str) -> list[bytes]:
    """The raw bytes of each string of an array-valued key (vocabularies hold invalid UTF-8 pieces)."""
    p = Path(path)
    with open(p, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        with memoryview(mm) as buf:
            return _string_array(buf, p, key)


def _string_array(buf: memoryview, p: Path, key: str) -> list[bytes]:
    cur = _Cursor(buf, str(p))
    cur.take(4 + 4 + 8)
    n_kv = cur.unpack("<Q", 8)
    for _ in range(n_kv):
        k = cur.string()
        vtype = cur.unpack("<I", 4)
        if k == key and vtype == _ARRAY:
            itype = cur.unpack("<I", 4)
            count = cur.unpack("<Q", 8)
            if itype != _STRING:
                break
            out = []
            for _ in range(count):
                n = cur.unpack("<Q", 8)
                s = cur.take(n)
                out.append(bytes(buf[s:s + n]))
            return out
        _value(cur, vtype, False)
    raise ModelError(f"{p}: no string array {key!r}")
