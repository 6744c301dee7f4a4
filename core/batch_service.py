"""Continuous batching behind ``Runtime.generate``, for any engine: concurrent requests share forwards.

    service = BatchService(runner, n_seqs=8)      # runner: the engine's BatchingRunner (corert.interfaces)
    for token in service.generate(prompt_ids, params, is_eog):   # from any number of threads at once
        ...

One driver thread owns the engine's runner and steps it while any stream is live (each step runs through
``run``, by default directly on that driver thread; the Runtime uses the default, so batched forwards do
not queue on the scheduler, and the requests themselves only wait on their token queues); a request joins
between two steps and leaves when it finishes, is cancelled, or its consumer stops iterating (closing the
generator cancels the stream and frees its sequence slot).  Requests beyond ``n_seqs`` sequence slots wait
for a slot in arrival order.  A runner draws each stream's tokens exactly as that stream alone would, so
batching changes throughput, never output.

Where a first token's time went (queued for a slot, waiting for a running step, its own prompt rows):
``CORERT_LOG=debug`` logs every step and every request's first token (corert.batch_log).

A bad request (e.g. one that cannot fit the KV budget even alone) fails alone with its typed error; the
other streams go on.  An unexpected error in a forward fails every live request with it and leaves the
service ready for new ones.
"""
from __future__ import annotations

import collections
import itertools
import queue
import threading
import time
from typing import Callable, Iterator, Sequence

import attrs
import numpy as np

from . import batch_log
from .errors import CorertError, InputError
from .interfaces import BatchingRunner, BatchSpeculation, SamplingParams
from .sampling import Sampler

_END = object()


# -- what every engine's runner keeps per stream -----------------------------------------------------------
@attrs.define
class Stream:
    id: int
    seq: int  # the KV sequence slot it decodes in
    tokens: list[int]  # every id of the sequence (prompt + generated): what its K/V must hold
    done_upto: int  # how many of ``tokens`` have K/V in the sequence
    params: SamplingParams
    sample: Sampler  # batch runners draw many streams' tokens at once (corert.sampling.choose_rows)
    is_eog: Callable[[int], bool]
    n_prompt: int
    generated: list[int] = attrs.Factory(list)
    finish: str | None = None  # "stop" | "length" | "cancelled" | "error: ..."
    recomputed: int = 0  # positions evaluated again after an eviction (native paged store)
    drafted: int = 0  # draft rows verified for it (speculation inside the batch)
    accepted: int = 0  # of which accepted

    @classmethod
    def start(cls, sid: int, seq: int, ids: list[int], params: SamplingParams, n_ctx: int,
              is_eog: Callable[[int], bool]) -> "Stream":
        """A stream over ``ids`` whose max_tokens fits the context; its tokens drawn through the Sampler."""
        max_new = min(params.max_tokens, n_ctx - len(ids))
        return cls(sid, seq, ids, 0, attrs.evolve(params, max_tokens=max_new), Sampler(params), is_eog, len(ids))

    def accept(self, logits: np.ndarray) -> tuple[int, str | None]:
        """Draw the next token from its logits row; the token and why the stream ends with it (or None)."""
        return self.take(self.sample(logits))

    def take(self, tok: int) -> tuple[int, str | None]:
        """Append a token chosen for it (drawn here, or a verified draft); why the stream ends with it."""
        self.generated.append(tok)
        if self.is_eog(tok):
            return tok, "stop"
        if len(self.generated) >= self.params.max_tokens:
            return tok, "length"
        self.tokens.append(tok)
        return tok, None


class StreamTable:
    """The live and finished streams of a runner, and the verbs of :class:`corert.interfaces.BatchingRunner`
    that only touch them; a runner gives its sequence back in ``_release``."""

    def __init__(self) -> None:
        self._ids = itertools.count()
        self.streams: dict[int, Stream] = {}
        self.finished: dict[int, Stream] = {}
        self.steps = 0
        self.rows = 0  # positions evaluated so far (a reused prefix is not evaluated)

    def cancel(self, sid: int) -> None:
        st = self.streams.get(sid)
        if st is not None:
            self._finish(st, "cancelled")

    @property
    def active(self) -> bool:
        return bool(self.streams)

    def result(self, sid: int) -> Stream:
        return self.finished[sid]

    def _finish(self, st: Stream, reason: str) -> None:
        st.finish = reason
        self._release(st)
        self.streams.pop(st.id, None)
        self.finished[st.id] = st

    def _release(self, st: Stream) -> None:
        """Free the stream's sequence slot in the runner's own KV (each engine's runner defines it)."""
        raise NotImplementedError(f"{type(self).__name__} must define _release")


def check_prompt(ids: list[int], n_vocab: int, n_ctx: int) -> None:
    """A prompt a runner can serve: non-empty, ids in the vocabulary, room for one generated token."""
    if not ids:
        raise InputError("the prompt is empty")
    if min(ids) < 0 or max(ids) >= n_vocab:
        raise InputError(f"token ids must be in [0, {n_vocab})")
    if len(ids) >= n_ctx:
        raise InputError(f"the prompt has {len(ids)} tokens; the context holds {n_ctx}")


