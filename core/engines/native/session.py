"""One sequence of a loaded native model: its tokens and its slot in the model's KV store."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from ...errors import InputError
from ...interfaces import match_cached_prefix, prefix_matching, reserve_rows
from ...tree import TreeMask

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
        # per token: whether its K/V came from the variant's bulk path (model.forward's ``bulk``), so that
        # recomputing what the store evicted takes the same path and gives the same bits; kept (and a forward's
        # mask made) only when the variant has a bulk path: every other variant's rows take one path
        self._bulk_path = model.transformer.bulk_path
        self._bulk: list[bool] = []
        self._tree: tuple[int, list[int], list[int]] | None = None  # (start, node ids, parents) until kept

    def eval(self, ids: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Append ``ids``; logits of the last position (n_vocab,) or, with ``all_logits``, of every
        position (len(ids), n_vocab), f32."""
        arr = self._checked(ids)
        if not all_logits:
            # a long prompt runs in blocks of prefill_rows: its peak memory is bounded (the products keep
            # their working set in L2 themselves, row_tiles.py; with them, blocks of 512 measured no faster
            # than 256 on Qwen 1.5B); each row's K/V and the last row's logits are the same as in one forward.
            # A block before the last only writes K/V: no row of it goes through the output head
            step = self._model.prefill_rows
            while arr.shape[0] > step:
                self._forward(arr[:step], [], None)
                arr = arr[step:]
        n = arr.shape[0]
        logits = self._forward(arr, None if all_logits else [n - 1], None)
        return logits if all_logits else logits[0]

    def eval_tree(self, ids: Sequence[int], parents: Sequence[int]) -> np.ndarray:
        """Token-tree verification (corert.interfaces.TreeSession): every node's logits, (len(ids), n_vocab),
        each equal to a sequential forward of its path; the nodes stay provisional until ``keep_path``."""
        arr = self._checked(ids)
        if len(parents) != arr.shape[0]:
            raise InputError(f"a token tree needs one parent per node: {len(parents)} for {arr.shape[0]}")
        start = len(self.tokens)
        logits = self._forward(arr, None, [int(p) for p in parents])
        # the nodes are not the session's tokens until keep_path
        del self.tokens[start:], self._bulk[start:]
        self._tree = (start, [int(t) for t in arr], [int(p) for p in parents])
        return logits

    def keep_path(self, nodes: Sequence[int]) -> None:
        """Keep the last tree's nodes ``nodes`` (a path from a root, in order) as the next tokens; drop the
        other nodes' K/V (the store compacts the path to consecutive positions)."""
        if self._tree is None:
            raise InputError("keep_path needs a token tree evaluated by eval_tree first")
        start, ids, parents = self._tree
        nodes = [int(x) for x in nodes]
        for a, b in zip([-1] + nodes, nodes):
            if not 0 <= b < len(ids) or parents[b] != a:
                raise InputError(f"nodes {nodes} are not a path from a root of the token tree")
        from ...numba_setup import PARALLEL_LOCK

        self._tree = None
        path_ids = [ids[j] for j in nodes]
        with PARALLEL_LOCK:  # the store's pages are shared with the batch runner's forwards
            self._model.kv.keep_path(self.seq, start, [start + j for j in nodes], token_ids=path_ids)
        self.tokens.extend(path_ids)
        if self._bulk_path:
            self._bulk.extend([False] * len(path_ids))  # a tree's rows all return logits: the exact path

    def _checked(self, ids: Sequence[int]) -> np.ndarray:
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        n = arr.shape[0]
        if n == 0:
            raise InputError("nothing to evaluate")
        if len(self.tokens) + n > self.n_ctx:
            raise InputError(f"context full: {len(self.tokens)} + {n} tokens exceed n_ctx={self.n_ctx}")
        if arr.min() < 0 or arr.max() >= self._model.n_vocab:
            raise InputError(f"token ids must be in [0, {self._model.n_vocab})")
        self._settle_tree()
        return arr

    def _settle_tree(self) -> None:
        """A tree nobody kept a path of: drop its nodes."""
        if self._tree is not None:
            start = self._tree[0]
            self._tree = None
            self._model.kv.truncate(self.seq, min(start, self._model.kv.length(self.seq)))

    def _forward(self, arr: np.ndarray, rows: list[int] | None, parents: list[int] | None) -> np.ndarray:
        """One forward of ``arr`` after the session's tokens (re-evaluating K/V the store evicted first), which
        then become the session's tokens; logits of ``rows`` of ``arr`` (None: all).  ``parents``: arr is a
        token tree (see eval_tree)."""
        from ...numba_setup import PARALLEL_LOCK, run_parallel  # not at import: registering needs no numba

        m = self._model
        n = arr.shape[0]
        start = len(self.tokens)
        paged = prefix_matching(m.kv)  # a store that tracks ids (kv_cache=paged)
        with PARALLEL_LOCK:
            have = m.kv.length(self.seq)
            if have < start:  # the store evicted this idle sequence's K/V: recompute them first
                if have == 0 and paged:
                    # its own rows' paths: pages of the same ids on other paths hold other bits
                    exact = [not b for b in self._bulk] if self._bulk_path else None
                    have = match_cached_prefix(m.kv, self.seq, self.tokens + [int(arr[0])], exact)
                arr = np.concatenate([np.asarray(self.tokens[have:], np.int64), arr])
            k = arr.shape[0]
            redo = k - n  # rows re-evaluated before the new ones
            positions = np.arange(have, have + k, dtype=np.int32)
            seq_ids = np.full(k, self.seq, dtype=np.int32)
            out_rows = np.arange(redo, k) if rows is None else np.asarray(rows, np.int64) + redo
            bulk = None
            if self._bulk_path:
                # the new rows' paths by forward's rule (their own logit rows), the recomputed ones' as they were
                bulk = np.ones(k, np.bool_)
                bulk[out_rows] = False
                bulk[:redo] = self._bulk[have:start]
            tree = None
            if parents is not None:  # recomputed rows are a chain the tree's roots continue
                chain = list(range(-1, redo - 1))
                tree = TreeMask.from_parents(seq_ids, positions,
                                             chain + [p + redo if p >= 0 else redo - 1 for p in parents])
            exact = None if bulk is None else ~bulk  # the store keys pages by their rows' paths
            if redo and parents is not None:  # the recomputed rows are tokens; the tree stays provisional
                reserve_rows(m.kv, seq_ids[:redo], positions[:redo], arr[:redo],
                             exact=None if exact is None else exact[:redo])
                reserve_rows(m.kv, seq_ids[redo:], positions[redo:], arr[redo:], provisional=True,
                             exact=None if exact is None else exact[redo:])
            else:
                reserve_rows(m.kv, seq_ids, positions, arr, provisional=parents is not None, exact=exact)
            try:
                logits = run_parallel(m.transformer.forward, arr.astype(np.int32), seq_ids, positions, m.kv,
                                      out_rows, tree, bulk, threads=m.threads)
            except BaseException:
                m.kv.truncate(self.seq, have)
                raise
        self.tokens.extend(int(t) for t in arr[redo:])
        if bulk is not None:
            self._bulk.extend(bulk[redo:].tolist())
        return logits

    def truncate(self, n_tokens: int) -> None:
        self._settle_tree()
        if n_tokens < 0 or n_tokens > len(self.tokens):
            raise InputError(f"cannot roll back to {n_tokens} tokens (sequence has {len(self.tokens)})")
        kv = self._model.kv
        kv.truncate(self.seq, min(n_tokens, kv.length(self.seq)))  # fewer if the store evicted it
        del self.tokens[n_tokens:], self._bulk[n_tokens:]

    def close(self) -> None:
        """Give the sequence slot back to the KV store."""
        self._model.kv.release(self.seq)
