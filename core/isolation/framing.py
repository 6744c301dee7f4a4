"""The one framing of every message between the host and a worker, on both of their sockets: the main
channel (requests, stream chunks, heartbeats) and the direct lane (an encoder's request, whose caller sends it
and reads its own answer: no reader thread to wake).

A message is a pickle (protocol 5, so a numpy array is one copy) after its 4-byte length, sent with one
``sendmsg`` and read with ``recv_into`` a reused buffer: one system call each way for a small message, and
messages that arrived together (a burst of stream chunks) come out of one read.
"""
from __future__ import annotations

import math
import pickle
import select
import socket
import struct
import threading
from typing import Any

_LEN = struct.Struct("<I")
_BUF = 1 << 16  # an embed answer for a few texts fits: read in one recv


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
        data = pickle.dumps(msg, protocol=5)
        head = _LEN.pack(len(data))
        with self._send_lock:  # two senders' frames must not interleave
            sent = self.sock.sendmsg([head, data])
            if sent < len(head) + len(data):  # a signal cut a large send short: send the rest
                self.sock.sendall((head + data)[sent:])

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
                    with memoryview(self._buf) as view:
                        msg = pickle.loads(view[self._start + _LEN.size:self._start + need])
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
