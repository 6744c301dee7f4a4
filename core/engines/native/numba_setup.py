"""numba configuration shared by every native kernel module; import it before the first @njit(parallel=True).

Threading layer: numba's default ``workqueue`` layer aborts when two Python threads enter parallel code at
once (a Runtime serves requests from a scheduler's pool), so we ask for GNU OpenMP (``omp``), which is
thread-safe.  If it is not available numba falls back to its own choice and
:data:`corert.engines.native.numba_setup.PARALLEL_LOCK` serializes the engine's forward passes, which is
always held around a forward pass anyway (one forward uses every numba thread; two at once would only
thrash the cores).
"""
from __future__ import annotations

import os
import threading

# GNU OpenMP's threads spin at each barrier before sleeping (300k spins by default).  With the cores shared
# (other pools, other processes) a spinning thread burns the core its preempted peer needs, ~150 barriers a
# token: smollm2 decode fell from ~115 to ~2 tok/s under load.  Never spinning (OMP_WAIT_POLICY=passive)
# is robust but pays a futex wake-up per barrier (~69 tok/s on an idle machine).  A short spin covers the
# gap between two kernels of one token and gives up quickly when the peer is not running: measured here
# ~115 tok/s idle, ~45 with one core busy elsewhere (1 thread: ~72 either way).  The user's settings win.
# libgomp reads these when it is loaded, i.e. at numba's first parallel call.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

import numba  # noqa: E402

from ...compute import on_compute_thread  # noqa: E402
import numpy as np  # noqa: E402

if numba.config.THREADING_LAYER in ("default", ""):
    numba.config.THREADING_LAYER = "omp"

#: Held around each forward pass: numba's thread pool is process-wide.
PARALLEL_LOCK = threading.Lock()


def _with_threads(fn, args, threads):
    if threads is not None:
        set_threads(threads)  # numba's thread count is per calling thread: set it on the compute thread
    return fn(*args)


def run_parallel(fn, *args, threads: int | None = None):
    """``fn(*args)`` on the process's compute thread (see corert.compute), with ``threads`` numba
    threads; returns its result or raises its exception."""
    return on_compute_thread(_with_threads, fn, args, threads)

#: f16 bit pattern -> f32 value; numba has no float16 type on the CPU, GGUF scales are f16.  (aarch64's
#: conversion flags the signalling NaN patterns as invalid: numpy would warn at every import.)
with np.errstate(invalid="ignore"):
    F16_TO_F32 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


def set_threads(n: int) -> None:
    """Use ``n`` numba threads (clamped to what numba started with)."""
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
