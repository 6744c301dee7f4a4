"""Reference tokenizer: llama.cpp's own, through llama-cpp-python with a vocabulary-only model load."""
from __future__ import annotations

import ctypes
from typing import Sequence

from corert import Implementation, hookimpl
from corert.errors import InputError
from corert.textstream import Utf8Stream


class LlamaCppTokenizer:
    name = "llama_cpp"

    def __init__(self, model_path: str):
        from corert.engines.llama_lib import llama_cpp as load_llama_cpp
        from corert.models.store import check_gguf

        llama_cpp = load_llama_cpp()

        check_gguf(model_path)
        self._lib = llama_cpp
        self._llama = llama_cpp.Llama(model_path=str(model_path), vocab_only=True, verbose=False)
        self._vocab = llama_cpp.llama_model_get_vocab(self._llama._model.model)
        self.vocab_size = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        bos = int(llama_cpp.llama_vocab_bos(self._vocab))
        eos = int(llama_cpp.llama_vocab_eos(self._vocab))
        self.bos_id = bos if bos >= 0 else None
        self.eos_id = eos if eos >= 0 else None
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        self._eog = frozenset(i for i in range(self.vocab_size) if llama_cpp.llama_vocab_is_eog(self._vocab, i))
        self._pieces: dict[int, bytes] = {}
        self._buf = ctypes.create_string_buffer(256)

    def encode(self, text: str, add_bos: bool | None = None, parse_special: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise InputError(f"text must be str, not {type(text).__name__}")
        add = self.add_bos if add_bos is None else add_bos
        ids = self._llama.tokenize(text.encode("utf-8", errors="replace"), add_bos=False, special=parse_special)
        if add and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def token_bytes(self, token_id: int) -> bytes:
        piece = self._pieces.get(token_id)
        if piece is None:
            if not 0 <= token_id < self.vocab_size:
                raise InputError(f"token id {token_id} out of range 0..{self.vocab_size - 1}")
            n = self._lib.llama_token_to_piece(self._vocab, token_id, self._buf, len(self._buf), 0, False)
            piece = self._buf.raw[:n] if n > 0 else b""
            self._pieces[token_id] = piece
        return piece

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self.token_bytes(int(i)) for i in ids).decode("utf-8", errors="replace")

    def is_eog(self, token_id: int) -> bool:
        return token_id in self._eog

    def incremental_decoder(self) -> Utf8Stream:
        return Utf8Stream(self.token_bytes)


@hookimpl
def register_tokenizers(register):
    register(Implementation(
        area="tokenizer", name="llama_cpp", engines=("llama.cpp", "native"), priority=0,
        factory=lambda variant, model_path, config=None: LlamaCppTokenizer(model_path),
        description="llama.cpp's own tokenizer (reference; vocabulary-only load)"))
