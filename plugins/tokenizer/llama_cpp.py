"""Reference tokenizer: llama.cpp's own, through llama-cpp-python's C API on a vocabulary-only model load
(no context, no compute buffers: a few MB instead of ~100)."""
from __future__ import annotations

import ctypes
from typing import Sequence

from corert import Implementation, hookimpl
from corert.errors import InputError, ModelError
from corert.textstream import Utf8Stream


class LlamaCppTokenizer:
    name = "llama_cpp"

    def __init__(self, model_path: str):
        from corert.llama_lib import llama_cpp as load_llama_cpp
        from corert.models.store import check_gguf

        check_gguf(model_path)
        lib = self._lib = load_llama_cpp()
        params = lib.llama_model_default_params()
        params.vocab_only = True
        self._model = lib.llama_model_load_from_file(str(model_path).encode(), params)
        if not self._model:
            raise ModelError(f"llama.cpp could not read the vocabulary of {model_path}")
        self._vocab = lib.llama_model_get_vocab(self._model)
        if lib.llama_vocab_type(self._vocab) == lib.LLAMA_VOCAB_TYPE_NONE:  # tokenizing one aborts the process
            raise ModelError(f"{model_path} has no vocabulary (tokenizer.ggml.model says none): it cannot tokenize")
        self.vocab_size = int(lib.llama_vocab_n_tokens(self._vocab))
        bos = int(lib.llama_vocab_bos(self._vocab))
        eos = int(lib.llama_vocab_eos(self._vocab))
        self.bos_id = bos if bos >= 0 else None
        self.eos_id = eos if eos >= 0 else None
        self.add_bos = bool(lib.llama_vocab_get_add_bos(self._vocab))
        self._eog = frozenset(i for i in range(self.vocab_size) if lib.llama_vocab_is_eog(self._vocab, i))
        self._pieces: dict[int, bytes] = {}

    def encode(self, text: str, add_bos: bool | None = None, parse_special: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise InputError(f"text must be str, not {type(text).__name__}")
        raw = text.encode("utf-8", errors="replace")
        cap = len(raw) + 8
        out = (self._lib.llama_token * cap)()
        n = self._lib.llama_tokenize(self._vocab, raw, len(raw), out, cap, False, parse_special)
        if n < 0:  # more tokens than bytes cannot happen for BPE, but the API allows it: size and retry
            cap = -n
            out = (self._lib.llama_token * cap)()
            n = self._lib.llama_tokenize(self._vocab, raw, len(raw), out, cap, False, parse_special)
        ids = list(out[:n])
        add = self.add_bos if add_bos is None else add_bos
        if add and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        return ids

    def token_bytes(self, token_id: int) -> bytes:
        piece = self._pieces.get(token_id)
        if piece is None:
            if not 0 <= token_id < self.vocab_size:
                raise InputError(f"token id {token_id} out of range 0..{self.vocab_size - 1}")
            buf = ctypes.create_string_buffer(256)  # per call: requests decode from several threads at once
            n = self._lib.llama_token_to_piece(self._vocab, token_id, buf, len(buf), 0, False)
            piece = buf.raw[:n] if n > 0 else b""
            self._pieces[token_id] = piece
        return piece

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self.token_bytes(int(i)) for i in ids).decode("utf-8", errors="replace")

    def is_eog(self, token_id: int) -> bool:
        return token_id in self._eog

    def incremental_decoder(self) -> Utf8Stream:
        return Utf8Stream(self.token_bytes)

    def __del__(self):
        model, self._model = getattr(self, "_model", None), None
        if model:
            self._lib.llama_model_free(model)


@hookimpl
def register_tokenizers(register):
    register(Implementation(
        area="tokenizer", name="llama_cpp", engines=("llama.cpp", "native"), priority=0,
        factory=lambda variant, model_path, config=None: LlamaCppTokenizer(model_path),
        description="llama.cpp's own tokenizer (reference; vocabulary-only load)"))
