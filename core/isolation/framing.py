"""The one framing of every message between the host and a worker, on both of their sockets: the main
channel (requests, stream chunks, heartbeats) and the direct lane (an encoder's request, whose caller sends it
and reads its own answer: no reader thread to wake).

A frame is a 4-byte length, then its body: a pickle (protocol 5, so a numpy array is one copy), a token
frame -- a stream's plain pieces of text and their token ids in a compact binary form (``b"T"``, then per
piece its request id, id count, text length, ids and UTF-8 text), which is what a decoding worker sends
for nearly every token and costs no pickling -- or an embed answer's frame (``b"E"``, embed_frame.py).  Frames leave with one ``sendmsg`` (several at once, too) and
are read with ``recv_into`` a reused buffer: one system call each way, and frames that arrived together (a
burst of stream chunks) come out of one read.
"""
from __future__ import annotations

import math
import pickle
import select
import socket
import struct
import threading
from typing import Any, Sequence

from . import embed_frame

_LEN = struct.Struct("<I")
_BUF = 1 << 16  # an embed answer for a few texts fits: read in one recv
_TOKENS = 0x54  # b"T": a token frame; a pickle (protocol 2+) starts with 0x80
_PIECE = struct.Struct("<QHI")  # request id, number of token ids, bytes of text; then the ids, the text
_ONE_ID_PIECE = struct.Struct("<QHIi")  # the same with its one id: nearly every piece


def token_frame(pieces: Sequence[tuple[int, Sequence[int], str]]) -> bytes:
    """The body of a token frame: ``(request id, token ids, text)`` per piece; :meth:`Framed.recv` gives
    it back as ``("tokens", [(rid, ids, text), ...])`` with ``ids`` a tuple."""
    parts = [b"T"]
    for rid, ids, text in pieces:
        data = text.encode("utf-8", "surrogatepass")  # as pickle does: a lone surrogate survives
        n = len(ids)
        parts.append(_ONE_ID_PIECE.pack(rid, 1, len(data), ids[0]) if n == 1 else
                     struct.pack(f"<QHI{n}i", rid, n, len(data), *ids))
        parts.append(data)
    return b"".join(parts)


def _read_tokens(buf: bytearray, start: int, end: int) -> tuple:
    pieces = []
    pos = start + 1
    while pos < end:
        rid, n, size = _PIECE.unpack_from(buf, pos)
        pos += _PIECE.size
        ids = struct.unpack_from(f"<{n}i", buf, pos)
        pos += 4 * n
        pieces.append((rid, ids, buf[pos:pos + size].decode("utf-8", "surrogatepass")))
        pos += size
    return ("tokens", pieces)


class Framed:
    """One end of a socket to a worker or to the host: ``send`` a tuple (from any thread), ``recv`` the next
    one (EOFError when the peer is gone; one reader at a time)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._send_lock = threading.Lock()
        self._buf = bytearray(_BUF)
        self._start = self._end = 0  # unread bytes: _buf[_start:_end]
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, msg: tuple) -> None:
        self.send_bodies([pickle.dumps(msg, protocol=5)])

    def send_bodies(self, bodies: Sequence[bytes]) -> None:
        """Send frames with these bodies (pickles, token frames) in one system call."""
        parts = []
        for body in bodies:
            parts.append(_LEN.pack(len(body)))
            parts.append(body)
        with self._send_lock:  # two senders' frames must not interleave
            sent = self.sock.sendmsg(parts)
            total = sum(map(len, parts))
            if sent < total:  # a signal or a full socket cut a large send short: send the rest
                self.sock.sendall(b"".join(parts)[sent:])

    def readable(self, timeout: float) -> bool:
        """True when a message (or the peer's end) is ready to read within ``timeout`` seconds."""
        # poll counts whole milliseconds: round up, so a wait never ends before its deadline
        return self._start < self._end or bool(self._poll.poll(max(0, math.ceil(timeout * 1e3))))

    def recv(self) -> Any:
        while True:
            need = _LEN.size
            if self._end - self._start >= need:
                need += _LEN.unpack_from(self._buf, self._start)[0]
                if self._end - self._start >= need:
                    body = self._start + _LEN.size
                    if self._buf[body] == _TOKENS:
                        msg = _read_tokens(self._buf, body, self._start + need)
                    elif self._buf[body] == embed_frame.TAG:
                        msg = embed_frame.read_embed(self._buf, body, self._start + need)
                    else:
                        with memoryview(self._buf) as view:
                            msg = pickle.loads(view[body:self._start + need])
                    self._start += need
                    if self._start == self._end:
                        self._start = self._end = 0
                    return msg
            if self._start + need > len(self._buf):
                self._make_room(need)
            with memoryview(self._buf) as view:
                got = self.sock.recv_into(view[self._end:])
            if not got:
                raise EOFError("the peer closed the socket")
            self._end += got

    def _make_room(self, need: int) -> None:
        """Move the unread bytes to the front, in a buffer of at least ``need`` bytes (grown for a large
        message)."""
        unread = bytes(self._buf[self._start:self._end])
        if need > len(self._buf):
            self._buf = bytearray(max(need, 2 * len(self._buf)))
        self._buf[:len(unread)] = unread
        self._start, self._end = 0, len(unread)

    def close(self) -> None:
        try:
            self._poll.unregister(self.sock.fileno())
        except (KeyError, ValueError, OSError):
            pass
        self.sock.close()
