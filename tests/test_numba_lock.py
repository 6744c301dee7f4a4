"""One lock for numba's parallel layer: the bpe tokenizer's ``encode_batch`` and the native engine's forward
pass exclude each other (corert.numba_setup.PARALLEL_LOCK).

Each test holds one side inside its locked region on an event, starts the other side, waits until that
side's thread is parked on the ``with PARALLEL_LOCK`` line (read from its live frame, not guessed from a
sleep), then lets the first side go and checks the order in which the two ran.  Real model, real tokenizer.
"""
from __future__ import annotations

import inspect
import sys
import threading

import pytest

from corert import RuntimeConfig, numba_setup
from corert.engines.native import batching, engine as engine_module, session as session_module
from corert.engines.native.plugin import NativeEngine, NativeSession
from corert.interfaces import ThreadBudget
from corert.plugins.kv_cache.contiguous import ContiguousKV
from corert.plugins.tokenizer import bpe
from corert.plugins.tokenizer import kernels_encode
from corert.plugins.tokenizer.bpe import BpeTokenizer

BUDGET = ThreadBudget(cores=2, llama_threads=2, llama_batch_threads=2, ort_intra_op=1, ort_inter_op=1,
                      ort_spinning=False, numba_threads=2)
TEXTS = ["The capital of France is Paris.", "def fibonacci(n):\n    return n", "Once upon a time"] * 4
WAIT = 120.0  # seconds before a wait counts as a hang (the first calls compile)


@pytest.fixture(scope="module")
def model(smollm2):
    tok = BpeTokenizer.from_gguf(smollm2, "scalar")
    m = NativeEngine("scalar").load(smollm2, tokenizer=tok, kv_cache=ContiguousKV(), n_ctx=64, threads=BUDGET,
                                    config=RuntimeConfig(n_seqs=2))
    tok.encode_batch(TEXTS)  # compiled before the tests wait on anything
    warm = m.new_session()
    warm.eval(tok.encode(TEXTS[0]))
    warm.close()
    yield m
    m.close()


def _lock_line(fn) -> int:
    lines, first = inspect.getsourcelines(fn)
    return first + next(i for i, line in enumerate(lines) if "with PARALLEL_LOCK" in line)


def _wait_parked(thread: threading.Thread, fn) -> None:
    """Until ``thread`` waits to enter ``fn``'s ``with PARALLEL_LOCK`` (its innermost Python frame is on that
    line: the acquire itself is C).  Fails if it gets past the line or ends instead."""
    line, tick = _lock_line(fn), threading.Event()
    for _ in range(int(WAIT * 100)):
        frame = sys._current_frames().get(thread.ident)
        if frame is None:
            pytest.fail(f"{thread.name} finished without waiting for the lock")
        if frame.f_code is fn.__code__ and frame.f_lineno == line:
            return
        tick.wait(0.01)
    pytest.fail(f"{thread.name} never reached the lock in {fn.__qualname__}")


class _Pair:
    """Two threads: the holder parks inside its locked region (it sets ``inside``, then waits for ``go``);
    the waiter must then park on the lock line of ``waiter_fn``."""

    def __init__(self):
        self.inside, self.go = threading.Event(), threading.Event()
        self.errors: list[BaseException] = []

    def _start(self, name: str, fn) -> threading.Thread:
        def body():
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(exc)
        t = threading.Thread(target=body, name=name, daemon=True)
        t.start()
        return t

    def run(self, holder, waiter, waiter_fn, order: list) -> None:
        threads = [self._start("holder", holder)]
        try:
            assert self.inside.wait(WAIT), self.errors
            threads.append(self._start("waiter", waiter))
            _wait_parked(threads[1], waiter_fn)
            assert order == [] and numba_setup.PARALLEL_LOCK.locked()
        finally:
            self.go.set()
            for t in threads:
                t.join(WAIT)
        assert not self.errors, self.errors


def test_every_parallel_caller_uses_the_one_lock():
    assert bpe.PARALLEL_LOCK is numba_setup.PARALLEL_LOCK
    assert batching.PARALLEL_LOCK is numba_setup.PARALLEL_LOCK
    # the engine and its sessions import the lock when a model loads (registering them needs no numba)
    for module in (engine_module, session_module):
        source = inspect.getsource(module)
        assert "from ...numba_setup import PARALLEL_LOCK" in source and "Lock()" not in source, module.__name__


class _With:
    """``obj`` with some of its methods replaced (the engine's Transformer has slots: no monkeypatching)."""

    def __init__(self, obj, **methods):
        self._obj = obj
        self.__dict__.update(methods)

    def __getattr__(self, name):
        return getattr(self._obj, name)


def test_a_tokenizer_batch_waits_for_the_engine_forward(model, monkeypatch):
    order: list[str] = []
    pair = _Pair()
    real_forward, real_batch = model.transformer.forward, kernels_encode.bpe_batch

    def forward(*args):
        out = real_forward(*args)
        order.append("engine forward done")
        return out

    def bpe_batch(*args):
        order.append("tokenizer batch started")
        return real_batch(*args)

    want = model.tokenizer.encode_batch(TEXTS)
    ids = model.tokenizer.encode(TEXTS[0])
    def reserve(*args, **kwargs):  # the engine calls it with the lock held, just before its forward
        pair.inside.set()
        assert pair.go.wait(WAIT)
        return real_reserve(*args, **kwargs)

    real_reserve = model.kv.reserve
    monkeypatch.setattr(model, "transformer", _With(model.transformer, forward=forward))
    monkeypatch.setattr(model, "kv", _With(model.kv, reserve=reserve))
    monkeypatch.setattr(kernels_encode, "bpe_batch", bpe_batch)
    session, got = model.new_session(), []
    try:
        pair.run(lambda: session.eval(ids), lambda: got.append(model.tokenizer.encode_batch(TEXTS)),
                 BpeTokenizer.encode_batch, order)
    finally:
        session.close()
    assert order == ["engine forward done", "tokenizer batch started"]
    assert got == [want]


def test_an_engine_forward_waits_for_a_tokenizer_batch(model, monkeypatch):
    order: list[str] = []
    pair = _Pair()
    real_forward, real_batch = model.transformer.forward, kernels_encode.bpe_batch

    def forward(*args):
        order.append("engine forward started")
        return real_forward(*args)

    def bpe_batch(*args):  # runs on the compute thread, with the lock held by encode_batch
        pair.inside.set()
        assert pair.go.wait(WAIT)
        out = real_batch(*args)
        order.append("tokenizer batch done")
        return out

    ids = model.tokenizer.encode(TEXTS[1])
    monkeypatch.setattr(model, "transformer", _With(model.transformer, forward=forward))
    monkeypatch.setattr(kernels_encode, "bpe_batch", bpe_batch)
    session = model.new_session()
    try:
        pair.run(lambda: model.tokenizer.encode_batch(TEXTS), lambda: session.eval(ids), NativeSession._forward, order)
    finally:
        session.close()
    assert order == ["tokenizer batch done", "engine forward started"]
