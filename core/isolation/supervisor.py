"""One supervised model: at most one worker process at a time, the host-side queue of requests waiting for
a slot in it, and the restart policy.

A request takes a slot (``capacity``: the model's continuous-batching width, else 1), in priority order, once
the worker is ready; everything behind it waits here, in the host, so when a worker dies only the requests
it was serving fail (:class:`corert.errors.WorkerCrashed`) and the waiting ones go to its replacement.  A
worker that dies while serving is restarted at once (then after a growing backoff); more than
``max_restarts`` crashes within ``restart_window_s`` mark the model failed.  With ``standby`` on, a second
worker waits with everything but the model loaded, so a restart costs the model's load only; it prepares at
idle priority, and is taken over only once prepared (one that dies as it takes over fails no request: the
requests waiting for it start a fresh worker).
"""
from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import threading
import time
from typing import Any, Callable

import attrs

from ..cancel import CancelToken
from ..config import WorkerConfig
from ..errors import TaskTimeoutError, WorkerCrashed
from ..interfaces import PRIORITIES
from ..results import StreamChunk
from .channel import WorkerProcess, describe_exit

_RANK = {p: i for i, p in enumerate(PRIORITIES)}
_POLL_S = 0.05  # how often a waiting request looks at its cancel token and deadline
_REAP_WAIT_S = 15.0  # a dead worker's reader thread reports its exit within this (it kills one stuck 5 s)


@attrs.define
class Pending:
    """One request sent to a worker, until its result, its error or the worker's death."""

    proc: WorkerProcess
    emit: Callable[[Any], None] | None
    done: threading.Event = attrs.field(factory=threading.Event)
    result: Any = None
    error: BaseException | None = None

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        if not self.done.is_set():
            self.result, self.error = result, error
            self.done.set()


class DirectReader:
    """A stream whose consumer reads its own chunks from the worker's socket (chunk_stream.Channel.read_with):
    the token reaches the caller's thread without a hand-off from the reader thread.  Only while its request
    is the worker's one request (capacity 1): two consumers sharing the socket would hold up each other's
    tokens.  The reader thread keeps supervising: it reaps the worker and drains what a consumer leaves."""

    def __init__(self, proc: WorkerProcess, pending: Pending):
        self.proc, self.pending = proc, pending
        self._lock = threading.Lock()
        self._joined = self._left = False

    def pump(self, idle: Callable[[], bool]) -> bool:
        with self._lock:
            if self._left:
                return False
            if not self._joined:  # the first read: from now on the reader thread steps aside
                self._joined = True
                self.proc.join_direct()
        return self.proc.pump(lambda: idle() and not self.pending.done.is_set())

    def leave(self) -> None:
        with self._lock:
            if self._joined and not self._left:
                self.proc.leave_direct()
            self._left = True


