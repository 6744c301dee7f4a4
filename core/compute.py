"""The process's compute thread: every forward pass of an OpenMP-parallel engine starts from it.

GNU OpenMP keeps a team of worker threads per thread that starts parallel regions.  When two threads start
them (a model loaded on the main thread and run on a scheduler worker; llama.cpp in one thread and numba
in another; a benchmark's competitor beside corert), each keeps its team, and the idle team's threads
still contend at every barrier: native SmolLM2 decode fell from 230 to 100 tok/s on 2 cores, and the
same happened to llama.cpp next to it.  Sending every forward to this one thread keeps one team for the
process, whoever calls; the hop costs a few microseconds per forward.

    logits = on_compute_thread(session_eval, ids)     # runs there, returns here, raises here
"""
from __future__ import annotations

import concurrent.futures
import queue
import threading

_jobs: queue.SimpleQueue = queue.SimpleQueue()
_thread: threading.Thread | None = None
_start = threading.Lock()


def _loop() -> None:
    while True:
        done, fn, args = _jobs.get()
        if not done.set_running_or_notify_cancel():
            continue
        try:
            done.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            done.set_exception(exc)


def on_compute_thread(fn, *args):
    """``fn(*args)`` on the compute thread; its result, or its exception raised in the caller."""
    global _thread
    if threading.current_thread() is _thread:  # already there (a forward inside a load)
        return fn(*args)
    with _start:
        if _thread is None:
            _thread = threading.Thread(target=_loop, name="corert-compute", daemon=True)
            _thread.start()
    done: concurrent.futures.Future = concurrent.futures.Future()
    _jobs.put((done, fn, args))
    return done.result()
