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

# GNU OpenMP's threads spin at each barrier by default; with the 2 cores shared (other pools, other
# processes) a spinning thread waits for a preempted peer for a whole timeslice, 150 times per token:
# decode fell from ~40 to ~2 tok/s under load.  Sleeping waits cost a few microseconds per barrier instead.
# libgomp reads this when it is loaded, i.e. at numba's first parallel call.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba  # noqa: E402
import numpy as np  # noqa: E402

if numba.config.THREADING_LAYER in ("default", ""):
    numba.config.THREADING_LAYER = "omp"

#: Held around each forward pass: numba's thread pool is process-wide.
PARALLEL_LOCK = threading.Lock()

#: f16 bit pattern -> f32 value; numba has no float16 type on the CPU, GGUF scales are f16.
F16_TO_F32 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


def set_threads(n: int) -> None:
    """Use ``n`` numba threads (clamped to what numba started with)."""
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
