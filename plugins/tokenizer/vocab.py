"""The vocabulary of a GGUF model, read from the file itself, in the arrays the kernels use.

Building it reads the token, type, score and merge arrays with corert's fast header reader and turns them
into numpy tables (~1 s for a 262k vocabulary); the result is cached as a directory of .npy files under
the user cache dir, keyed by the file's path, size and mtime.  A warm load maps the larger arrays
(copy-on-write, never written): only the pages an encode or decode touches become resident, not the whole
tables (14 MB for Qwen's 151k tokens, which a short prompt probes in a few pages).  Cache files are only
ever replaced (written beside, then renamed), never rewritten in place: a process mapping the old ones
keeps reading them.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import attrs
import numpy as np

from corert.errors import ModelError
from corert.models.gguf_header import read_header, string_array_bytes

from .kernels_merge import build_pair_table, build_text_table
from .unicode_classes import _cache_dir

CACHE_VERSION = 7
#: arrays from this size up are mapped from the cache, smaller ones read (a mapping costs a page at least)
MAP_BYTES = 1 << 16

# llama.cpp token types (GGUF tokenizer.ggml.token_type)
T_NORMAL, T_UNKNOWN, T_CONTROL, T_USER_DEFINED, T_UNUSED, T_BYTE = 1, 2, 3, 4, 5, 6

#: pre-tokenizer names (tokenizer.ggml.pre) this plugin implements, -> splitter kind (kernels_scan):
#: 0 digits then GPT-2, 1 qwen2, 2 GPT-2, 3 llama3 -- grouped the way llama-vocab.cpp groups them
PRE_TOKENIZERS = {
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"), 0),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez", "hunyuan"), 1),
    **dict.fromkeys(("gpt-2", "phi-2", "mpt", "olmo", "jais", "trillion", "granite-docling", "exaone4",
                     "gigachat"), 2),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
                     "lfm2", "dbrx", "smaug-bpe"), 3),
}
#: llama3-type names whose whole pre-token is taken as is when it is a token (llama.cpp ignore_merges);
#: they also add BOS when the file does not say
_IGNORE_MERGES = {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"}

# Token texts llama.cpp treats as end-of-generation (llama-vocab.cpp, special_eog_ids).
_EOG_TEXTS = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
              "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
              "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
              "<｜end▁of▁sentence｜>", "[e~["}
# Auto-detected FIM tokens that llama.cpp also counts as end-of-generation.
_FIM_PAD = ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]")
_FIM_REP = ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>")
_FIM_SEP = ("<|file_sep|>",)


def _bytes_to_unicode() -> dict[int, int]:
    """GPT-2's byte -> printable codepoint map (the form byte-level vocabularies are stored in)."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out = {b: b for b in keep}
    n = 0
    for b in range(256):
        if b not in out:
            out[b] = 256 + n
            n += 1
    return out


BYTE_TO_CP = _bytes_to_unicode()
CP_TO_BYTE = {cp: b for b, cp in BYTE_TO_CP.items()}


def _pack(items: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    offs = np.zeros(len(items) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in items], out=offs[1:])
    return np.frombuffer(b"".join(items), dtype=np.uint8).copy(), offs


def _pow2(n: int) -> int:
    return 1 << max(10, int(n * 2 - 1).bit_length())


