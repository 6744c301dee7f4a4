"""The native engine: loads a GGUF file into a NativeModel with a KV store from the kv_cache plugin.

    eng = NativeEngine(variant)                           # variant: avx2 | neon | scalar | vnni (matmul kernels)
    loaded = eng.load(path, tokenizer=tok, kv_cache=kv, n_ctx=..., threads=budget, config=cfg)
    sess = loaded.session(); sess.eval(ids, all_logits=False)

``kv_cache`` is a native KV provider (``allocate(n_layers, n_kv_heads, head_dim, max_tokens, n_seqs)``,
e.g. kv_cache=contiguous); the engine asks it for one store per model, with ``n_seqs`` sequence slots
(``config.n_seqs`` when the config has it, else 1).  From a RuntimeConfig it also reads the ``native`` table
(NativeConfig: ``prefill_rows``, ``layout_cache``).
"""
from __future__ import annotations

from typing import Any

from ...config import NativeConfig
from ...errors import ModelError
from ...interfaces import CalibratedKVStore, KVProvider, SupportVerdict, ThreadBudget, Tokenizer
from ...models.gguf_header import read_header
from .loaded import CAPABILITIES, DEFAULT_SEQS, NativeModel


class NativeEngine:
    name = "native"
    capabilities = CAPABILITIES

    def __init__(self, variant: str):
        self.variant = variant

    def check_model(self, model_path: str) -> SupportVerdict:
        """Whether this engine runs ``model_path`` here (architecture, tensor types, CPU): see support.py."""
        from .support import check_file

        return check_file(model_path)

    def load(self, model_path: str, *, tokenizer: Tokenizer | None, kv_cache: Any, n_ctx: int,
             threads: ThreadBudget | None, config: Any = None) -> NativeModel:
        from ...numba_setup import PARALLEL_LOCK, run_parallel  # numba only once a model loads here
        from .model import Transformer, header_arrays
        from .warmup import warm_kernels
        from ...memory import trim_heap

        header = read_header(model_path, want_arrays=header_arrays)
        if not isinstance(kv_cache, KVProvider):
            raise ModelError("the native engine needs a native KV cache plugin (kv_cache=contiguous)")
        if tokenizer is None:
            raise ModelError("the native engine needs a tokenizer plugin")
        n_threads = threads.numba_threads if threads is not None else 1
        native = NativeConfig.of(config)
        with PARALLEL_LOCK:
            transformer = run_parallel(Transformer.load, header, self.variant, native.layout_cache,
                                       threads=n_threads)
        cfg = transformer.cfg
        if tokenizer.vocab_size > cfg.n_vocab:
            raise ModelError(f"tokenizer has {tokenizer.vocab_size} tokens, the model only {cfg.n_vocab}")
        n_ctx = min(int(n_ctx), cfg.ctx_train)
        n_seqs = int(getattr(config, "n_seqs", DEFAULT_SEQS) or DEFAULT_SEQS)
        kv = kv_cache.allocate(cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, n_ctx, n_seqs)
        warm_tokenizer = getattr(tokenizer, "warm_up", None)
        if warm_tokenizer is not None:  # its kernels too: loading them at the first encode ran LLVM's code
            warm_tokenizer()  # (llvm_pages.py) with every weight resident, up to 46 MB above the final peak
        with PARALLEL_LOCK:  # the kernels load now, with few weights resident (warmup.py)
            warm_kernels(transformer, kv_cache, n_threads)
        trim_heap()  # the load's temporaries, before the weights become resident
        pages = transformer.settle_pages()  # now, in 2 MiB pages (huge_pages.py)
        meta = {k: v for k, v in header.metadata.items() if v is not None}
        loaded = NativeModel(str(model_path), transformer, tokenizer, kv, n_ctx, n_threads, meta, n_seqs,
                             prefill_rows=native.prefill_rows)
        loaded.pages = pages
        if isinstance(kv, CalibratedKVStore):  # paged q8 calibrates on a fixed text: outputs never depend on history
            _calibrate(loaded, kv)
        return loaded


def _calibrate(model: NativeModel, kv: CalibratedKVStore) -> None:
    """Evaluate the text the store asks for in a scratch sequence, inside its calibration window: the engine
    drives, the store only sees the K/V written."""
    request = kv.calibration()
    if request is None:
        return
    ids = model.tokenizer.encode(request.text)[:request.max_tokens]
    with kv.calibrating():
        session = model.new_session()
        try:
            session.eval(ids)
        finally:
            session.close()
