"""Set numba up without scipy's BLAS.

When scipy is installed (here: scikit-learn's dependency, for ``corert pull``), numba's set-up imports
``scipy.linalg.cython_blas`` to learn whether jitted code may call BLAS (``numba.np.arraymath``), and
scipy.linalg brings ~32 MB of modules and libraries into every process that uses a kernel.  No corert
kernel calls BLAS.  So during the set-up an import of scipy.linalg fails; numba then records "no BLAS" for
the one function that asks up front (an inner product falls back to a loop), and its BLAS-backed functions
(``np.dot`` and ``np.linalg`` in jitted code) still import scipy when first compiled.  A process that had
imported scipy.linalg before keeps it: nothing is imported twice or refused then.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import sys

DEFERRED = "scipy.linalg"


class _Defer(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == DEFERRED or name.startswith(DEFERRED + "."):
            raise ModuleNotFoundError(f"corert: {DEFERRED} is not imported while numba sets up", name=name)
        return None


@contextlib.contextmanager
def scipy_blas_deferred():
    finder = _Defer()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def set_up_target() -> None:
    """Set numba's CPU target up now, as numba does before its first compile or cache load (with the process
    bigger by then).  Call inside :func:`scipy_blas_deferred`."""
    from numba.core.compiler_lock import global_compiler_lock
    from numba.core.registry import cpu_target

    with global_compiler_lock:  # numba refreshes under its lock before each cache load
        cpu_target.target_context.refresh()
