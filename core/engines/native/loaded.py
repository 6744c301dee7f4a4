"""A native model loaded for inference: transformer, tokenizer, KV store, sessions and batching service."""
from __future__ import annotations

import threading
from typing import Any

from ...config import NativeConfig
from ...interfaces import EngineCapabilities, ThreadBudget, Tokenizer
from .session import NativeSession

DEFAULT_SEQS = 1
CAPABILITIES = EngineCapabilities(tasks={"generate"}, continuous_batching=True, prefix_reuse=True,
                                  kv_calibration=True, batched_speculation=True)


class NativeModel:
    capabilities = CAPABILITIES

    def __init__(self, path: str, transformer, tokenizer: Tokenizer, kv, n_ctx: int, threads: int,
                 metadata: dict[str, Any], n_seqs: int = DEFAULT_SEQS,
                 prefill_rows: int = NativeConfig().prefill_rows):
        self.path = path
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.kv = kv
        self.n_ctx = n_ctx
        self.n_vocab = transformer.cfg.n_vocab
        self.threads = threads
        self.metadata = metadata
        self.n_seqs = n_seqs
        self.prefill_rows = prefill_rows  # prompt tokens per continuous-batching step, and per session forward
        #: how the mapped weights are paged after the load (huge_pages.PageReport; None: not measured)
        self.pages = None
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
        session's if one was made), created on first use with ``run`` executing its steps (default: on the
        service's driver thread); None when there is room for one stream only."""
        with self._batching_lock:  # requests arrive together: exactly one service per model
            if self._batching is None:
                from ...batch_service import BatchService
                from .batching import BatchRunner

                slots = self.n_seqs - (1 if self._session is not None else 0)
                if slots < 2:
                    return None
                self._batching = BatchService(BatchRunner(self, prefill_rows=self.prefill_rows), slots, run)
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
