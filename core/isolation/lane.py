"""The direct lane: a second socket to a worker on which one caller at a time sends a request and reads its
answer itself.

On the main channel an answer wakes the host's reader thread, which wakes the waiting caller: two wake-ups
and a GIL hand-off per request, most of an embed's round trip on a loaded machine.  On the lane the caller
blocks in ``recv`` until its answer arrives, and the worker answers from the thread that read the request.
A message is one ``sendmsg`` (a 4-byte length, then the pickle, protocol 5 so a numpy array is one copy)
and is read with ``recv_into`` a reused buffer: one system call each way for a small message.
"""
from __future__ import annotations

import math
import pickle
import select
import socket
import struct
from typing import Any

_LEN = struct.Struct("<I")
_BUF = 1 << 16  # an embed answer for a few texts fits: read in one recv


class Lane:
    """One end of a lane's socket: ``send`` a tuple, ``recv`` the next one (EOFError when the peer is gone).
    Not thread-safe: its users take turns (the host: the model's request slot; the worker: one thread)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._buf = bytearray(_BUF)
        self._start = self._end = 0  # unread bytes: _buf[_start:_end]
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, msg: tuple) -> None:
        data = pickle.dumps(msg, protocol=5)
        self.sock.sendmsg([_LEN.pack(len(data)), data])  # blocking: sendmsg sends it all or raises

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
                raise EOFError("the lane's peer closed it")
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
