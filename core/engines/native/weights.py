"""Loading a GGUF file's tensors for the native engine.

Matrices become :class:`QMatrix` at load (4-bit sources kept exactly in the q4 layout, 6 bits/weight;
the rest int8 blocks, 8.5 bits/weight; see dequant.py).  The file is memory-mapped and decoded row by row,
so no f32 copy of a weight matrix exists at any time.  With a layout cache (layout_cache.py) each converted
matrix is written once and then mapped from the cache file: no process holds a weight in private memory.
The embedding table is read from the file, one row per looked-up token (embedding.py).  Norm weights and
biases (small) are kept as f32.
"""
from __future__ import annotations

from typing import Sequence

import attrs
import numpy as np

from ...errors import ModelError
from ...models.gguf_header import GGUFHeader, TensorInfo
from . import dequant
from .layout_cache import LayoutCache
from .matmul import QK
from ...kernels.f16 import F16_TO_F32
from .products import F32Products, I8Products


@attrs.frozen
class QMatrix:
    """A weight matrix W (rows = outputs, cols = inputs) in blocks of 32 values along a row, in the layout
    of the variant's kernels (``parts``: see products.py, matmul.py, matmul_i8.py).

    kind "q8": int8 values and one f16 scale per block; W = q * scale.
    kind "q6": int8 values, an int8 scale per 16 values (Q6_K's sub-blocks) and an f32 scale per 256 (per 32
    where a 32-block type joins Q6_K in the matrix); W = q * sub * sup.
    kind "q4": two 4-bit values a byte (low nibble: value j of a block, high: j + 16), f32 scale and offset
    per block; W = q * scale + offset.  A matrix of Q4_K tensors only is decoded with its scales factored
    (dequant.to_q4k): the vnni layout keeps them so (2 parts), the others multiply them out.
    """

    kind: str
    rows: int
    cols: int
    parts: tuple[np.ndarray, ...]

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)


@attrs.frozen
class SplitMatrix:
    """Row-wise consecutive QMatrix pieces that one product serves (``pieces`` in row order): tensors that
    would share only a requantized q8 layout when fused, e.g. Q4_K q/k projections beside a Q6_K v, each
    keep their exact layout (and the fewer bytes of it)."""

    pieces: tuple[QMatrix, ...]

    @property
    def kind(self) -> str:
        return "+".join(p.kind for p in self.pieces)

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.pieces)

    @property
    def cols(self) -> int:
        return self.pieces[0].cols

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.pieces)


