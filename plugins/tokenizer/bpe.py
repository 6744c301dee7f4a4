"""The bpe tokenizer: a GGUF model's own vocabulary, llama.cpp's exact ids, numba kernels.

Invalid UTF-8.  Input is ``str``, so invalid UTF-8 cannot reach ``encode`` (a lone surrogate is an
InputError).  ``encode_bytes`` takes raw bytes and reads them the way llama.cpp does (byte-level BPE: each
invalid byte becomes U+FFFD, overlong forms decode; SentencePiece: bytes pass through to byte tokens), so
its ids match llama.cpp's on the same bytes -- except for 4-byte forms past U+10FFFF, on which llama.cpp
aborts the process and we read U+FFFD.  A file decoded with ``errors="replace"`` (what the CLI does) is
valid text and gets llama.cpp's ids for that text; it can differ from llama.cpp on the raw bytes only in
how many U+FFFD a broken multi-byte sequence becomes (Python: one per maximal invalid part; llama.cpp:
one per byte).

Bytes without a token.  A byte-level vocabulary may lack a token for some byte values (SmolLM2 lacks 21:
six control characters, 0xC0, 0xC1, 0xF1, 0xF2 and 0xF5-0xFF); such a byte is dropped from the ids, as
llama.cpp drops it, so decoding gives the text less those bytes.  SentencePiece vocabularies keep every
byte through their byte tokens.

Threads.  ``encode`` mutates the tokenizer's word cache under a lock; ``encode_batch`` runs numba's
parallel loop under the process's one parallel lock and on its compute thread (corert.numba_setup), so it
never overlaps an engine's forward pass.
"""
from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from corert.cpu import choose_variant, simd_variants
from corert.errors import InputError
from corert.numba_setup import PARALLEL_LOCK, run_parallel
from corert.textstream import Utf8Stream

from . import kernels_encode as K
from .kernels_scan import VARIANT_CODES
from .special import SpecialTokens
from .unicode_classes import class_table
from .utf8 import llama_utf8
from .vocab import PRE_TOKENIZERS, Vocab, load_vocab

_SPACE = b" "
_ESCAPED_SPACE = "\u2581".encode()


