"""The llama.cpp engine (llama-cpp-python): the fast reference, and the oracle tests compare against.

llama.cpp keeps its own KV cache; the kv_cache plugin chooses its type.  Token ids come from the tokenizer
plugin, and decoding (greedy, sampling, speculative) is done by the decoding plugin on the logits this
engine returns, so every area's plugin is on the path of a real request.
"""
from __future__ import annotations

from typing import Any, Sequence

import threading

import numpy as np

from ..compute import on_compute_thread
from ..errors import InputError, ModelError
from ..interfaces import EngineCapabilities, LlamaKV, ThreadBudget, Tokenizer
from ..models.gguf_header import read_header
from ..plugin_host import hookimpl
from ..implementation import Implementation


#: the model's own context holds one sequence (the session: plain and speculative decoding); with n_seqs > 1
#: a second context of n_seqs sequences serves continuous batching (llama_cpp_batching).  llama.cpp's own
#: KV cache needs no calibration
CAPABILITIES = EngineCapabilities(tasks={"generate"}, continuous_batching=True, prefix_reuse=True)


class LlamaCppSession:
    """The single sequence (seq id 0) of one llama.cpp context."""

    def __init__(self, model: "LlamaCppModel"):
        self._model = model
        llm = model.llama
        self._ctx = llm._ctx
        self._batch = llm._batch
        self._n_batch = llm.n_batch
        self.n_ctx = model.n_ctx
        self.n_vocab = model.n_vocab
        self.tokens: list[int] = []
        self._lib = model.lib

    def eval(self, ids: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Logits of the last position (a view valid until the next eval) or, with ``all_logits``, a copy
        with one row per id.  Runs on the process's compute thread (corert.compute: one OpenMP team)."""
        return on_compute_thread(self._eval, ids, all_logits)

    def _eval(self, ids: Sequence[int], all_logits: bool) -> np.ndarray:
        n = len(ids)
        if n == 0:
            raise InputError("nothing to evaluate")
        if len(self.tokens) + n > self.n_ctx:
            raise InputError(f"context full: {len(self.tokens)} + {n} tokens exceed n_ctx={self.n_ctx}")
        rows = []
        for start in range(0, n, self._n_batch):
            chunk = ids[start:start + self._n_batch]
            self._batch.set_batch(batch=chunk, n_past=len(self.tokens), logits_all=all_logits)
            try:
                self._ctx.decode(self._batch)
            except RuntimeError as exc:
                self.truncate(len(self.tokens))  # drop whatever the failed batch left behind
                raise ModelError(f"llama.cpp failed to evaluate the batch: {exc}") from exc
            self.tokens.extend(int(t) for t in chunk)
            if all_logits:
                ptr = self._ctx.get_logits()
                rows.append(np.ctypeslib.as_array(ptr, shape=(len(chunk), self.n_vocab)).copy())
        if all_logits:
            return rows[0] if len(rows) == 1 else np.concatenate(rows)
        return np.ctypeslib.as_array(self._ctx.get_logits_ith(-1), shape=(self.n_vocab,))

    def truncate(self, n_tokens: int) -> None:
        if n_tokens < 0 or n_tokens > len(self.tokens):
            raise InputError(f"cannot roll back to {n_tokens} tokens (sequence has {len(self.tokens)})")
        self._model.kv.truncate(self._model.llama, n_tokens)
        del self.tokens[n_tokens:]


class LlamaCppModel:
    capabilities = CAPABILITIES

    def __init__(self, path: str, llama, tokenizer: Tokenizer, kv, metadata: dict[str, Any], lib,
                 n_seqs: int = 1):
        self.path = path
        self.llama = llama
        self.tokenizer = tokenizer
        self.kv = kv
        self.metadata = metadata
        self.lib = lib
        self.n_ctx = int(llama.n_ctx())
        self.n_vocab = int(llama.n_vocab())
        self._session = LlamaCppSession(self)
        self.n_seqs = n_seqs
        self._batching = None
        self._batching_lock = threading.Lock()

    def session(self) -> LlamaCppSession:
        """The model's one session; its cached tokens are kept so the next prompt can reuse the prefix."""
        return self._session

    def batch_service(self, run=None):
        """The continuous-batching service of this model: its own context of ``n_seqs`` sequences, created
        on first use (``run`` executes its steps; default: on the service's driver thread, each decode
        hopping to the compute thread); None when ``n_seqs`` is 1."""
        with self._batching_lock:  # requests arrive together: exactly one service per model
            if self._batching is None:
                if self.n_seqs < 2:
                    return None
                from ..batch_service import BatchService
                from .llama_cpp_batching import BatchContext, LlamaBatchRunner

                self._batching = BatchService(LlamaBatchRunner(BatchContext.create(self, self.n_seqs)),
                                              self.n_seqs, run)
            return self._batching

    def set_threads(self, threads: ThreadBudget) -> None:
        self.llama._ctx.set_n_threads(threads.llama_threads, threads.llama_batch_threads)
        if self._batching is not None:
            self._batching.runner.context.set_threads(threads.llama_threads, threads.llama_batch_threads)

    def close(self) -> None:
        if self._batching is not None:
            self._batching.close()
            self._batching.runner.context.close()
            self._batching = None
        self.llama.close()


class LlamaCppEngine:
    name = "llama.cpp"
    capabilities = CAPABILITIES

    def load(self, model_path: str, *, tokenizer: Tokenizer | None, kv_cache, n_ctx: int,
             threads: ThreadBudget, config: Any = None) -> LlamaCppModel:
        from .. import llama_lib

        llama_cpp = llama_lib.llama_cpp()

        header = read_header(model_path, want_arrays=False)  # rejects non-GGUF and truncated files first
        llama_lib.prepare(model_path)  # extra weight buffers only where a child process saw them run
        meta = {k: v for k, v in header.metadata.items() if v is not None}
        train_ctx = int(meta.get(f"{header.architecture}.context_length", n_ctx) or n_ctx)
        if not isinstance(kv_cache, LlamaKV):
            raise ModelError("the llama.cpp engine needs a llama.cpp KV cache plugin (kv_cache=llama_cpp)")
        try:
            llama = llama_cpp.Llama(model_path=str(model_path), n_ctx=min(n_ctx, train_ctx),
                                    n_threads=threads.llama_threads, n_threads_batch=threads.llama_batch_threads,
                                    verbose=False, **kv_cache.context_params())
        except Exception as exc:  # llama-cpp-python's own parsing (metadata, chat template) raises more than ValueError
            raise ModelError(f"llama.cpp could not load {model_path}: {type(exc).__name__}: {exc}") from exc
        if tokenizer is None:
            raise ModelError("the llama.cpp engine needs a tokenizer plugin")
        if tokenizer.vocab_size != llama.n_vocab():
            raise ModelError(f"tokenizer has {tokenizer.vocab_size} tokens, the model {llama.n_vocab()}")
        n_seqs = int(getattr(config, "n_seqs", 1) or 1)
        return LlamaCppModel(str(model_path), llama, tokenizer, kv_cache, meta, llama_cpp, n_seqs)


@hookimpl
def register_engines(register):
    register(Implementation(area="engine", name="llama.cpp", factory=lambda variant, **ctx: LlamaCppEngine(),
                            description="llama-cpp-python: the fast reference and test oracle"))
