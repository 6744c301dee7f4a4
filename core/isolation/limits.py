"""What a worker process does to itself before it loads a model: die with its parent, no new privileges,
bounded address space and open files.

Measured on the development machine (Linux 6.18, Firecracker VM): ``RLIMIT_AS`` and ``RLIMIT_NOFILE`` work;
the cgroup v1 memory hierarchy is mounted read-only (no per-worker memory cgroup); ``no_new_privs`` works;
Landlock (ABI 7) and seccomp are available in the kernel but not applied here (see the README's "Isolation").
"""
from __future__ import annotations

import ctypes
import os
import resource
import signal

import attrs

_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38


@attrs.frozen
class Limits:
    """One worker's limits (from :class:`corert.config.WorkerConfig`)."""

    #: bytes of address space (RLIMIT_AS); None: unlimited
    memory: int | None
    #: open files (RLIMIT_NOFILE)
    open_files: int


def _prctl(option: int, arg: int) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(option, arg, 0, 0, 0) == 0


def apply(limits: Limits) -> dict[str, bool]:
    """Apply ``limits`` to this process; returns which took effect (written to the worker's log)."""
    applied = {"pdeathsig": _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL),  # the host died: so do we
               "no_new_privs": _prctl(_PR_SET_NO_NEW_PRIVS, 1)}
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = limits.open_files if hard == resource.RLIM_INFINITY else min(limits.open_files, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    applied["nofile"] = True
    if limits.memory is not None:
        # the soft limit only: allocations beyond it fail (MemoryError, a failed mmap) instead of the host's
        # OOM killer picking a victim
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory, resource.getrlimit(resource.RLIMIT_AS)[1]))
    applied["address_space"] = limits.memory is not None
    return applied


def idle_priority() -> bool:
    """Run the calling thread, and the threads it starts, only on cores nothing else wants (SCHED_IDLE): a
    standby's preparation is background work, and the serving worker decodes on the same cores.  Linux
    lets an unprivileged thread lower its priority but not raise it back, so the caller must be a thread
    that ends.  False where the policy does not exist."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: this thread, not the process
        return True
    except (AttributeError, OSError):
        return False
