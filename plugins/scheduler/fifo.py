"""Reference scheduler: one worker thread, first in first out.

Running one task at a time is what makes the thread budget simple: the task in flight may use every core
(llama.cpp, onnxruntime and numba all get ``cores`` threads) because nothing else runs beside it.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable

from corert import Implementation, hookimpl
from corert.cancel import CancelToken, set_current
from corert.errors import ConfigError, QueueFullError
from corert.interfaces import PRIORITIES, ThreadBudget

from .budget import available_cores

_STOP = object()


class FifoScheduler:
    name = "fifo"

    def __init__(self, cores: int | None = None, queue_size: int = 1024):
        self.cores = cores or available_cores()
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._counts = {"submitted": 0, "completed": 0, "failed": 0, "cancelled": 0}
        self._lock = threading.Lock()
        self._running: CancelToken | None = None  # the token of the task in flight
        self._worker = threading.Thread(target=self._run, name="corert-fifo", daemon=True)
        self._worker.start()

    def submit(self, fn: Callable[..., Any], *args: Any, priority: str = "normal",
               timeout: float | None = None, **kwargs: Any) -> Future:
        if priority not in PRIORITIES:
            raise ConfigError(f"unknown priority {priority!r}; use one of {', '.join(PRIORITIES)}")
        fut: Future = Future()
        try:
            deadline = time.monotonic() + timeout if timeout is not None else None
            self._queue.put_nowait((fut, fn, args, kwargs, deadline))
        except queue.Full:
            raise QueueFullError(f"scheduler queue is full ({self._queue.maxsize} tasks); retry later") from None
        with self._lock:
            self._counts["submitted"] += 1
        return fut

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            fut, fn, args, kwargs, deadline = item
            if not fut.set_running_or_notify_cancel():
                self._count("cancelled")
                continue
            token = CancelToken(deadline)  # a task past its timeout stops at its next check
            with self._lock:
                self._running = token
            set_current(token)
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
                fut.set_exception(exc)
                self._count("failed")
            else:
                fut.set_result(result)
                self._count("completed")
            finally:
                set_current(None)
                with self._lock:
                    self._running = None

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def thread_budget(self) -> ThreadBudget:
        n = self.cores
        return ThreadBudget(cores=n, llama_threads=n, llama_batch_threads=n, ort_intra_op=n, ort_inter_op=1,
                            ort_spinning=False, numba_threads=n)

    def stats(self) -> dict:
        with self._lock:
            return {"scheduler": self.name, "workers": 1, "queued": self._queue.qsize(), **self._counts}

    def shutdown(self, wait: bool = True, cancel_pending: bool = False) -> None:
        if cancel_pending:
            while True:  # queued tasks are cancelled; the one in flight is asked to stop
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP and item[0].cancel():
                    self._count("cancelled")
            with self._lock:
                if self._running is not None:
                    self._running.cancel("shutdown")
        self._queue.put(_STOP)
        if wait:
            self._worker.join()


@hookimpl
def register_schedulers(register):
    register(Implementation(
        area="scheduler", name="fifo", priority=0,
        factory=lambda variant, config=None: FifoScheduler(
            cores=getattr(config, "n_threads", None), queue_size=getattr(config, "queue_size", 1024) or 1024),
        description="one worker, first in first out (reference)"))
