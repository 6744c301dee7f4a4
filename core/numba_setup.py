"""numba set-up for the whole process, and the one lock around its parallel layer.

Every module with a numba kernel -- the native engine's, the paged KV cache's, the bpe tokenizer's --
imports this module before its first ``@njit(parallel=True)``, so the threading layer is chosen once,
here, whoever is imported first.

Threading layer: numba's default ``workqueue`` layer aborts when two Python threads enter parallel code at
once (a Runtime serves requests from a scheduler's pool), so we ask for GNU OpenMP (``omp``), which is
thread-safe.  If it is not available numba falls back to its own choice, and :data:`PARALLEL_LOCK` is what
keeps two parallel calls apart.

One lock: :data:`PARALLEL_LOCK` is held around every parallel numba call in the process -- an engine's
forward pass (with its KV store's reserve), a model load, a tokenizer's ``encode_batch``.  One parallel call
uses every numba thread it is given; two at once would only thrash the cores, and under ``workqueue``
would abort.  :func:`run_parallel` runs the call itself on the process's compute thread (corert.compute),
so there is one OpenMP team in the process; the caller takes the lock first (it is not re-entrant, and an
engine also guards its KV store with it).

    with PARALLEL_LOCK:
        logits = run_parallel(forward, ids, ..., threads=budget.numba_threads)
"""
from __future__ import annotations

import os
import threading

# OpenMP's spin count is chosen from how busy the CPUs are now, sampled while numba imports (corert.spin);
# it must be in the environment before libgomp loads (numba's first parallel call), which is after this.
from . import spin  # noqa: E402

_spin_window = spin.start()

from .numba_import import scipy_blas_deferred, set_up_target  # noqa: E402

with scipy_blas_deferred():  # numba_import.py: ~32 MB of scipy that no kernel uses
    import numba  # noqa: E402

    # LLVM's code pages count in RSS but are idle once the kernels are loaded: dropped now and after every
    # compile or cache load (llvm_pages.py).  CORERT_KEEP_LLVM_PAGES=1 keeps them (to measure the saving).
    if os.environ.get("CORERT_KEEP_LLVM_PAGES", "") in ("", "0"):
        from . import llvm_pages  # noqa: E402

        llvm_pages.install()
    set_up_target()

from .compute import on_compute_thread  # noqa: E402

spin.finish(_spin_window)

if numba.config.THREADING_LAYER in ("default", ""):
    numba.config.THREADING_LAYER = "omp"

#: Held around each parallel numba call in the process (see the module docstring); not re-entrant.
PARALLEL_LOCK = threading.Lock()


def _with_threads(fn, args, threads):
    if threads is not None:
        set_threads(threads)  # numba's thread count is per calling thread: set it on the compute thread
    return fn(*args)


def run_parallel(fn, *args, threads: int | None = None):
    """``fn(*args)`` on the process's compute thread (see corert.compute), with ``threads`` numba
    threads; returns its result or raises its exception.  Call it with :data:`PARALLEL_LOCK` held."""
    return on_compute_thread(_with_threads, fn, args, threads)


def set_threads(n: int) -> None:
    """Use ``n`` numba threads (clamped to what numba started with)."""
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
