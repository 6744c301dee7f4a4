"""Contiguous KV cache for the native engine: the reference memory layout.

Each layer holds K and V as (n_seqs, n_kv_heads, max_tokens, head_dim) arrays allocated up front, so a
head's keys are one contiguous run the attention kernel streams through.  Values are f16 (the default, as
llama.cpp's cache: half the bytes a token, which a decode step streams through once per layer) or f32 (the
exact reference, ``contiguous:f32``).  Simple; the paged cache is the one that shares and evicts.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from corert import Implementation, Mode, hookimpl
from corert.errors import InputError, PluginError
from corert.memory import lazy_zeros
from corert.tree import NO_TREE, TreeMask


#: mode -> how a value is stored (f16: its bit pattern; numba has no float16)
DTYPES = {"f16": np.uint16, "f32": np.float32}


class ContiguousKVStore:
    """A :class:`corert.interfaces.KVStore` backed by preallocated f16 or f32 arrays."""

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, max_tokens: int, n_seqs: int = 1,
                 dtype: str = "f16"):
        from .contiguous_attention import attend_contiguous, write_contiguous, write_contiguous_f16

        if dtype not in DTYPES:
            raise InputError(f"kv_cache=contiguous stores f16 or f32, not {dtype!r}")
        self.dtype = dtype
        self._attend = attend_contiguous
        self._write = write_contiguous_f16 if dtype == "f16" else write_contiguous
        self.n_layers, self.n_kv_heads, self.head_dim = n_layers, n_kv_heads, head_dim
        self.max_tokens, self.n_seqs = max_tokens, n_seqs
        shape = (n_layers, n_seqs, n_kv_heads, max_tokens, head_dim)
        # resident only where written (corert.memory): a short request costs its tokens, not n_ctx
        self.k = lazy_zeros(shape, DTYPES[dtype])  # (layer, seq, kv_head, position, head_dim)
        self.v = lazy_zeros(shape, DTYPES[dtype])
        self._len = np.zeros(n_seqs, np.int64)
        self._free = list(range(n_seqs - 1, -1, -1))

    def new_sequence(self) -> int:
        if not self._free:
            raise InputError(f"all {self.n_seqs} KV sequences are in use")
        seq = self._free.pop()
        self._len[seq] = 0
        return seq

    def release(self, seq: int) -> None:
        self._check_seq(seq)
        if seq not in self._free:
            self._len[seq] = 0
            self._free.append(seq)

    def length(self, seq: int) -> int:
        self._check_seq(seq)
        return int(self._len[seq])

    def reserve(self, seq_ids: np.ndarray, positions: np.ndarray) -> None:
        expect = {}
        for s, p in zip(seq_ids.tolist(), positions.tolist()):
            self._check_seq(s)
            want = expect.get(s, int(self._len[s]))
            if p != want:
                raise InputError(f"KV sequence {s}: position {p} does not continue it (next is {want})")
            if p >= self.max_tokens:
                raise InputError(f"KV sequence {s} is full: {self.max_tokens} tokens")
            expect[s] = p + 1
        for s, n in expect.items():
            self._len[s] = n

    def write(self, layer: int, seq_ids: np.ndarray, positions: np.ndarray, k: np.ndarray,
              v: np.ndarray) -> None:
        if self.dtype == "f16":  # the write kernel rounds the f32 bit patterns
            k = np.ascontiguousarray(k, np.float32).view(np.uint32)
            v = np.ascontiguousarray(v, np.float32).view(np.uint32)
        self._write(self.k[layer], self.v[layer], seq_ids, positions, k, v)

    def attend(self, layer: int, seq_ids: np.ndarray, positions: np.ndarray, q: np.ndarray, scale: float,
               out: np.ndarray, window: int = 0, tree: TreeMask | None = None) -> None:
        self._attend(q, self.k[layer], self.v[layer], seq_ids, positions, np.float32(scale), out, window,
                     NO_TREE if tree is None else tree.visible)

    def keep_path(self, seq: int, start: int, slots: Sequence[int], token_ids: Sequence[int] | None = None) -> None:
        self._check_seq(seq)
        slots = np.asarray(slots, np.int64)
        n = int(self._len[seq])
        if np.any(np.diff(slots) <= 0) or (slots.size and (slots[0] < start or slots[-1] >= n)):
            raise InputError(f"KV sequence {seq}: tree slots {slots.tolist()} must increase within {start}..{n - 1}")
        dst = np.arange(start, start + slots.size)
        moved = slots != dst
        if moved.any():  # fancy indexing copies the sources before it writes
            self.k[:, seq, :, dst[moved]] = self.k[:, seq, :, slots[moved]]
            self.v[:, seq, :, dst[moved]] = self.v[:, seq, :, slots[moved]]
        self._len[seq] = start + slots.size

    def truncate(self, seq: int, n_tokens: int) -> None:
        self._check_seq(seq)
        if not 0 <= n_tokens <= self._len[seq]:
            raise InputError(f"cannot roll KV sequence {seq} back to {n_tokens} tokens "
                             f"(it holds {int(self._len[seq])})")
        self._len[seq] = n_tokens  # later positions are overwritten before they are read again

    def nbytes(self) -> int:
        return int(self.k.nbytes + self.v.nbytes)

    def _check_seq(self, seq: int) -> None:
        if not 0 <= seq < self.n_seqs:
            raise InputError(f"no KV sequence {seq} (the store has {self.n_seqs})")


class ContiguousKV:
    """The plugin's provider: allocates a store of ``dtype`` (f16 or f32) for a model's dimensions."""

    name = "contiguous"

    def __init__(self, dtype: str = "f16"):
        self.dtype = dtype

    def allocate(self, n_layers: int, n_kv_heads: int, head_dim: int, max_tokens: int,
                 n_seqs: int = 1) -> ContiguousKVStore:
        return ContiguousKVStore(n_layers, n_kv_heads, head_dim, max_tokens, n_seqs, self.dtype)


def _factory(variant: str, engine: str = "native", **ctx) -> ContiguousKV:
    if engine != "native":
        raise PluginError(f"kv_cache=contiguous stores K/V for the native engine, not {engine!r}")
    return ContiguousKV(variant)


@hookimpl
def register_kv_caches(register):
    register(Implementation(
        area="kv_cache", name="contiguous", engines=("native",), factory=_factory,
        variants=(Mode("f16", priority=5, description="preallocated f16 arrays (0.5x f32), widened in the kernel"),
                  Mode("f32", priority=0, description="preallocated f32 arrays (exact)")),
        priority=1,  # the native default; kv_cache=paged is chosen by name
        description="reference KV cache of the native engine: contiguous f16 or f32 per layer and sequence"))
