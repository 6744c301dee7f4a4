"""The oracle: raw llama-cpp-python, used directly."""
from __future__ import annotations


def raw_greedy(llm, prompt: str, max_tokens: int) -> list[int]:
    """Raw llama-cpp-python greedy continuation, stopping at an end-of-generation token."""
    from corert.llama_lib import llama_cpp

    lib = llama_cpp()
    vocab = lib.llama_model_get_vocab(llm._model.model)
    ids = llm.tokenize(prompt.encode(), special=True)
    out = []
    llm.reset()
    for tok in llm.generate(ids, temp=0.0, reset=True):
        if lib.llama_vocab_is_eog(vocab, tok):
            break
        out.append(int(tok))
        if len(out) == max_tokens:
            break
    return out
