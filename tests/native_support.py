"""Helpers for tests of the native engine's forward pass."""
from __future__ import annotations

import numpy as np

from corert.numba_setup import PARALLEL_LOCK, run_parallel
from corert.plugins.kv_cache.contiguous import ContiguousKV


def fastest_exact_variant() -> str:
    """The fastest native variant this CPU runs whose rows are batch-invariant and whose activations keep ~16
    bits or more: amx (vnni's integers on tiles, the same bits), vnni, else avx2 (f32).  For tests whose subject
    is not a variant's kernels: on avx2's f32 products they take 2-4x the time."""
    from corert.cpu import info
    from corert.engines.native.plugin import AMX, VNNI

    return next((v.name for v in (AMX, VNNI) if v.supported(info())), "avx2")


def prompt_logits(t, ids: np.ndarray, threads: int = 1) -> np.ndarray:
    """The logits of every row of one prompt ``ids`` (int32) through the Transformer ``t``, on a fresh
    contiguous KV cache: (len(ids), n_vocab)."""
    cfg = t.cfg
    kv = ContiguousKV().allocate(cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, -(-ids.size // 16) * 16, 1)
    seq = kv.new_sequence()
    positions = np.arange(ids.size, dtype=np.int32)
    seq_ids = np.full(ids.size, seq, np.int32)
    with PARALLEL_LOCK:
        kv.reserve(seq_ids, positions)
        return run_parallel(t.forward, ids, seq_ids, positions, kv, np.arange(ids.size), threads=threads)


def random_blocks(rng: np.random.Generator, rows: int, cols: int) -> dict[str, np.ndarray]:
    """Random parts of a (rows, cols) matrix for every int8 layout (matmul_i8.layout_*): ``q`` int8 values,
    ``bits`` f16 scales a 32 (q8), ``sub`` / ``sup`` q6's int8 scales a 16 and f32 ones a 256, ``nib`` Q4
    nibbles with ``scale`` / ``offset`` f32 a 32 (q4), ``sc`` / ``mn`` 6-bit scales and mins a 32 with ``dd`` /
    ``dmin`` f16 bits a 256 (Q4_K)."""
    sc, mn = rng.integers(0, 64, (2, rows, cols // 32)).astype(np.uint8)
    dd, dmin = rng.uniform(1e-4, 1e-3, (2, rows, cols // 256)).astype(np.float16).view(np.uint16)
    return {"q": rng.integers(-128, 128, (rows, cols)).astype(np.int8),
            "bits": rng.uniform(0.01, 0.1, (rows, cols // 32)).astype(np.float16).view(np.uint16),
            "sub": rng.integers(-128, 128, (rows, cols // 16)).astype(np.int8),
            "sup": rng.uniform(1e-3, 1e-2, (rows, cols // 256)).astype(np.float32),
            "nib": rng.integers(0, 256, (rows, cols // 2)).astype(np.uint8),
            "scale": rng.uniform(0.01, 0.1, (rows, cols // 32)).astype(np.float32),
            "offset": rng.uniform(-0.1, 0.1, (rows, cols // 32)).astype(np.float32),
            "sc": sc, "mn": mn, "dd": dd, "dmin": dmin}
