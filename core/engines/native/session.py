"""One sequence of a loaded native model: its tokens and its slot in the model's KV store."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from ...errors import InputError
from ...interfaces import PrefixMatchingKVStore

if TYPE_CHECKING:
    from .loaded import NativeModel


class NativeSession:
    """One sequence of a loaded model: its tokens and the KV store's sequence slot holding their K/V."""

    def __init__(self, model: "NativeModel", seq: int):
        self._model = model
        self.seq = seq
        self.n_ctx = model.n_ctx
        self.n_vocab = model.n_vocab
        self.tokens: list[int] = []

    def eval(self, ids: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Append ``ids``; logits of the last position (n_vocab,) or, with ``all_logits``, of every
        position (len(ids), n_vocab), f32."""
        from ...numba_setup import PARALLEL_LOCK, run_parallel  # not at import: registering needs no numba

        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        n = arr.shape[0]
        if n == 0:
            raise InputError("nothing to evaluate")
        if len(self.tokens) + n > self.n_ctx:
            raise InputError(f"context full: {len(self.tokens)} + {n} tokens exceed n_ctx={self.n_ctx}")
        m = self._model
        if arr.min() < 0 or arr.max() >= m.n_vocab:
            raise InputError(f"token ids must be in [0, {m.n_vocab})")
        start = len(self.tokens)
        paged = isinstance(m.kv, PrefixMatchingKVStore)  # a store that tracks ids (kv_cache=paged)
        with PARALLEL_LOCK:
            have = m.kv.length(self.seq)
            if have < start:  # the store evicted this idle sequence's K/V: recompute them first
                if have == 0 and paged:
                    have = m.kv.match_prefix(self.seq, self.tokens + [int(arr[0])])
                arr = np.concatenate([np.asarray(self.tokens[have:], np.int64), arr])
            k = arr.shape[0]
            positions = np.arange(have, have + k, dtype=np.int32)
            seq_ids = np.full(k, self.seq, dtype=np.int32)
            rows = np.arange(k - n, k) if all_logits else np.array([k - 1])
            if paged:
                m.kv.reserve(seq_ids, positions, token_ids=arr)
            else:
                m.kv.reserve(seq_ids, positions)
            try:
                logits = run_parallel(m.transformer.forward, arr.astype(np.int32), seq_ids, positions, m.kv,
                                      rows, threads=m.threads)
            except BaseException:
                m.kv.truncate(self.seq, have)
                raise
        arr = arr[k - n:]
        self.tokens.extend(int(t) for t in arr)
        return logits if all_logits else logits[0]

    def truncate(self, n_tokens: int) -> None:
        if n_tokens < 0 or n_tokens > len(self.tokens):
            raise InputError(f"cannot roll back to {n_tokens} tokens (sequence has {len(self.tokens)})")
        kv = self._model.kv
        kv.truncate(self.seq, min(n_tokens, kv.length(self.seq)))  # fewer if the store evicted it
        del self.tokens[n_tokens:]

    def close(self) -> None:
        """Give the sequence slot back to the KV store."""
        self._model.kv.release(self.seq)
