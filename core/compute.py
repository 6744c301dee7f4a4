"""The process's compute thread: every forward pass of an OpenMP-parallel engine starts from it.

GNU OpenMP keeps a team of worker threads per thread that starts parallel regions.  When two threads start
them (a model loaded on the main thread and run on a scheduler worker; llama.cpp in one thread and numba
in another; a benchmark's competitor beside corert), each keeps its team, and the idle team's threads
still contend at every barrier: native SmolLM2 decode fell from 230 to 100 tok/s on 2 cores, and the
same happened to llama.cpp next to it.  Sending every forward to this one thread keeps one team for the
process, whoever calls; the hop costs a few microseconds per forward.

    logits = on_compute_thread(session_eval, ids)     # runs there, returns here, raises here

Who owns the cores: the scheduler plugin.  It decides how many threads each pool gets (the ThreadBudget an
engine is loaded with: a forward runs ``run_parallel(..., threads=budget.numba_threads)`` here) and it pins
its lanes, so the Python work of a task and any pool a task starts on its own thread stay on the lane's
cores.  The forwards themselves do not run on the lane: they all hop here, so the process has one OpenMP
team (per-lane teams are what the measurement above rules out).  This thread is therefore not any lane's:
it starts on the process's cpus -- the main thread's affinity mask, which is where the scheduler lays its
lanes out by default -- never on the mask of whichever lane happened to create it (Linux threads inherit
their creator's), so a model first loaded from a one-core lane does not leave every later forward and the
OpenMP team on that core.  Its budget, not its mask, is what keeps it inside the scheduler's share; a
scheduler given a subset of the cpus (``cpus`` / ``n_threads``) bounds this thread's pools by count only.
"""
from __future__ import annotations

import concurrent.futures
import os
import queue
import threading

_jobs: queue.SimpleQueue = queue.SimpleQueue()
_thread: threading.Thread | None = None
_start = threading.Lock()


def _leave_creator_cpus() -> None:
    """Run on the process's cpus rather than the mask inherited from the creating thread (see above)."""
    try:
        os.sched_setaffinity(0, os.sched_getaffinity(os.getpid()))  # pid: the main thread's mask
    except (AttributeError, OSError):  # no affinity API (macOS, Windows) or not allowed: nothing inherited
        pass


def _loop() -> None:
    _leave_creator_cpus()
    while True:
        done, fn, args = _jobs.get()
        if not done.set_running_or_notify_cancel():
            continue
        try:
            done.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            done.set_exception(exc)


def _forget_after_fork() -> None:
    """A forked child has only the thread that forked: the compute thread stayed behind in the parent, so the
    child's first forward starts its own (else it would queue work for a thread that does not exist and wait
    forever).  The new thread starts its own OpenMP team: GNU OpenMP keeps a team per starting thread."""
    global _jobs, _thread, _start
    _jobs, _thread, _start = queue.SimpleQueue(), None, threading.Lock()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_forget_after_fork)


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
