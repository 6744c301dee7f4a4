"""Load the forward pass's kernels at model load, before the weights are touched.

numba loads a kernel from its cache on the kernel's first call, and loading runs LLVM, whose code pages
(~50 MB each time; see corert/llvm_pages.py) are resident until numba leaves its compiler lock.  Left to the
first request, the last kernels load in the middle of a forward pass: the output head's product after every
layer's weights are resident, attention's parallel path when a sequence grows.  So peak RSS was the whole
model plus LLVM.  Here a miniature of the model -- one layer of each kind it has (matrix types, bias,
local or global attention) and the first row group of its output matrix, with its own small KV store of the
model's plugin -- runs a one-row and a many-row forward: every kernel of both paths loads while only those
few weights are resident, and the real forward passes find them loaded.
"""
from __future__ import annotations

import attrs
import numpy as np

from ...interfaces import CalibratedKVStore, reserve_rows
from .weights import QMatrix

#: rows of the many-row forward: with the one-row forward, both attention paths of the contiguous store
#: (serial below 64k query-key products, parallel above) and the products' one-row and many-row cases
PROMPT_ROWS = 64


def layer_kind(t, i: int) -> tuple:
    """What decides layer ``i``'s kernels: its matrices' layouts, a q/k/v bias, local attention."""
    layer, cfg = t.layers[i], t.cfg
    local = cfg.window > 0 and cfg.local_layers[i]
    return (layer.wqkv.kind, layer.wo.kind, layer.wgate_up.kind, layer.wdown.kind, layer.bqkv.size > 0, local)


def representative_layers(t) -> list[int]:
    """The first layer of each kind, in order."""
    seen: dict[tuple, int] = {}
    for i in range(len(t.layers)):
        seen.setdefault(layer_kind(t, i), i)
    return sorted(seen.values())


def first_group(w: QMatrix) -> QMatrix:
    """``w``'s first row group alone (every layout part is indexed by row group first): the same kernel,
    a few pages read."""
    groups = w.parts[0].shape[0]
    rows = min(w.rows, -(-w.rows // groups))
    return QMatrix(w.kind, rows, w.cols, tuple(p[:1] for p in w.parts))


def miniature(t):
    """A Transformer over the representative layers and the first rows of the output matrix."""
    picked = representative_layers(t)
    cfg = attrs.evolve(t.cfg, n_layers=len(picked),
                       local_layers=tuple(t.cfg.local_layers[i] for i in picked) if t.cfg.local_layers else ())
    return attrs.evolve(t, cfg=cfg, layers=[t.layers[i] for i in picked], output=first_group(t.output))


def warm_kernels(t, kv_provider, threads: int) -> None:
    """Run the miniature's one-row and many-row forward passes (see the module docstring); the outputs are
    thrown away.  Call with numba's PARALLEL_LOCK held."""
    from ...numba_setup import run_parallel

    mini = miniature(t)
    cfg = mini.cfg
    n = min(PROMPT_ROWS, cfg.ctx_train - 1)
    kv = kv_provider.allocate(cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, n + 1, 1)
    if isinstance(kv, CalibratedKVStore) and kv.calibration() is not None:
        return  # such a store writes only once calibrated (the load calibrates it, loading its kernels)
    seq = kv.new_sequence()
    for positions in (np.arange(1, dtype=np.int32), np.arange(1, n + 1, dtype=np.int32)):
        ids = np.zeros(positions.size, np.int32)
        seq_ids = np.full(positions.size, seq, np.int32)
        reserve_rows(kv, seq_ids, positions, ids.astype(np.int64))
        run_parallel(mini.forward, ids, seq_ids, positions, kv, np.array([positions.size - 1]), threads=threads)
    kv.release(seq)