class BpeTokenizer:
    """Implements :class:`corert.interfaces.Tokenizer` for 'gpt2' and 'llama' (SentencePiece) GGUF vocabs."""

    def __init__(self, vocab: Vocab, variant: str = "scalar"):
        if variant not in VARIANT_CODES:
            raise InputError(f"unknown bpe variant {variant!r}; known: {', '.join(VARIANT_CODES)}")
        self.vocab = vocab
        self.variant = variant
        self._vcode = VARIANT_CODES[variant]
        self.name = f"bpe:{variant}"
        self.vocab_size = vocab.n_vocab
        self.bos_id = vocab.bos_id
        self.eos_id = vocab.eos_id
        self.add_bos = vocab.add_bos
        self._eog = frozenset(int(t) for t in vocab.eog)
        self._kind = PRE_TOKENIZERS.get(vocab.pre, 0)
        self._table = class_table()
        self._special = SpecialTokens([vocab.text(int(i)) for i in vocab.special_ids],
                                      [int(i) for i in vocab.special_ids],
                                      [bool(a) for a in vocab.special_always])
        self._cache = K.new_word_cache()
        self._lock = threading.Lock()  # the word cache is mutated by encode
        # one bytes object and the offsets, not a bytes object per token (7 MB for Qwen's 151k tokens)
        self._blob = vocab.piece_blob.tobytes()
        self._offs = vocab.piece_offs

    @classmethod
    def from_gguf(cls, model_path: str, variant: str | None = None) -> "BpeTokenizer":
        v, _ = choose_variant(simd_variants(), variant, "tokenizer bpe")
        return cls(load_vocab(model_path), v.name)

    def warm_up(self) -> None:
        """Load the compiled kernels now (numba's first call in a process costs ~0.5 s); a host can run
        this on a thread while the engine loads its weights."""
        self.encode("warm up 1", add_bos=False)

    # -- encoding ----------------------------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool | None = None, parse_special: bool = False) -> list[int]:
        return self.encode_bytes(_utf8(text), add_bos, parse_special, _valid=True)

    def encode_bytes(self, data: bytes, add_bos: bool | None = None, parse_special: bool = False,
                     _valid: bool = False) -> list[int]:
        """Encode raw bytes; invalid UTF-8 is handled exactly as llama.cpp handles it."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InputError(f"encode_bytes takes bytes, not {type(data).__name__}")
        data = bytes(data)
        frags = self._fragments(data, parse_special, _valid)
        arr, fs, fe, ft = frags
        out = np.empty(arr.shape[0] + fs.shape[0] + 1, dtype=np.int32)
        v = self.vocab
        slots, wbytes, wids, state = self._cache
        if v.is_spm:
            with self._lock:
                n = K.spm_fragments(arr, fs, fe, ft, 0, fs.shape[0], v.text_table, v.text_blob, v.text_offs,
                                    v.srank, v.byte_tok, v.cross_blob, v.cross_offs, v.cross_at,
                                    slots, wbytes, wids, state, True, out, 0)
        else:
            with self._lock:
                n = K.bpe_fragments(self._kind, self._vcode, arr, fs, fe, ft, 0, fs.shape[0], self._table,
                                    v.byte_ids, v.pair_keys, v.pair_vals, v.m_left, v.m_right, v.m_result,
                                    v.raw_table, v.raw_blob, v.raw_offs, v.ignore_merges,
                                    slots, wbytes, wids, state, True, out, 0)
        ids = out[:n].tolist()
        if self._want_bos(add_bos):
            ids.insert(0, self.bos_id)
        return ids

    def encode_batch(self, texts: Sequence[str], add_bos: bool | None = None,
                     parse_special: bool = False, n_threads: int | None = None) -> list[list[int]]:
        """Encode many texts in parallel (numba threads); the same ids as encoding them one by one."""
        import numba

        if isinstance(texts, str):
            raise InputError("encode_batch takes a sequence of str, not one str")
        parts = [self._fragments(_utf8(t), parse_special, True) for t in texts]
        if not parts:
            return []
        sizes = np.array([p[0].shape[0] + p[1].shape[0] for p in parts], dtype=np.int64)
        data = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.uint8)
        base = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum([p[0].shape[0] for p in parts], out=base[1:])
        fs = np.concatenate([p[1] + base[i] for i, p in enumerate(parts)])
        fe = np.concatenate([p[2] + base[i] for i, p in enumerate(parts)])
        ft = np.concatenate([p[3] for p in parts])
        nf = np.array([p[1].shape[0] for p in parts], dtype=np.int64)
        f1 = np.cumsum(nf)
        f0 = f1 - nf
        out_off = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum(sizes, out=out_off[1:])
        counts = np.zeros(len(parts), dtype=np.int64)
        v = self.vocab
        chunks = max(1, min(n_threads or numba.get_num_threads(), len(parts)))
        # the other chunks' word caches: sized to the batch, from 4k to 64k entries
        cache_slots = 1 << min(16, max(12, (int(data.shape[0]) // (8 * chunks)).bit_length()))
        slots, wbytes, wids, state = self._cache
        with PARALLEL_LOCK, self._lock:  # chunk 0 works in this tokenizer's own word cache
            if v.is_spm:
                out = run_parallel(K.spm_batch, data, fs, fe, ft, f0, f1, out_off, chunks, v.text_table,
                                   v.text_blob, v.text_offs, v.srank, v.byte_tok, v.cross_blob, v.cross_offs,
                                   v.cross_at, slots, wbytes, wids, state, cache_slots, counts, threads=chunks)
            else:
                out = run_parallel(K.bpe_batch, self._kind, self._vcode, data, fs, fe, ft, f0, f1, out_off,
                                   chunks, self._table, v.byte_ids, v.pair_keys, v.pair_vals, v.m_left,
                                   v.m_right, v.m_result, v.raw_table, v.raw_blob, v.raw_offs, v.ignore_merges,
                                   slots, wbytes, wids, state, cache_slots, counts, threads=chunks)
        bos = [self.bos_id] if self._want_bos(add_bos) else []
        return [bos + out[out_off[t]:out_off[t] + counts[t]].tolist() for t in range(len(parts))]

    def _want_bos(self, add_bos: bool | None) -> bool:
        want = self.add_bos if add_bos is None else bool(add_bos)
        if want and self.bos_id is None:
            raise InputError(f"{self.vocab.path}: add_bos asked for, but the model has no BOS token")
        return want

    def _fragments(self, data: bytes, parse_special: bool, valid: bool):
        """(bytes array, starts, ends, tokens) ready for the kernels."""
        fs, fe, ft = self._special.split(data, parse_special)
        v = self.vocab
        if not v.is_spm:
            if not valid:  # llama.cpp decodes each raw fragment with U+FFFD for bad bytes
                data, fs, fe = _rebuild(data, fs, fe, ft, llama_utf8)
            return np.frombuffer(data, dtype=np.uint8), fs, fe, ft
        # SentencePiece: escape spaces per fragment; a leading space only if the model asks for it
        first = True
        pieces = []
        starts = np.empty_like(fs)
        ends = np.empty_like(fe)
        pos = 0
        for k in range(fs.shape[0]):
            if ft[k] >= 0:
                starts[k] = ends[k] = pos
                first = True
                continue
            raw = data[fs[k]:fe[k]]
            if v.add_space_prefix and first:
                raw = _SPACE + raw
            esc = raw.replace(_SPACE, _ESCAPED_SPACE)
            pieces.append(esc)
            starts[k] = pos
            pos += len(esc)
            ends[k] = pos
            first = False
        return np.frombuffer(b"".join(pieces), dtype=np.uint8), starts, ends, ft

    # -- decoding ----------------------------------------------------------------------------------------
    def token_bytes(self, token_id: int) -> bytes:
        try:
            if token_id < 0:
                raise IndexError
            return self._blob[self._offs[token_id]:self._offs[token_id + 1]]
        except (IndexError, TypeError):
            raise InputError(f"token id {token_id!r} is out of range for a vocabulary of "
                             f"{self.vocab_size} tokens") from None

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self.token_bytes(int(i)) for i in ids).decode("utf-8", errors="replace")

    def is_eog(self, token_id: int) -> bool:
        return token_id in self._eog

    def incremental_decoder(self) -> Utf8Stream:
        return Utf8Stream(self.token_bytes)


def _utf8(text: str) -> bytes:
    if not isinstance(text, str):
        raise InputError(f"encode takes str, not {type(text).__name__} (use encode_bytes for raw bytes)")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"text has a lone surrogate at index {e.start} ({text[e.start]!r}); it cannot be "
                         f"encoded as UTF-8") from None


def _rebuild(data: bytes, fs, fe, ft, fix):
    """Apply ``fix`` to every raw fragment and recompute the offsets."""
    pieces = []
    starts = np.empty_like(fs)
    ends = np.empty_like(fe)
    pos = 0
    for k in range(fs.shape[0]):
        chunk = b"" if ft[k] >= 0 else fix(data[fs[k]:fe[k]])
        pieces.append(chunk)
        starts[k] = pos
        pos += len(chunk)
        ends[k] = pos
    return b"".join(pieces), starts, ends
