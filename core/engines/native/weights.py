"""Loading a GGUF file's tensors for the native engine.

Matrices are requantized at load into :class:`QMatrix` (int8 blocks with one f32 scale per block of 64
values — 8.5 bits per weight — or of 32 when a row length is not a multiple of 64).  The file is memory-
mapped and decoded row by row, so no f32 copy of a weight matrix exists at any time.  Norm weights and
biases (small) are kept as f32.
"""
from __future__ import annotations

from typing import Sequence

import attrs
import numpy as np

from ...errors import ModelError
from ...models.gguf_header import GGUFHeader, TensorInfo
from . import dequant
from .numba_setup import F16_TO_F32


@attrs.frozen
class QMatrix:
    """A weight matrix W (rows = outputs, cols = inputs) as int8 blocks: W[r, j] ~ qs[r, j] * sc[r, j // bs]."""

    qs: np.ndarray  # (rows, cols) int8
    sc: np.ndarray  # (rows, cols // bs) f32
    bs: int

    @property
    def rows(self) -> int:
        return self.qs.shape[0]

    @property
    def cols(self) -> int:
        return self.qs.shape[1]

    @property
    def nbytes(self) -> int:
        return self.qs.nbytes + self.sc.nbytes


def block_size(cols: int) -> int:
    if cols % 64 == 0:
        return 64
    if cols % 32 == 0:
        return 32
    raise ModelError(f"a weight row of {cols} values is not a multiple of 32")


class TensorSource:
    """The raw bytes of a GGUF file's tensors, memory-mapped."""

    def __init__(self, header: GGUFHeader):
        self.header = header
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

    def matrix(self, names: Sequence[str]) -> QMatrix:
        """The row-wise concatenation of 2-D tensors ``names`` (e.g. Q, K, V projections) as one QMatrix."""
        infos = [self.info(n) for n in names]
        cols = infos[0].shape[0]
        for t in infos:
            if len(t.shape) != 2 or t.shape[0] != cols:
                raise ModelError(f"{self.header.path}: tensor {t.name!r} has shape {t.shape}, expected "
                                 f"({cols}, n)")
        bs = block_size(cols)
        rows = sum(t.shape[1] for t in infos)
        qs = np.empty((rows, cols), np.int8)
        sc = np.empty((rows, cols // bs), np.float32)
        r = 0
        for t in infos:
            raw = self.raw_rows(t)
            n = raw.shape[0]
            if t.ggml_type == dequant.F32:  # rare for matrices: quantize from an f32 view, chunk by chunk
                flat = np.frombuffer(raw, dtype=np.float32).reshape(n, cols)
                for a in range(0, n, 1024):
                    _quantize_f32(flat[a:a + 1024], bs, qs[r + a:r + min(n, a + 1024)],
                                  sc[r + a:r + min(n, a + 1024)])
            else:
                dequant.requantize(raw, t.ggml_type, bs, qs[r:r + n], sc[r:r + n], F16_TO_F32)
            r += n
        return QMatrix(qs, sc, bs)

    def close(self) -> None:
        mm = self._mm
        self._mm = None
        if mm is not None and getattr(mm, "_mmap", None) is not None:
            mm._mmap.close()


def _quantize_f32(x: np.ndarray, bs: int, qs: np.ndarray, sc: np.ndarray) -> None:
    for i in range(x.shape[0]):
        dequant.quantize_row(np.ascontiguousarray(x[i]), bs, qs[i], sc[i])
