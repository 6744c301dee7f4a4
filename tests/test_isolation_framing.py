"""The host-worker framing on a real socketpair: messages of any size, several in one read, the peer's end."""
from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from corert.isolation.framing import Framed


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    ours, theirs = Framed(a), Framed(b)
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


def test_two_senders_frames_never_interleave(pair):
    """The main channel has several senders (the host's request threads; the worker's outbox and a query's
    answer): each message must arrive whole."""
    ours, theirs = pair
    blob = {t: bytes([t]) * 200_000 for t in (1, 2)}  # larger than the socket buffer: sent in pieces

    def send(t: int) -> None:
        for i in range(20):
            theirs.send(("done", t, i, blob[t]))

    senders = [threading.Thread(target=send, args=(t,)) for t in (1, 2)]
    for s in senders:
        s.start()
    got = [ours.recv() for _ in range(40)]
    for s in senders:
        s.join(10)
    assert all(m[3] == blob[m[1]] for m in got)
    assert [m[2] for m in got if m[1] == 1] == list(range(20)) == [m[2] for m in got if m[1] == 2]