class SupervisedModel:
    def __init__(self, label: str, spec: dict[str, Any], cfg: WorkerConfig, capacity: int):
        self.label, self.spec, self.cfg, self.capacity = label, spec, cfg, capacity
        self._cond = threading.Condition()
        self.proc: WorkerProcess | None = None
        #: a worker started ahead of time (interpreter, imports, tokenizer: all but the model), which takes
        #: over when ``proc`` dies, so a restart costs only the model's load
        self._standby: WorkerProcess | None = None
        #: stopped -> starting -> ready -> (crash) restarting -> starting ...; failed is final
        self.state = "stopped"
        self.failed_reason: str | None = None
        self.loaded_info: dict[str, Any] = {}
        self.restarts = 0
        self._attempt = 0
        self._start_error: tuple[int, BaseException] | None = None
        self._crashes: collections.deque[float] = collections.deque()
        self._promoted: WorkerProcess | None = None  # the standby that took over, until it is ready
        self._inflight: dict[int, Pending] = {}
        self._busy = 0
        self._waiting: list[tuple[int, int]] = []
        self._tickets = itertools.count()
        self._rids = itertools.count()
        self._closed = False

    # -- the worker's lifetime ----------------------------------------------------------------------------
    def _start(self) -> None:
        self._attempt += 1
        self.state = "starting"
        standby = self._standby
        self._promoted = None
        if standby is not None and standby.alive() and standby.prepared:
            self.proc, self._standby = standby, None
            self._promoted = standby
        else:  # one still preparing does so at idle priority: a new worker at ours starts sooner, and it stays
            self._standby = standby if standby is not None and standby.alive() else None
            self.proc = self._spawn(standby=False)
        self.proc.send(("load",))

    def _spawn(self, standby: bool) -> WorkerProcess:
        """``standby``: it prepares at idle priority (nobody waits for it; the serving worker needs the cores)."""
        return WorkerProcess(self.label, {**self.spec, "standby": standby}, self._on_message, self._on_exit)

    def _on_message(self, proc: WorkerProcess, msg: tuple) -> None:
        kind = msg[0]
        if kind == "hb":
            return
        if kind == "standby":
            proc.prepared = True
            return
        # under the lock, a chunk cannot reach a request that has already ended (a deadline, a cancel)
        with self._cond:
            if kind == "tokens":  # a token frame: the plain chunks, nearly every token
                for rid, ids, text in msg[1]:
                    pending = self._inflight.get(rid)
                    if pending is not None and pending.emit is not None:
                        pending.emit(StreamChunk(text, ids))
            elif kind == "chunks":
                for rid, chunk in msg[1]:
                    pending = self._inflight.get(rid)
                    if pending is not None and pending.emit is not None:
                        pending.emit(chunk)
            elif kind in ("done", "err"):
                pending = self._inflight.pop(msg[1], None)
                if pending is not None:
                    pending.finish(*((msg[2], None) if kind == "done" else (None, msg[2])))
            elif kind == "ready" and proc is self.proc:
                self.state, self.loaded_info = "ready", msg[1]
                self._cond.notify_all()
                if self.cfg.standby and self._standby is None and not self._closed:
                    self._standby = self._spawn(standby=True)
            elif kind == "fail" and proc is self.proc:
                self._start_error = (self._attempt, msg[1])

    def _on_exit(self, proc: WorkerProcess, code: int | None) -> None:
        how = describe_exit(code)
        if proc.kill_reason:
            how += f" (the host killed it: {proc.kill_reason})"
        message = f"the worker for {self.label} (pid {proc.pid}) {how}; its log: {proc.log_path}"
        with self._cond:
            for rid, pending in list(self._inflight.items()):
                if pending.proc is proc:
                    del self._inflight[rid]
                    pending.finish(error=WorkerCrashed(message))
            if proc is self._standby:
                self._standby = None
            if proc is not self.proc:
                return
            self.proc = None
            was_ready, self.state = self.state == "ready", "stopped"
            self._cond.notify_all()
            if self._closed:
                return
            if not was_ready and self._start_error is not None and self._start_error[0] == self._attempt:
                return  # the model failed to load (a typed error): the next request tries again
            if not was_ready and proc is self._promoted:
                # a standby that died as it took over (killed with the worker it replaced, most likely: it
                # was alive when that one's death was handled) says nothing of the model: the requests
                # waiting for it start a fresh worker, whose own start error they get if it fails too
                self._crashes.append(time.monotonic())
                return
            if not was_ready:
                limit = self.spec["limits"].memory
                hint = (f" (its address space is limited to {limit >> 20} MiB by worker.memory)"
                        if limit is not None else "")
                self._start_error = (self._attempt, WorkerCrashed(f"{message}, while loading its model{hint}"))
            now = time.monotonic()
            self._crashes.append(now)
            while self._crashes and self._crashes[0] < now - self.cfg.restart_window_s:
                self._crashes.popleft()
            if len(self._crashes) > self.cfg.max_restarts:
                self.state = "failed"
                self.failed_reason = (f"{self.label} is marked failed: its worker crashed {len(self._crashes)} "
                                      f"times within {self.cfg.restart_window_s} s (last: {message}); fix the "
                                      f"cause, then start a new Runtime")
            elif was_ready:
                # a worker that served and died is replaced now; waiting requests go to the new one
                self.state = "restarting"
                delay = 0.0 if len(self._crashes) <= 1 else min(5.0, 0.25 * 2 ** (len(self._crashes) - 2))
                timer = threading.Timer(delay, self._restart)
                timer.daemon = True
                timer.start()

    def _restart(self) -> None:
        with self._cond:
            if self.state == "restarting" and not self._closed:
                self.restarts += 1
                self._start()

    # -- requests -----------------------------------------------------------------------------------------
    def _acquire(self, priority: str, token: CancelToken) -> WorkerProcess:
        """A slot in a ready worker (starting one if none runs), in priority order."""
        ticket = (_RANK.get(priority, 1), next(self._tickets))
        mine: int | None = None  # the start attempt this request waits for
        with self._cond:
            heapq.heappush(self._waiting, ticket)
            try:
                while True:
                    if self.state == "failed":
                        raise WorkerCrashed(self.failed_reason)
                    if self._closed:
                        raise WorkerCrashed(f"the runtime was closed while a request on {self.label} waited")
                    if self.state == "stopped":
                        if mine is not None and self._start_error and self._start_error[0] == mine:
                            raise self._start_error[1]
                        self._start()
                    if self.state == "starting":  # the attempt now under way (a dead standby's was not)
                        mine = self._attempt
                    if self.state == "ready" and self._busy < self.capacity and self._waiting[0] == ticket:
                        heapq.heappop(self._waiting)
                        self._busy += 1
                        return self.proc
                    self._cond.wait(_POLL_S)
                    token.check()
            except BaseException:
                self._waiting.remove(ticket)
                heapq.heapify(self._waiting)
                self._cond.notify_all()
                raise

    @contextlib.contextmanager
    def _slot(self, priority: str, token: CancelToken, emit: Callable[[Any], None] | None = None):
        """A slot in the worker and a registered request: ``(proc, rid, pending)``; the worker's exit fails
        ``pending``."""
        proc = self._acquire(priority, token)
        rid = next(self._rids)
        pending = Pending(proc, emit)
        try:
            with self._cond:
                if self.proc is not proc:
                    raise WorkerCrashed(f"the worker for {self.label} died before the request reached it")
                self._inflight[rid] = pending
            yield proc, rid, pending
        finally:
            with self._cond:
                self._inflight.pop(rid, None)
                self._busy -= 1
                self._cond.notify_all()

    def _overran(self, proc: WorkerProcess) -> TaskTimeoutError:
        proc.kill(f"a request ran {self.cfg.grace_s} s past its deadline")
        return TaskTimeoutError(f"the request on {self.label} ran past its timeout and its worker did not stop "
                                f"it; the worker was replaced (log: {proc.log_path})")

    def call(self, message: Callable[[int], tuple], *, priority: str, token: CancelToken,
             emit: Callable[[Any], None] | None = None, cancel: threading.Event | None = None,
             read_with: Callable[[DirectReader | None], None] | None = None) -> Any:
        """Send ``message(rid)`` to the worker and wait for its result (``emit`` gets its stream chunks;
        ``read_with``: the stream's channel takes a DirectReader, so its consumer may read its chunks itself).
        A cancelled request (``cancel``, the token) is cancelled in the worker; one still running
        ``grace_s`` after its deadline gets its worker replaced and fails with TaskTimeoutError."""
        with self._slot(priority, token, emit) as (proc, rid, pending):
            direct = DirectReader(proc, pending) if read_with is not None and self.capacity == 1 else None
            if direct is not None:
                read_with(direct)
            try:
                proc.send(message(rid))  # a dead worker: its exit fails the request
                cancelled = False
                while not pending.done.wait(_POLL_S):
                    if not cancelled and (token.cancelled or (cancel is not None and cancel.is_set())):
                        cancelled = proc.send(("cancel", rid))
                    if token.deadline is not None and time.monotonic() > token.deadline + self.cfg.grace_s:
                        raise self._overran(proc)
            finally:
                if direct is not None:
                    read_with(None)
                    direct.leave()
            if pending.error is not None:
                raise pending.error
            return pending.result

    def ask(self, message: Callable[[int], tuple], *, priority: str, token: CancelToken) -> Any:
        """``call`` for a request answered as a whole (an encoder's, not cancellable in the worker): sent on
        the direct lane, its answer read by this thread, which blocks in ``recv`` until it comes (no reader
        thread to wake, no polling); one still running ``grace_s`` after its deadline gets its worker
        replaced and fails with TaskTimeoutError."""
        with self._slot(priority, token) as (proc, rid, pending):
            timeout = None if token.deadline is None else token.deadline + self.cfg.grace_s - time.monotonic()
            try:
                answer = proc.ask(rid, message(rid), timeout)
            except TimeoutError:
                raise self._overran(proc) from None
            if answer is None:  # the worker died: the reader thread reaps it and fails ``pending``
                if not pending.done.wait(_REAP_WAIT_S):
                    raise WorkerCrashed(f"the worker for {self.label} (pid {proc.pid}) closed its lane; its log: "
                                        f"{proc.log_path}")
                raise pending.error
            if answer[0] == "err":
                raise answer[2]
            return answer[2]

    def query(self, kind: str, timeout: float = 2.0) -> Any:
        """A cheap question to a ready worker, outside the request slots (monitoring); None when it has no
        ready worker or does not answer in ``timeout`` seconds."""
        with self._cond:
            proc = self.proc if self.state == "ready" else None
            if proc is None:
                return None
            rid = next(self._rids)
            pending = self._inflight[rid] = Pending(proc, None)
        try:
            proc.send((kind, rid))
            return pending.result if pending.done.wait(timeout) and pending.error is None else None
        finally:
            with self._cond:
                self._inflight.pop(rid, None)

    def info(self) -> dict[str, Any]:
        proc = self.proc
        return {"model": self.label, "state": self.state, "pid": proc.pid if proc else None,
                "log": str(proc.log_path) if proc else None, "restarts": self.restarts,
                "standby": None if self._standby is None else "ready" if self._standby.prepared else "starting",
                "failed": self.failed_reason}

    def check_heartbeat(self, now: float) -> None:
        """Kill a worker that has been silent too long: ``heartbeat_s`` once it serves; while it starts
        (imports, a model's load on a busy machine) four times that, at least a minute."""
        for proc in (self.proc, self._standby):
            serving = proc is self.proc and self.state == "ready"
            limit = self.cfg.heartbeat_s if serving else max(60, 4 * self.cfg.heartbeat_s)
            if proc is not None and proc.alive() and now - proc.last_seen > limit:
                proc.kill(f"it sent no heartbeat for {limit} s")

    def close(self) -> None:
        with self._cond:
            self._closed = True
            procs, self.proc, self._standby = (self.proc, self._standby), None, None
            self._cond.notify_all()
        for proc in procs:
            if proc is not None:
                proc.stop()