@attrs.define(eq=False)
class Vocab:
    """Everything the tokenizer needs; arrays are read-only after loading."""

    path: str
    model: str                 # "gpt2" (byte-level BPE) or "llama" (SentencePiece BPE)
    pre: str
    n_vocab: int
    bos_id: int | None
    eos_id: int | None
    add_bos: bool
    add_space_prefix: bool
    ignore_merges: bool        # a pre-token that is itself a token skips the merges (llama3 family)
    types: np.ndarray          # (n_vocab,) int32, llama.cpp token types
    piece_blob: np.ndarray     # decoded text of each token (llama.cpp token_to_piece, special=False)
    piece_offs: np.ndarray     # (n_vocab + 1,) int64
    text_blob: np.ndarray      # the stored text of each token (what special tokens match against)
    text_offs: np.ndarray
    eog: np.ndarray            # (k,) int64 end-of-generation ids
    special_ids: np.ndarray    # control / user-defined / unknown ids (llama.cpp cache_special_tokens)
    special_always: np.ndarray  # bool: split out even without parse_special (user-defined)
    # byte-level BPE
    byte_ids: np.ndarray       # (256,) int32 token of each single byte, -1 if none
    m_left: np.ndarray         # (n_merges,) int32 ids of each merge's parts and result, by rank
    m_right: np.ndarray
    m_result: np.ndarray
    pair_keys: np.ndarray      # hash (left, right) -> rank
    pair_vals: np.ndarray
    # SentencePiece BPE
    text_table: np.ndarray     # hash stored text -> id
    srank: np.ndarray          # (n_vocab,) int64 rank of each token's score, 0 = highest
    byte_tok: np.ndarray       # (256,) int32 <0xXX> token of each byte
    # Tokens in which U+2581 follows another character: the only merges that can cross the start of a
    # "▁word" (see kernels_encode.spm_fragments).  One entry per such place: token text and offset.
    cross_blob: np.ndarray
    cross_offs: np.ndarray
    cross_at: np.ndarray
    # byte-level vocabularies with ignore_merges: hash of each token's raw bytes -> id
    raw_table: np.ndarray
    raw_blob: np.ndarray
    raw_offs: np.ndarray

    @property
    def is_spm(self) -> bool:
        return self.model == "llama"

    def piece(self, token_id: int) -> bytes:
        return self.piece_blob[self.piece_offs[token_id]:self.piece_offs[token_id + 1]].tobytes()

    def text(self, token_id: int) -> bytes:
        return self.text_blob[self.text_offs[token_id]:self.text_offs[token_id + 1]].tobytes()

    # -- cache -----------------------------------------------------------------------------------------
    _ARRAYS = ("types", "piece_blob", "piece_offs", "text_blob", "text_offs", "eog", "special_ids",
               "special_always", "byte_ids", "m_left", "m_right", "m_result", "pair_keys", "pair_vals",
               "text_table", "srank", "byte_tok", "cross_blob", "cross_offs", "cross_at", "raw_table", "raw_blob",
               "raw_offs")
    _SCALARS = ("model", "pre", "n_vocab", "bos_id", "eos_id", "add_bos", "add_space_prefix", "ignore_merges")

    def save(self, path: Path) -> None:
        """Write the cache directory ``path`` (built beside it, then renamed into place whole)."""
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            (tmp / "meta.json").write_text(json.dumps({k: getattr(self, k) for k in self._SCALARS}))
            for k in self._ARRAYS:
                np.save(tmp / f"{k}.npy", np.ascontiguousarray(getattr(self, k)), allow_pickle=False)
            shutil.rmtree(path, ignore_errors=True)  # a damaged one
            os.replace(tmp, path)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process renamed its copy first, or no room
            raise

    @classmethod
    def load_cached(cls, model_path: str, path: Path) -> "Vocab":
        meta = json.loads((path / "meta.json").read_text())
        arrays = {}
        for k in cls._ARRAYS:
            f = path / f"{k}.npy"
            arrays[k] = np.load(f, mmap_mode="c" if f.stat().st_size >= MAP_BYTES else None, allow_pickle=False)
        return cls(path=model_path, **meta, **arrays)


def cache_path(model_path: str | Path) -> Path:
    p = Path(model_path).resolve()
    st = p.stat()
    key = hashlib.sha1(f"{p}|{st.st_size}|{st.st_mtime_ns}|{CACHE_VERSION}".encode()).hexdigest()[:20]
    return _cache_dir() / f"vocab-{key}"


def load_vocab(model_path: str | Path, use_cache: bool = True) -> Vocab:
    """The vocabulary of a GGUF file, from the cache when it is fresh."""
    p = Path(model_path)
    if not p.is_file():
        raise ModelError(f"model file not found: {p}")
    cpath = cache_path(p)
    if use_cache:
        try:
            return Vocab.load_cached(str(p), cpath)
        except FileNotFoundError:
            pass
        except Exception:  # noqa: BLE001 - a damaged or foreign cache file is rebuilt, never trusted
            pass
    vocab = build_vocab(p)
    if use_cache:
        try:
            vocab.save(cpath)
        except OSError:  # a read-only cache costs time, never correctness
            pass
    return vocab


