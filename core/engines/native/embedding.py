"""The embedding table of a GGUF file, read row by row with ``pread`` instead of through a memory map.

A lookup needs a few hundred bytes per token, but a mapped read costs whole pages in RSS: the kernel maps
the neighbouring pages it has cached too (fault-around, 64 KiB per fault), and every page stays mapped for
the life of the process.  On SmolLM2 a 467-token prompt made 6.8 MB of the file resident that way, beside
the converted output matrix that holds the same table (tied embeddings).  Rows read into a buffer of the
request's size cost that buffer only; the file's pages stay in the page cache, shared, not in the process.
"""
from __future__ import annotations

import os
import threading

import numpy as np

from ...errors import ModelError
from ...models.gguf_header import TensorInfo
from . import dequant


class EmbeddingTable:
    """Rows of one tensor of ``path``: ``rows(ids)`` gives their raw bytes, (len(ids), row_bytes) uint8."""

    def __init__(self, path: str, data_offset: int, t: TensorInfo):
        per_block, block_bytes = dequant.BLOCKS[t.ggml_type]
        self.ggml_type = t.ggml_type
        self.row_bytes = t.shape[0] // per_block * block_bytes
        self.n_rows = int(np.prod(t.shape[1:], dtype=np.int64))
        self.start = data_offset + t.offset
        self.path = path
        self._file = open(path, "rb", buffering=0)
        self._lock = threading.Lock()  # only where there is no pread (seek and read share the position)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty((ids.shape[0], self.row_bytes), np.uint8)
        for i, row in enumerate(ids.tolist()):
            self._read_into(out[i], self.start + row * self.row_bytes)
        return out

    def _read_into(self, buf: np.ndarray, offset: int) -> None:
        if hasattr(os, "preadv"):
            got = os.preadv(self._file.fileno(), [buf], offset)
        else:
            with self._lock:
                self._file.seek(offset)
                got = self._file.readinto(buf)
        if got != buf.nbytes:
            raise ModelError(f"{self.path}: the embedding table ends early (the file changed or is truncated)")

    def close(self) -> None:
        self._file.close()
