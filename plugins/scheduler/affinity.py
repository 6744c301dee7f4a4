"""Pinning a worker thread to its lane's cpus (Linux), degrading to a recorded no-op elsewhere.

Threads inherit their creator's affinity on Linux, so the pool threads llama.cpp starts from inside a
pinned worker stay on that worker's cores: pinning is what makes the lane budget hold for them too.
"""
from __future__ import annotations

import os
import threading
from typing import Sequence


def process_cpus() -> tuple[int, ...]:
    """The cpus this process may run on, in order (all of them, numbered, where affinity is unknown)."""
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return tuple(range(max(1, os.cpu_count() or 1)))


def pin_current_thread(cpus: Sequence[int]) -> str:
    """Restrict the calling thread to ``cpus``.  Returns "pinned" or why it was not (never raises)."""
    setter = getattr(os, "sched_setaffinity", None)
    if setter is None:
        return "unsupported on this platform"
    try:
        # 0 would mean "this thread" on Linux too; the native id says so explicitly.
        setter(threading.get_native_id(), set(cpus))
    except OSError as exc:  # a container or cgroup that forbids it, or cpus that went offline
        return f"refused by the OS: {exc.strerror or exc}"
    return "pinned"


def thread_cpus(native_id: int) -> frozenset[int] | None:
    """The affinity of a thread (by native id), or None where that cannot be read."""
    getter = getattr(os, "sched_getaffinity", None)
    if getter is None:
        return None
    try:
        return frozenset(getter(native_id))
    except OSError:
        return None
