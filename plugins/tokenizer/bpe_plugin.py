"""Registers the bpe tokenizer (area ``tokenizer``): the default for GGUF models on every engine."""
from __future__ import annotations

from corert import hookimpl
from corert.cpu import simd_variants
from corert.errors import InputError
from corert.implementation import Implementation


def make_tokenizer(variant: str, model_path: str | None = None, config=None, **_context):
    """``factory(variant, model_path=..., config=...)`` -> :class:`BpeTokenizer` for that GGUF file."""
    from .bpe import BpeTokenizer
    from .vocab import load_vocab

    if not model_path:
        raise InputError("the bpe tokenizer needs model_path (a .gguf file)")
    return BpeTokenizer(load_vocab(model_path), variant)


@hookimpl
def register_tokenizers(register):
    register(Implementation(
        area="tokenizer", name="bpe", factory=make_tokenizer,
        variants=simd_variants("plain per-codepoint loops"), engines=("llama.cpp", "native"), priority=10,
        description="BPE from the GGUF vocabulary (byte-level and SentencePiece), llama.cpp-exact ids, "
                    "numba kernels"))
