"""The direct lane's framing on a real socketpair: messages of any size, several in one read, the peer's end."""
from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from corert.isolation.lane import Lane


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    ours, theirs = Lane(a), Lane(b)
    yield ours, theirs
    ours.close()
    theirs.close()


def test_messages_arrive_whole_and_in_order_whatever_their_size(pair):
    ours, theirs = pair
    big = np.arange(300_000, dtype=np.float32)  # 1.2 MB: many reads, a grown buffer
    sent = [("done", 1, "small"), ("done", 2, big), ("done", 3, b"x" * 70_000), ("err", 4, ValueError("bad"))]
    sender = threading.Thread(target=lambda: [theirs.send(m) for m in sent])
    sender.start()
    got = [ours.recv() for _ in sent]
    sender.join(10)
    assert [m[:2] for m in got] == [m[:2] for m in sent]
    assert got[0][2] == "small" and got[2][2] == b"x" * 70_000 and str(got[3][2]) == "bad"
    np.testing.assert_array_equal(got[1][2], big)


def test_messages_sent_together_are_read_apart(pair):
    ours, theirs = pair
    for rid in range(50):  # all in the socket before the first read
        theirs.send(("done", rid, [rid] * rid))
    assert [ours.recv() for _ in range(50)] == [("done", rid, [rid] * rid) for rid in range(50)]
    assert not ours.readable(0.0)


def test_the_peers_end_is_eof_and_readable(pair):
    ours, theirs = pair
    theirs.send(("done", 1, None))
    theirs.sock.shutdown(socket.SHUT_RDWR)
    assert ours.readable(1.0) and ours.recv() == ("done", 1, None)
    assert ours.readable(1.0)
    with pytest.raises(EOFError):
        ours.recv()
