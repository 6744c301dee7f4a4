"""Streaming detokenization: token pieces are bytes, and a UTF-8 character may span several tokens."""
from __future__ import annotations

from typing import Callable


def _complete_prefix_len(buf: bytes | bytearray) -> int:
    """Length of the longest prefix of ``buf`` that does not end inside a UTF-8 sequence that could still
    be completed by more bytes.  Bytes that can never become valid are left to the decoder (U+FFFD)."""
    n = len(buf)
    # Look back at most 3 bytes for the lead byte of an unfinished sequence.
    for back in range(1, min(4, n) + 1):
        b = buf[n - back]
        if b & 0xC0 == 0x80:  # continuation byte: keep looking for the lead
            continue
        need = 2 if b & 0xE0 == 0xC0 else 3 if b & 0xF0 == 0xE0 else 4 if b & 0xF8 == 0xF0 else 1
        if need > back:  # the sequence starting here is still short: hold it back
            return n - back
        return n
    return n


class Utf8Stream:
    """Turns a stream of token ids into text that never ends in half a character.

    Concatenating every ``feed`` result and the final ``flush`` equals decoding all the bytes at once with
    ``errors="replace"``.
    """

    __slots__ = ("_piece", "_pending")

    def __init__(self, token_bytes: Callable[[int], bytes]):
        self._piece = token_bytes
        self._pending = bytearray()

    def feed(self, token_id: int) -> str:
        self._pending += self._piece(token_id)
        cut = _complete_prefix_len(self._pending)
        if cut == 0:
            return ""
        text = self._pending[:cut].decode("utf-8", errors="replace")
        del self._pending[:cut]
        return text

    def flush(self) -> str:
        text = self._pending.decode("utf-8", errors="replace")
        self._pending.clear()
        return text
