"""WordPiece tokenization for encoder models: texts -> the int64 arrays an ONNX BERT graph takes.

The ``tokenizers`` library does the WordPiece work from the model's tokenizer.json.  Padding is turned off
(MiniLM's tokenizer.json pads every text to 128 tokens, 5-10x the work for a short query); a batch is padded
here to its own longest text.  Truncation happens at the model's max length and is reported per text.
"""
from __future__ import annotations

import os
from typing import Sequence

import attrs
import numpy as np

from ...errors import InputError, ModelError

#: A hard cap on one text's size before tokenization: beyond it the text is rejected rather than spending
#: seconds tokenizing what truncation would throw away anyway.
MAX_CHARS = 1_000_000
#: encoded once at load: plain words and punctuation any working WordPiece vocabulary can represent
_PROBE = "Hello, world: 42 tokens."


@attrs.frozen
class Batch:
    """One padded batch of encoded texts."""

    input_ids: np.ndarray       # (batch, seq) int64
    attention_mask: np.ndarray  # (batch, seq) int64, 1 on real tokens
    token_type_ids: np.ndarray  # (batch, seq) int64, zeros (single-segment inputs)
    lengths: tuple[int, ...]    # real tokens per text, [CLS] and [SEP] included
    truncated: tuple[bool, ...]


@attrs.define
class WordPiece:
    """A tokenizer.json-backed encoder with padding off and truncation at ``max_length``."""

    path: str
    max_length: int
    _tok: object = attrs.field(repr=False)
    # Preallocated masks for the single-text path: a slice of these is the whole input, no allocation.
    _ones: np.ndarray = attrs.field(repr=False)
    _zeros: np.ndarray = attrs.field(repr=False)

    @classmethod
    def from_file(cls, path: str | os.PathLike, max_length: int) -> "WordPiece":
        from tokenizers import Tokenizer

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ModelError(f"tokenizer not found: {path} (an encoder model needs its tokenizer.json beside it)")
        try:
            tok = Tokenizer.from_file(path)
            tok.no_padding()
            tok.enable_truncation(max_length)
            tok.encode(_PROBE)  # a tokenizer that cannot encode plain words (e.g. no [UNK]) fails here, not later
        except Exception as exc:  # the Rust side raises a plain Exception on malformed JSON
            raise ModelError(f"{path} is not a usable tokenizers tokenizer.json: {' '.join(str(exc).split())}"
                             ) from exc
        return cls(path, max_length, tok, np.ones((1, max_length), np.int64), np.zeros((1, max_length), np.int64))

    def _encode(self, text: str):
        try:
            return self._tok.encode(text)
        except Exception as exc:  # e.g. a character its vocabulary cannot represent and no [UNK] to fall back to
            raise ModelError(f"{self.path} could not encode the text: {' '.join(str(exc).split())}") from exc

    def encode_one(self, text: str) -> Batch:
        """The single-request fast path: one encode, one array, the masks are views."""
        enc = self._encode(text)
        ids = enc.ids
        n = len(ids)
        return Batch(np.array(ids, dtype=np.int64).reshape(1, n), self._ones[:, :n], self._zeros[:, :n],
                     (n,), (bool(enc.overflowing),))

    def encode_batch(self, texts: Sequence[str]) -> Batch:
        if len(texts) == 1:
            return self.encode_one(texts[0])
        try:
            encs = self._tok.encode_batch(texts)  # in Rust, GIL released (TOKENIZERS_PARALLELISM applies)
        except Exception as exc:
            raise ModelError(f"{self.path} could not encode the texts: {' '.join(str(exc).split())}") from exc
        lengths = tuple(len(e.ids) for e in encs)
        width = max(lengths)
        ids = np.zeros((len(encs), width), np.int64)  # 0 is [PAD] in BERT vocabularies; masked out anyway
        mask = np.zeros((len(encs), width), np.int64)
        for row, (enc, n) in enumerate(zip(encs, lengths)):
            ids[row, :n] = enc.ids
            mask[row, :n] = 1
        return Batch(ids, mask, np.zeros_like(ids), lengths, tuple(bool(e.overflowing) for e in encs))

    def count(self, text: str) -> int:
        """Tokens the model sees for ``text`` (after truncation), [CLS] and [SEP] included."""
        return len(self._encode(text).ids)

    def untruncated_count(self, text: str) -> int:
        enc = self._encode(text)
        return len(enc.ids) + sum(len(o.ids) - 2 for o in enc.overflowing)


def check_texts(texts: object) -> list[str]:
    """Validate a request's texts; returns them as a list.  Raises InputError with the offending index."""
    if isinstance(texts, (str, bytes)):
        raise InputError("texts must be a list of strings, not a single string: wrap it as [text]")
    try:
        items = list(texts)  # type: ignore[arg-type]
    except TypeError:
        raise InputError(f"texts must be a list of strings, got {type(texts).__name__}") from None
    if not items:
        raise InputError("no texts given: pass at least one non-empty string")
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise InputError(f"texts[{i}] is {type(t).__name__}, not a string")
        if not t.strip():
            raise InputError(f"texts[{i}] is empty (or only whitespace): there is nothing to encode")
        if len(t) > MAX_CHARS:
            raise InputError(f"texts[{i}] has {len(t):,} characters, over the {MAX_CHARS:,} limit; the model "
                             f"reads only its first few hundred tokens: send a shorter text")
    return items