class _Request:
    def __init__(self, ids: list[int], params: SamplingParams, is_eog: Callable[[int], bool],
                 speculation: BatchSpeculation | None):
        self.ids, self.params, self.is_eog, self.speculation = ids, params, is_eog, speculation
        self.out: queue.SimpleQueue = queue.SimpleQueue()  # one put per token: the C queue, no Python locks
        self.sid: int | None = None
        self.cancelled = False
        self.times = batch_log.RequestTimes() if batch_log.enabled() else None  # for the debug log only


class BatchService:
    def __init__(self, runner: BatchingRunner, n_seqs: int, run: Callable | None = None):
        self.runner = runner
        self.n_seqs = n_seqs
        self._run = run or (lambda fn: fn())  # how a step is executed (default: here, on the driver thread)
        self._lock = threading.Condition()
        self._waiting: collections.deque[_Request] = collections.deque()
        self._live: dict[int, _Request] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self.peak_streams = 0  # most streams decoded in one forward so far (for stats and tests)

    # -- the request side --------------------------------------------------------------------------------
    def generate(self, prompt_ids: Sequence[int], params: SamplingParams,
                 is_eog: Callable[[int], bool], speculation: BatchSpeculation | None = None) -> Iterator[int]:
        req = _Request([int(t) for t in prompt_ids], params, is_eog, speculation)
        with self._lock:
            if self._closed:
                raise CorertError("the batching service is closed")
            self._waiting.append(req)
            if self._thread is None:
                self._thread = threading.Thread(target=self._drive, name="corert-batching", daemon=True)
                self._thread.start()
            self._lock.notify()
        return self._tokens(req)

    def _tokens(self, req: _Request) -> Iterator[int]:
        try:
            while (item := req.out.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            with self._lock:
                req.cancelled = True  # the driver drops it at the next step (a no-op once finished)
                self._lock.notify()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # -- the driver thread -------------------------------------------------------------------------------
    def _admit(self) -> int:
        """Under the lock: drop cancelled streams, let waiting requests take free sequence slots; how many
        joined."""
        joined = 0
        for sid, req in list(self._live.items()):
            if req.cancelled:
                self.runner.cancel(sid)
                self.runner.finished.pop(sid, None)  # nobody reads a cancelled stream's result: keep none
                del self._live[sid]
        while self._waiting and len(self._live) < self.n_seqs:
            req = self._waiting.popleft()
            if req.cancelled:
                continue
            try:
                # only a runner that verifies drafts gets them (the Runtime asks the engine's capabilities)
                extra = {} if req.speculation is None else {"speculation": req.speculation}
                req.sid = self.runner.add(req.ids, req.params, req.is_eog, **extra)
            except CorertError as exc:
                req.out.put(exc)
                continue
            self._live[req.sid] = req
            joined += 1
            if req.times is not None:
                req.times.admit(self.runner.steps)
        return joined

    def _drive(self) -> None:
        while True:
            with self._lock:
                joined = self._admit()
                while not self._live and not self._closed:
                    self._lock.wait()
                    joined += self._admit()
                waiting = len(self._waiting)
                if self._closed:
                    for req in [*self._live.values(), *self._waiting]:
                        req.out.put(CorertError("the batching service was closed"))
                    return
            self.peak_streams = max(self.peak_streams, len(self.runner.streams))
            tracing = batch_log.enabled()
            if tracing:
                streams, rows, t0 = len(self.runner.streams), self.runner.rows, time.perf_counter()
            try:
                produced = self._run(self.runner.step)
            except InputError as exc:  # the runner failed the one stream at fault; the rest go on
                self._fail(exc, only_finished=True)
                continue
            except BaseException as exc:  # noqa: BLE001 - delivered to the requests, not lost in a thread
                self._fail(exc, only_finished=False)
                continue
            if tracing:
                batch_log.step(self.runner.steps, self.runner.rows - rows, streams, joined, waiting, len(produced),
                               time.perf_counter() - t0)
            for sid, token in produced:
                req = self._live.get(sid)
                if req is not None:
                    req.out.put(token)
                    if req.times is not None:
                        batch_log.first_token(sid, req.times, self.runner.steps)
                        req.times = None  # once: its first token
            self._retire()

    def _retire(self) -> None:
        with self._lock:
            for sid in [s for s in self._live if s in self.runner.finished]:
                self._live.pop(sid).out.put(_END)
                self.runner.finished.pop(sid, None)

    def _fail(self, exc: BaseException, only_finished: bool) -> None:
        with self._lock:
            for sid, req in list(self._live.items()):
                if only_finished and sid not in self.runner.finished:
                    continue
                if sid in self.runner.streams:
                    self.runner.cancel(sid)
                self.runner.finished.pop(sid, None)
                del self._live[sid]
                req.out.put(exc)
