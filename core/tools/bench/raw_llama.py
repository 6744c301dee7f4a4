"""The raw llama-cpp-python competitor of the benches: one ``Llama`` built the way its own docs show, with
corert's llama.cpp settings, so every bench measures the same competitor."""
from __future__ import annotations

from typing import Any, Callable


def raw_llama(model_path: str, n_ctx: int, threads: int, flash_attn: bool, **extra: Any):
    """A ``llama_cpp.Llama`` for ``model_path``: ggml's CPU backend and extra-buffer verdict prepared by
    corert.llama_lib as for corert's own side, ``threads`` for decode and prompt, flash attention as corert's
    llama.cpp contexts have it (the same attention on both sides, so greedy ids can match).  ``extra`` goes
    to ``Llama`` as is (e.g. ``draft_model``)."""
    from corert.llama_lib import llama_cpp, prepare

    lib = llama_cpp()
    prepare(model_path)
    return lib.Llama(model_path=model_path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                     flash_attn=flash_attn, verbose=False, **extra)


def eog_test(llm) -> Callable[[int], bool]:
    """Whether a token ends generation for ``llm``'s vocabulary."""
    from corert.llama_lib import llama_cpp

    lib = llama_cpp()
    vocab = lib.llama_model_get_vocab(llm._model.model)
    return lambda t: bool(lib.llama_vocab_is_eog(vocab, t))