def build_vocab(path: Path) -> Vocab:
    header = read_header(path, want_arrays=lambda k: k.startswith("tokenizer.ggml.")
                         and k not in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"))
    md = header.metadata
    model = md.get("tokenizer.ggml.model")
    if model not in ("gpt2", "llama"):
        raise ModelError(f"{path}: tokenizer model {model!r} is not supported by the bpe tokenizer "
                         f"(supported: 'gpt2' byte-level BPE, 'llama' SentencePiece BPE)")
    name = str(md.get("general.name", "")).lower()
    if "phi-3" in name or "phi3" in name:  # llama.cpp strips spaces after its special tokens (rstrip)
        raise ModelError(f"{path}: phi-3 vocabularies need llama.cpp's rstrip handling of special tokens, "
                         f"which the bpe tokenizer does not implement; use --plugin tokenizer=llama_cpp")
    pre = str(md.get("tokenizer.ggml.pre", "default"))
    if model == "gpt2" and pre not in PRE_TOKENIZERS:
        raise ModelError(f"{path}: unknown pre-tokenizer {pre!r} (tokenizer.ggml.pre); the bpe tokenizer "
                         f"implements {', '.join(sorted(PRE_TOKENIZERS))}. Use --plugin tokenizer=llama_cpp.")
    texts = string_array_bytes(path, "tokenizer.ggml.tokens")
    n = len(texts)
    types = md.get("tokenizer.ggml.token_type")
    types = (np.asarray(types, dtype=np.int32) if types is not None
             else np.full(n, T_NORMAL, dtype=np.int32))[:n]
    if types.shape[0] < n:
        raise ModelError(f"{path}: token_type has {types.shape[0]} entries for {n} tokens")
    texts = [t if t else f"[EMPTY_{i}]".encode() for i, t in enumerate(texts)]
    str_texts = [t.decode("utf-8", errors="replace") for t in texts]

    def key_id(name: str) -> int | None:
        key = f"tokenizer.ggml.{name}_token_id"
        if key not in md:
            return None
        v = header.int_value(key, lo=-2**63, hi=2**64 - 1)
        return v if 0 <= v < n else None  # llama.cpp ignores an id outside the vocabulary too

    by_text = {}
    for i, s in enumerate(str_texts):
        by_text.setdefault(s, i)
    eog = _eog_ids(md, key_id, by_text, types, str_texts)
    special = [i for i in range(n) if types[i] in (T_CONTROL, T_USER_DEFINED, T_UNKNOWN)]
    is_spm = model == "llama"
    pieces = _pieces(texts, types, is_spm)
    piece_blob, piece_offs = _pack(pieces)
    text_blob, text_offs = _pack(texts)
    empty_i32 = np.zeros(0, dtype=np.int32)
    byte_ids = np.full(256, -1, dtype=np.int32)
    byte_tok = np.full(256, -1, dtype=np.int32)
    m_left = m_right = m_result = empty_i32
    pair_keys = np.full(1, -1, dtype=np.int64)
    pair_vals = np.full(1, -1, dtype=np.int32)
    text_table = np.full(1, -1, dtype=np.int32)
    srank = np.zeros(n, dtype=np.int64)
    crossing: list[bytes] = []
    cross_at: list[int] = []
    if is_spm:
        esc = "\u2581".encode()
        for t in texts:
            k = t.find(esc, 1)
            while k > 0:
                if t[k - 3:k] != esc:  # a ▁ right after some other character
                    crossing.append(t)
                    cross_at.append(k)
                k = t.find(esc, k + 1)
        scores = md.get("tokenizer.ggml.scores")
        scores = (np.asarray(scores, dtype=np.float32) if scores is not None
                  else np.zeros(n, dtype=np.float32))[:n]
        _, inv = np.unique(-scores, return_inverse=True)  # equal scores share a rank
        srank = inv.astype(np.int64).reshape(-1)
        text_table = build_text_table(text_blob, text_offs, _pow2(n))
        for b in range(256):
            t = by_text.get(f"<0x{b:02X}>")
            if t is None:
                t = by_text.get(chr(b)) if b < 0x80 else None
            byte_tok[b] = -1 if t is None else t
    else:
        for b in range(256):
            t = by_text.get(chr(BYTE_TO_CP[b]))
            byte_ids[b] = -1 if t is None else t
        m_left, m_right, m_result = _merges(path, by_text)
        pair_keys, pair_vals = build_pair_table(m_left, m_right, _pow2(len(m_left)))
    ignore_merges = pre in _IGNORE_MERGES and not is_spm
    raw_blob, raw_offs = _pack([])
    raw_table = np.full(1, -1, dtype=np.int32)
    if ignore_merges:
        raw_blob, raw_offs = _pack(_raw_texts(str_texts))
        raw_table = build_text_table(raw_blob, raw_offs, _pow2(n))
    add_bos = header.bool_value("tokenizer.ggml.add_bos_token", is_spm or ignore_merges)
    asp = header.bool_value("tokenizer.ggml.add_space_prefix", is_spm)
    return Vocab(path=str(path), model=model, pre=pre, n_vocab=n, bos_id=key_id("bos"), eos_id=key_id("eos"),
                 add_bos=add_bos, add_space_prefix=asp, types=types, piece_blob=piece_blob,
                 piece_offs=piece_offs, text_blob=text_blob, text_offs=text_offs,
                 eog=np.array(sorted(eog), dtype=np.int64), special_ids=np.array(special, dtype=np.int64),
                 special_always=np.array([types[i] == T_USER_DEFINED and str_texts[i] not in _EOG_TEXTS  # llama.cpp re-marks those control
                                                  for i in special], dtype=bool),
                 byte_ids=byte_ids, m_left=m_left, m_right=m_right, m_result=m_result, pair_keys=pair_keys,
                 pair_vals=pair_vals, text_table=text_table, srank=srank, byte_tok=byte_tok,
                 cross_blob=_pack(crossing)[0], cross_offs=_pack(crossing)[1],
                 cross_at=np.array(cross_at, dtype=np.int64), ignore_merges=ignore_merges,
                 raw_table=raw_table, raw_blob=raw_blob, raw_offs=raw_offs)


def _eog_ids(md, key_id, by_text, types, str_texts) -> set[int]:
    eog = set()
    for name, cands in (("fim_pad", _FIM_PAD), ("fim_rep", _FIM_REP), ("fim_sep", _FIM_SEP)):
        t = key_id(name)
        if t is None:
            t = next((by_text[c] for c in cands if c in by_text), None)
        if t is not None:
            eog.add(t)
    eog.update(by_text[s] for s in _EOG_TEXTS if s in by_text)
    for name in ("eos", "eot", "eom"):
        t = key_id(name)
        if t is not None:
            eog.add(t)
    return eog


def _pieces(texts: list[bytes], types: np.ndarray, is_spm: bool) -> list[bytes]:
    """What llama.cpp's token_to_piece gives with special=False: control/unknown/unused -> nothing."""
    out = []
    unmap = {cp: chr(b) for cp, b in CP_TO_BYTE.items()}
    escaped = "\u2581".encode()
    for t, ty in zip(texts, types):
        if ty == T_NORMAL:
            if is_spm:
                out.append(t.replace(escaped, b" "))
            else:
                try:
                    out.append(t.decode("utf-8").translate(unmap).encode("latin-1"))
                except UnicodeError:  # a character outside the byte map: keep the text as it is
                    out.append(t)
        elif ty == T_USER_DEFINED:
            out.append(t)
        elif ty == T_BYTE:
            out.append(_byte_piece(t))
        else:
            out.append(b"")
    return out


def _byte_piece(text: bytes) -> bytes:
    """The byte a byte token ``<0xXX>`` stands for; nothing for a damaged one."""
    if len(text) == 6 and text[:3] == b"<0x":
        try:
            return bytes([int(text[3:5], 16)])
        except ValueError:
            pass
    return b""


def _raw_texts(str_texts: list[str]) -> list[bytes]:
    """The bytes each stored (byte-mapped) token text stands for; b"" where it is not byte-mapped text."""
    unmap = {cp: chr(b) for cp, b in CP_TO_BYTE.items()}
    out = []
    for s in str_texts:
        try:
            out.append(s.translate(unmap).encode("latin-1"))
        except UnicodeError:
            out.append(b"")
    return out


def _merges(path: Path, by_text: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        raw = string_array_bytes(path, "tokenizer.ggml.merges")
    except ModelError:
        raise ModelError(f"{path}: a 'gpt2' tokenizer without tokenizer.ggml.merges") from None
    n = len(raw)
    left = np.full(n, -1, dtype=np.int32)
    right = np.full(n, -1, dtype=np.int32)
    result = np.full(n, -1, dtype=np.int32)
    get = by_text.get
    for r, m in enumerate(raw):
        s = m.decode("utf-8", errors="replace")
        k = s.find(" ", 1)
        if k < 0:
            continue
        a, b = s[:k], s[k + 1:]
        ia, ib, ic = get(a), get(b), get(a + b)
        if ia is None or ib is None or ic is None:
            continue  # a merge whose parts or result are not tokens can never apply to token ids
        left[r] = ia
        right[r] = ib
        result[r] = ic
    return left, right, result