class TensorSource:
    """The raw bytes of a GGUF file's tensors, memory-mapped."""

    def __init__(self, header: GGUFHeader, products: F32Products | I8Products, layout_cache: str = "off"):
        self.header = header
        self.products = products  # lays matrices out for the variant's kernels
        #: converted matrices are mapped from here, written on first use (layout_cache.py); "off": in memory
        self.cache = LayoutCache.open(layout_cache, header, type(products).__name__)
        self._mm = np.memmap(header.path, dtype=np.uint8, mode="r")
        self._by_name = {t.name: t for t in header.tensors}

    def has(self, name: str) -> bool:
        return name in self._by_name

    def info(self, name: str) -> TensorInfo:
        t = self._by_name.get(name)
        if t is None:
            raise ModelError(f"{self.header.path}: tensor {name!r} is missing")
        return t

    def raw_rows(self, t: TensorInfo) -> np.ndarray:
        """The tensor's bytes as (rows, bytes per row), rows being GGUF's outer dimensions."""
        if t.ggml_type not in dequant.BLOCKS:
            raise ModelError(f"{self.header.path}: tensor {t.name!r} has GGML type {t.ggml_type}, which the "
                             f"native engine does not decode (supported: {', '.join(dequant.NAMES.values())})")
        cols = t.shape[0]
        per_block, block_bytes = dequant.BLOCKS[t.ggml_type]
        if cols % per_block:
            raise ModelError(f"{self.header.path}: tensor {t.name!r} rows of {cols} do not fill "
                             f"{dequant.NAMES[t.ggml_type]} blocks")
        rows = int(np.prod(t.shape[1:], dtype=np.int64)) if len(t.shape) > 1 else 1
        start = self.header.data_offset + t.offset
        return self._mm[start:start + t.n_bytes].reshape(rows, cols // per_block * block_bytes)

    def vector(self, name: str) -> np.ndarray:
        """A 1-D tensor (norm weight, bias) as f32."""
        t = self.info(name)
        raw = self.raw_rows(t)
        if t.ggml_type == dequant.F32:
            return np.frombuffer(raw.tobytes(), dtype=np.float32).reshape(-1).copy()
        out = np.empty((raw.shape[0], t.shape[0]), np.float32)
        dequant.dequantize(np.ascontiguousarray(raw), t.ggml_type, out, F16_TO_F32)
        return out.reshape(-1)

    def fused(self, names: Sequence[str]) -> QMatrix | SplitMatrix:
        """matrix(names), unless its tensors would only fit the q8 layout requantized while runs of them
        (consecutive tensors of one type) fit an exact one each: then those runs, split."""
        types = [self.info(n).ggml_type for n in names]
        if self._kind(types) != "q8" or all(t in dequant.Q8_EXACT for t in types):
            return self.matrix(names)
        runs: list[list[str]] = []
        for i, name in enumerate(names):
            if i and types[i] == types[i - 1]:
                runs[-1].append(name)
            else:
                runs.append([name])
        return SplitMatrix(tuple(self.matrix(run) for run in runs))

    @staticmethod
    def _kind(types: Sequence[int]) -> str:
        """The layout kind of a matrix of tensors of ``types`` (see matrix)."""
        if all(t in dequant.Q4_SOURCES for t in types):
            return "q4"
        if any(t == dequant.Q6_K for t in types) and all(t in dequant.Q6_SOURCES for t in types):
            return "q6"
        return "q8"

    def matrix(self, names: Sequence[str]) -> QMatrix:
        """The row-wise concatenation of 2-D tensors ``names`` (e.g. Q, K, V projections) as one QMatrix:
        q4 when every part is Q4_0/Q4_1/Q4_K, q6 when one is Q6_K and the others symmetric blocks (both
        kept exactly), else q8."""
        infos = [self.info(n) for n in names]
        cols = infos[0].shape[0]
        for t in infos:
            if len(t.shape) != 2 or t.shape[0] != cols:
                raise ModelError(f"{self.header.path}: tensor {t.name!r} has shape {t.shape}, expected "
                                 f"({cols}, n)")
        if cols % QK:
            raise ModelError(f"{self.header.path}: tensor {infos[0].name!r} rows of {cols} values are not a "
                             f"multiple of {QK}")
        raws = [self.raw_rows(t) for t in infos]
        rows = sum(r.shape[0] for r in raws)
        kind = self._kind([t.ggml_type for t in infos])
        if self.cache is None:
            return QMatrix(kind, rows, cols, self._convert(kind, infos, raws, rows, cols))
        parts = self.cache.load(names, kind, rows, cols)
        if parts is None:  # first load of this file (or a changed converter): convert once, then map
            parts = self.cache.store(names, kind, rows, cols, self._convert(kind, infos, raws, rows, cols))
        return QMatrix(kind, rows, cols, parts)

    def _convert(self, kind: str, infos: list[TensorInfo], raws: list[np.ndarray], rows: int, cols: int
                 ) -> tuple[np.ndarray, ...]:
        """The tensors' rows decoded into the row-major q4 / q6 / q8 arrays, then laid out for the kernels."""
        nb = cols // QK
        if kind == "q4" and all(t.ggml_type == dequant.Q4_K for t in infos) and cols % 256 == 0:
            q4k = (np.empty((rows, cols // 2), np.uint8), np.empty((rows, nb), np.uint8),
                   np.empty((rows, nb), np.uint8), np.empty((rows, cols // 256), np.uint16),
                   np.empty((rows, cols // 256), np.uint16))  # values, scale, min; super-block scales
            return self.products.layout_q4k(*self._decode_rows(infos, raws, _q4k_rows, q4k))
        if kind == "q4":
            q4 = (np.empty((rows, cols // 2), np.uint8), np.empty((rows, nb), np.float32),
                  np.empty((rows, nb), np.float32))  # values, scale, offset
            return self.products.layout_q4(*self._decode_rows(infos, raws, dequant.to_q4, q4))
        if kind == "q6":
            # one f32 scale per 256 for Q6_K alone; per 32 where a 32-block type joins it (see dequant.to_q6)
            n_sup = cols // 256 if all(t.ggml_type == dequant.Q6_K for t in infos) else nb
            q6 = (np.empty((rows, cols), np.int8), np.empty((rows, cols // 16), np.int8),
                  np.empty((rows, n_sup), np.float32))
            return self.products.layout_q6(*self._decode_rows(infos, raws, dequant.to_q6, q6))
        q8 = (np.empty((rows, cols), np.int8), np.empty((rows, nb), np.uint16))
        return self.products.layout_q8(*self._decode_rows(infos, raws, dequant.to_q8, q8))

    def _decode_rows(self, infos: list[TensorInfo], raws: list[np.ndarray], decode, outs: tuple[np.ndarray, ...]
                     ) -> tuple[np.ndarray, ...]:
        """Each tensor decoded into its rows of ``outs`` (fused tensors fill consecutive rows), its file pages
        let go as soon as it is done."""
        r = 0
        for t, raw in zip(infos, raws):
            n = raw.shape[0]
            decode(raw, t.ggml_type, *(o[r:r + n] for o in outs), F16_TO_F32)
            self.drop_pages(t)
            r += n
        return outs

    def drop_pages(self, t: TensorInfo | None = None) -> None:
        """Let the kernel reclaim the file pages read while loading a tensor (``None``: the whole file);
        they count in RSS.  Nothing reads the mapping after the load (embedding rows: embedding.py)."""
        import mmap

        mm = getattr(self._mm, "_mmap", None)
        if mm is None or not hasattr(mm, "madvise"):
            return
        if t is None:
            mm.madvise(mmap.MADV_DONTNEED)
            return
        start = self.header.data_offset + t.offset
        first = start // mmap.PAGESIZE * mmap.PAGESIZE
        mm.madvise(mmap.MADV_DONTNEED, first, start + t.n_bytes - first)

    def close(self) -> None:
        mm = self._mm
        self._mm = None
        if mm is not None and getattr(mm, "_mmap", None) is not None:
            mm._mmap.close()


def _q4k_rows(raw, ggml_type, packed, sc, mn, dd, dmin, tab) -> None:
    """_decode_rows's decoder for Q4_K (dequant.to_q4k: the type is known, the f16 scales stay bits)."""
    dequant.to_q4k(raw, packed, sc, mn, dd, dmin)
