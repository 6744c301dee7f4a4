"""The host-worker framing on a real socketpair: messages of any size, several in one read, token frames, a
frame split across reads, the peer's end."""
from __future__ import annotations

import pickle
import socket
import struct
import threading
import time

import attrs
import numpy as np
import pytest

from corert.engines.onnx.results import EmbedResult, InputInfo, Timings
from corert.isolation.embed_frame import embed_body
from corert.isolation.framing import Framed, token_frame
from corert.results import StreamChunk, TokenLogprob


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
    """The main channel has several senders (the host's request threads; the worker's request threads, its
    heartbeat and a query's answer): each message must arrive whole."""
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


def test_token_frames_carry_several_pieces_and_mix_with_pickles(pair):
    """A worker's burst (several streams' tokens in one frame), pieces of several ids, text that is not
    ASCII (and a lone surrogate, as pickle keeps it), between pickled messages, in one system call."""
    ours, theirs = pair
    pieces = [(0, (17,), " keeper"), (2**40, (1, 2, 3), "naïve ☃ 🦀"), (5, (-1,), ""), (6, (9,), "\ud83e")]
    theirs.send_bodies([pickle.dumps(("hb",)), token_frame(pieces), token_frame(pieces[:1])])
    theirs.send(("done", 0, None))
    assert ours.recv() == ("hb",)
    assert ours.recv() == ("tokens", pieces)
    assert ours.recv() == ("tokens", pieces[:1])
    assert ours.recv() == ("done", 0, None)


def test_a_frame_split_across_reads_comes_out_whole(pair):
    """Bytes trickle in (a frame's length, half its body, the rest with the next frame's start): each
    frame is read once it is whole."""
    ours, theirs = pair
    frames = [token_frame([(rid, (rid, rid + 1), "x" * rid)]) for rid in range(1, 40)]
    stream = b"".join(struct.pack("<I", len(f)) + f for f in frames)
    got = []
    reader = threading.Thread(target=lambda: got.extend(ours.recv() for _ in frames))
    reader.start()
    for i in range(0, len(stream), 7):  # raw bytes, 7 at a time: every frame boundary falls mid-read
        theirs.sock.sendall(stream[i:i + 7])
    reader.join(10)
    assert got == [("tokens", [(rid, (rid, rid + 1), "x" * rid)]) for rid in range(1, 40)]


def _wait_for(cond, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.001)


def test_the_workers_chunks_put_while_the_socket_is_busy_leave_in_one_frame(pair):
    """Three request threads emit a token each while another send holds the socket: the first to get it
    sends all three in one token frame (no chunk waits for a later one); a chunk that is more than text and
    ids (logprobs here) makes its frame a pickle, which keeps it whole."""
    from corert.isolation.worker import _Sender

    ours, theirs = pair
    sender = _Sender(theirs)
    senders = []
    with sender._lock:  # the socket is busy
        for rid in range(3):
            senders.append(threading.Thread(target=sender.chunk, args=(rid, StreamChunk(f"t{rid}", (rid,)))))
            senders[-1].start()
            _wait_for(lambda: len(sender._ready) == rid + 1)
    for t in senders:
        t.join(10)
    assert ours.recv() == ("tokens", [(rid, (rid,), f"t{rid}") for rid in range(3)])
    assert not ours.readable(0.0)  # the two others found their chunks sent
    lp = (TokenLogprob(5, b"x", -0.5, ()),)
    sender.chunk(7, StreamChunk("x", (5,), logprobs=lp))
    assert ours.recv() == ("chunks", [(7, StreamChunk("x", (5,), logprobs=lp))])


def test_a_stream_chunks_fields_are_the_ones_the_token_frame_checks():
    """The token frame carries a chunk's text and ids; the worker sends every other chunk pickled, telling
    them apart by these fields (worker._plain).  A new StreamChunk field must be checked there too."""
    assert [f.name for f in attrs.fields(StreamChunk)] == ["text", "token_ids", "finish_reason", "completion",
                                                          "logprobs"]


def test_embed_frames_carry_the_whole_result_and_mix_with_pickles(pair):
    """An embed answer as raw vectors: rows, token counts, truncation, model name (not ASCII), max_length and
    timings come back equal; frames of 1 and 3 rows and a pickle in between; a later frame does not change
    an earlier answer's rows (they are copied out of the reused buffer)."""
    ours, theirs = pair
    rng = np.random.default_rng(7)
    one = EmbedResult(rng.standard_normal((1, 384), dtype=np.float32), (InputInfo(9, False),), "minilm-l6",
                      256, Timings(0.125, 1.5, 1.75))
    three = EmbedResult(rng.standard_normal((3, 8), dtype=np.float32),
                        (InputInfo(2, False), InputInfo(256, True), InputInfo(0, False)), "modèle ☃", 256,
                        Timings(1e-3, 2.0, 3.0))
    theirs.send_bodies([embed_body(2**40, one), pickle.dumps(("hb",)), embed_body(3, three)])
    got = [ours.recv() for _ in range(3)]
    assert got[1] == ("hb",)
    for (kind, rid, result), (want_rid, want) in zip((got[0], got[2]), ((2**40, one), (3, three))):
        assert (kind, rid) == ("done", want_rid) and result == want  # attrs eq: every field but the rows
        np.testing.assert_array_equal(result.embeddings, want.embeddings)
        assert result.embeddings.dtype == np.float32 and result.embeddings.flags.owndata


def test_an_answer_that_is_not_float32_rows_goes_as_a_pickle():
    """embed_body declines what it cannot carry exactly: a classify answer, float64 rows, one row as 1-D."""
    info, t = (InputInfo(1, False),), Timings(0.0, 0.0, 0.0)
    assert embed_body(1, ("not", "an", "EmbedResult")) is None
    assert embed_body(1, EmbedResult(np.zeros((1, 4)), info, "m", 8, t)) is None
    assert embed_body(1, EmbedResult(np.zeros(4, dtype=np.float32), info, "m", 8, t)) is None
    assert embed_body(1, EmbedResult(np.zeros((1, 4), dtype=np.float32), info, "m", 8, t)) is not None
