"""Helpers for tests of the native engine's forward pass."""
from __future__ import annotations

import numpy as np

from corert.numba_setup import PARALLEL_LOCK, run_parallel
from corert.plugins.kv_cache.contiguous import ContiguousKV


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
