"""The f16 -> f32 table: numba has no float16 type on the CPU, and GGUF block scales and f16 KV pages are
f16 bit patterns, so kernels look each one up here (``F16_TO_F32[bits]``, 256 KiB, built once)."""
from __future__ import annotations

import numpy as np

#: f16 bit pattern -> f32 value.  (aarch64's conversion flags the signalling NaN patterns as invalid: numpy
#: would warn at every import.)
with np.errstate(invalid="ignore"):
    F16_TO_F32 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
