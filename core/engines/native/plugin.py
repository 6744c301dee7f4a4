"""Registers the ``native`` engine and implements its loaded model and sessions.

    eng = factory(variant, config=cfg)                    # variant: avx2 | neon | scalar (matmul kernels)
    loaded = eng.load(path, tokenizer=tok, kv_cache=kv, n_ctx=..., threads=budget, config=cfg)
    sess = loaded.session(); sess.eval(ids, all_logits=False)

``kv_cache`` is a native KV provider (``allocate(n_layers, n_kv_heads, head_dim, max_tokens, n_seqs)``,
e.g. kv_cache=contiguous); the engine asks it for one store per model, with ``n_seqs`` sequence slots
(``config.n_seqs`` when the config has it, else 1).
"""
from __future__ import annotations

import threading
from typing import Any, Sequence

import numpy as np

from ...cpu import Variant, simd_variants
from ...errors import InputError, ModelError
from ...interfaces import ThreadBudget, Tokenizer
from ...models.gguf_header import read_header
from ...plugin_host import hookimpl
from ...registry import Implementation
from .numba_setup import PARALLEL_LOCK, run_parallel

DEFAULT_SEQS = 1


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
        paged = hasattr(m.kv, "match_prefix")  # a store that tracks ids (kv_cache=paged)
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


class NativeModel:
    def __init__(self, path: str, transformer, tokenizer: Tokenizer, kv, n_ctx: int, threads: int,
                 metadata: dict[str, Any], n_seqs: int = DEFAULT_SEQS):
        self.path = path
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.kv = kv
        self.n_ctx = n_ctx
        self.n_vocab = transformer.cfg.n_vocab
        self.threads = threads
        self.metadata = metadata
        self.n_seqs = n_seqs
        self._session: NativeSession | None = None
        self._batching = None
        self._batching_lock = threading.Lock()

    def session(self) -> NativeSession:
        """The model's default session (its cached tokens are kept so a next prompt can reuse the prefix)."""
        if self._session is None:
            self._session = NativeSession(self, self.kv.new_sequence())
        return self._session

    def new_session(self) -> NativeSession:
        """Another sequence in the same KV store (up to the store's n_seqs)."""
        return NativeSession(self, self.kv.new_sequence())

    def batch_service(self, run=None):
        """The continuous-batching service of this model (its KV store's sequence slots, less the default
        session's if one was made), created on first use with ``run`` executing its steps; None when
        there is room for one stream only."""
        with self._batching_lock:  # requests arrive together: exactly one service per model
            if self._batching is None:
                from .serving import BatchService

                slots = self.n_seqs - (1 if self._session is not None else 0)
                if slots < 2:
                    return None
                self._batching = BatchService(self, slots, run)
            return self._batching

    def set_threads(self, threads: ThreadBudget) -> None:
        self.threads = threads.numba_threads

    def close(self) -> None:
        if self._batching is not None:
            self._batching.close()
            self._batching = None
        if self.transformer is not None:
            self.transformer.close()
        self.transformer = None
        self.kv = None


class NativeEngine:
    name = "native"

    def __init__(self, variant: str):
        self.variant = variant

    def load(self, model_path: str, *, tokenizer: Tokenizer | None, kv_cache: Any, n_ctx: int,
             threads: ThreadBudget | None, config: Any = None) -> NativeModel:
        from .model import Transformer

        header = read_header(model_path, want_arrays=False)
        if kv_cache is None or not hasattr(kv_cache, "allocate"):
            raise ModelError("the native engine needs a native KV cache plugin (kv_cache=contiguous)")
        if tokenizer is None:
            raise ModelError("the native engine needs a tokenizer plugin")
        n_threads = threads.numba_threads if threads is not None else 1
        with PARALLEL_LOCK:
            transformer = run_parallel(Transformer.load, header, self.variant, threads=n_threads)
        cfg = transformer.cfg
        if tokenizer.vocab_size > cfg.n_vocab:
            raise ModelError(f"tokenizer has {tokenizer.vocab_size} tokens, the model only {cfg.n_vocab}")
        n_ctx = min(int(n_ctx), cfg.ctx_train)
        n_seqs = int(getattr(config, "n_seqs", DEFAULT_SEQS) or DEFAULT_SEQS)
        kv = kv_cache.allocate(cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, n_ctx, n_seqs)
        meta = {k: v for k, v in header.metadata.items() if v is not None}
        loaded = NativeModel(str(model_path), transformer, tokenizer, kv, n_ctx, n_threads, meta, n_seqs)
        if hasattr(kv, "prime"):  # e.g. paged q8 calibrates on a fixed text, so outputs never depend on history
            kv.prime(loaded)
        return loaded


#: int8 ``vpdpbusd`` products (matmul_i8.py); preferred where the CPU has it
VNNI = Variant("vnni", requires={"avx512_vnni", "avx512bw"}, priority=30,
               description="activations as two int8 levels (~16 bits), AVX-512 VNNI dot products")


@hookimpl
def register_engines(register):
    register(Implementation(
        area="engine", name="native", factory=lambda variant, **ctx: NativeEngine(variant),
        variants=simd_variants("ordered f32 sums, no fastmath") + (VNNI,),
        description="numpy/numba transformer over GGUF weights (llama, qwen2); 4-bit and 8-bit weight blocks"))
