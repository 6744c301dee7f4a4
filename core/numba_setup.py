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

# GNU OpenMP's threads spin at each barrier before sleeping, GOMP_SPINCOUNT times; libgomp reads it once,
# when it loads (numba's first parallel call).  A token runs ~150 parallel regions with Python between them;
# a worker that has gone to sleep costs a wake-up at the next region.  On free cores a long spin keeps it
# awake through the gaps: Qwen 1.5B decode at 2 threads, quiet (lead, 19:04-19:09 UTC 2026-12-03), 1000 spins
# 8.0-14.4 tok/s (median 11.7), 20000 ~11.6, 50000 ~13.5, 300000 (libgomp's default) 15.6.  On busy cores
# a long spin burns the core a preempted peer needs: smollm2 ~115 -> ~2 tok/s (2026-11-27), and again now
# at load 10-11 with nice 19: the 1.5B 0.58-0.64 tok/s with 300000 spins, 2.1 with 1000.  So the spin is
# chosen when this module loads, from how much tasks waited for a CPU over the last 10 s (Linux PSI); where
# that is unknown, the short spin.  The user's settings (OMP_WAIT_POLICY, GOMP_SPINCOUNT) win.
#: GOMP_SPINCOUNT on free cores (libgomp's own default) and on busy ones or when we cannot tell
SPIN_FREE, SPIN_BUSY = 300000, 1000
#: PSI ``some avg10`` (% of the last 10 s in which a task waited for a CPU) from which the cores count as busy
BUSY_PRESSURE = 10.0


def spin_count(cpu_pressure: str | None) -> int:
    """The spin count for the text of /proc/pressure/cpu (None: unreadable)."""
    for line in (cpu_pressure or "").splitlines():
        fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
        if line.startswith("some ") and "avg10" in fields:
            try:
                return SPIN_FREE if float(fields["avg10"]) < BUSY_PRESSURE else SPIN_BUSY
            except ValueError:
                break
    return SPIN_BUSY


def _cpu_pressure() -> str | None:
    try:
        with open("/proc/pressure/cpu") as fh:
            return fh.read()
    except OSError:  # no PSI (not Linux, an old kernel, disabled): unknown
        return None


#: the spin count this module chose, so a child process (which inherits it) chooses again for itself
_CHOSEN = "CORERT_CHOSEN_SPINCOUNT"
if "OMP_WAIT_POLICY" not in os.environ and os.environ.get("GOMP_SPINCOUNT", "") in ("", os.environ.get(_CHOSEN)):
    os.environ["GOMP_SPINCOUNT"] = os.environ[_CHOSEN] = str(spin_count(_cpu_pressure()))


def child_env(env=None) -> dict[str, str]:
    """``env`` (default os.environ) for a process that is not corert's -- a benchmark's competitor: without the
    spin count this module chose for itself (libgomp in that process then uses its own default, or the user's
    setting, which is kept).  A corert child would choose again anyway."""
    env = dict(os.environ if env is None else env)
    if env.get(_CHOSEN) is not None and env.get("GOMP_SPINCOUNT") == env.get(_CHOSEN):
        del env["GOMP_SPINCOUNT"]
    env.pop(_CHOSEN, None)
    return env

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
